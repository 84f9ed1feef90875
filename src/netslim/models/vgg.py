"""VGG with BatchNorm: the CIFAR variant of the paper (Sec. 4.2) and VGG-A for ImageNet."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

# Conv widths, "M" = 2x2 max-pool (Simonyan & Zisserman, Table 1; the CIFAR variant from [36]).
VGG_CFGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}
# VGG-A (11 weight layers) ends with a 5th pool before its three FC layers.
VGG_A_CFG: list[int | str] = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]


def conv_widths(cfg: Sequence[int | str]) -> list[int]:
    return [int(c) for c in cfg if c != "M"]


def _with_widths(cfg: Sequence[int | str], widths: Sequence[int] | None) -> list[int | str]:
    """Replace the conv widths of ``cfg`` by ``widths`` (a pruned model is the same cfg, narrower)."""
    if widths is None:
        return list(cfg)
    expected = len(conv_widths(cfg))
    if len(widths) != expected:
        raise ValueError(f"width config has {len(widths)} entries, this architecture has {expected} conv layers")
    it = iter(int(w) for w in widths)
    return ["M" if c == "M" else next(it) for c in cfg]


def _features(cfg: Sequence[int | str], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for c in cfg:
        if c == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(c), 3, padding=1, bias=False), nn.BatchNorm2d(int(c)),
                       nn.ReLU(inplace=True)]
            channels = int(c)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """VGG for CIFAR-sized inputs: 3x3 conv + BN + ReLU stacks, global average pooling, one Linear.

    ``cfg`` lists conv widths and "M" for max-pooling; a pruned VGG is this class with a narrower cfg.
    """

    def __init__(self, cfg: Sequence[int | str], num_classes: int = 10, in_channels: int = 3,
                 input_size: int = 32) -> None:
        super().__init__()
        self.cfg = list(cfg)
        self.input_size = (in_channels, input_size, input_size)
        self.features = _features(self.cfg, in_channels)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(conv_widths(self.cfg)[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


class VGGA(nn.Module):
    """VGG-A with BN for ImageNet (paper Sec. 4.2, Table 2): 8 conv + 3 FC, no dropout.

    The two hidden FC layers carry BatchNorm1d, so their neurons are pruned like 1x1 channels.
    """

    def __init__(self, cfg: Sequence[int | str] = VGG_A_CFG, fc_widths: Sequence[int] = (4096, 4096),
                 num_classes: int = 1000, in_channels: int = 3, input_size: int = 224) -> None:
        super().__init__()
        self.cfg = list(cfg)
        self.fc_widths = [int(w) for w in fc_widths]
        self.input_size = (in_channels, input_size, input_size)
        self.features = _features(self.cfg, in_channels)
        self.pool = nn.AdaptiveAvgPool2d(7)
        fc: list[nn.Module] = []
        width = conv_widths(self.cfg)[-1] * 49
        for w in self.fc_widths:
            fc += [nn.Linear(width, w), nn.BatchNorm1d(w), nn.ReLU(inplace=True)]
            width = w
        self.fc = nn.Sequential(*fc)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.fc(self.pool(self.features(x)).flatten(1)))


def vgg(name: str, num_classes: int = 10, widths: Sequence[int] | None = None, in_channels: int = 3,
        input_size: int = 32) -> VGG:
    return VGG(_with_widths(VGG_CFGS[name], widths), num_classes, in_channels, input_size)


def vgg11a(num_classes: int = 1000, widths: Sequence[int] | None = None, in_channels: int = 3,
           input_size: int = 224) -> VGGA:
    """VGG-A; ``widths`` = the 8 conv widths followed by the 2 hidden FC widths."""
    if widths is None:
        return VGGA(num_classes=num_classes, in_channels=in_channels, input_size=input_size)
    n_conv = len(conv_widths(VGG_A_CFG))
    if len(widths) != n_conv + 2:
        raise ValueError(f"width config has {len(widths)} entries, VGG-A has {n_conv} conv + 2 FC layers")
    return VGGA(_with_widths(VGG_A_CFG, widths[:n_conv]), widths[n_conv:], num_classes, in_channels, input_size)
