"""Running a model for the ops it runs, without the multiply-adds that compute from its input.

Three passes over a model need the ops that run and the shapes they make, not what a convolution
computes from the input: the channel analysis (it refuses control flow on such values, so they never
decide anything there), the probe that narrower widths still run, and the measurement of the
constants removed channels leave behind (a removed channel has γ = 0: its value comes from its β
through channel-wise ops, whatever the convolutions compute). There, a convolution, linear layer or
matrix product with an operand computed from the input is replaced by a *stand-in*: a tensor of the
shape, dtype, strides and device that op gives (found on the meta device, which checks the shapes as
the op does), filled with seeded random values. Random, not zeros: a removed channel multiplied by a
data-dependent gate must still vary where it varies with real data. Inside modules whose code may
branch on values (the user's ``fixed`` patterns), everything is computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils.weak import WeakIdKeyDictionary

HEAVY = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear",
         "bilinear", "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum", "scaled_dot_product_attention"}


def tensors_in(tree) -> list[torch.Tensor]:
    """The tensors in ``tree`` (tuples, lists, dicts, other pytree nodes), in pytree's order; a loop over an
    op's few arguments instead of pytree's generic walk (which cost more than the op on small models)."""
    found: list[torch.Tensor] = []
    _collect(tree, found)
    return found


def _collect(x, found: list) -> None:
    if isinstance(x, torch.Tensor):
        found.append(x)
    elif isinstance(x, (tuple, list)):
        for v in x:
            _collect(v, found)
    elif isinstance(x, dict):
        for v in x.values():
            _collect(v, found)
    elif type(x) in pytree.SUPPORTED_NODES:
        found.extend(t for t in pytree.tree_leaves(x) if isinstance(t, torch.Tensor))


class StandIns:
    """Makes stand-ins for heavy ops, filled from one seeded random buffer per device."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.buffers: dict[torch.device, torch.Tensor] = {}

    def __call__(self, func, args, kwargs):
        """``func(*args, **kwargs)``'s shapes with stand-in values, or None where meta tensors cannot tell."""
        tensors = tensors_in((args, kwargs))
        if "out" in kwargs or not tensors or any(t.is_complex() for t in tensors):
            return None
        device = tensors[0].device
        name = func.__name__
        if name in ("conv1d", "conv2d", "conv3d") and not kwargs and len(args) >= 2:
            return self._filled(*_conv_shape(*args), device)  # the meta kernel costs ~0.3 ms a call
        if name == "linear" and not kwargs and len(args) >= 2 and args[1].dim() == 2:
            x, weight = args[0], args[1]
            if x.shape[-1] != weight.shape[1]:
                raise RuntimeError(f"linear: input has {x.shape[-1]} features, the weight {weight.shape[1]}")
            return self._filled((*x.shape[:-1], weight.shape[0]), None, x.dtype, device)
        try:
            meta = func(*pytree.tree_map_only(torch.Tensor, _meta, args),
                        **pytree.tree_map_only(torch.Tensor, _meta, kwargs))
        except (NotImplementedError, RuntimeError, TypeError, ValueError) as e:
            if "meta" in str(e).lower() or isinstance(e, NotImplementedError):
                return None  # an op without a meta kernel: computed as it is
            raise  # the shapes do not fit: the op itself would fail the same way
        return pytree.tree_map_only(torch.Tensor, lambda m: self._filled(m.shape, m.stride(), m.dtype, device), meta)

    def _filled(self, shape, stride, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        out = torch.empty(shape, dtype=dtype, device=device) if stride is None else \
            torch.empty_strided(shape, stride, dtype=dtype, device=device)
        n = out.numel()
        buffer = self.buffers.get(device)
        if buffer is None or buffer.numel() < n:
            generator = torch.Generator().manual_seed(self.seed)
            buffer = self.buffers[device] = torch.randn(max(n, 2 * (0 if buffer is None else buffer.numel())),
                                                        generator=generator).to(device)
        return out.copy_(buffer[:n].view(out.shape))


def _meta(t: torch.Tensor) -> torch.Tensor:
    return t.to("meta")


def _conv_shape(x: torch.Tensor, weight: torch.Tensor, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """(shape, strides, dtype) of ``conv{n}d``'s output, checked as the op checks its operands."""
    n = weight.dim() - 2
    if x.dim() not in (n + 1, n + 2) or x.shape[-n - 1] != weight.shape[1] * groups:
        raise RuntimeError(f"conv{n}d: input of shape {tuple(x.shape)} for a weight of shape {tuple(weight.shape)} "
                           f"and groups={groups}")
    stride, dilation = _per_dim(stride, n), _per_dim(dilation, n)
    kernel = weight.shape[2:]
    if padding == "same":
        if any(s != 1 for s in stride):
            raise RuntimeError("padding='same' is not supported for strided convolutions")
        spatial = list(x.shape[-n:])
    else:
        padding = (0,) * n if padding == "valid" else _per_dim(padding, n)
        spatial = [(size + 2 * p - d * (k - 1) - 1) // s + 1
                   for size, p, d, k, s in zip(x.shape[-n:], padding, dilation, kernel, stride, strict=True)]
    if any(size <= 0 for size in spatial):
        raise RuntimeError(f"conv{n}d: input of shape {tuple(x.shape)} is smaller than the kernel {tuple(kernel)}")
    shape = (*x.shape[:-n - 1], weight.shape[0], *spatial)
    stride_out = None
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        _, c, h, w = shape
        stride_out = (h * w * c, 1, w * c, c)
    return shape, stride_out, x.dtype


def _per_dim(value, n: int) -> tuple[int, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,) * n


class ShapeOnly(TorchFunctionMode):
    """Runs a model with stand-ins for the heavy ops on tensors computed from ``inputs``.

    ``exact``: modules computed as they are (and everything they call).
    """

    def __init__(self, inputs: Iterable[torch.Tensor], exact: Iterable[nn.Module] = ()) -> None:
        super().__init__()
        self.computed = WeakIdKeyDictionary()  # tensor -> True when computed from the inputs
        for t in inputs:
            self.computed[t] = True
        self.exact = list(exact)
        self.inside_exact = 0
        self.stand_ins = StandIns()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        tensors = tensors_in((args, kwargs))
        from_input = any(self.computed.get(t) for t in tensors)
        result = None
        if from_input and not self.inside_exact and getattr(func, "__name__", "") in HEAVY:
            result = self.stand_ins(func, args, kwargs)
        if result is None:
            result = func(*args, **kwargs)
        if from_input:
            for t in tensors_in(result):
                self.computed[t] = True
        return result

    @contextlib.contextmanager
    def running(self) -> Iterator[ShapeOnly]:
        """This mode on, with everything inside the ``exact`` modules computed."""
        hooks = [h for m in self.exact for h in (m.register_forward_pre_hook(lambda *a: self._enter()),
                                                  m.register_forward_hook(lambda *a: self._leave()))]
        try:
            with self:
                yield self
        finally:
            for h in hooks:
                h.remove()

    def _enter(self) -> None:
        self.inside_exact += 1

    def _leave(self) -> None:
        self.inside_exact -= 1
