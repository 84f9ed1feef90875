"""Pre-activation bottleneck ResNet for CIFAR (He et al. 2016), ResNet-164 in the paper (Sec. 4.2).

Each block reads the residual stream through BN -> ReLU -> conv. That first BN sits before the conv
that reads it, so pruning its channels selects which stream channels the block uses (a selection
BN, :class:`netslim.layers.SelectBatchNorm`) while the stream itself keeps its width.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..layers import batch_norm


class PreActBottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, widths: Sequence[int], stride: int = 1) -> None:
        super().__init__()
        selected, mid1, mid2 = (int(w) for w in widths)
        out_planes = planes * self.expansion
        self.bn1 = batch_norm(selected, in_planes)
        self.conv1 = nn.Conv2d(selected, mid1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid1)
        self.conv2 = nn.Conv2d(mid1, mid2, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid2)
        self.conv3 = nn.Conv2d(mid2, out_planes, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_planes != out_planes:
            self.downsample = nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.relu(self.bn1(x)))
        out = self.conv2(self.relu(self.bn2(out)))
        out = self.conv3(self.relu(self.bn3(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return out + shortcut


def default_widths(depth: int) -> list[int]:
    """The unpruned width config: [selected, mid1, mid2] per block, then the final BN's width."""
    n = _blocks_per_stage(depth)
    widths: list[int] = []
    in_planes = 16
    for planes in (16, 32, 64):
        for _ in range(n):
            widths += [in_planes, planes, planes]
            in_planes = planes * PreActBottleneck.expansion
    return widths + [in_planes]


def _blocks_per_stage(depth: int) -> int:
    if (depth - 2) % 9 != 0 or depth < 11:
        raise ValueError(f"pre-activation bottleneck ResNet depth must be 9n+2 (e.g. 164), got {depth}")
    return (depth - 2) // 9


class PreActResNet(nn.Module):
    """Pre-activation bottleneck ResNet for 32x32 inputs; ``widths`` as in :func:`default_widths`."""

    def __init__(self, depth: int = 164, num_classes: int = 10, widths: Sequence[int] | None = None,
                 in_channels: int = 3, input_size: int = 32) -> None:
        super().__init__()
        n = _blocks_per_stage(depth)
        full = default_widths(depth)
        widths = full if widths is None else [int(w) for w in widths]
        if len(widths) != len(full):
            raise ValueError(f"width config has {len(widths)} entries, ResNet-{depth} needs {len(full)}")
        self.depth = depth
        self.widths = widths
        self.input_size = (in_channels, input_size, input_size)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        in_planes, k, stages = 16, 0, []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(PreActBottleneck(in_planes, planes, widths[k:k + 3], stride if i == 0 else 1))
                in_planes, k = planes * PreActBottleneck.expansion, k + 3
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = batch_norm(widths[-1], in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(self.pool(self.relu(self.bn(x))).flatten(1))
