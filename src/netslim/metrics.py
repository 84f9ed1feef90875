"""Counting: parameters and FLOPs (the paper's FLOPs are 2x multiply-adds, as torch counts them)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import one_line
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


def checked_input_size(model: nn.Module, size: Sequence[int] | None = None, what: str = "the model") -> tuple[int, ...]:
    """The input size to use ``model`` at, checked by running it on two blank inputs (eval mode).

    ``size``: (C, H, W) (any 1 to 4 numbers), or one side: ``(32,)`` is the model's own channels (3 when it
    declares nothing) at 32x32; None: the size the model declares (``model.input_size``). A model that
    cannot take it is a :class:`ValueError` naming ``what`` (a model name, a checkpoint path).
    """
    declared = getattr(model, "input_size", None)
    if size is not None and len(size) == 1:
        base = declared or (3, size[0], size[0])
        size = (base[0], *([size[0]] * (len(base) - 1)))
    size = tuple(size) if size is not None else (tuple(declared) if declared is not None else None)
    if size is None:
        raise ValueError(f"{what} does not declare its input size: pass --input-size C,H,W")
    try:
        with evaluating(model), torch.no_grad():
            model(torch.zeros(2, *size, device=device_of(model)))
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        built = f" (it was built for {tuple(declared)})" if declared is not None and tuple(declared) != size else ""
        raise ValueError(f"{what} cannot take an input of size {','.join(map(str, size))}{built}: "
                         f"{one_line(e)}") from None
    return size


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
