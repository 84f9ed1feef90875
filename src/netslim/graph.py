"""Channel dependency analysis of any model with torch.fx.

An analysis pass, not a transform (like ``torch.fx.passes.shape_prop``): the model is traced and run
once on an example input, and every tensor is annotated with one *channel id* per position of its
channel dimension (dim 1). Convolutions and Linear layers create new ids for their outputs;
channel-preserving ops pass ids on; ``add``/``mul`` unify the ids of their operands (a residual
group, an SE gate) with their result; ``cat`` concatenates them and ``chunk`` slices them (equal
chunks are unified: they must stay equal); ``flatten`` repeats each id once per spatial position.
Ids that end up unified are one channel: kept or removed together.

A BN owns the channels of the conv/linear it directly follows (when it is that layer's only user):
pruning them narrows that layer. Any other BN (one reading the residual stream or a concatenation,
the paper's BN-before-conv case, Sec. 3) gets fresh ids and becomes a *selection* BN: it drops the
channels it passes on without narrowing the tensor it reads.

A channel may be pruned only if every id of it that a layer reads is *scored* (so zeroing the BN
scales zeroes what that layer reads exactly): a BN output, a sum of scored ids, or a product with a
scored factor (an SE gate's own channel need not be scored: it only multiplies a zeroed one). And
none of its ids may be fixed: model inputs and outputs, parameters, the inputs and outputs of ops we
cannot narrow (grouped convs, reductions over channels, unknown ops), and tensors split or sliced
along channels at sizes written in the forward code. Unknown ops are never assumed to preserve
channels; they are fixed and reported.
"""

from __future__ import annotations

import fnmatch
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .layers import SelectBatchNorm
from .metrics import input_size_of


class GraphError(ValueError):
    """The model cannot be analysed (untraceable, or nothing to prune)."""


Ann = tuple  # a tensor's annotation: one channel id per channel position; tuples of Ann for tuples

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_T = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_PRESERVING_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout, nn.Dropout1d,
    nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d,
    nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.ReflectionPad1d, nn.ReflectionPad2d, nn.ReplicationPad1d, nn.ReplicationPad2d,
)
_PRESERVING_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid,
    F.hardtanh, F.softplus, F.sigmoid, F.tanh, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
    F.adaptive_max_pool3d, F.interpolate, F.upsample, torch.relu, torch.sigmoid, torch.tanh, torch.clone,
    torch.abs, torch.exp, torch.neg, torch.clamp, operator.neg, F.pad,
}
_PRESERVING_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "contiguous", "clone", "float", "half", "double",
    "bfloat16", "to", "type_as", "detach", "clamp", "clamp_", "clamp_min", "clamp_max", "abs", "exp", "neg",
    "sqrt", "pow", "requires_grad_", "expand", "expand_as",
}
_BINARY = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv,
    operator.itruediv, torch.add, torch.sub, torch.mul, torch.div, torch.maximum, torch.minimum,
}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_PRODUCTS = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}
_QUOTIENTS = {operator.truediv, operator.itruediv, torch.div, "div", "div_"}
_REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCTION_METHODS = {"mean", "sum", "amax", "amin"}
_NON_TENSOR = {getattr, operator.getitem, len}


@dataclass
class LayerUse:
    """One module's role in the graph: which channel ids it reads and writes."""

    path: str
    kind: str  # "conv", "conv_t", "linear", "depthwise", "bn" (owning), "select_bn"
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
    gated: set[int] = field(default_factory=set)  # scored ids times an unscored factor: zero only if β is zeroed
    reads: set[int] = field(default_factory=set)  # ids some layer reads
    notes: list[str] = field(default_factory=list)  # ops that forced channels to stay (fixed)
    input_shape: tuple[int, ...] = ()  # of the example input the analysis ran on

    # -- union-find over channel ids --
    def new_ids(self, n: int, fixed: bool = False) -> Ann:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        ids = tuple(range(start, start + n))
        if fixed:
            self.fixed.update(ids)
        return ids

    def root(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def unify(self, a: Ann, b: Ann) -> None:
        for i, j in zip(a, b, strict=True):
            ri, rj = self.root(i), self.root(j)
            if ri != rj:
                self.parent[max(ri, rj)] = min(ri, rj)

    # -- queries used by planning and surgery --
    @property
    def bns(self) -> dict[str, LayerUse]:
        """The BN layers (owning and selection), in graph order."""
        return {p: u for p, u in self.layers.items() if u.kind in ("bn", "select_bn")}

    def prunable_roots(self) -> set[int]:
        """Channels (root ids) that may be removed: a BN's, every id a layer reads scored, none fixed."""
        blocked = {self.root(i) for i in range(len(self.parent))
                   if i in self.fixed or (i in self.reads and i not in self.scored)}
        return {self.root(i) for u in self.bns.values() for i in u.out_ids} - blocked

    def close_selection(self, pruned: set[int]) -> set[int]:
        """Keep every channel a kept selection-BN channel reads (it cannot read a removed one)."""
        pruned = set(pruned)
        changed = True
        while changed:
            changed = False
            for use in self.bns.values():
                if use.kind != "select_bn":
                    continue
                for out_id, pos in zip(use.out_ids, use.source, strict=True):
                    src = self.root(use.in_ids[pos])
                    if self.root(out_id) not in pruned and src in pruned:
                        pruned.discard(src)
                        changed = True
        return pruned


class _Tracer(fx.Tracer):
    def __init__(self, leaves: Sequence[str]) -> None:
        super().__init__()
        self.leaves = list(leaves)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, SelectBatchNorm) or any(fnmatch.fnmatch(qualname, p) for p in self.leaves):
            return True
        return super().is_leaf_module(m, qualname)


