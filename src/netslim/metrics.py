"""Counting: parameters and FLOPs (the paper's FLOPs are 2x multiply-adds, as torch counts them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .layers import device_of, evaluating


def count_params(model: nn.Module) -> int:
    """Number of parameters (weights, biases, BN scales and shifts; buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


def input_size_of(model: nn.Module, input_size: Sequence[int] | None = None) -> tuple[int, ...]:
    """The (C, H, W) input size given, or the one the model declares as ``model.input_size``."""
    if input_size is not None:
        return tuple(int(s) for s in input_size)
    size = getattr(model, "input_size", None)
    if size is None:
        raise ValueError(f"{type(model).__name__} declares no input_size; pass input_size=(C, H, W)")
    return tuple(size)


@torch.no_grad()
def count_flops(model: nn.Module, input_size: Sequence[int] | None = None) -> int:
    """FLOPs of one forward pass of one sample in eval mode, by ``torch.utils.flop_counter``.

    Convolutions and matrix products count 2 per multiply-add, as in the paper's tables; BN, ReLU
    and pooling are not counted (they add < 1% on the paper's models).
    """
    size = input_size_of(model, input_size)
    with evaluating(model), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *size, device=device_of(model)))
    return int(counter.get_total_flops())
