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

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from .channel_graph import ChannelGraph, GraphError, LayerUse
from .channel_ops import DATA_SHAPED, VALUE_ESCAPES, Ann, OpRules, op_name
from .layers import check_patterns, selection_of
from .metrics import input_size_of
from .shape_only import HEAVY, StandIns, tensors_in
from .width_probe import width_sensitive_module


def trace_channels(model: nn.Module, example_input: torch.Tensor | None = None,
                   fixed: Sequence[str] = ()) -> ChannelGraph:
    """Analyse ``model``: its prunable BN channels and how they are coupled.

    ``fixed``: module-path patterns (fnmatch, e.g. ``"head"``) whose channels are never changed: a pattern selects
    the modules it matches and everything inside them, and one that matches no module is a ValueError.
    ``example_input`` defaults to zeros of ``model.input_size`` (batch 2); a tuple or dict of inputs
    is passed on as positional arguments or keywords.
    """
    check_patterns(model, fixed, "fixed")
    if example_input is None:
        param = next(model.parameters(), None)
        if getattr(model, "input_size", None) is None:  # the functions that reach here take example_input
            raise ValueError(f"{type(model).__name__} declares no input_size: pass example_input=torch.zeros(1, C, H, "
                             "W) (or set model.input_size = (C, H, W))")
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
    if not graph.bns and fixed and any(isinstance(m, _BatchNorm) and m.affine for m in model.modules()):
        raise GraphError(f"every BatchNorm of {type(model).__name__} lies in a module the patterns fixed={fixed!r} "
                         "keep as it is: nothing is left to prune; fix fewer modules")
    _note_unused(model, graph)
    if not graph.bns:
        raise GraphError(f"{type(model).__name__} has no BatchNorm layer with a learnable scale: there are no "
                         "scaling factors to prune by (if BN was fused into the convs, prune the unfused model)")
    return graph


def _note_unused(model: nn.Module, graph: ChannelGraph) -> None:
    """Name the layers the forward never ran (smp's PSPNet builds a whole ResNet and runs three of its
    stages): there is nothing to prune there, and they stay in the model as they are."""
    ran = set(graph.calls)

    def inside_one_that_ran(path: str) -> bool:  # a conv inside a layer that ran (a fixed module) ran too
        parts = path.split(".")
        return any(".".join(parts[:k]) in ran for k in range(1, len(parts) + 1))

    unused = [(path, m) for path, m in model.named_modules() if isinstance(m, (_ConvNd, nn.Linear, _BatchNorm))
              and not inside_one_that_ran(path) and not _matches(path, graph.fixed_modules)]
    if not unused:
        return
    graph.unused = tuple(path for path, _ in unused)
    held = sum(t.numel() for _, m in unused for t in m.parameters(recurse=False))
    total = sum(t.numel() for t in model.parameters())
    graph.notes.append(f"{len(unused)} layers never ran on the example input (e.g. '{unused[0][0]}'), holding "
                       f"{held} of the model's {total} parameters ({100 * held / max(total, 1):.0f}%): they are kept "
                       "as they are")


_tensors = tensors_in


def _matches(path: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatch(path, p) for p in patterns)


class _Recorder(OpRules, TorchFunctionMode):
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
        if raw in VALUE_ESCAPES and not self.busy and not self.depth \
                and any(self.tainted.get(t) for t in _tensors(args)):
            raise GraphError(f"{self._where()} has control flow that depends on the values of its "
                             f"input ({raw} of a tensor computed from it): the analysis follows one example "
                             "input only. Move that code into a submodule listed in fixed=[...] (it is then "
                             "kept as it is)")
        if raw in DATA_SHAPED and not self.busy and not self.depth and self._data_shaped(raw, args):
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
            self._op(func, op_name(func), args, kwargs, result)
        finally:
            self.busy = False
        return result

    def _data_shaped(self, raw: str, args) -> bool:
        tensors = _tensors(args)
        if raw == "__getitem__":  # a boolean mask computed from the data
            tensors = [t for t in _tensors(args[1:]) if t.dtype == torch.bool]
        return any(self.tainted.get(t) for t in tensors)

def _unnarrowable(mod: nn.Module) -> str:
    """Why a conv/Linear/BN subclass cannot be narrowed by slicing its weights ('' when it can)."""
    own = {n for n, _ in mod.named_parameters()}
    if not own <= {"weight", "bias"}:
        return f"holds other parameters ({', '.join(sorted(own - {'weight', 'bias'}))[:60]})"
    buffers = {n for n, _ in mod.named_buffers()}
    if not buffers <= {"running_mean", "running_var", "num_batches_tracked", "index"}:
        return f"holds other buffers ({', '.join(sorted(buffers))[:60]})"
    return ""