def trace(model: nn.Module, fixed: Sequence[str] = ()) -> fx.GraphModule:
    """Symbolically trace ``model``; a clear :class:`GraphError` when it cannot be traced."""
    tracer = _Tracer(fixed)
    try:
        graph = tracer.trace(model)
    except Exception as e:  # fx raises many types; all mean the same thing to a user
        raise GraphError(
            f"cannot trace {type(model).__name__} with torch.fx: {str(e).splitlines()[0]}. Data-dependent "
            "control flow must move into a submodule listed in fixed=[...] (it is then kept as it is)"
        ) from None
    return fx.GraphModule(tracer.root, graph)


def trace_channels(model: nn.Module, example_input: torch.Tensor | None = None,
                   fixed: Sequence[str] = ()) -> ChannelGraph:
    """Analyse ``model``: its prunable BN channels and how they are coupled.

    ``fixed``: module-path patterns (fnmatch, e.g. ``"head.*"``) whose channels are never changed.
    ``example_input`` defaults to zeros of ``model.input_size`` (batch 2).
    """
    gm = trace(model, fixed)
    if example_input is None:
        example_input = torch.zeros(2, *input_size_of(model))
    was_training = model.training
    model.eval()
    try:
        annotator = _Annotator(gm, fixed)
        with torch.no_grad():
            annotator.run(example_input)
    finally:
        model.train(was_training)
    graph = annotator.channels
    graph.input_shape = tuple(example_input.shape)
    if not graph.bns:
        raise GraphError(f"{type(model).__name__} has no BatchNorm layer: there are no scaling factors to "
                         "prune by (if BN was fused into the convs, prune the unfused model)")
    return graph


