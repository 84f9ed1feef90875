"""Channel dependency analysis of any model, by following it as it really runs.

An analysis pass, not a transform: the model runs once on an example input (in eval mode, without
gradients) under a :class:`torch.overrides.TorchFunctionMode` that sees every torch function,
tensor method and operator, with hooks on the layers that own channels (every conv, Linear and
``_BatchNorm`` subclass: timm's ``BatchNormAct2d``, ``SyncBatchNorm``, Ultralytics' BNs). Python
control flow, loops over lists of tensors, shape arithmetic and tuple/list/dict outputs therefore
just work: what the analysis sees is what executed. Control flow that depends on the *values* of
the data (``if x.sum() > 0``) is refused, because another input could take a path it never saw.

Every tensor is annotated with one *channel id* per position of its channel dimension (dim 1).
Convolutions and Linear layers create new ids for their outputs; channel-preserving ops pass ids
on; ``add``/``mul`` unify the ids of their operands (a residual group, an SE gate) with their
result; ``cat`` concatenates them and ``chunk`` slices them (equal chunks are unified: they must
stay equal); ``flatten`` repeats each id once per spatial position. A grouped convolution unifies
each group's input and output ids: a group is removed whole (every group must read as many
channels), while the BN after it selects single output channels; a depthwise one passes its ids
on. Ids that end up unified are one channel: kept or removed together.

A BN owns the channels of the conv/linear it directly follows when it is that layer's only reader:
pruning them narrows that layer. Any other BN (one reading the residual stream or a concatenation,
the paper's BN-before-conv case, Sec. 3) becomes a *selection* BN: it drops the channels it passes
on without narrowing the tensor it reads.

A channel may be pruned only if every id of it that a layer reads is *scored* (so zeroing the BN
scales zeroes what that layer reads exactly): a BN output, a sum of scored ids, or a product with a
scored factor (an SE gate's own channel need not be scored: it only multiplies a zeroed one). And
none of its ids may be fixed: model inputs and outputs, parameters and constants, the inputs and
outputs of ops we cannot narrow (attention's ``view`` of channels into heads,
matrix products, reductions over channels, unknown ops), and tensors split or sliced along
channels at sizes written in the forward code. Unknown ops are never assumed to preserve
channels; they are fixed and named in ``ChannelGraph.notes``.
"""

from __future__ import annotations

import fnmatch
import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from .layers import selection_of
from .metrics import input_size_of
from .shape_only import HEAVY, StandIns, tensors_in


class GraphError(ValueError):
    """The model cannot be analysed (data-dependent control flow, a failing forward, nothing to prune)."""


Ann = tuple  # a tensor's annotation: one channel id per channel position

# Ops by their name as torch reports it (``torch.add``, ``Tensor.add``, ``Tensor.add_`` and ``x + y``
# all arrive as "add"; reversed and in-place operator forms are normalised in ``_op_name``).
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
_METADATA = {"size", "dim", "numel", "len", "ndimension", "nelement", "is_contiguous", "is_floating_point",
             "element_size", "stride", "storage_offset", "data_ptr", "format", "repr", "hash", "reduce_ex",
             "setstate", "deepcopy", "is_complex", "has_names"}
_DATA_SHAPED = {"nonzero", "masked_select", "unique", "unique_consecutive", "argwhere", "__getitem__", "nonzero_static"}
_VALUE_ESCAPES = {"__bool__", "__int__", "__float__", "__index__", "item", "tolist", "__complex__"}


@dataclass
class LayerUse:
    """One module's role in the graph: which channel ids it reads and writes."""

    path: str
    kind: str  # "conv", "conv_t", "linear", "depthwise", "grouped", "bn" (owning), "select_bn"
    in_ids: Ann
    out_ids: Ann
    source: tuple[int, ...] = ()  # select_bn: the input position each output channel reads
    axis: int = 1  # the input's channel dimension (a Linear over tokens: the last one)


