"""How each torch op moves channel ids: the rules the analysis (graph.py) applies to every op it records.

A tensor's annotation is one channel id per position of its channel dim (``Ann``), in dim 1 unless an op
moved it elsewhere (``_At``: tokens after ``flatten(2).transpose(1, 2)``, channels-last after a permute).
:meth:`OpRules._op` sees every op the model runs outside the layers graph.py hooks, with its result,
and unifies, slices, moves or fixes ids as graph.py's module docstring describes; an op it has no rule
for fixes what it touches.

``OpRules`` is a mixin of graph.py's recorder, not a class of its own: it reads and writes the
recorder's state (``g``: the ChannelGraph; ``ann``, ``axis``, ``tainted``, ``made_by``: per tensor;
``readers``: per layer) and calls its ``_get``, ``_fix``, ``_opaque``, ``_store`` and ``_count_reads``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .shape_only import tensors_in as _tensors

Ann = tuple  # a tensor's annotation: one channel id per channel position

# Ops by their name as torch reports it (``torch.add``, ``Tensor.add``, ``Tensor.add_`` and ``x + y``
# all arrive as "add"; reversed and in-place operator forms are normalised in ``op_name``).
_PRESERVING = {
    "relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu", "mish", "hardswish", "hardsigmoid",
    "hardtanh", "softplus", "softsign", "sigmoid", "tanh", "logsigmoid", "tanhshrink", "threshold",
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout", "max_pool1d",
    "max_pool2d", "max_pool3d", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d", "adaptive_max_pool2d",
    "adaptive_max_pool3d", "lp_pool2d", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear",
    "clone", "contiguous", "float", "half", "double", "bfloat16", "to", "type", "type_as",
    "detach", "cpu", "cuda", "clamp", "clip", "clamp_min", "clamp_max", "abs", "exp", "neg", "sqrt", "rsqrt",
    "pow", "square", "log", "log1p", "expm1", "sin", "cos", "erf", "requires_grad_",
    "expand", "nan_to_num", "sign", "round", "floor", "ceil",
}
_SUMS = {"add", "sub", "rsub", "maximum", "minimum"}
_PRODUCTS = {"mul"}
_QUOTIENTS = {"div", "truediv"}  # the dividend is the first operand
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod"}
_BINARY = _SUMS | _PRODUCTS | _QUOTIENTS | {"rtruediv"}
_NEW_LIKE = {"new_zeros", "new_ones", "new_full", "new_empty", "new_tensor"}
_MOVES = {"permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis", "unsqueeze", "squeeze", "flatten",
          "unflatten", "view", "reshape", "view_as", "reshape_as", "contiguous", "get"}  # ("get": .T, .mT)
_SPLITS = {"split", "chunk", "tensor_split", "split_with_sizes", "unbind"}
METADATA = {"size", "dim", "numel", "len", "ndimension", "nelement", "is_contiguous", "is_floating_point",
             "element_size", "stride", "storage_offset", "data_ptr", "format", "repr", "hash", "reduce_ex",
             "setstate", "deepcopy", "is_complex", "has_names"}
DATA_SHAPED = {"nonzero", "masked_select", "unique", "unique_consecutive", "argwhere", "__getitem__", "nonzero_static"}
VALUE_ESCAPES = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "__complex__"}


def op_name(func) -> str:
    """``torch.add``, ``Tensor.add_``, ``Tensor.__radd__`` and ``Tensor.__iadd__`` -> "add" (``rsub`` and
    ``rtruediv`` keep their ``r``: their tensor is the right-hand operand)."""
    name = getattr(func, "__name__", "") or ""
    if name.startswith("__") and name.endswith("__"):
        name = name[2:-2]
        if name.startswith("i") and name[1:] in ("add", "sub", "mul", "truediv", "div", "floordiv"):
            name = name[1:]
        elif name.startswith("r") and name[1:] in ("add", "mul"):
            name = name[1:]
    elif name.endswith("_") and not name.endswith("__") and name not in ("requires_grad_",):
        name = name[:-1]
    return name


class OpRules:
    """The per-op rules of the channel analysis (see the module docstring)."""

    def _op(self, func, name: str, args, kwargs, result) -> None:
        outs = _tensors(result)
        if not outs or name in METADATA:
            return
        inputs = _tensors((args, kwargs))
        self._count_reads(inputs)
        if any(self.tainted.get(t) for t in inputs):
            for t in outs:
                self.tainted[t] = True
        if name in _NEW_LIKE or all(self.ann.get(t) is None for t in inputs) or all(t.dim() < 2 for t in inputs):
            # A constant (zeros, arange, anchors, a grid, ``x.new_full``: only x's dtype and device are used)
            # has no channel of the model: it gets fixed ids where it meets one (``_get``).
            return
        x_t = args[0] if args and isinstance(args[0], torch.Tensor) else inputs[0]
        if x_t.dim() < 2 and name in _BINARY:  # ``scale * x``: a scalar in front broadcasts like one behind
            x_t = next(t for t in inputs if t.dim() >= 2)
        elif x_t.dim() < 2 and name in ("to", "type_as"):
            return  # a tensor without channels takes another's dtype (anchors ``type_as`` the features)
        if x_t.dim() < 2:
            return self._opaque(inputs, result, f"{name} of a tensor without channels with one that has them")
        x, axis = self._get(x_t), self.axis.get(x_t, 1)
        ann = self._annotate(func, name, args, kwargs, result, x_t, x, inputs, axis)
        if ann is _OPAQUE:
            return self._opaque(inputs, result, f"{name or func} ({tuple(x_t.shape)})")
        for t, a in ([(result, ann)] if isinstance(result, torch.Tensor) else zip(outs, ann, strict=True)):
            if isinstance(a, _At):  # the channels moved to another dimension (or came back to dim 1)
                self._store(t, a.ids, a.axis)
            elif a is not None:  # the channels stay in the dimension they were in
                self._store(t, a, axis)
        producer = self.made_by.get(x_t)
        if name in _MOVES and producer is not None and self.ann.get(result) is x:
            # a layer's output only reshaped or permuted (LeViT's ``bn(linear(x).flatten(0, 1))``): still that
            # layer's output for the BN reading it, and this view is not one more reader
            self.made_by[result] = producer
            self.readers[producer] -= 1

    def _annotate(self, func, name, args, kwargs, result, x_t, x, inputs, axis):
        """The ids of ``result`` (an Ann in ``x_t``'s channel dim ``axis``, an ``_At`` where they moved, a
        tuple of those for several results), None where it has no channels, or _OPAQUE."""
        single = isinstance(result, torch.Tensor)
        if name in _BINARY:
            return self._binary(name, args, result) if single else _OPAQUE
        if name in ("cat", "concat", "concatenate"):
            return self._cat(args, kwargs, result, stacked=False)
        if name == "stack":
            return self._cat(args, kwargs, result, stacked=True)
        if name in _SPLITS:
            return self._split(name, args, kwargs, result, x_t, x, axis)
        if name == "getitem":
            return self._getitem(args[1], result, x_t, x, axis) if single else _OPAQUE
        if name in _REDUCTIONS:  # over other dims than the batch and the channels
            dims = _dims(args, kwargs, x_t.dim())
            if dims is None or dims & {0, axis} or any(t.dim() < 2 for t in _tensors(result)):
                return _OPAQUE
            kept = x if any(t.dim() == x_t.dim() for t in _tensors(result)) else _At(x, axis - len(
                [d for d in dims if d < axis]))
            return kept if single else tuple(kept for _ in result)  # max(dim=...): values and indices
        if not single:
            return _OPAQUE
        if name in ("reshape_as", "view_as", "expand_as"):
            return self._shaped_like(name, args, x_t, x, axis, result)
        if name in _MOVES:
            return self._follow(name, x_t, x, axis, result)
        if name in ("softmax", "log_softmax"):
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            return x if dim is not None and dim % x_t.dim() != axis else _OPAQUE
        if name == "pad":  # (left, right) pairs from the last dim backwards; channels-last maps pad (0, 0) first
            pad = args[1] if len(args) > 1 else kwargs.get("pad", ())
            padded = {x_t.dim() - 1 - k: pad[2 * k:2 * k + 2] for k in range(len(pad) // 2)}
            if any(any(padded.get(d, ())) or d in padded and d == 0 for d in (0, axis)) \
                    or result.shape[axis] != len(x):
                return _OPAQUE
            if (args[2] if len(args) > 2 else kwargs.get("mode", "constant")) == "constant" and any(pad):
                self.g.gated.update(x)  # a removed channel's constant gets a border of zeros: zero it (β too)
            return x
        others = [t for t in inputs if t is not x_t and t.dim() >= 2]
        if name in _PRESERVING and x_t is inputs[0] and (not others or name in ("to", "type_as")):
            if axis == 1:  # pooling and resizing change the other dims only
                return x if _same_channels(result, x) and result.shape[0] == x_t.shape[0] else _OPAQUE
            return x if result.shape == x_t.shape else _OPAQUE
        return _OPAQUE

    def _shaped_like(self, name: str, args, x_t: torch.Tensor, x: Ann, axis: int, result: torch.Tensor):
        """``x.reshape_as(other)``: the result takes other's shape, so its channels are other's (LeViT's
        ``bn(linear(x).flatten(0, 1)).reshape_as(x)``); other is read for its shape only, not its values."""
        if name == "expand_as":
            ann = _At(x, axis + result.dim() - x_t.dim()) if result.shape[axis + result.dim() - x_t.dim()] == len(x) \
                else _OPAQUE
        else:
            ann = self._follow(name, x_t, x, axis, result)
        other = args[1] if len(args) > 1 and isinstance(args[1], torch.Tensor) else None
        if other is None or not isinstance(ann, _At) and ann is not x:
            return _OPAQUE
        ids, at = (ann.ids, ann.axis) if isinstance(ann, _At) else (ann, axis)
        theirs = self._get(other, at)
        if self.axis.get(other, 1) != at or len(theirs) != len(ids):
            return _OPAQUE
        self.g.unify(ids, theirs)
        producer = self.made_by.get(other)
        if producer is not None:
            self.readers[producer] -= 1
        return ann

    def _follow(self, name: str, x_t: torch.Tensor, x: Ann, axis: int, result: torch.Tensor):
        """Where a reshape or a permutation puts the channel dim (tokens: ``flatten(2).transpose(1, 2)``)."""
        if name in ("flatten", "view", "reshape", "view_as", "reshape_as", "unflatten"):
            return self._reshaped(x_t, x, axis, result)
        if name == "contiguous":
            return x
        # a view that moves dims (permute, transpose, movedim, (un)squeeze, .mT): the dim of the same size
        # and stride holds the channels
        width, stride = x_t.shape[axis], x_t.stride(axis)
        found = [d for d in range(result.dim()) if result.shape[d] == width and result.stride(d) == stride]
        if width < 2 or len(found) != 1 or found[0] == 0:  # the batch stays in front
            return x if width == 1 and _same_channels(result, x) else _OPAQUE
        return _At(x, found[0])

    def _reshaped(self, x_t: torch.Tensor, x: Ann, axis: int, result: torch.Tensor):
        """Where a reshape puts the channels, in row-major order: a result dim holding as many elements before
        it as the channel dim (``_At``): the channel dim itself; the channels times the dims after them (a
        flatten into features: feature f reads channel f // HW); the dims before them times the channels
        (each channel k times); or a split of the channels into k equal pieces (k, C / k), unified like
        ``chunk``'s (SK attention's paths). The batch dim never mixes with the channels."""
        shape, width = tuple(x_t.shape), x_t.shape[axis]
        for moved in range(1, result.dim()):
            before, size = math.prod(result.shape[:moved]), result.shape[moved]
            for first in range(1, axis + 1):  # dims first..axis - 1 merged in front of the channels
                repeats = size // width if size % width == 0 else 0
                if before == math.prod(shape[:first]) and repeats == math.prod(shape[first:axis]):
                    return _At(x * repeats, moved)
            for last in range(axis + 1, len(shape) + 1):  # dims axis + 1..last - 1 merged behind them
                if before == math.prod(shape[:axis]) and size == math.prod(shape[axis:last]):
                    per = size // width
                    return _At(tuple(i for i in x for _ in range(per)), moved)
            pieces = result.shape[moved - 1] if moved >= 2 else 0
            if pieces > 1 and size > 1 and pieces * size == width and before == math.prod(shape[:axis]) * pieces:
                split = [x[k * size:(k + 1) * size] for k in range(pieces)]
                for piece in split[1:]:
                    self.g.unify(split[0], piece)
                return _At(split[0], moved)
        return _OPAQUE

    def _binary(self, name: str, args, result: torch.Tensor):
        if result.dim() < 2:
            return _OPAQUE
        # where the operands' channels fall in the result (broadcasting aligns the last dims)
        axes = {self.axis.get(v, 1) + result.dim() - v.dim() for v in args[:2]
                if isinstance(v, torch.Tensor) and self.ann.get(v) is not None and v.numel() > 1
                and v.shape[self.axis.get(v, 1)] == result.shape[self.axis.get(v, 1) + result.dim() - v.dim()]}
        if len(axes) > 1:
            return _OPAQUE
        axis = axes.pop() if axes else 1
        channels = result.shape[axis]
        aligned: list[tuple[int, Ann]] = []  # (argument position, ids) of operands with a channel per result channel
        # An operand broadcast over the channels (numel 1, or size 1 on the channel dim) neither couples nor
        # fixes them. A constant one (a learnable scalar affine, ``scale * x + bias``) keeps a removed channel
        # a constant; one computed from the input (an (N, 1, H, W) attention map) makes it vary.
        varying = False
        for pos, value in enumerate(args[:2]):
            if not isinstance(value, torch.Tensor):
                continue  # Python numbers broadcast over every channel
            at = axis - (result.dim() - value.dim())  # where the result's channel dim falls in this operand
            annotated = self.ann.get(value) is not None
            if value.numel() > 1 and at >= 1 and value.shape[at] == channels \
                    and (self.axis.get(value, 1) == at if annotated else at == 1 and value.dim() == result.dim()):
                aligned.append((pos, self._get(value)))
            elif value.numel() == 1 or at < 0 or value.shape[at] == 1:
                varying = varying or bool(self.tainted.get(value))
            else:  # a per-channel constant such as a (C, 1, 1) layer scale: it cannot be narrowed here
                return _OPAQUE
        if not aligned:
            return _OPAQUE
        g = self.g
        # The result's own ids, unified with the operands' (residual add, SE gate: the same channels).
        # Whether it is zeroed with the BN scales depends on the op: a sum needs every term zeroed, a
        # product one factor (so an SE gate's expansion conv narrows with the features it scales).
        out = g.new_ids(channels)
        for _, ann in aligned:
            g.unify(out, ann)
        for k, i in enumerate(out):
            s = [ann[k] in g.scored for _, ann in aligned]
            if name in _PRODUCTS:
                scored, gated = any(s), not all(s) or varying
            elif name in _QUOTIENTS:  # zero with the dividend; a zeroed divisor is not allowed
                scored = aligned[0][0] == 0 and s[0] and not any(s[1:])
                gated = len(s) > 1 or varying
            elif name == "rtruediv":  # a constant divided by the channel
                scored, gated = False, False
            else:
                scored, gated = all(s) and not varying, False
            if scored:
                g.scored.add(i)
                if gated:
                    g.gated.add(i)
        return _At(out, axis)

    def _cat(self, args, kwargs, result: torch.Tensor, stacked: bool):
        """``cat`` (or ``stack``, a new dim): along the channels each tensor owns a slice of them; along another
        dim they are the same channels, like the terms of a sum."""
        tensors = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        rank = result.dim() - stacked if isinstance(result, torch.Tensor) else 0
        if rank < 2 or any(t.dim() != rank for t in tensors):
            return _OPAQUE
        anns = [self._get(t) for t in tensors]
        axes = {self.axis.get(t, 1) for t in tensors}
        axis = axes.pop()
        if axes:
            return _OPAQUE
        dim %= result.dim()
        if dim == axis and not stacked:
            return _At(tuple(i for a in anns for i in a), axis)  # each producer owns a slice of the channels
        out = self.g.new_ids(len(anns[0]))
        for a in anns:
            self.g.unify(out, a)
        self.g.scored.update(i for k, i in enumerate(out) if all(a[k] in self.g.scored for a in anns))
        return _At(out, axis + (stacked and dim <= axis))

    def _split(self, name, args, kwargs, result, x_t: torch.Tensor, x: Ann, axis: int):
        if not isinstance(result, (tuple, list)) or not all(isinstance(r, torch.Tensor) for r in result):
            return _OPAQUE
        if name == "unbind":
            dim = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % x_t.dim()
            return _OPAQUE if dim in (0, axis) else tuple(_At(x, axis - (dim < axis)) for _ in result)
        dim = (args[2] if len(args) > 2 else kwargs.get("dim", 0)) % x_t.dim()
        if dim != axis:
            return tuple(x if r.dim() >= 2 else None for r in result) if dim != 0 else _OPAQUE
        pieces, start = [], 0
        for r in result:
            pieces.append(x[start:start + r.shape[axis]])
            start += r.shape[axis]
        # The compact model runs the same forward code, so the split must still cut where it did.
        # chunk(k) into equal pieces cuts in the middle of any width: unify the pieces position by
        # position so they stay equal. Sizes written in the code (split, tensor_split at indices,
        # uneven chunks) cannot change: the split tensor keeps its channels.
        sections = args[1] if len(args) > 1 else kwargs.get("chunks", kwargs.get("indices_or_sections"))
        chunked = name == "chunk" or (name == "tensor_split" and isinstance(sections, int))
        if chunked and len({len(p) for p in pieces}) == 1:
            for p in pieces[1:]:
                self.g.unify(pieces[0], p)
        else:
            self._fix(x)
            self.g.notes.append(f"{name} of {len(x)} channels at sizes fixed in the code: its channels are kept")
        return tuple(pieces)

    def _getitem(self, index, result: torch.Tensor, x_t: torch.Tensor, x: Ann, axis: int):
        index = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, torch.Tensor) or i is None for i in index):
            return _OPAQUE
        if Ellipsis in index:  # ``x[..., :k]`` reaches the channels only where they are the last dim
            at = index.index(Ellipsis)
            index = index[:at] + (slice(None),) * (x_t.dim() - len(index) + 1) + index[at + 1:]
        if len(index) > x_t.dim() or index[:1] not in ((), (slice(None),)):
            return _OPAQUE  # the batch is indexed
        picked = index[axis] if len(index) > axis else slice(None)
        if not isinstance(picked, slice) or any(not isinstance(i, (int, slice)) for i in index):
            return _OPAQUE
        if range(*picked.indices(len(x))) != range(len(x)):
            # Slice bounds are constants of the forward code: they only fit the unpruned width.
            self._fix(x)
            self.g.notes.append(f"slice {picked} of {len(x)} channels: its channels are kept")
        moved = axis - sum(isinstance(i, int) for i in index[:axis])  # an int index drops its dim
        return _At(x[picked], moved)


@dataclass(frozen=True)
class _At:
    """A result's channel ids and the dim they are in (see ``_Recorder._annotate``)."""

    ids: Ann
    axis: int


_OPAQUE = object()


def _dims(args, kwargs, rank: int) -> set[int] | None:
    dims = args[1] if len(args) > 1 else kwargs.get("dim", kwargs.get("axis"))
    if dims is None:
        return set(range(rank))
    if isinstance(dims, int):
        return {dims % rank}
    if isinstance(dims, (tuple, list)) and all(isinstance(d, int) for d in dims):
        return {d % rank for d in dims}
    return None


def _same_channels(result: torch.Tensor, x: Ann) -> bool:
    return result.dim() >= 2 and result.shape[1] == len(x)