class _Annotator(fx.Interpreter):
    """Runs the traced model and annotates each value with channel ids (see the module docstring)."""

    def __init__(self, gm: fx.GraphModule, fixed: Sequence[str]) -> None:
        super().__init__(gm)
        self.channels = ChannelGraph()
        self.fixed_patterns = list(fixed)
        self.ann: dict[fx.Node, object] = {}

    # -- helpers --
    def _a(self, arg: object) -> object:
        return self.ann.get(arg) if isinstance(arg, fx.Node) else None

    def _fix(self, ann: object) -> None:
        if isinstance(ann, tuple):
            for a in ann:
                if isinstance(a, tuple):
                    self._fix(a)
                else:
                    self.channels.fixed.add(a)

    def _fresh(self, result: object, fixed: bool) -> object:
        """Fresh ids for a result (a tensor or a tuple of tensors)."""
        if isinstance(result, torch.Tensor):
            return self.channels.new_ids(result.shape[1], fixed) if result.dim() >= 2 else None
        if isinstance(result, (tuple, list)):
            return tuple(self._fresh(r, fixed) for r in result)
        return None

    def _opaque(self, node: fx.Node, result: object, why: str) -> object:
        """Keep everything this op touches: inputs fixed, outputs fresh fixed ids."""
        for arg in node.all_input_nodes:
            self._fix(self._a(arg))
        if why:
            self.channels.notes.append(f"{node.name} ({why}): its channels are kept")
        return self._fresh(result, fixed=True)

    # -- fx.Interpreter hook --
    def run_node(self, n: fx.Node) -> object:
        result = super().run_node(n)
        self.ann[n] = self._annotate(n, result)
        return result

    def _annotate(self, n: fx.Node, result: object) -> object:
        if n.op == "placeholder":
            return self._fresh(result, fixed=True)
        if n.op == "get_attr":
            return self._fresh(result, fixed=True)
        if n.op == "output":
            self._fix(_flatten_ann([self._a(a) for a in n.all_input_nodes]))
            return None
        if not isinstance(result, (torch.Tensor, tuple, list)) and n.target not in (operator.getitem,):
            return None
        if n.op == "call_module":
            return self._module(n, self.module.get_submodule(n.target), result)
        if n.op == "call_method":
            return self._method(n, result)
        return self._function(n, result)

    # -- modules --
    def _module(self, n: fx.Node, mod: nn.Module, result: object) -> object:
        path = str(n.target)
        x = self._a(n.args[0]) if n.args else None
        if any(fnmatch.fnmatch(path, p) for p in self.fixed_patterns):
            return self._opaque(n, result, "")
        if path in self.channels.layers:  # a module called twice: its channels must agree across calls
            use = self.channels.layers[path]
            if x is not None and len(x) == len(use.in_ids):
                self.channels.unify(x, use.in_ids)
                self.channels.reads.update(x)
                return use.out_ids
            return self._opaque(n, result, "module reused with another input width")
        if x is None or not isinstance(result, torch.Tensor):
            return self._opaque(n, result, f"{type(mod).__name__} without a channel input")
        if isinstance(mod, (_BatchNorm, *_CONV, *_CONV_T, nn.Linear)):
            self.channels.reads.update(x)
        if isinstance(mod, _BatchNorm):
            return self._batch_norm(n, path, mod, x)
        if isinstance(mod, _CONV) and mod.groups == 1:
            out = self.channels.new_ids(mod.out_channels)
            self.channels.layers[path] = LayerUse(path, "conv", x, out)
            return out
        if isinstance(mod, _CONV) and mod.groups == mod.in_channels == mod.out_channels:
            self.channels.layers[path] = LayerUse(path, "depthwise", x, x)  # channel i -> channel i
            return x
        if isinstance(mod, _CONV_T) and mod.groups == 1:
            out = self.channels.new_ids(mod.out_channels)
            self.channels.layers[path] = LayerUse(path, "conv_t", x, out)
            return out
        if isinstance(mod, nn.Linear) and result.dim() == 2:
            out = self.channels.new_ids(mod.out_features)
            self.channels.layers[path] = LayerUse(path, "linear", x, out)
            return out
        if isinstance(mod, nn.Flatten):
            return self._flatten(n, x, result, mod.start_dim, mod.end_dim)
        if isinstance(mod, (nn.Softmax, nn.LogSoftmax)) and mod.dim not in (1, -result.dim() + 1):
            return x
        if isinstance(mod, _PRESERVING_MODULES):
            return x
        return self._opaque(n, result, f"{type(mod).__name__} at '{path}' cannot be narrowed")

    def _batch_norm(self, n: fx.Node, path: str, mod: _BatchNorm, x: Ann) -> Ann:
        producer = n.args[0]
        owned = (
            not isinstance(mod, SelectBatchNorm)
            and isinstance(producer, fx.Node) and producer.op == "call_module"
            and producer.target in self.channels.layers
            and self.channels.layers[producer.target].kind in ("conv", "conv_t", "linear", "depthwise")
            and len(producer.users) == 1
        )
        if owned:
            self.channels.layers[path] = LayerUse(path, "bn", x, x)
            self.channels.scored.update(x)
            return x
        source = tuple(mod.index.tolist()) if isinstance(mod, SelectBatchNorm) else tuple(range(len(x)))
        out = self.channels.new_ids(mod.num_features)
        self.channels.layers[path] = LayerUse(path, "select_bn", x, out, source)
        self.channels.scored.update(out)
        return out

    # -- functions and methods --
    def _function(self, n: fx.Node, result: object) -> object:
        t = n.target
        x = self._a(n.args[0]) if n.args else None
        if t is operator.getitem:
            return self._getitem(n, result)
        if t in _BINARY:
            return self._binary(n, result)
        if t in (torch.cat, torch.concat):
            return self._cat(n, result)
        if t in (torch.split, torch.chunk, torch.tensor_split):
            return self._split(n, result)
        if t is torch.flatten:
            return self._flatten(n, x, result, *_args(n, 1, ("start_dim", 0), ("end_dim", -1)))
        if t is torch.reshape:
            return self._reshape(n, x, result)
        if t in _REDUCTIONS:
            return self._reduce(n, x, result)
        if t in (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax):
            dim = _args(n, 1, ("dim", None))[0]
            if dim is not None and dim % result.dim() != 1:
                return x
            return self._opaque(n, result, "softmax over channels")
        if t in _PRESERVING_FUNCTIONS and isinstance(result, torch.Tensor) and x is not None:
            return x if result.dim() >= 2 and result.shape[1] == len(x) else self._opaque(n, result, "shape")
        if t in _NON_TENSOR:
            return None
        return self._opaque(n, result, f"unsupported op {getattr(t, '__name__', t)}")

    def _method(self, n: fx.Node, result: object) -> object:
        name = n.target
        x = self._a(n.args[0])
        if name in _BINARY_METHODS:
            return self._binary(n, result)
        if name in ("split", "chunk", "tensor_split"):
            return self._split(n, result)
        if name == "flatten":
            return self._flatten(n, x, result, *_args(n, 1, ("start_dim", 0), ("end_dim", -1)))
        if name in ("view", "reshape"):
            return self._reshape(n, x, result)
        if name in _REDUCTION_METHODS:
            return self._reduce(n, x, result)
        if name in ("size", "dim", "numel"):
            return None
        if name in _PRESERVING_METHODS and isinstance(result, torch.Tensor) and x is not None:
            return x if result.dim() >= 2 and result.shape[1] == len(x) else self._opaque(n, result, "shape")
        return self._opaque(n, result, f"unsupported method .{name}()")

    def _binary(self, n: fx.Node, result: torch.Tensor) -> object:
        if not isinstance(result, torch.Tensor) or result.dim() < 2:
            return self._opaque(n, result, "elementwise op without a channel dimension")
        aligned: list[tuple[int, Ann]] = []  # (argument position, ids) of operands with a channel per result channel
        varying = False  # an operand broadcast over the channels, e.g. an (N, 1, H, W) attention map
        for pos, arg in enumerate(n.args):
            ann = self._a(arg)
            value = self.env.get(arg) if isinstance(arg, fx.Node) else arg
            if not isinstance(value, torch.Tensor) or value.numel() == 1:
                continue  # scalars broadcast over every channel
            if value.dim() == result.dim() and value.shape[1] == result.shape[1] and ann is not None:
                aligned.append((pos, ann))
            elif value.dim() == result.dim() and value.shape[1] == 1:
                varying = True
            else:
                return self._opaque(n, result, "broadcast over channels")
        if not aligned:
            return self._opaque(n, result, "")
        # The result's own ids, unified with the operands' (residual add, SE gate: the same channels).
        # Whether it is zeroed with the BN scales depends on the op: a sum needs every term zeroed, a
        # product one factor (so an SE gate's expansion conv narrows with the features it scales).
        out = self.channels.new_ids(result.shape[1])
        for _, ann in aligned:
            self.channels.unify(out, ann)
        g = self.channels
        for k, i in enumerate(out):
            s = [ann[k] in g.scored for _, ann in aligned]
            if n.target in _PRODUCTS:
                scored, gated = any(s), not all(s) or varying
            elif n.target in _QUOTIENTS:  # zero with the dividend; a zeroed divisor is not allowed
                scored = aligned[0][0] == 0 and s[0] and not any(s[1:])
                gated = len(s) > 1 or varying
            else:
                scored, gated = all(s) and not varying, False
            if scored:
                g.scored.add(i)
                if gated:
                    g.gated.add(i)
        return out

    def _cat(self, n: fx.Node, result: torch.Tensor) -> object:
        tensors, dim = _args(n, 0, ("tensors", None), ("dim", 0))
        anns = [self._a(t) for t in tensors]
        if any(a is None for a in anns):
            return self._opaque(n, result, "cat of unannotated tensors")
        if dim % result.dim() == 1:
            return tuple(i for a in anns for i in a)  # each producer owns a slice of the channels
        out = self.channels.new_ids(result.shape[1])  # concatenated along another dim: like a sum
        for a in anns:
            self.channels.unify(out, a)
        self.channels.scored.update(i for k, i in enumerate(out) if all(a[k] in self.channels.scored for a in anns))
        return out

    def _split(self, n: fx.Node, result: object) -> object:
        x = self._a(n.args[0])
        dim = _args(n, 2, ("dim", 0))[0]
        if x is None or not isinstance(result, (tuple, list)):
            return self._opaque(n, result, "split")
        if dim % result[0].dim() != 1:
            return tuple(x for _ in result)
        pieces, start = [], 0
        for r in result:
            pieces.append(x[start:start + r.shape[1]])
            start += r.shape[1]
        # The compact model runs the same forward code, so the split must still cut where it did.
        # chunk(k) into equal pieces cuts in the middle of any width: unify the pieces position by
        # position so they stay equal. Sizes written in the code (split, tensor_split, uneven
        # chunks) cannot change: the split tensor keeps its channels.
        sections = n.args[1] if len(n.args) > 1 else n.kwargs.get("sections")
        chunked = n.target in (torch.chunk, "chunk") or (
            n.target in (torch.tensor_split, "tensor_split") and isinstance(sections, int))
        if chunked and len({len(p) for p in pieces}) == 1:
            for p in pieces[1:]:
                self.channels.unify(pieces[0], p)
        else:
            self._fix(x)
            self.channels.notes.append(f"{n.name} (split at sizes fixed in the code): its channels are kept")
        return tuple(pieces)

    def _getitem(self, n: fx.Node, result: object) -> object:
        container, index = n.args
        ann = self._a(container)
        value = self.env.get(container) if isinstance(container, fx.Node) else None
        if isinstance(value, (tuple, list)):
            return ann[index] if isinstance(ann, tuple) and len(ann) == len(value) else None
        if not isinstance(value, torch.Tensor) or ann is None:
            return None
        index = index if isinstance(index, tuple) else (index,)
        if len(index) >= 2 and index[0] == slice(None) and isinstance(index[1], slice) and \
                all(i in (slice(None), Ellipsis) for i in index[2:]):
            if range(*index[1].indices(len(ann))) != range(len(ann)):
                # Slice bounds are constants of the forward code: they only fit the unpruned width.
                self._fix(ann)
                self.channels.notes.append(f"{n.name} (slice of the channels): its channels are kept")
            return ann[index[1]]
        if len(index) >= 1 and index[0] == slice(None) and all(i in (slice(None), Ellipsis) for i in index[1:]):
            return ann
        return self._opaque(n, result, "indexing across channels")

    def _flatten(self, n: fx.Node, x: Ann | None, result: torch.Tensor, start: int, end: int) -> object:
        source = self.env[n.args[0]]
        if x is None:
            return self._opaque(n, result, "flatten")
        start, end = start % source.dim(), end % source.dim()
        if start >= 2 or start == end:
            return x
        if start == 1 and end == source.dim() - 1:
            per_channel = int(torch.tensor(source.shape[2:]).prod()) if source.dim() > 2 else 1
            return tuple(i for i in x for _ in range(per_channel))  # feature f reads channel f // HW
        return self._opaque(n, result, "flatten across the batch dimension")

    def _reshape(self, n: fx.Node, x: Ann | None, result: torch.Tensor) -> object:
        source = self.env[n.args[0]]
        if x is not None and result.dim() >= 2 and tuple(result.shape[:2]) == tuple(source.shape[:2]):
            return x
        if x is not None and result.dim() == 2 and result.shape[0] == source.shape[0]:
            return self._flatten(n, x, result, 1, -1)
        return self._opaque(n, result, "reshape across channels")

    def _reduce(self, n: fx.Node, x: Ann | None, result: torch.Tensor) -> object:
        source = self.env[n.args[0]]
        dims = _args(n, 1, ("dim", None))[0]
        dims = range(source.dim()) if dims is None else ([dims] if isinstance(dims, int) else dims)
        dims = {d % source.dim() for d in dims}
        if x is None or 1 in dims or 0 in dims or result.dim() < 2:
            return self._opaque(n, result, "reduction over channels")
        return x


def _args(n: fx.Node, first: int, *spec: tuple[str, object]) -> list:
    """Positional-or-keyword arguments of a call node, from position ``first`` on."""
    out = []
    for k, (name, default) in enumerate(spec):
        pos = first + k
        out.append(n.args[pos] if len(n.args) > pos else n.kwargs.get(name, default))
    return out


def _flatten_ann(anns: list) -> tuple:
    flat: list[int] = []
    for a in anns:
        if isinstance(a, tuple):
            if a and isinstance(a[0], tuple):
                flat.extend(_flatten_ann(list(a)))
            else:
                flat.extend(i for i in a if isinstance(i, int))
    return tuple(flat)
