"""Layers that compact models are made of (beyond torch.nn), and the helpers that walk any model's layers."""

from __future__ import annotations

import contextlib
import copy
import fnmatch
from collections import OrderedDict
from collections.abc import Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd


def batch_norms(model: nn.Module, affine_only: bool = False) -> dict[str, _BatchNorm]:
    """Every BN layer of ``model`` (any ``_BatchNorm`` subclass, timm's ``BatchNormAct2d`` included) by
    module path; ``affine_only``: only those with a learnable scale γ (the ones Eq. 1 can act on)."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, _BatchNorm) and (m.affine or not affine_only)}


def selected(path: str, patterns: Iterable[str]) -> bool:
    """Whether module ``path`` is selected by module-path ``patterns`` (fnmatch): a pattern selects every
    module whose path it matches and everything inside that module, so ``"head"`` and ``"head.*"`` both
    select the layers of ``head``. The one rule for ``exclude=`` (BNs left out of the penalty) and
    ``fixed=`` (modules whose channels are kept)."""
    parts = path.split(".")
    prefixes = [".".join(parts[:k]) for k in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatchcase(prefix, p) for p in patterns for prefix in prefixes)


def check_patterns(model: nn.Module, patterns: Iterable[str], option: str) -> None:
    """A :class:`ValueError` for a pattern of ``option`` that matches no module path of ``model``: a typo
    would otherwise leave everything as it was, silently."""
    paths = [name for name, _ in model.named_modules() if name]
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ValueError(f"{option}: {pattern!r} is not a module-path pattern (a string such as 'head.*')")
        if not any(fnmatch.fnmatchcase(name, pattern) for name in paths):
            shown = ", ".join(sorted({n.split(".")[0] for n in paths})[:6])
            raise ValueError(f"{option} pattern {pattern!r} matches no module of {type(model).__name__} (its "
                             f"top-level modules: {shown}); a pattern selects the modules whose path it matches "
                             "and everything inside them")


def device_of(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters (else its buffers) live; the CPU for a model with neither."""
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block, its own mode (train or eval) restored after, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class SelectBatchNorm(nn.BatchNorm2d):
    """BatchNorm over a fixed subset of its input's channels: ``BN(x[:, index])``.

    This is the paper's *channel selection* layer (Sec. 3, "Handling cross layer connections and
    pre-activation structure"): a BN that reads a tensor shared with other layers (the residual
    stream of a pre-activation ResNet, the concatenated features of a DenseNet) can only drop the
    channels it passes on, not the shared tensor itself. BN is per-channel, so selecting first is
    exact and the BN holds only the kept channels. The index is a fixed buffer, so inference costs
    one gather and no ``argwhere`` per forward pass (the official port's selection layer computes
    ``argwhere`` on its mask in every forward pass, so its pruned models are not faster).
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


# -- narrowing: one way to make any conv, Linear or BN narrower, keeping its class --

class SelectInput:
    """A forward pre-hook that feeds a BN only the channels ``module.index`` of its input.

    The channel selection of :class:`SelectBatchNorm`, for BN subclasses that must keep their own
    class and forward (timm's ``BatchNormAct2d`` applies its activation inside). A plain class, so
    the module still deep-copies and pickles; ``torch.export``, ONNX and tracing run the hook.
    """

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (args[0].index_select(1, module.index), *args[1:])


def selection_of(bn: nn.Module) -> torch.Tensor | None:
    """The input channels a BN reads (a selection BN), or None when it reads them all in order."""
    if isinstance(bn, SelectBatchNorm) or any(isinstance(h, SelectInput) for h in bn._forward_pre_hooks.values()):
        return bn.index
    return None


_PLAIN_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, SelectBatchNorm)


@torch.no_grad()
def with_selection(bn: nn.Module, index: torch.Tensor, in_channels: int) -> nn.Module:
    """``bn`` reading only channels ``index`` of an input of ``in_channels`` (the paper's channel selection).

    A plain BN becomes a :class:`SelectBatchNorm`; a subclass keeps its class and gets a
    :class:`SelectInput` hook. Selecting every channel in order gives back a BN without selection.
    """
    index = index.to(device=bn.weight.device if bn.weight is not None else None, dtype=torch.long)
    everything = in_channels == len(index) and torch.equal(index.cpu(), torch.arange(in_channels))
    if type(bn) in _PLAIN_BN:
        if everything and not isinstance(bn, SelectBatchNorm):
            return bn
        new = SelectBatchNorm(bn.num_features, in_channels, eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                              track_running_stats=bn.track_running_stats)
        new.load_state_dict({**bn.state_dict(), "index": index}, strict=False)
        new.index = index
        return new.to(index.device).train(bn.training)
    hooked = [k for k, h in bn._forward_pre_hooks.items() if isinstance(h, SelectInput)]
    if everything:
        for k in hooked:
            del bn._forward_pre_hooks[k]
        bn._buffers.pop("index", None)
        return bn
    bn.register_buffer("index", index)
    bn.in_channels = in_channels
    if not hooked:
        bn.register_forward_pre_hook(SelectInput())
    return bn


def _kept_groups(conv: nn.Module, in_keep: torch.Tensor, out_keep: torch.Tensor) -> int:
    """How many groups of a grouped conv ``in_keep`` and ``out_keep`` keep; an error unless they keep the same
    whole groups (a depthwise conv's ``in_keep`` may be given as its ``out_keep``)."""
    per_in, per_out = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    kept = sorted({int(k) // per_out for k in out_keep.tolist()})
    whole_out = [g * per_out + k for g in kept for k in range(per_out)]
    whole_in = [g * per_in + k for g in kept for k in range(per_in)]
    if out_keep.tolist() != whole_out or in_keep.tolist() != whole_in:
        raise ValueError(f"cannot narrow a grouped conv ({conv}) except by whole groups")
    return len(kept)


def _copied(module: nn.Module, memo: dict) -> nn.Module:
    """``copy.deepcopy(module, memo)``, with the empty hook dicts every module holds made anew instead of
    through deepcopy's generic path (copying a model's ~250 layers took 0.15 s that way). A class with
    its own copy or pickling protocol is deep-copied as it asks."""
    cls = type(module)
    if any(name in vars(c) for c in cls.__mro__ if c is not nn.Module and c is not object
           for name in ("__deepcopy__", "__getstate__", "__setstate__", "__reduce_ex__", "__reduce__")):
        return copy.deepcopy(module, memo)
    new = cls.__new__(cls)
    memo[id(module)] = new
    state = {}
    for key, value in module.__dict__.items():
        if key == "_modules":
            state[key] = type(value)((name, memo[id(sub)] if id(sub) in memo else _copied(sub, memo))
                                     if sub is not None else (name, None) for name, sub in value.items())
        elif type(value) in (dict, OrderedDict) and not value:
            state[key] = type(value)()
        else:
            state[key] = copy.deepcopy(value, memo)
    new.__dict__ = state
    return new


@torch.no_grad()
def narrowed(old: nn.Module, in_keep: torch.Tensor, out_keep: torch.Tensor, bias: bool | None = None) -> nn.Module:
    """A copy of a conv, Linear or BN that keeps only the input channels ``in_keep`` and output channels
    ``out_keep`` (positions), with their weights: same class, same forward, narrower tensors.

    A depthwise conv keeps ``out_keep`` (its input channels are its output channels); a BN keeps
    ``out_keep`` per channel (its selection, if any, is set by :func:`with_selection`). ``bias``
    adds a zero bias (True) where the checkpoint being rebuilt has one, or removes it (False).
    """
    # the tensors about to be sliced are not copied first (they can be large)
    new = _copied(old, {id(t): t for name in ("weight", "bias", "running_mean", "running_var")
                        if (t := getattr(old, name, None)) is not None})
    # whole groups counted on the positions as given (on the host: a model sized on the meta device has no values)
    groups = _kept_groups(old, in_keep, out_keep) if isinstance(old, _ConvNd) and old.groups > 1 else None
    device = old.weight.device if getattr(old, "weight", None) is not None else None
    out_keep, in_keep = out_keep.to(device), in_keep.to(device)

    def keep(name: str, dim: int, positions: torch.Tensor) -> None:
        t = getattr(new, name, None)
        if t is None:
            return
        value = t.detach().index_select(dim, positions)
        if isinstance(t, nn.Parameter):
            setattr(new, name, nn.Parameter(value, requires_grad=t.requires_grad))
        else:
            new._buffers[name] = value

    if isinstance(old, _BatchNorm):
        for name in ("weight", "bias", "running_mean", "running_var"):
            keep(name, 0, out_keep)
        new.num_features = len(out_keep)
        return new
    if isinstance(old, nn.Linear):
        keep("weight", 0, out_keep)
        keep("weight", 1, in_keep)
        new.in_features, new.out_features = len(in_keep), len(out_keep)
    elif groups is not None:  # whole groups: filter rows of the kept groups only
        # weight (in, out / groups, *k) of a transposed conv, else (out, in / groups, *k)
        keep("weight", 0, in_keep if isinstance(old, _ConvTransposeNd) else out_keep)
        new.groups = groups
        new.in_channels, new.out_channels = groups * (old.in_channels // old.groups), len(out_keep)
    elif isinstance(old, _ConvTransposeNd):  # weight (in, out, *k)
        keep("weight", 0, in_keep)
        keep("weight", 1, out_keep)
        new.in_channels, new.out_channels = len(in_keep), len(out_keep)
    elif isinstance(old, _ConvNd):
        keep("weight", 0, out_keep)
        keep("weight", 1, in_keep)
        new.in_channels, new.out_channels = len(in_keep), len(out_keep)
    else:
        raise TypeError(f"cannot narrow a {type(old).__name__}: only convs, Linear and BatchNorm layers")
    keep("bias", 0, out_keep)
    if bias is True and new.bias is None:
        new.bias = nn.Parameter(torch.zeros(len(out_keep), device=device, dtype=old.weight.dtype))
    elif bias is False and new.bias is not None:
        new.bias = None
    return new
