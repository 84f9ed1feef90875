"""Small but structurally faithful models of the common CNN topologies, for the graph/surgery tests.

Widths and depths are reduced so that every model runs in milliseconds on a CPU; the wiring (which
layer reads which tensor, where tensors are added, multiplied, concatenated, split) is the real one.
Every model declares ``input_size`` (C, H, W), or (C, L) for 1-d models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn(c_in: int, c_out: int, k: int = 3, s: int = 1, act: type[nn.Module] | None = nn.ReLU,
            groups: int = 1, dilation: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, k, s, dilation * (k // 2), dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# -- ResNets (post-activation, He et al. 2016a) --

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int = 1, shortcut: str = "conv_bn") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != planes:
            if shortcut == "conv_bn":  # option B: 1x1 conv + BN projection
                self.downsample = nn.Sequential(nn.Conv2d(c_in, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
            else:  # a bare 1x1 projection (no BN): its output channels carry no scaling factor
                self.downsample = nn.Conv2d(c_in, planes, 1, stride, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int = 1, shortcut: str = "conv_bn") -> None:
        super().__init__()
        width = planes
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # stride on the 3x3 (ResNet v1.5)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class CifarResNet(nn.Module):
    """ResNet-20 for CIFAR (3 stages of 3 BasicBlocks, 16/32/64 channels), post-activation."""

    def __init__(self, n: int = 3, widths=(16, 32, 64), num_classes: int = 10, shortcut: str = "conv_bn") -> None:
        super().__init__()
        self.input_size = (3, 32, 32)
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        c = widths[0]
        stages = []
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c, w, 2 if (i > 0 and j == 0) else 1, shortcut))
                c = w
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class ImageNetResNet(nn.Module):
    """torchvision-style ResNet: 7x7/2 stem, BN, ReLU, 3x3/2 maxpool, four stages, avgpool, fc."""

    def __init__(self, block: type[nn.Module], layers=(2, 2, 2, 2), widths=(8, 16, 32, 64),
                 num_classes: int = 10) -> None:
        super().__init__()
        self.input_size = (3, 64, 64)
        c = widths[0]
        self.conv1 = nn.Conv2d(3, c, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        for i, (n, w) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for j in range(n):
                blocks.append(block(c, w, 2 if (i > 0 and j == 0) else 1))
                c = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


# -- MobileNetV2 (Sandler et al. 2018) --

class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_res = stride == 1 and c_in == c_out
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(c_in, hidden, 1, act=nn.ReLU6))
        layers += [
            conv_bn(hidden, hidden, 3, stride, act=nn.ReLU6, groups=hidden),  # depthwise
            nn.Conv2d(hidden, c_out, 1, bias=False),  # linear bottleneck: no activation
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.input_size = (3, 32, 32)
        settings = [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 3, 2), (6, 24, 2, 1)]  # t, c, n, s
        c = 8
        features: list[nn.Module] = [conv_bn(3, c, 3, 2, act=nn.ReLU6)]
        for t, w, n, s in settings:
            for i in range(n):
                features.append(InvertedResidual(c, w, s if i == 0 else 1, t))
                c = w
        features.append(conv_bn(c, 64, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


# -- DenseNet-BC (DenseNet-121 style, Huang et al. 2017) --

class DenseLayer(nn.Module):
    def __init__(self, c_in: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        x = torch.cat(features, 1)
        x = self.conv1(self.relu1(self.norm1(x)))
        return self.conv2(self.relu2(self.norm2(x)))


class DenseBlock(nn.Module):
    def __init__(self, n: int, c_in: int, growth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer(c_in + i * growth, growth) for i in range(n))

    def forward(self, x: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(features))
        return torch.cat(features, 1)


class Transition(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.Conv2d(c_in, c_out, 1, bias=False),
                         nn.AvgPool2d(2, 2))


class DenseNetBC(nn.Module):
    def __init__(self, blocks=(2, 4, 3, 2), growth: int = 8, num_classes: int = 10) -> None:
        super().__init__()
        self.input_size = (3, 64, 64)
        c = 2 * growth
        feats: list[nn.Module] = [nn.Conv2d(3, c, 7, 2, 3, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1)]
        for i, n in enumerate(blocks):
            feats.append(DenseBlock(n, c, growth))
            c += n * growth
            if i < len(blocks) - 1:
                feats.append(Transition(c, c // 2))  # compression 0.5
                c //= 2
        feats.append(nn.BatchNorm2d(c))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.features(x))
        x = F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)
        return self.classifier(x)


# -- squeeze-and-excitation (Hu et al. 2018) --

class SEConv(nn.Module):
    """torchvision-style SE: pool -> 1x1 conv -> ReLU -> 1x1 conv -> sigmoid -> scale."""

    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(c // r, c, 1)
        nn.init.normal_(self.fc2.weight, std=2.0)  # a trained gate varies strongly from input to input

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.fc2(self.relu(self.fc1(self.pool(x)))))


class SELinear(nn.Module):
    """The original SENet code: pool, view(b, c), Linear, ReLU, Linear, sigmoid, view(b, c, 1, 1)."""

    def __init__(self, c: int, r: int = 4) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Linear(c, c // r, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(c // r, c, bias=False), nn.Sigmoid())
        nn.init.normal_(self.fc[2].weight, std=2.0)

    def forward(self, x: Tensor) -> Tensor:
        b, c, _, _ = x.size()
        y = self.pool(x).view(b, c)
        y = self.fc(y).view(b, c, 1, 1)
        return x * y.expand_as(x)


class SEBasicBlock(nn.Module):
    def __init__(self, c: int, se: type[nn.Module]) -> None:
        super().__init__()
        self.conv1 = conv_bn(c, c)
        self.conv2 = conv_bn(c, c, act=None)
        self.se = se(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.se(self.conv2(self.conv1(x)))
        return self.relu(out + x)


class SENet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.input_size = (3, 32, 32)
        self.stem = conv_bn(3, 16)
        self.block1 = SEBasicBlock(16, SEConv)
        self.down = conv_bn(16, 32, s=2)
        self.block2 = SEBasicBlock(32, SELinear)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block2(self.down(self.block1(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


class SEOnBranch(nn.Module):
    """SE on a branch whose features reach a 3x3 conv: the gate's expansion conv must narrow with them."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.input_size = (3, 32, 32)
        self.stem = conv_bn(3, 16)
        self.expand = conv_bn(16, 32)
        self.se = SEConv(32)
        self.project = conv_bn(32, 16)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.project(self.se(self.expand(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


class MBConv(nn.Module):
    """EfficientNet MBConv: 1x1 expand, depthwise 3x3, SE, 1x1 linear projection, residual (SiLU)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1, expand: int = 4) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = conv_bn(c_in, hidden, 1, act=nn.SiLU)
        self.dw = conv_bn(hidden, hidden, 3, stride, act=nn.SiLU, groups=hidden)
        self.se = SEConv(hidden)
        self.project = conv_bn(hidden, c_out, 1, act=None)
        self.use_res = stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        return x + out if self.use_res else out


class EfficientNetLike(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.input_size = (3, 32, 32)
        self.stem = conv_bn(3, 8, 3, 2, act=nn.SiLU)
        self.blocks = nn.Sequential(MBConv(8, 8), MBConv(8, 16, 2), MBConv(16, 16))
        self.head = conv_bn(16, 48, 1, act=nn.SiLU)
        self.fc = nn.Linear(48, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# -- branches, split, concat --

class TwoBranch(nn.Module):
    """One BN output feeds two branches that are added, and two more that are concatenated."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.input_size = (3, 32, 32)
        self.stem = conv_bn(3, 16)
        self.a = conv_bn(16, 16, act=None)
        self.b = conv_bn(16, 16, 1, act=None)
        self.c = conv_bn(16, 8)
        self.d = conv_bn(16, 12, 1)
        self.fuse = conv_bn(16 + 8 + 12, 24, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        y = self.stem(x)
        s = F.relu(self.a(y) + self.b(y))
        z = torch.cat([s, self.c(s), self.d(y)], dim=1)
        return self.fc(self.pool(self.fuse(z)).flatten(1))


class YoloConv(nn.Module):
    """Ultralytics ``Conv``: conv, BN, SiLU."""

    def __init__(self, c_in: int, c_out: int, k: int = 1, s: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, k, s, k // 2, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class YoloBottleneck(nn.Module):
    def __init__(self, c: int, shortcut: bool = True) -> None:
        super().__init__()
        self.cv1 = YoloConv(c, c, 3)
        self.cv2 = YoloConv(c, c, 3)
        self.add = shortcut

    def forward(self, x: Tensor) -> Tensor:
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C2f(nn.Module):
    """YOLOv8 C2f: 1x1 conv, split in two, n bottlenecks on the second half, concat all, 1x1 conv."""

    def __init__(self, c_in: int, c_out: int, n: int = 1, shortcut: bool = False, use_split: bool = False) -> None:
        super().__init__()
        self.c = c_out // 2
        self.cv1 = YoloConv(c_in, 2 * self.c, 1)
        self.cv2 = YoloConv((2 + n) * self.c, c_out, 1)
        self.m = nn.ModuleList(YoloBottleneck(self.c, shortcut) for _ in range(n))
        self.use_split = use_split

    def forward(self, x: Tensor) -> Tensor:
        if self.use_split:
            y0, y1 = torch.split(self.cv1(x), [self.c, self.c], dim=1)
        else:
            y0, y1 = self.cv1(x).chunk(2, 1)
        y = [y0, y1]
        for m in self.m:
            y.append(m(y[-1]))
        return self.cv2(torch.cat(y, 1))


class SPPF(nn.Module):
    """YOLOv5/8 SPPF: three chained 5x5 maxpools, concat with the input, 1x1 conv."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        c = c_in // 2
        self.cv1 = YoloConv(c_in, c, 1)
        self.cv2 = YoloConv(4 * c, c_out, 1)
        self.m = nn.MaxPool2d(5, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class SPP(nn.Module):
    """YOLOv3/v4 SPP: parallel 5/9/13 maxpools of one tensor, concat with it, 1x1 conv."""

    def __init__(self, c_in: int, c_out: int, ks=(5, 9, 13)) -> None:
        super().__init__()
        c = c_in // 2
        self.cv1 = YoloConv(c_in, c, 1)
        self.cv2 = YoloConv(c * (len(ks) + 1), c_out, 1)
        self.m = nn.ModuleList(nn.MaxPool2d(k, 1, k // 2) for k in ks)

    def forward(self, x: Tensor) -> Tensor:
        x = self.cv1(x)
        return self.cv2(torch.cat([x] + [m(x) for m in self.m], 1))


class C2fNeck(nn.Module):
    """Backbone of C2f stages, then an FPN neck: F.interpolate upsample + cat with the lateral feature."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.input_size = (3, 32, 32)
        self.stem = YoloConv(3, 8, 3, 2)
        self.c2 = C2f(8, 16, n=1, shortcut=True)
        self.down = YoloConv(16, 24, 3, 2)
        self.c3 = C2f(24, 24, n=2, shortcut=True, use_split=True)
        self.up = C2f(24 + 16, 16, n=1)
        self.head = nn.Conv2d(16, num_classes, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p2 = self.c2(self.stem(x))
        p3 = self.c3(self.down(p2))
        u = F.interpolate(p3, scale_factor=2.0, mode="nearest")
        n2 = self.up(torch.cat([u, p2], 1))
        return self.head(n2), p3.mean((2, 3))


class SPPNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.input_size = (3, 32, 32)
        self.stem = YoloConv(3, 16, 3, 2)
        self.body = YoloConv(16, 32, 3, 2)
        self.spp = SPP(32, 32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.spp(self.body(self.stem(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


class TinyYolo(nn.Module):
    """A YOLOv8-like detector: C2f backbone, SPPF, PAN neck (upsample+cat, downsample+cat), three
    1x1 heads without BN; returns a dict of the three head outputs."""

    def __init__(self, num_outputs: int = 9) -> None:
        super().__init__()
        self.input_size = (3, 64, 64)
        self.b0 = YoloConv(3, 8, 3, 2)                 # 32
        self.b1 = nn.Sequential(YoloConv(8, 16, 3, 2), C2f(16, 16, 1, True))                      # 16
        self.b2 = nn.Sequential(YoloConv(16, 24, 3, 2), C2f(24, 24, 1, True, use_split=True))     # 8  P3
        self.b3 = nn.Sequential(YoloConv(24, 32, 3, 2), C2f(32, 32, 1, True))                     # 4  P4
        self.b4 = nn.Sequential(YoloConv(32, 48, 3, 2), C2f(48, 48, 1, True), SPPF(48, 48))       # 2  P5
        self.upsample = nn.Upsample(scale_factor=2, mode="nearest")
        self.n1 = C2f(48 + 32, 32)
        self.n2 = C2f(32 + 24, 24)
        self.d1 = YoloConv(24, 24, 3, 2)
        self.n3 = C2f(24 + 32, 32)
        self.d2 = YoloConv(32, 32, 3, 2)
        self.n4 = C2f(32 + 48, 48)
        self.head3 = nn.Conv2d(24, num_outputs, 1)
        self.head4 = nn.Conv2d(32, num_outputs, 1)
        self.head5 = nn.Conv2d(48, num_outputs, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        p3 = self.b2(self.b1(self.b0(x)))
        p4 = self.b3(p3)
        p5 = self.b4(p4)
        t4 = self.n1(torch.cat([self.upsample(p5), p4], 1))
        o3 = self.n2(torch.cat([self.upsample(t4), p3], 1))
        o4 = self.n3(torch.cat([self.d1(o3), t4], 1))
        o5 = self.n4(torch.cat([self.d2(o4), p5], 1))
        return {"p3": self.head3(o3), "p4": self.head4(o4), "p5": self.head5(o5)}


# -- GhostNet (Han et al. 2020): cat, then a channel slice written in the code --

class GhostModule(nn.Module):
    def __init__(self, c_in: int, c_out: int, ratio: int = 2) -> None:
        super().__init__()
        self.oup = c_out
        init = -(-c_out // ratio)
        self.primary_conv = conv_bn(c_in, init, 1)
        self.cheap_operation = conv_bn(init, init * (ratio - 1), 3, groups=init)  # depthwise

    def forward(self, x: Tensor) -> Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        out = torch.cat([x1, x2], dim=1)
        return out[:, :self.oup, :, :]


class GhostNetLike(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.input_size = (3, 32, 32)
        self.stem = conv_bn(3, 16, 3, 2)
        self.ghost1 = GhostModule(16, 16)  # the slice takes every channel: prunable
        self.ghost2 = GhostModule(16, 15)  # the slice drops the last one: its bounds fix the widths
        self.head = conv_bn(15, 32, 1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.ghost2(self.ghost1(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


# -- U-Net (Ronneberger et al. 2015) --

class DoubleConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(*conv_bn(c_in, c_out), *conv_bn(c_out, c_out))


class UNet(nn.Module):
    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.input_size = (3, 32, 32)
        self.enc1 = DoubleConv(3, 8)
        self.enc2 = DoubleConv(8, 16)
        self.pool = nn.MaxPool2d(2)
        self.mid = DoubleConv(16, 32)
        self.up2 = nn.ConvTranspose2d(32, 16, 2, 2)  # the usual U-Net up: no BN after it
        self.dec2 = DoubleConv(32, 16)
        self.up1 = nn.Sequential(nn.ConvTranspose2d(16, 8, 2, 2, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.dec1 = DoubleConv(16, 8)
        self.out = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        d1 = self.dec1(torch.cat([e1, self.up1(d2)], dim=1))
        return self.out(d1)


# -- other layer types --

class Conv1dNet(nn.Module):
    """A 1-d CNN (audio/sequence): Conv1d + BatchNorm1d, a residual block, global pool, Linear."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.input_size = (4, 64)
        self.conv1 = nn.Sequential(nn.Conv1d(4, 16, 5, padding=2, bias=False), nn.BatchNorm1d(16), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv1d(16, 16, 3, padding=1, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
                                   nn.Conv1d(16, 16, 3, padding=1, bias=False), nn.BatchNorm1d(16))
        self.conv3 = nn.Sequential(nn.Conv1d(16, 24, 3, stride=2, padding=1, bias=False), nn.BatchNorm1d(24),
                                   nn.ReLU(), nn.MaxPool1d(2))
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = F.relu(x + self.conv2(x))
        x = self.conv3(x)
        return self.fc(self.pool(x).flatten(1))


class GroupedDilated(nn.Module):
    """A grouped conv (groups=2, ResNeXt-style) and a dilated conv (DeepLab-style)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.input_size = (3, 32, 32)
        self.stem = conv_bn(3, 16)
        self.grouped = conv_bn(16, 16, groups=2)
        self.mid = conv_bn(16, 24, s=2)
        self.dilated = conv_bn(24, 24, dilation=2)
        self.last = conv_bn(24, 32)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.last(self.dilated(self.mid(self.grouped(self.stem(x)))))
        return self.fc(self.pool(x).flatten(1))


class FlattenLinear(nn.Module):
    """VGG/LeNet-style classifier: flatten a 4x4 feature map into Linear -> BatchNorm1d -> Linear."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.input_size = (3, 16, 16)
        self.features = nn.Sequential(conv_bn(3, 8), nn.MaxPool2d(2), conv_bn(8, 16), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(16 * 4 * 4, 32), nn.BatchNorm1d(32), nn.ReLU(inplace=True),
                                        nn.Linear(32, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


# -- models the analysis must refuse --

class NoBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_size = (3, 16, 16)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(F.relu(self.conv(x)).mean((2, 3)))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_size = (3, 16, 16)
        self.a = conv_bn(3, 8)
        self.b = conv_bn(3, 8)

    def forward(self, x: Tensor) -> Tensor:
        if x.sum() > 0:
            return self.a(x)
        return self.b(x)


FIXTURES = {
    "resnet20": lambda: CifarResNet(),
    "resnet20_bare_projection": lambda: CifarResNet(shortcut="conv"),
    "resnet18": lambda: ImageNetResNet(BasicBlock),
    "resnet50": lambda: ImageNetResNet(Bottleneck, widths=(4, 8, 16, 32)),
    "mobilenetv2": MobileNetV2,
    "densenet121": DenseNetBC,
    "senet": SENet,
    "se_on_branch": SEOnBranch,
    "efficientnet": EfficientNetLike,
    "two_branch": TwoBranch,
    "c2f_neck": C2fNeck,
    "spp": SPPNet,
    "tiny_yolo": TinyYolo,
    "ghostnet": GhostNetLike,
    "unet": UNet,
    "conv1d": Conv1dNet,
    "grouped_dilated": GroupedDilated,
    "flatten_linear": FlattenLinear,
}


def create(name: str) -> nn.Module:
    return FIXTURES[name]()
