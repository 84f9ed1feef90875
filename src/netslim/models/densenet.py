"""DenseNet-40 (growth rate 12, no bottleneck, no compression) for CIFAR, as in the paper (Sec. 4.2).

Every BN reads a concatenation that other layers read too, so pruning selects the channels each
conv reads (selection BNs); the concatenated feature maps themselves are never narrowed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..layers import batch_norm

# The non-bottleneck DenseNet starts with 16 channels (Huang et al. 2017, Sec. 3); with it the counts
# match the paper's Table 1 (1.02M parameters at 10 classes, 1.06M at 100).
STEM_CHANNELS = 16


class DenseLayer(nn.Module):
    def __init__(self, in_planes: int, selected: int, growth: int) -> None:
        super().__init__()
        self.bn = batch_norm(selected, in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(selected, growth, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.conv(self.relu(self.bn(x)))], 1)


class Transition(nn.Module):
    def __init__(self, in_planes: int, selected: int, out_planes: int) -> None:
        super().__init__()
        self.bn = batch_norm(selected, in_planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(selected, out_planes, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: Tensor) -> Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


def default_widths(depth: int = 40, growth: int = 12) -> list[int]:
    """Channels each BN selects, unpruned: one per dense layer and transition, then the final BN."""
    n = _layers_per_block(depth)
    widths, planes = [], STEM_CHANNELS
    for block in range(3):
        for _ in range(n):
            widths.append(planes)
            planes += growth
        if block < 2:
            widths.append(planes)
    return widths + [planes]


def _layers_per_block(depth: int) -> int:
    if (depth - 4) % 3 != 0 or depth < 7:
        raise ValueError(f"DenseNet depth must be 3n+4 (e.g. 40), got {depth}")
    return (depth - 4) // 3


class DenseNet(nn.Module):
    """DenseNet for 32x32 inputs; ``widths`` = channels selected by each BN (see :func:`default_widths`)."""

    def __init__(self, depth: int = 40, growth: int = 12, num_classes: int = 10,
                 widths: Sequence[int] | None = None, in_channels: int = 3, input_size: int = 32) -> None:
        super().__init__()
        n = _layers_per_block(depth)
        full = default_widths(depth, growth)
        widths = full if widths is None else [int(w) for w in widths]
        if len(widths) != len(full):
            raise ValueError(f"width config has {len(widths)} entries, DenseNet-{depth} needs {len(full)}")
        self.depth, self.growth, self.widths = depth, growth, widths
        self.input_size = (in_channels, input_size, input_size)
        planes = STEM_CHANNELS
        self.conv1 = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        it = iter(widths)
        blocks: list[nn.Module] = []
        for block in range(3):
            for _ in range(n):
                blocks.append(DenseLayer(planes, next(it), growth))
                planes += growth
            if block < 2:
                blocks.append(Transition(planes, next(it), planes))  # compression 1: width unchanged
        self.blocks = nn.Sequential(*blocks)
        self.bn = batch_norm(next(it), planes)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.conv1(x))
        return self.fc(self.pool(self.relu(self.bn(x))).flatten(1))