@dataclass
class ChannelGraph:
    """The result of :func:`trace_channels`: layers, channel ids and their unification."""

    layers: dict[str, LayerUse] = field(default_factory=dict)
    parent: list[int] = field(default_factory=list)
    fixed: set[int] = field(default_factory=set)
    scored: set[int] = field(default_factory=set)  # ids zeroed with their BN scales (see the module docstring)
    gated: set[int] = field(default_factory=set)  # scored ids constant only if β is zeroed (an unscored factor, a pad)
    reads: set[int] = field(default_factory=set)  # ids some layer reads
    notes: list[str] = field(default_factory=list)  # ops that forced channels to stay (fixed)
    input_shape: tuple[int, ...] = ()  # of the example input the analysis ran on
    fixed_modules: tuple[str, ...] = ()  # module-path patterns kept as they are (their code may branch on values)
    unused: tuple[str, ...] = ()  # conv/Linear/BN layers the forward never ran on the example input
    calls: dict[str, int] = field(default_factory=dict)  # layer path -> times it ran
    producers: dict[str, str] = field(default_factory=dict)  # owning BN path -> the layer it follows
    width_reads: set[int] = field(default_factory=set)  # ids of tensors whose shape Python code read
    flat: bool = field(default=False, repr=False, compare=False)  # every id points at its root (see flatten)
    _prunable: frozenset[int] | None = field(default=None, repr=False, compare=False)

    # -- union-find over channel ids --
    def new_ids(self, n: int, fixed: bool = False) -> Ann:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        ids = tuple(range(start, start + n))
        if fixed:
            self.fixed.update(ids)
        return ids

    def root(self, i: int) -> int:
        parent = self.parent
        r = parent[i]
        if parent[r] == r:  # the common case once the analysis has flattened the trees
            return r
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def unify(self, a: Ann, b: Ann) -> None:
        parent, root = self.parent, self.root
        for i, j in zip(a, b, strict=True):
            ri, rj = parent[i], parent[j]
            if parent[ri] != ri:
                ri = root(i)
            if parent[rj] != rj:
                rj = root(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
                self.flat, self._prunable = False, None

    def flatten(self) -> None:
        """Point every id at its root: then :meth:`roots` is one lookup per id (planning and surgery ask
        for millions on a large model)."""
        parent = self.parent
        for i in range(len(parent)):
            r = parent[i]
            if parent[r] != r:
                parent[i] = self.root(i)
        self.flat = True

    def roots(self, ids: Sequence[int]) -> list[int]:
        """The root of each of ``ids``."""
        if not self.flat:
            self.flatten()
        parent = self.parent
        return [parent[i] for i in ids]

    # -- queries used by planning and surgery --
    @property
    def bns(self) -> dict[str, LayerUse]:
        """The BN layers (owning and selection), in graph order."""
        return {p: u for p, u in self.layers.items() if u.kind in ("bn", "select_bn")}

    def prunable_roots(self) -> frozenset[int]:
        """Channels (root ids) that may be removed: a BN's, every id a layer reads scored, none fixed."""
        if self._prunable is None or not self.flat:
            blocked = set(self.roots(self.fixed | (self.reads - self.scored)))
            self._prunable = frozenset(r for u in self.bns.values() for r in self.roots(u.out_ids)) - blocked
        return self._prunable

    def close_selection(self, pruned: set[int]) -> set[int]:
        """Keep a channel for every selection BN that would otherwise read nothing at all.

        A kept selection-BN channel whose input channel is removed does not keep that input alive: in
        the masked model the removed channel is a constant, so the BN's output there is a constant too,
        and the compact BN produces it with γ = 0 and β = that constant (surgery measures it). Only a
        selection BN left with kept outputs and no kept input at all needs one input channel back.
        """
        pruned = set(pruned)
        for use in self.bns.values():
            if use.kind != "select_bn":
                continue
            inputs = self.roots(use.in_ids)
            kept_out = [k for k, r in enumerate(self.roots(use.out_ids)) if r not in pruned]
            if kept_out and all(r in pruned for r in inputs):
                pruned.discard(inputs[use.source[kept_out[0]]])
        return pruned


def trace_channels(model: nn.Module, example_input: torch.Tensor | None = None,
                   fixed: Sequence[str] = ()) -> ChannelGraph:
    """Analyse ``model``: its prunable BN channels and how they are coupled.

    ``fixed``: module-path patterns (fnmatch, e.g. ``"head.*"``) whose channels are never changed.
    ``example_input`` defaults to zeros of ``model.input_size`` (batch 2); a tuple or dict of inputs
    is passed on as positional arguments or keywords.
    """
    if example_input is None:
        param = next(model.parameters(), None)
        example_input = torch.zeros(2, *input_size_of(model), device=param.device if param is not None else "cpu")
    key = _structure(model, example_input, fixed)
    cached = _ANALYSED.get(model)
    if cached is not None and cached[0] == key:  # plan_pruning then apply_plan: analyse once
        return cached[1]
    graph = _analyse(model, example_input, fixed)
    _ANALYSED[model] = (key, graph)
    return graph


_ANALYSED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def clear_cache() -> None:
    """Forget every analysis: the next :func:`trace_channels` call runs the model again.

    The cache is keyed by the module tree, the layers' shapes and the input's shape; a change of
    behaviour those do not show (a flag read in ``forward``) between two calls needs this.
    """
    _ANALYSED.clear()


def _structure(model: nn.Module, example_input, fixed: Sequence[str]) -> tuple:
    """What the analysis depends on: the module tree, the layers' shapes and selections, the input's shape."""
    layers = tuple((path, id(m), type(m), tuple(m.weight.shape) if isinstance(getattr(m, "weight", None),
                                                                              torch.Tensor) else None,
                    tuple(index.tolist()) if (index := selection_of(m) if isinstance(m, _BatchNorm) else None)
                    is not None else None)
                   for path, m in model.named_modules())
    inputs = tuple((tuple(t.shape), t.dtype, t.device) for t in _tensors(example_input))
    return layers, inputs, tuple(fixed)


def _analyse(model: nn.Module, example_input, fixed: Sequence[str]) -> ChannelGraph:
    from .surgery import width_sensitive_module  # surgery builds on this module

    fixed, kept = list(fixed), []
    was_training = model.training
    model.eval()
    try:
        while True:
            graph = _Recorder(model, fixed).run(example_input)
            prunable = graph.prunable_roots() if graph.bns else set()
            sees_widths = any(graph.root(i) in prunable for i in graph.width_reads)
            culprit = width_sensitive_module(model, graph, example_input) if sees_widths else None
            if culprit is None:
                break
            if culprit == "" or culprit in fixed:
                raise GraphError(f"{type(model).__name__} fails once its widths change, in its own forward code "
                                 f"({culprit or 'the top-level forward'}): it computes sizes from channel counts "
                                 "that the analysis cannot see; list that module in fixed=[...]")
            fixed.append(culprit)
            kept.append(culprit)
    finally:
        model.train(was_training)
    graph.notes.extend(f"module '{p}' reads channel counts in its Python code (a probe with narrower widths "
                       "failed there): its channels are kept" for p in kept)
    _note_unused(model, graph)
    if not graph.bns:
        raise GraphError(f"{type(model).__name__} has no BatchNorm layer with a learnable scale: there are no "
                         "scaling factors to prune by (if BN was fused into the convs, prune the unfused model)")
    return graph


def _note_unused(model: nn.Module, graph: ChannelGraph) -> None:
    """Name the layers the forward never ran (smp's PSPNet builds a whole ResNet and runs three of its
    stages): there is nothing to prune there, and they stay in the model as they are."""
    inside = [p for p in graph.calls] + list(graph.fixed_modules)
    unused = [(path, m) for path, m in model.named_modules() if isinstance(m, (_ConvNd, nn.Linear, _BatchNorm))
              and not any(path == p or path.startswith(p + ".") or fnmatch.fnmatch(path, p) for p in inside)]
    if not unused:
        return
    graph.unused = tuple(path for path, _ in unused)
    held = sum(t.numel() for _, m in unused for t in m.parameters(recurse=False))
    total = sum(t.numel() for t in model.parameters())
    graph.notes.append(f"{len(unused)} layers never ran on the example input (e.g. '{unused[0][0]}'), holding "
                       f"{held} of the model's {total} parameters ({100 * held / max(total, 1):.0f}%): they are kept "
                       "as they are")


def _op_name(func) -> str:
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


_tensors = tensors_in


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in patterns)


