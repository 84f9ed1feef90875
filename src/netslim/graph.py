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
    "expand", "expand_as", "nan_to_num", "sign", "round", "floor", "ceil",
}
_SUMS = {"add", "sub", "rsub", "maximum", "minimum"}
_PRODUCTS = {"mul"}
_QUOTIENTS = {"div", "truediv"}  # the dividend is the first operand
_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "norm", "logsumexp", "prod"}
_BINARY = _SUMS | _PRODUCTS | _QUOTIENTS | {"rtruediv"}
_NEW_LIKE = {"new_zeros", "new_ones", "new_full", "new_empty", "new_tensor"}
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
    if not graph.bns:
        raise GraphError(f"{type(model).__name__} has no BatchNorm layer with a learnable scale: there are no "
                         "scaling factors to prune by (if BN was fused into the convs, prune the unfused model)")
    return graph


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

    def _get(self, t: torch.Tensor) -> Ann | None:
        """A tensor's ids; a tensor first seen here (a parameter, a buffer, a constant) is fixed."""
        ann = self.ann.get(t)
        if ann is None and t.dim() >= 2:
            ann = self.ann[t] = self._fresh(t, fixed=True)
        return ann

    def _fix(self, ann) -> None:
        if ann:
            self.g.fixed.update(ann)

    def _opaque(self, inputs: list[torch.Tensor], result, why: str) -> None:
        """Keep everything this op touches: inputs fixed, outputs fresh fixed ids."""
        for t in inputs:
            self._fix(self._get(t))
        if why:
            self.g.notes.append(f"{why}: its channels are kept")
        for t in _tensors(result):
            self.ann[t] = self._fresh(t, fixed=True)

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
        x = self._get(x_t)
        if path in g.layers:  # a layer called twice: its channels must agree across calls
            use = g.layers[path]
            if len(x) == len(use.in_ids) and len(use.out_ids) == out.shape[1]:
                g.unify(x, use.in_ids)
                g.reads.update(x)
                self._set_output(out, use.out_ids, path)
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
        elif out.dim() == 2:
            kind, ids = "linear", g.new_ids(mod.out_features)
        else:
            return self._opaque(inputs, out, f"'{path}' (Linear over the last dim of a {out.dim()}-d tensor)")
        if len(ids) != out.shape[1]:
            return self._opaque(inputs, out, f"'{path}' (output width differs from the layer's)")
        g.layers[path] = LayerUse(path, kind, x, ids)
        self._set_output(out, ids, path)
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

    def _set_output(self, out: torch.Tensor, ids: Ann, path: str | None) -> None:
        self.ann[out] = ids
        if path is not None:
            self.made_by[out] = path

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
        x = self._get(x_t)
        ann = self._annotate(func, name, args, kwargs, result, x_t, x, inputs)
        if ann is _OPAQUE:
            return self._opaque(inputs, result, f"{name or func} ({tuple(x_t.shape)})")
        if isinstance(result, torch.Tensor):
            if ann is not None:
                self.ann[result] = ann
        else:  # tuples of pieces
            for t, a in zip(outs, ann, strict=True):
                if a is not None:
                    self.ann[t] = a

    def _annotate(self, func, name, args, kwargs, result, x_t, x, inputs):
        single = isinstance(result, torch.Tensor)
        if name in _BINARY:
            return self._binary(name, args, result) if single else _OPAQUE
        if name in ("cat", "concat", "concatenate"):
            return self._cat(args, kwargs, result)
        if name in _SPLITS:
            return self._split(name, args, kwargs, result, x_t, x)
        if name == "getitem":
            return self._getitem(args[1], result, x_t, x) if single else _OPAQUE
        if not single:
            if name in _REDUCTIONS and isinstance(result, tuple):  # max(dim=...): values and indices
                dims = _dims(args, kwargs, x_t.dim())
                return tuple(x if 1 not in dims and 0 not in dims and t.dim() >= 2 else None
                             for t in result) if dims is not None and 1 not in dims else _OPAQUE
            return _OPAQUE
        if name in ("flatten", "view", "reshape"):
            return self._reshape(x_t, x, result)
        if name in _REDUCTIONS:
            dims = _dims(args, kwargs, x_t.dim())
            return x if dims is not None and not dims & {0, 1} and result.dim() >= 2 else _OPAQUE
        if name in ("softmax", "log_softmax"):
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            return x if dim is not None and dim % x_t.dim() != 1 else _OPAQUE
        if name == "pad":
            pad = args[1] if len(args) > 1 else kwargs.get("pad", ())
            if len(pad) > 2 * (x_t.dim() - 2) or not _same_channels(result, x):
                return _OPAQUE
            if (args[2] if len(args) > 2 else kwargs.get("mode", "constant")) == "constant" and any(pad):
                self.g.gated.update(x)  # a removed channel's constant gets a border of zeros: zero it (β too)
            return x
        if name in ("permute", "transpose", "swapaxes", "movedim", "unsqueeze", "squeeze", "contiguous"):
            return x if _keeps_batch_and_channels(x_t, result) else _OPAQUE
        if name == "get":  # a property giving a tensor: .data, .T, .mT
            return x if _keeps_batch_and_channels(x_t, result) else _OPAQUE
        others = [t for t in inputs if t is not x_t and t.dim() >= 2]
        if name in _PRESERVING and x_t is inputs[0] and (not others or name in ("to", "type_as", "expand_as")):
            return x if _same_channels(result, x) and result.shape[0] == x_t.shape[0] else _OPAQUE
        return _OPAQUE

    def _binary(self, name: str, args, result: torch.Tensor):
        if result.dim() < 2:
            return _OPAQUE
        channels = result.shape[1]
        aligned: list[tuple[int, Ann]] = []  # (argument position, ids) of operands with a channel per result channel
        # An operand broadcast over the channels (numel 1, or size 1 on the channel dim) neither couples nor
        # fixes them. A constant one (a learnable scalar affine, ``scale * x + bias``) keeps a removed channel
        # a constant; one computed from the input (an (N, 1, H, W) attention map) makes it vary.
        varying = False
        for pos, value in enumerate(args[:2]):
            if not isinstance(value, torch.Tensor):
                continue  # Python numbers broadcast over every channel
            at = 1 - (result.dim() - value.dim())  # where the result's channel dim falls in this operand
            if value.dim() == result.dim() and value.shape[1] == channels and value.numel() > 1:
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
        return out

    def _cat(self, args, kwargs, result: torch.Tensor):
        tensors = args[0] if args else kwargs.get("tensors")
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if not isinstance(result, torch.Tensor) or result.dim() < 2 or any(t.dim() != result.dim() for t in tensors):
            return _OPAQUE
        anns = [self._get(t) for t in tensors]
        if dim % result.dim() == 1:
            return tuple(i for a in anns for i in a)  # each producer owns a slice of the channels
        out = self.g.new_ids(result.shape[1])  # concatenated along another dim: like a sum
        for a in anns:
            self.g.unify(out, a)
        self.g.scored.update(i for k, i in enumerate(out) if all(a[k] in self.g.scored for a in anns))
        return out

    def _split(self, name, args, kwargs, result, x_t: torch.Tensor, x: Ann):
        if not isinstance(result, (tuple, list)) or not all(isinstance(r, torch.Tensor) for r in result):
            return _OPAQUE
        if name == "unbind":
            dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
            return _OPAQUE if dim % x_t.dim() in (0, 1) else tuple(x for _ in result)
        dim = args[2] if len(args) > 2 else kwargs.get("dim", 0)
        if dim % x_t.dim() != 1:
            return tuple(x if r.dim() >= 2 else None for r in result) if dim % x_t.dim() != 0 else _OPAQUE
        pieces, start = [], 0
        for r in result:
            pieces.append(x[start:start + r.shape[1]])
            start += r.shape[1]
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

    def _getitem(self, index, result: torch.Tensor, x_t: torch.Tensor, x: Ann):
        index = index if isinstance(index, tuple) else (index,)
        if any(isinstance(i, torch.Tensor) or i is None for i in index):
            return _OPAQUE
        rest = index[2:] if len(index) >= 2 else ()
        if index and index[0] == slice(None) and all(isinstance(i, slice) or i is Ellipsis for i in rest) \
                and result.dim() == x_t.dim():
            if len(index) >= 2 and isinstance(index[1], slice):
                if range(*index[1].indices(len(x))) != range(len(x)):
                    # Slice bounds are constants of the forward code: they only fit the unpruned width.
                    self._fix(x)
                    self.g.notes.append(f"slice {index[1]} of {len(x)} channels: its channels are kept")
                return x[index[1]]
            if len(index) == 1 or index[1] is Ellipsis:
                return x
        return _OPAQUE

    def _reshape(self, x_t: torch.Tensor, x: Ann, result: torch.Tensor):
        if result.dim() >= 2 and tuple(result.shape[:2]) == tuple(x_t.shape[:2]):
            return x
        if result.dim() == 2 and result.shape[0] == x_t.shape[0] and result.shape[1] == x_t[0].numel():
            per_channel = x_t[0, 0].numel() if x_t.dim() > 2 else 1
            return tuple(i for i in x for _ in range(per_channel))  # feature f reads channel f // HW
        return _OPAQUE


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


def _keeps_batch_and_channels(x_t: torch.Tensor, result: torch.Tensor) -> bool:
    """A permute/transpose/(un)squeeze that leaves dims 0 and 1 where they were (by shape and stride)."""
    return result.dim() >= 2 and result.shape[:2] == x_t.shape[:2] and \
        (result.stride()[:2] == x_t.stride()[:2] or result.numel() == 0)


def _unnarrowable(mod: nn.Module) -> str:
    """Why a conv/Linear/BN subclass cannot be narrowed by slicing its weights ('' when it can)."""
    own = {n for n, _ in mod.named_parameters()}
    if not own <= {"weight", "bias"}:
        return f"holds other parameters ({', '.join(sorted(own - {'weight', 'bias'}))[:60]})"
    buffers = {n for n, _ in mod.named_buffers()}
    if not buffers <= {"running_mean", "running_var", "num_batches_tracked", "index"}:
        return f"holds other buffers ({', '.join(sorted(buffers))[:60]})"
    return ""
