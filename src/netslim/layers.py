"""Layers that compact models are made of (beyond torch.nn)."""

from __future__ import annotations

import torch
from torch import nn


class SelectBatchNorm(nn.BatchNorm2d):
    """BatchNorm over a fixed subset of its input's channels: ``BN(x[:, index])``.

    This is the paper's *channel selection* layer (Sec. 3, "Handling cross layer connections and
    pre-activation structure"): a BN that reads a tensor shared with other layers (the residual
    stream of a pre-activation ResNet, the concatenated features of a DenseNet) can only drop the
    channels it passes on, not the shared tensor itself. BN is per-channel, so selecting first is
    exact and the BN holds only the kept channels. The index is a fixed buffer, so inference costs
    one gather and no ``argwhere`` per forward pass (the official port's trap, PEERS #7).
    Works on any input of rank >= 2 with channels in dim 1.
    """

    def __init__(self, num_features: int, in_channels: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.in_channels = in_channels
        self.register_buffer("index", torch.arange(num_features, dtype=torch.long))

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input with a channel dimension, got shape {tuple(input.shape)}")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(input.index_select(1, self.index))

    def extra_repr(self) -> str:
        return f"{self.in_channels} -> " + super().extra_repr()


def batch_norm(num_features: int, in_channels: int | None = None, dims: int = 2) -> nn.Module:
    """A BN of ``num_features`` channels reading ``in_channels`` (a selection BN when they differ)."""
    if in_channels is not None and in_channels != num_features:
        return SelectBatchNorm(num_features, in_channels)
    return nn.BatchNorm1d(num_features) if dims == 1 else nn.BatchNorm2d(num_features)