class _Recorder(TorchFunctionMode):
    """Runs the model and annotates each tensor with channel ids (see the module docstring)."""

    def __init__(self, model: nn.Module, fixed: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.patterns = list(fixed)
        self.g = ChannelGraph()
        self.ann = WeakIdKeyDictionary()  # tensor -> Ann
        self.axis = WeakIdKeyDictionary()  # tensor -> its channel dimension, where that is not dim 1
        self.made_by = WeakIdKeyDictionary()  # tensor -> path of the layer whose output it is
        self.tainted = WeakIdKeyDictionary()  # tensor -> True when computed from the input data
        self.readers: dict[str, int] = {}  # layer path -> how many ops read its output
        self.bn_calls: list[tuple[str, str | None]] = []  # (BN path, path of the layer whose output it read)
        self.depth = 0  # > 0 while inside a layer: its own ops are not looked at
        self.busy = False  # our own bookkeeping runs torch ops too
        self.stack: list[tuple] = []
        self.groups: list[tuple[Ann, Ann]] = []  # (input ids, output ids) of each group of a grouped conv
        self.where: list[str] = []  # module paths being run, innermost last
        self.stand_ins = StandIns()  # heavy ops on tensors computed from the input: shapes only (shape_only.py)
        self.inside_fixed = 0  # > 0 inside a module of ``fixed``: its code may branch on values, computed as is

    # -- running --
    def run(self, example_input) -> ChannelGraph:
        hooks = []
        for path, m in self.model.named_modules():  # where we are, to name the module in an error
            hooks.append(m.register_forward_pre_hook(lambda mod, args, p=path: self._push(p), prepend=True))
            hooks.append(m.register_forward_hook(lambda mod, args, out: self._pop()))
        layers = {m: path for path, m in self.model.named_modules() if path and self._is_layer(m, path)}
        for m, path in layers.items():
            hooks.append(m.register_forward_pre_hook(
                lambda mod, args, kwargs, p=path: self._enter(p, mod, args, kwargs), with_kwargs=True, prepend=True))
            hooks.append(m.register_forward_hook(
                lambda mod, args, kwargs, out, p=path: self._leave(p, mod, out), with_kwargs=True))
        inputs = example_input if isinstance(example_input, (tuple, list, dict)) else (example_input,)
        for t in _tensors(inputs):
            self.ann[t] = self._fresh(t, fixed=True)
            self.tainted[t] = True
        self.g.input_shape = tuple(_tensors(inputs)[0].shape)
        self.g.fixed_modules = tuple(self.patterns)
        try:
            with torch.no_grad(), self:
                out = self.model(**inputs) if isinstance(inputs, dict) else self.model(*inputs)
        except GraphError:
            raise
        except Exception as e:
            raise GraphError(f"{self._where()} failed on the example input of shape {self.g.input_shape}: "
                             f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} (pass example_input= "
                             "or --input-size that the model accepts)") from None
        finally:
            for h in hooks:
                h.remove()
        for t in _tensors(out):  # model outputs (classifier, detection heads) keep their width
            self._fix(self._get(t))
        self._settle_batch_norms()
        self._settle_groups()
        self.g.flatten()
        return self.g

    def _push(self, path: str) -> None:
        self.where.append(path)

    def _pop(self) -> None:
        self.where.pop()

    def _where(self) -> str:
        inner = self.where[-1] if self.where else ""
        return f"module '{inner}' of {type(self.model).__name__}" if inner else type(self.model).__name__

    def _is_layer(self, m: nn.Module, path: str) -> bool:
        return isinstance(m, (_ConvNd, nn.Linear, _BatchNorm)) or _matches(path, self.patterns)

    # -- annotations --
    def _fresh(self, t: torch.Tensor, fixed: bool) -> Ann | None:
        return self.g.new_ids(t.shape[1], fixed) if t.dim() >= 2 else None

    def _get(self, t: torch.Tensor, axis: int = 1) -> Ann | None:
        """A tensor's ids; a tensor first seen here (a parameter, a constant, the result of an op that fixed
        its operands) gets fixed ids, in dim ``axis`` (where the layer reading it has its channels)."""
        ann = self.ann.get(t)
        if ann is None and t.dim() >= 2:
            self._store(t, self.g.new_ids(t.shape[axis], fixed=True), axis)
            ann = self.ann[t]
        return ann

    def _fix(self, ann) -> None:
        if ann:
            self.g.fixed.update(ann)

    def _opaque(self, inputs: list[torch.Tensor], result, why: str) -> None:
        """Keep everything this op touches: inputs fixed; outputs get fixed ids where they are read (``_get``:
        which dim holds their channels is known only there)."""
        for t in inputs:
            self._fix(self._get(t))
        if why:
            self.g.notes.append(f"{why}: its channels are kept")
        for t in _tensors(result):
            if not any(t is i for i in inputs) and t in self.ann:
                del self.ann[t]

    # -- layers (module hooks) --
    def _enter(self, path: str, mod: nn.Module, args, kwargs) -> None:
        self.inside_fixed += _matches(path, self.patterns)
        if self.depth == 0:
            self.stack.append((path, _tensors((args, kwargs))))
        self.depth += 1

    def _leave(self, path: str, mod: nn.Module, out) -> None:
        self.inside_fixed -= _matches(path, self.patterns)
        self.depth -= 1
        if self.depth:
            return
        _, inputs = self.stack.pop()
        self.busy = True
        try:
            self._layer(path, mod, inputs, out)
        finally:
            self.busy = False

    def _layer(self, path: str, mod: nn.Module, inputs: list[torch.Tensor], out) -> None:
        g = self.g
        g.calls[path] = g.calls.get(path, 0) + 1
        self._count_reads(inputs)
        for t in _tensors(out):
            if any(self.tainted.get(i) for i in inputs):
                self.tainted[t] = True
        x_t = inputs[0] if inputs else None
        if _matches(path, self.patterns):
            return self._opaque(inputs, out, "")
        if x_t is None or not isinstance(out, torch.Tensor) or x_t.dim() < 2 or out.dim() < 2:
            return self._opaque(inputs, out, f"{type(mod).__name__} at '{path}' without a channel input or output")
        out_axis = out.dim() - 1 if isinstance(mod, nn.Linear) else 1
        x = self._get(x_t, x_t.dim() - 1 if isinstance(mod, nn.Linear) else 1)
        axis = self.axis.get(x_t, 1)
        if axis != (x_t.dim() - 1 if isinstance(mod, nn.Linear) else 1):  # BN, conv: dim 1; Linear: the last
            return self._opaque(inputs, out, f"'{path}' ({type(mod).__name__}) reading channels in dim {axis} "
                                             f"of a {x_t.dim()}-d tensor")
        if path in g.layers:  # a layer called twice: its channels must agree across calls
            use = g.layers[path]
            if len(x) == len(use.in_ids) and len(use.out_ids) == out.shape[out_axis]:
                g.unify(x, use.in_ids)
                g.reads.update(x)
                self._set_output(out, use.out_ids, path, out_axis)
                return None
            return self._opaque(inputs, out, f"'{path}' called again with another width")
        why = _unnarrowable(mod)
        if why:
            return self._opaque(inputs, out, f"'{path}' ({type(mod).__name__}) {why}")
        g.reads.update(x)
        if isinstance(mod, _BatchNorm):
            return self._batch_norm(path, mod, x, x_t, out)
        if isinstance(mod, _ConvTransposeNd) and mod.groups == 1:
            kind, ids = "conv_t", g.new_ids(mod.out_channels)
        elif isinstance(mod, _ConvNd) and mod.groups == 1:
            kind, ids = "conv", g.new_ids(mod.out_channels)
        elif isinstance(mod, _ConvNd) and not isinstance(mod, _ConvTransposeNd) \
                and mod.groups == mod.in_channels == mod.out_channels:
            kind, ids = "depthwise", x  # channel i -> channel i
        elif isinstance(mod, _ConvNd) and len(x) == mod.in_channels:
            kind, ids = "grouped", g.new_ids(mod.out_channels)
            self._couple_groups(mod.groups, x, ids)
        else:  # a Linear over the features of a vector, or of each token (its channels in the last dim)
            kind, ids = "linear", g.new_ids(mod.out_features)
        if len(ids) != out.shape[out_axis]:
            return self._opaque(inputs, out, f"'{path}' (output width differs from the layer's)")
        g.layers[path] = LayerUse(path, kind, x, ids, axis=axis)
        self._set_output(out, ids, path, out_axis)
        return None

    def _couple_groups(self, groups: int, x: Ann, out: Ann) -> None:
        """A group of a grouped conv reads its own input channels only and cannot lose some of them (every
        group reads as many): its inputs and outputs are one channel, kept or removed whole. Its outputs are
        a constant (the conv's bias) once its inputs are zeroed: scored if every input is."""
        per_in, per_out = len(x) // groups, len(out) // groups
        for k in range(groups):
            inputs, outputs = x[k * per_in:(k + 1) * per_in], out[k * per_out:(k + 1) * per_out]
            self.g.unify(inputs[:1] * (per_in + per_out), inputs + outputs)
            self.groups.append((inputs, outputs))

    def _settle_groups(self) -> None:
        """Score the outputs of each group whose inputs are all scored (as the analysis ended: an owning BN
        scores its producer's outputs only then)."""
        g = self.g
        for inputs, outputs in self.groups:
            if all(i in g.scored for i in inputs):
                g.scored.update(outputs)

    def _batch_norm(self, path: str, mod: _BatchNorm, x: Ann, x_t: torch.Tensor, out: torch.Tensor) -> None:
        g = self.g
        if mod.weight is None:  # frozen or fused: no scale to rank by; it only passes its channels on
            g.notes.append(f"'{path}' ({type(mod).__name__}) has no learnable scale (affine=False): nothing to "
                           "prune by there")
            self._set_output(out, x, None)
            return
        index = selection_of(mod)
        source = tuple(index.tolist()) if index is not None else tuple(range(len(x)))
        ids = g.new_ids(mod.num_features)
        if out.shape[1] != len(ids) or any(not 0 <= s < len(x) for s in source):
            return self._opaque([x_t], out, f"'{path}' (output width differs from its num_features)")
        g.layers[path] = LayerUse(path, "select_bn", x, ids, source)
        g.scored.update(ids)
        self.bn_calls.append((path, self.made_by.get(x_t) if index is None else None))
        self._set_output(out, ids, path)
        return None

    def _settle_batch_norms(self) -> None:
        """A BN becomes owning once the run shows it is the only reader of a layer called once."""
        g = self.g
        for path, producer in self.bn_calls:
            use = g.layers.get(path)
            if use is None or producer is None or g.calls.get(path) != 1 or g.calls.get(producer) != 1:
                continue
            if self.readers.get(producer) != 1 or g.layers.get(producer) is None:
                continue
            if g.layers[producer].kind not in ("conv", "conv_t", "linear", "depthwise"):
                continue
            g.unify(use.in_ids, use.out_ids)
            g.scored.update(use.in_ids)
            g.layers[path] = LayerUse(path, "bn", use.in_ids, use.out_ids)
            g.producers[path] = producer

    def _set_output(self, out: torch.Tensor, ids: Ann, path: str | None, axis: int = 1) -> None:
        self._store(out, ids, axis)
        if path is not None:
            self.made_by[out] = path

    def _store(self, t: torch.Tensor, ids: Ann, axis: int) -> None:
        self.ann[t] = ids
        if axis != 1:
            self.axis[t] = axis
        elif t in self.axis:
            del self.axis[t]

    def _count_reads(self, inputs: list[torch.Tensor]) -> None:
        for t in inputs:
            producer = self.made_by.get(t)
            if producer is not None:
                self.readers[producer] = self.readers.get(producer, 0) + 1

    # -- every other op (the function mode) --
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        raw = getattr(func, "__name__", "")
        if raw in _VALUE_ESCAPES and not self.busy and not self.depth \
                and any(self.tainted.get(t) for t in _tensors(args)):
            raise GraphError(f"{self._where()} has control flow that depends on the values of its "
                             f"input ({raw} of a tensor computed from it): the analysis follows one example "
                             "input only. Move that code into a submodule listed in fixed=[...] (it is then "
                             "kept as it is)")
        if raw in _DATA_SHAPED and not self.busy and not self.depth and self._data_shaped(raw, args):
            raise GraphError(f"{self._where()} makes a tensor whose shape depends on the values of its input "
                             f"({raw}): a compact model could not be proven exact for other inputs. Move that code "
                             "into a submodule listed in fixed=[...] (it is then kept as it is)")
        if self.busy:
            return func(*args, **kwargs)
        from_input = any(self.tainted.get(t) for t in _tensors((args, kwargs)))
        result = None
        if from_input and raw in HEAVY and not self.inside_fixed:
            result = self.stand_ins(func, args, kwargs)  # nothing here reads what it computes from the input
        if result is None:
            result = func(*args, **kwargs)
        if self.depth:
            if from_input:  # inside a layer (a conv that pads first): its own heavy ops get stand-ins too
                for t in _tensors(result):
                    self.tainted[t] = True
            return result
        if raw in ("__get__", "size", "numel") and (isinstance(result, torch.Size) or raw == "numel"):
            # Python code sees a width: a later probe checks that narrower widths still run (see _analyse)
            self.g.width_reads.update(i for t in _tensors(args[:1]) for i in (self.ann.get(t) or ()))
            return result
        self.busy = True
        try:
            self._op(func, _op_name(func), args, kwargs, result)
        finally:
            self.busy = False
        return result

    def _data_shaped(self, raw: str, args) -> bool:
        tensors = _tensors(args)
        if raw == "__getitem__":  # a boolean mask computed from the data
            tensors = [t for t in _tensors(args[1:]) if t.dtype == torch.bool]
        return any(self.tainted.get(t) for t in tensors)

    def _op(self, func, name: str, args, kwargs, result) -> None:
        outs = _tensors(result)
        if not outs or name in _METADATA:
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


def _unnarrowable(mod: nn.Module) -> str:
    """Why a conv/Linear/BN subclass cannot be narrowed by slicing its weights ('' when it can)."""
    own = {n for n, _ in mod.named_parameters()}
    if not own <= {"weight", "bias"}:
        return f"holds other parameters ({', '.join(sorted(own - {'weight', 'bias'}))[:60]})"
    buffers = {n for n, _ in mod.named_buffers()}
    if not buffers <= {"running_mean", "running_var", "num_batches_tracked", "index"}:
        return f"holds other buffers ({', '.join(sorted(buffers))[:60]})"
    return ""
