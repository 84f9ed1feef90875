"""Pruning for measured speed: per-layer latency tables measured on the target, and a latency budget.

FLOPs are a poor proxy for latency (a 70%-pruned VGG-19 with 11x fewer FLOPs runs 4-5x faster on a
CPU), so the planner predicts latency instead. For every conv/Linear the analysis knows, the time of
that layer alone (BN folded: a conv with a bias) is measured on the target at the deployment batch
size and resolution, as a function of its input and output widths, on a sparse grid of widths, and a
surface (fixed cost, reading, writing, multiply-adds) is fitted to those samples by least squares
(:func:`netslim.layer_law.fit_surface`: one sample is noisy on a shared machine), and probes just past a
multiple of 16 channels say which channel block the layer steps with (:mod:`netslim.layer_law`); layers
of the same shape share one table. What the tables do not see (pooling, additions, selections,
activations, Python) is the *overhead*: the measured latency of the whole model minus the sum of its
layers, scaled with the fraction of activations kept.

Planning ranks channels by the paper's |γ| (``plan_pruning``), and bisection finds the least pruning
in that order whose predicted latency meets the budget. The budget is a knapsack (keep the most Σ|γ|
within a latency), so rankings by |γ| per second saved are tried beside the paper's, and rounding
widths to the channel blocks the tables found beside exact widths; the candidate keeping the most
Σ|γ| at that latency wins. Inside a layer the smallest |γ| always go first. Then the compact model is timed end to end
and the goal corrected until the measurement meets the target. Tables are cached on disk per
machine, PyTorch version, thread count, backend, batch and layer shape.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from . import latency_cache
from .budget import least_pruning
from .graph import ChannelGraph, trace_channels
from .layer_law import LayerLaw, fit_law, grid_widths, probe_widths
from .plan import PruningPlan, plan_pruning, scales_of
from .surgery import pruned_channels
from .timing import (
    analysis_input,
    check_backend,
    deployed_latencies,
    deployed_latency,
    is_channels_last,
    ort_session,
    steady_time,
)

_TIMED = ("conv", "conv_t", "depthwise", "linear")
# A plan that would end the measured rounds, or be kept, is judged on the median of this many timings of
# its compact model: one timing on a shared machine errs by 3-10%, and a plan chosen because its timing
# met the budget is the one whose timing erred fastest (VGG-19 at batch 1: accepted at 2.08x, re-timed
# 2.11x / 2.21x / 2.22x).
CONFIRMING_TIMINGS = 3
# When the plan kept measures faster than the window that ends the rounds, this many more rounds plan between
# it and the least pruned plan of its ranking measured too slow, on confirmed timings at both ends: a
# single timing that erred ~50% slow sent the secant to plans far faster than the target (ResNet-50 on ONNX
# Runtime, 4x: timed 15.7 ms where the plan after it, more pruned, timed 12.3 ms; kept at 5.81x).
# Up to this many: at a step in the measured latency the secant creeps towards it (each round lands just
# on its slow side), so after two rounds in a row landed slow, the next halves the bracket instead.
CLOSING_ROUNDS = 5
# A confirmed plan slower than the target by at most this share is kept over the plan kept when that one
# stays faster than the window after the closing rounds: the two sit on either side of a step that the
# budget falls into, and this share is under the spread of side-by-side timings here (~2%). YOLOv8n at
# batch 1, 2x: adjacent plans measured 1.99x (confirmed) and 2.47x; the rule "at the budget or faster"
# kept the 2.47x one, 24% past what was asked.
MEETS_WITHIN = 0.02
# Cached tables agree with the model measured now when its timed layers alone, as the tables predict them at
# full width, take at most this factor of the whole model (probes are timed one by one, each with its own
# synchronisation and cold cache, so they may add up to somewhat more than the model); past it they were
# taken on a busier machine (VGG-19, batch 1, here: layers 87 ms for a model measured whole at 15 ms).
TABLES_AGREE = 1.5


@dataclass
class LatencyTable:
    """Measured seconds of each layer shape at sampled (in, out) widths, and the model's overhead.

    ``samples[shape_key][(n_in, n_out)]``; ``shapes[layer_path]`` is that layer's shape key;
    ``overhead`` is the rest of the model's time at full width (see the module docstring).
    """

    samples: dict[str, dict[tuple[int, int], float]] = field(default_factory=dict)
    shapes: dict[str, str] = field(default_factory=dict)
    overhead: float = 0.0
    measured: float = 0.0  # the whole original model, end to end (0 when synthetic)
    _fits: dict = field(default_factory=dict, repr=False, compare=False)

    def layer_time(self, path: str, n_in: int, n_out: int) -> float:
        """Seconds of layer ``path`` with ``n_in`` inputs and ``n_out`` outputs, by the law of its samples
        (:func:`netslim.layer_law.fit_law`: a surface, and the channel blocks the layer steps with)."""
        return self.law(self.shapes[path])(n_in, n_out)

    def law(self, key: str) -> LayerLaw:
        """The :class:`netslim.layer_law.LayerLaw` of shape ``key``'s samples (fitted once per sample set)."""
        points = self.samples[key]
        fitted = self._fits.get(key)
        if fitted is None or fitted[0] is not points:
            fitted = self._fits[key] = (points, fit_law(points))
        return fitted[1]

    def quanta(self) -> set[int]:
        """The channel blocks (> 1) the tables found layers stepping with: the width multiples that pay."""
        laws = [self.law(key) for key in self.samples]
        return {side.quantum for law in laws for side in (law.inputs, law.outputs)} - {1}


def predict(table: LatencyTable, graph: ChannelGraph, pruned: set[int]) -> float:
    """Predicted seconds of the compact model with channels ``pruned`` (root ids) removed."""
    total, kept_weighted, weight = 0.0, 0.0, 0.0
    for path, use in graph.layers.items():
        if path not in table.shapes:
            continue
        n_in = sum(graph.root(i) not in pruned for i in use.in_ids)
        n_out = sum(graph.root(i) not in pruned for i in use.out_ids)
        full = table.layer_time(path, len(use.in_ids), len(use.out_ids))
        total += table.layer_time(path, n_in, n_out)
        kept_weighted += full * n_out / max(len(use.out_ids), 1)
        weight += full
    activations = kept_weighted / weight if weight else 1.0
    return total + table.overhead * activations


def _onnx_probe(probe: nn.Module, kind: str, input_shape: tuple[int, ...]) -> bytes:
    """A one-node ONNX model of a sized conv/Linear probe, built directly (exporting each probe with
    torch.onnx would take most of a second apiece)."""
    from onnx import TensorProto, helper, numpy_helper

    weight, bias = probe.weight.detach().float(), probe.bias.detach().float()
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    if kind == "linear":
        inits = [numpy_helper.from_array(weight.t().contiguous().numpy(), "w"),
                 numpy_helper.from_array(bias.numpy(), "b")]
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["y"])]
    else:
        if isinstance(probe.padding, str):  # "valid" or "same" (stride 1): explicit pads as torch computes them
            total = [0 if probe.padding == "valid" else d * (k - 1) for k, d in zip(probe.kernel_size,
                                                                                     probe.dilation, strict=True)]
            pads = [t // 2 for t in total] + [t - t // 2 for t in total]
        else:
            pads = list(probe.padding) * 2
        attrs = dict(kernel_shape=list(probe.kernel_size), strides=list(probe.stride), dilations=list(probe.dilation),
                     pads=pads, group=probe.groups)
        if kind == "conv_t":
            attrs["output_padding"] = list(probe.output_padding)
        inits = [numpy_helper.from_array(weight.numpy(), "w"), numpy_helper.from_array(bias.numpy(), "b")]
        nodes = [helper.make_node("ConvTranspose" if kind == "conv_t" else "Conv", ["x", "w", "b"], ["y"], **attrs)]
    graph = helper.make_graph(nodes, "probe", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@torch.no_grad()
def measure_table(model: nn.Module, example_input: torch.Tensor, *, graph: ChannelGraph | None = None,
                  repeats: int = 5, cache_dir: str | Path | None = None, backend: str = "eager",
                  refresh: bool = False) -> LatencyTable:
    """Measure (or read from the cache) the latency table of ``model`` at ``example_input``'s batch and size
    on ``backend`` (see :data:`netslim.timing.BACKENDS`), in the device, dtype and memory format of
    ``example_input`` (a CUDA bf16 channels_last input: the tables of a GPU deployment); the whole model is
    timed as deployed (:func:`netslim.timing.deployed_latency`).

    Cached tables are read back only when well formed (:mod:`netslim.latency_cache`) and only while they agree
    with the model measured now: when its layers alone would take more than :data:`TABLES_AGREE` times the
    whole model, they are measured again. A layer whose runs disagree (:func:`netslim.timing.steady_time`),
    and tables that still disagree with the whole model, are used for this plan but not cached.
    ``refresh``: measure every table again, whatever the cache holds. Each of these says one warning line.
    """
    check_backend(backend, example_input)
    analysed = analysis_input(model, example_input)
    graph = graph or trace_channels(model, analysed)
    model = model.eval()
    inputs = _layer_inputs(model, graph, analysed, example_input.shape[0])
    # TorchInductor runs convolutions and matmuls with the kernels eager PyTorch calls (extern aten/oneDNN),
    # so its layer tables are eager's; what compiling changes (fused pointwise ops, no per-op Python)
    # is in the overhead, measured on the compiled whole model.
    layers_on = "eager" if backend == "compile" else backend
    file = latency_cache.cache_file(cache_dir, example_input, layers_on)
    table, shapes = LatencyTable(), {}
    for path, use in graph.layers.items():
        if use.kind in _TIMED and path in inputs:
            layer = model.get_submodule(path)
            table.shapes[path] = key = _shape_key(layer, use.kind, inputs[path], example_input)
            shapes.setdefault(key, (layer, use, inputs[path]))
    stored, corrupt = _read_checked(file, {key: use for key, (_, use, _) in shapes.items()})
    table.samples = {key: stored[key] for key in shapes if key in stored and not refresh}
    unsteady: set[str] = set()

    def time_layers(keys) -> None:
        for key in keys:
            layer, use, shape = shapes[key]
            table.samples[key], steady = _time_layer(layer, use.kind, shape, example_input, *_widths(use), repeats,
                                                     layers_on)
            (unsteady.add if not steady else unsteady.discard)(key)

    cached = list(table.samples)
    time_layers([key for key in shapes if key not in table.samples])
    table.measured = deployed_latency(model, example_input, backend, repeats=max(repeats, 10))
    if _layers_alone(table, graph) > TABLES_AGREE * table.measured and cached:
        warnings.warn(f"the latency tables cached in {file} add up to {1e3 * _layers_alone(table, graph):.3g} ms for "
                      f"layers of a model measured whole at {1e3 * table.measured:.3g} ms now: they were taken on a "
                      "busier machine, and are measured again", stacklevel=2)
        time_layers(cached)
        table.measured = deployed_latency(model, example_input, backend, repeats=max(repeats, 10))
        cached = []
    if _layers_alone(table, graph) > TABLES_AGREE * table.measured:
        unsteady.update(shapes)
        warnings.warn(f"the latency tables measured now add up to {1e3 * _layers_alone(table, graph):.3g} ms for "
                      f"layers of a model measured whole at {1e3 * table.measured:.3g} ms: the machine is busy; they "
                      "are not cached (the measured rounds correct the plan)", stacklevel=2)
    fresh = {key: table.samples[key] for key in shapes if key not in cached and key not in unsteady}
    if fresh or corrupt:
        latency_cache.write(file, {**stored, **fresh})
    table.overhead = max(table.measured - _layers_alone(table, graph), 0.0)
    return table


def _read_checked(file: Path, uses: dict) -> tuple[dict, bool]:
    """The tables cached in ``file`` that are well formed (:func:`netslim.latency_cache.read`) and, for the layer
    shapes in ``uses``, hold exactly the widths such a layer is probed at; and whether the file held anything
    else, which one warning names (the rest is measured again and the file rewritten)."""
    stored, problem = latency_cache.read(file)
    incomplete = [key for key, use in uses.items() if key in stored
                  and set(stored[key]) != set(probe_pairs(use.kind, *_widths(use)))]
    for key in incomplete:  # a table from a killed run or an edited file: not the widths this layer is probed at
        del stored[key]
    if problem or incomplete:
        warnings.warn(f"latency cache {file} was corrupt ({problem or f'{len(incomplete)} layer tables incomplete'}"
                      "): what it lacks is measured again and the file rewritten", stacklevel=3)
    return stored, bool(problem or incomplete)


def _widths(use) -> tuple[int, int]:
    return len(use.in_ids), len(use.out_ids)


def _layers_alone(table: LatencyTable, graph: ChannelGraph) -> float:
    """Seconds of the timed layers at full width, as the tables predict them."""
    return sum(table.layer_time(path, *_widths(graph.layers[path])) for path in table.shapes)


def _layer_inputs(model: nn.Module, graph: ChannelGraph, sample: torch.Tensor, batch: int) -> dict[str, torch.Size]:
    """The input shape of every timed layer at ``batch``, seen on one ``sample``: the leading dimension
    grows with the batch (also where a model folds another dimension into it)."""
    seen: dict[str, torch.Size] = {}

    def record(path: str, args: tuple) -> None:  # a pre-hook returning a value would replace the inputs
        shape = args[0].shape
        seen.setdefault(path, torch.Size((shape[0] * batch // sample.shape[0], *shape[1:])))

    hooks = [model.get_submodule(p).register_forward_pre_hook(lambda m, args, p=p: record(p, args))
             for p, u in graph.layers.items() if u.kind in _TIMED]
    try:
        model(sample)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _shape_key(layer: nn.Module, kind: str, input_shape: torch.Size, deployed_as: torch.Tensor) -> str:
    if isinstance(layer, _ConvNd):
        geometry = (layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.output_padding
                    if isinstance(layer, _ConvTransposeNd) else None)
        full = (layer.in_channels, layer.out_channels)
    else:
        geometry, full = None, (layer.in_features, layer.out_features)
    layout = f"{deployed_as.dtype}{'|channels_last' if is_channels_last(deployed_as) else ''}"
    return f"{kind}|{type(layer).__name__}|{geometry}|{full}|{tuple(input_shape[:1]) + tuple(input_shape[2:])}|{layout}"


def _time_layer(layer: nn.Module, kind: str, input_shape: torch.Size, deployed_as: torch.Tensor, full_in: int,
                full_out: int, repeats: int, backend: str = "eager") -> tuple[dict[tuple[int, int], float], bool]:
    """Seconds of ``layer`` resized to each (in, out) pair of the grid, in the device, dtype and memory
    format of ``deployed_as``, on ``backend``; and whether every sample's runs agreed (see
    :func:`netslim.timing.steady_time`)."""
    device, dtype = deployed_as.device, deployed_as.dtype
    layout = torch.channels_last if is_channels_last(deployed_as) and len(input_shape) == 4 else torch.contiguous_format
    samples, steady = {}, True
    pairs = probe_pairs(kind, full_in, full_out)
    # One random input per layer, narrowed per input width (drawing 25 inputs of 100 MB each cost seconds).
    # Channels are dim 1 of a conv's input and the last dim of a Linear's (which may be (B, T, F)).
    axis = len(input_shape) - 1 if kind == "linear" else 1
    full = torch.randn(*input_shape[:axis], max(i for i, _ in pairs), *input_shape[axis + 1:])
    x = None
    for n_in, n_out in pairs:
        probe = _sized(layer, kind, n_in, n_out).eval()
        if x is None or x.shape[axis] != n_in:  # once per input width, not per (in, out) pair
            x = full.narrow(axis, 0, n_in).contiguous()
            deployed_x = x.to(device=device, dtype=dtype).contiguous(memory_format=layout)
        if backend == "onnxruntime":
            session = ort_session(_onnx_probe(probe, kind, tuple(x.shape)))
            feed = {session.get_inputs()[0].name: x.numpy()}
            samples[n_in, n_out], agreed = steady_time(lambda session=session, feed=feed: session.run(None, feed),
                                                       repeats)
        else:
            probe = probe.to(device=device, dtype=dtype, memory_format=layout)
            with torch.no_grad():
                samples[n_in, n_out], agreed = steady_time(lambda probe=probe, x=deployed_x: probe(x), repeats,
                                                           cuda=deployed_x.is_cuda)
        steady = steady and agreed
    return samples, steady


def probe_pairs(kind: str, full_in: int, full_out: int) -> list[tuple[int, int]]:
    """The (in, out) widths a layer is timed at: the grid (:func:`netslim.layer_law.grid_widths`), then for
    each side the probes just past a block (:func:`netslim.layer_law.probe_widths`) with the other side at
    its grid width nearest half, or full when it is too narrow to probe (a depthwise layer: one width, both
    sides)."""
    if kind == "depthwise":
        return [(c, c) for c in grid_widths(full_out) + probe_widths(full_out)]
    ins, outs = grid_widths(full_in), grid_widths(full_out)

    def other(widths: list[int], full: int) -> int:
        return min(widths, key=lambda w: abs(w - full / 2)) if probe_widths(full) else full

    return ([(i, o) for i in ins for o in outs] + [(i, other(outs, full_out)) for i in probe_widths(full_in)]
            + [(other(ins, full_in), o) for o in probe_widths(full_out)])


def _sized(layer: nn.Module, kind: str, n_in: int, n_out: int) -> nn.Module:
    """A plain layer like ``layer`` with ``n_in``/``n_out`` channels and a bias (BN folded into it)."""
    if kind == "linear":
        return nn.Linear(n_in, n_out)
    kw = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, bias=True)
    dims = len(layer.kernel_size)
    if kind == "conv_t":
        cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1]
        return cls(n_in, n_out, layer.kernel_size, output_padding=layer.output_padding, **kw)
    cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    if kind == "depthwise":
        return cls(n_out, n_out, layer.kernel_size, groups=n_out, **kw)
    return cls(n_in, n_out, layer.kernel_size, **kw)


def channel_costs(table: LatencyTable, graph: ChannelGraph) -> dict[int, float]:
    """Seconds that removing one channel (root id) saves, from the tables: for every timed layer that
    writes or reads it, the layer's time per channel between its full and its half width (and the
    overhead's share per output channel). A channel coupled through additions sums its layers."""
    cost: dict[int, float] = {}
    weight = sum(table.layer_time(p, len(graph.layers[p].in_ids), len(graph.layers[p].out_ids)) for p in table.shapes)
    for path in table.shapes:
        use = graph.layers[path]
        n_in, n_out = len(use.in_ids), len(use.out_ids)
        full = table.layer_time(path, n_in, n_out)
        sides = [(use.out_ids, full - table.layer_time(path, n_in, n_out // 2), n_out - n_out // 2,
                  table.overhead * full / weight if weight else 0.0)]
        if use.kind != "depthwise":  # a depthwise layer's input is its output
            sides.append((use.in_ids, full - table.layer_time(path, n_in // 2, n_out), n_in - n_in // 2, 0.0))
        for ids, saved, removed, overhead in sides:
            per_channel = (max(saved, 0.0) + overhead * removed / len(ids)) / removed if removed else 0.0
            for root in {graph.root(i) for i in ids}:
                cost[root] = cost.get(root, 0.0) + per_channel
    return cost


def plan_for_latency(model: nn.Module, *, target_latency: float | None = None, target_speedup: float | None = None,
                     example_input: torch.Tensor | None = None, table: LatencyTable | None = None,
                     fixed: Sequence[str] = (), round_to: Sequence[int] | None = None,
                     cost_exponents: Sequence[float] = (0.0, 0.5, 1.0), measured_rounds: int = 0,
                     tolerance: float = 0.05, backend: str = "eager", refresh_tables: bool = False,
                     **plan_options) -> tuple[PruningPlan, float]:
    """The plan keeping the most Σ|γ| whose predicted latency meets the budget.

    ``target_latency``: seconds per forward pass of ``example_input``; or ``target_speedup``: times
    faster than the original as measured (``table.measured``; predicted when the table is synthetic).
    ``table``: from :func:`measure_table` (measured on ``backend`` when not given).
    Candidates: for every width multiple in ``round_to`` (None: exact widths and every channel block the
    tables found layers stepping with, :meth:`LatencyTable.quanta`) and exponent e in ``cost_exponents``, channels
    ranked by |γ| / cost^e, cost being the seconds a channel saves (:func:`channel_costs`), and the least
    pruning in that order meeting the budget (bisection). e = 0 is the paper's global |γ| ranking; e > 0
    thins the layers where a channel buys more time for its |γ| (a knapsack's value per weight); inside
    a layer the smallest |γ| always go first. The candidate keeping the largest Σ|γ| wins
    (``plan.options["ranking"]`` says which).
    ``measured_rounds``: then build the compact model (BN folded), time it end to end (for a speedup:
    in turns with the original, see :func:`deployed_latencies`) and, while it is slower than the target
    or faster by more than ``tolerance``, plan again for a corrected goal, up to that many times;
    when the winner is not the paper's ranking, the paper's ranking gets as many rounds of its own (the
    tables may favour a ranking by error). A plan that would end the rounds, or be kept, is judged on the
    median of :data:`CONFIRMING_TIMINGS` timings. The plan kept is the one keeping the most Σ|γ| among
    those measured at the target or faster (else the fastest measured); when it measures faster than the
    window, up to :data:`CLOSING_ROUNDS` more rounds plan between it and the least pruned plan of its
    ranking measured too slow, both confirmed; and a confirmed plan at most :data:`MEETS_WITHIN` slower
    than the target is kept over one still faster than the window (:func:`_close_in`). ``plan.options`` records
    ``predicted_seconds``, ``measured_seconds`` (the median of its ``timings``) and the ``rounds`` (goal,
    predicted, measured, timings). Returns the plan and its predicted seconds. ValueError (one line) when
    the guards make the budget unreachable: as the tables predict it without ``measured_rounds``; with them,
    only once the most pruned plan is timed and misses the budget by more than ``tolerance`` (the tables err,
    the more on a busy machine). ``refresh_tables``: measure the tables again (:func:`measure_table`).
    Every argument is checked before any table is measured.
    """
    _check_latency_args(target_latency, target_speedup, example_input, table, round_to, cost_exponents,
                        measured_rounds, tolerance)
    graph = trace_channels(model, analysis_input(model, example_input), fixed)
    table = table or measure_table(model, example_input, graph=graph, backend=backend, refresh=refresh_tables)
    if round_to is None:  # widths snap to the blocks the tables show are faster
        round_to = (1, *sorted(table.quanta()))
    base = table.measured or predict(table, graph, set())
    target = base / target_speedup if target_speedup is not None else target_latency
    scores = {}
    for path, use in graph.bns.items():
        gamma = scales_of(model, path)
        for pos, i in enumerate(use.out_ids):
            scores[graph.root(i)] = max(scores.get(graph.root(i), 0.0), gamma[pos])
    total = plan_pruning(model, 0.0, graph=graph, fixed=fixed, **plan_options).total_channels
    costs = channel_costs(table, graph)
    rankings = [(e, None if e == 0 else {r: c ** e for r, c in costs.items()}) for e in dict.fromkeys(cost_exponents)]

    def seconds(plan: PruningPlan) -> float:
        return predict(table, graph, pruned_channels(graph, plan))

    def kept(plan: PruningPlan) -> float:
        pruned = pruned_channels(graph, plan)
        return sum(v for r, v in scores.items() if r not in pruned)

    def search(goal: float, exponents: Sequence[float] | None = None, floor_within: float = 1.0
               ) -> PruningPlan:
        # fastest: the most pruning the guards allow, predicted fastest; it is returned when no plan meets
        # the goal but it is predicted within ``floor_within`` times the goal
        best, fastest = None, None
        for multiple in round_to:
            for exponent, channel_cost in rankings:
                if exponents is not None and exponent not in exponents:
                    continue
                def plan_at(k: int, multiple=multiple, channel_cost=channel_cost) -> PruningPlan:
                    return plan_pruning(model, min(k / total, math.nextafter(1.0, 0.0)), graph=graph, fixed=fixed,
                                        round_to=multiple, channel_cost=channel_cost, **plan_options)

                plan = least_pruning(plan_at, total, lambda p: seconds(p) <= goal)
                meets = plan is not None
                plan = plan if meets else plan_at(total)
                plan.options["ranking"] = "|γ|" if exponent == 0 else f"|γ| / (seconds saved)^{exponent:g}"
                plan.options["cost_exponent"] = exponent
                if not meets:
                    if fastest is None or seconds(plan) < seconds(fastest):
                        fastest = plan
                    continue
                if best is None or kept(plan) > kept(best):
                    best = plan
        if best is None and seconds(fastest) <= floor_within * goal:
            return fastest
        if best is None:
            raise ValueError(_unreachable(target, f"is predicted at {1e3 * seconds(fastest):.3g} ms", fastest))
        return best

    plan = search(target, floor_within=math.inf if measured_rounds else 1.0)
    if measured_rounds:
        if target_speedup is not None:  # the speedup, timed in turns with the original, in the tables' seconds
            def measure(compact: nn.Module) -> float:
                original, seconds_compact = deployed_latencies([model, compact], example_input, backend)
                return base * seconds_compact / original
        else:
            def measure(compact: nn.Module) -> float:
                return deployed_latency(compact, example_input, backend)
        log: list[dict] = []

        def confirm(candidate: PruningPlan) -> float:
            return _time_plan(model, graph, candidate, measure, CONFIRMING_TIMINGS)

        if seconds(plan) > target:  # the tables say no plan meets the budget: the most pruned one is timed
            if confirm(plan) > target * (1 + tolerance):
                raise ValueError(_unreachable(target, f"measured {1e3 * plan.options['measured_seconds']:.3g} ms "
                                              f"(predicted {1e3 * seconds(plan):.3g} ms)", plan))

        tried = _measured_rounds(model, graph, plan, search, seconds, measure, target, target, measured_rounds,
                                 tolerance, log)
        plan = _best_measured(tried, kept, target, confirm)
        if plan.options["ranking"] != "|γ|" and 0 in cost_exponents:
            # Candidates were compared on predicted seconds, and the tables err differently for each ranking:
            # one can win by an optimistic prediction alone. The paper's ranking gets rounds of its own, from
            # the goal the first rounds ended at, and the measured plans compete.
            def paper(goal: float, **options) -> PruningPlan:
                return search(goal, exponents=(0,), **options)

            with contextlib.suppress(ValueError):
                goal = log[-1]["goal_seconds"]
                first = paper(goal)
                if not any(first.kept == p.kept for p in tried):
                    tried += _measured_rounds(model, graph, first, paper, seconds, measure, target, goal,
                                              measured_rounds, tolerance, log)
            plan = _best_measured(tried, kept, target, confirm)
        plan = _close_in(model, graph, tried, lambda: _best_measured(tried, kept, target, confirm), search, seconds,
                         measure, target, tolerance, log)
        plan.options["rounds"] = log
    plan.options["predicted_seconds"] = seconds(plan)
    return plan, seconds(plan)


def _check_latency_args(target_latency, target_speedup, example_input, table, round_to, cost_exponents,
                        measured_rounds, tolerance) -> None:
    """One-line ValueErrors for what plan_for_latency is given, before any table is measured."""
    def number(value) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    if (target_latency is None) == (target_speedup is None):
        raise ValueError("give exactly one of target_latency (seconds) or target_speedup (x faster)")
    if target_speedup is not None and not (number(target_speedup) and target_speedup >= 1):
        raise ValueError(f"target_speedup must be a number >= 1 (x faster than the original), got {target_speedup!r}")
    if target_latency is not None and not (number(target_latency) and target_latency > 0):
        raise ValueError(f"target_latency must be a number of seconds > 0, got {target_latency!r}")
    if not (isinstance(measured_rounds, int) and not isinstance(measured_rounds, bool) and measured_rounds >= 0):
        raise ValueError(f"measured_rounds must be an integer >= 0 (0: the tables' prediction only), got "
                         f"{measured_rounds!r}")
    if not (number(tolerance) and 0 < tolerance < 1):
        raise ValueError(f"tolerance must be a fraction in (0, 1), got {tolerance!r}")
    if not cost_exponents or not all(number(e) and e >= 0 for e in cost_exponents):
        raise ValueError(f"cost_exponents must be numbers >= 0 (0: the paper's |γ| ranking), got {cost_exponents!r}")
    if round_to is not None and (not round_to or not all(isinstance(m, int) and not isinstance(m, bool) and m >= 1
                                                         for m in round_to)):
        raise ValueError(f"round_to must be integers >= 1 (width multiples to try), got {round_to!r}")
    if not isinstance(example_input, torch.Tensor) and (table is None or measured_rounds):
        raise ValueError("example_input (a tensor of the deployment's batch and size) is needed to measure the "
                         "latency tables and the compact models")


def _unreachable(target: float, how: str, floor: PruningPlan) -> str:
    """Why a budget cannot be met, and what would change that: the guards, when they were set to hold more
    than one channel per layer back (the most pruned plan meets min_channels=1 in every layer anyway)."""
    guarded = floor.options.get("max_layer_fraction") is not None or floor.options.get("min_channels", 1) > 1
    advice = ("relax min_channels or max_layer_fraction" if guarded else
              "what is left is time pruning does not remove (fixed per-op cost, layers it keeps whole): ask for "
              "less, or plan at the batch the model is deployed at")
    return f"a latency of {1e3 * target:.3g} ms cannot be reached: pruning as much as the guards allow {how}; {advice}"


def _measured_rounds(model, graph, plan, search, seconds, measure, target: float, goal: float, rounds: int,
                     tolerance: float, log: list[dict]) -> list[PruningPlan]:
    """Time the compact model of ``plan`` (planned for ``goal``) end to end and, while it misses ``target``,
    correct the goal the tables plan for and plan again (see plan_for_latency); every round is appended to
    ``log``. A timing inside the window that ends the rounds is confirmed first (:data:`CONFIRMING_TIMINGS`).
    Returns the plans timed, each with its ``measured_seconds`` (median of its ``timings``)."""
    tried, points = [], []  # points: (log goal planned for, log seconds measured)

    def ends_rounds(measured: float) -> bool:
        return target * (1 - tolerance) <= measured <= target

    for attempt in range(rounds + 1):
        plan.options["goal_seconds"] = goal
        measured = _time_plan(model, graph, plan, measure, 1, confirm_if=ends_rounds)
        tried.append(plan)
        points.append((math.log(goal), math.log(measured)))
        _log_round(log, plan, seconds)
        if ends_rounds(measured) or attempt == rounds:
            break  # the budget is met, by a plan at most ``tolerance`` faster than it needs to be
        # aim at the middle of the window [target·(1 − tolerance), target] that ends the rounds
        goal = math.exp(_next_goal(points, math.log(target * (1 - tolerance / 2))))
        # A corrected goal below what the tables predict for the most pruning the guards allow: that plan is
        # timed, since the tables err (YOLOv8n, batch 1, 4x: the rounds stopped at 3.30x, one plan short of
        # the most pruned, which measured 4.26x)
        plan = search(goal, floor_within=math.inf)
        if any(plan.kept == p.kept for p in tried):
            break  # the corrected goal gives a plan already timed: nothing more to learn
    return tried


def _close_in(model, graph, tried: list[PruningPlan], choose: Callable[[], PruningPlan], search, seconds, measure,
              target: float, tolerance: float, log: list[dict]) -> PruningPlan:
    """The plan ``choose`` keeps from ``tried``, after up to :data:`CLOSING_ROUNDS` more rounds while it
    measures faster than the window [target·(1 − tolerance), target]: the least pruned plan of its ranking
    measured slower than ``target`` is confirmed (its one timing may have erred slow, and then it meets the
    budget itself), and a plan of that ranking is planned between the two (secant through both, kept inside
    them; the bracket's middle after two rounds in a row landed slow) and timed :data:`CONFIRMING_TIMINGS` times.
    Without a slower plan of its ranking, the goal is scaled by the miss. Every plan timed is appended to
    ``tried`` and each round to ``log``. When the plan kept still measures faster than the window, the
    confirmed plan nearest ``target`` among those at most :data:`MEETS_WITHIN` slower than it is kept
    instead: the budget falls into a step of the measured latency."""
    plan = choose()
    landed_slow = 0  # rounds in a row that landed slow: the secant may be creeping towards a step
    for _ in range(CLOSING_ROUNDS):
        fast = plan.options["measured_seconds"]
        if not fast < target * (1 - tolerance):
            break  # in the window; or slower than the target, the fastest plan measured being kept
        exponent = plan.options.get("cost_exponent", 0.0)
        low = plan.options["goal_seconds"]
        points = [(math.log(low), math.log(fast))]
        slower = [p for p in tried if p.options.get("cost_exponent", 0.0) == exponent
                  and p.options["goal_seconds"] > low and p.options["measured_seconds"] > target]
        high = None
        if slower:
            slow = min(slower, key=lambda p: p.options["goal_seconds"])
            if len(slow.options["timings"]) < CONFIRMING_TIMINGS:
                _time_plan(model, graph, slow, measure, CONFIRMING_TIMINGS)
                _log_round(log, slow, seconds)
            if slow.options["measured_seconds"] <= target:
                plan = choose()  # it meets the budget after all, keeping more Σ|γ|
                continue
            high = slow.options["goal_seconds"]
            points.insert(0, (math.log(high), math.log(slow.options["measured_seconds"])))
        goal = math.exp(_next_goal(points, math.log(target * (1 - tolerance / 2))))
        if high is not None and (landed_slow >= 2 or not low < goal < high):
            goal = math.sqrt(low * high)  # the secant stalls or leaves the bracket: its middle
        try:
            candidate = search(goal, exponents=(exponent,))
        except ValueError:
            break
        if any(candidate.kept == p.kept for p in tried):
            break  # nothing between the two plans to try
        candidate.options["goal_seconds"] = goal
        slow_again = _time_plan(model, graph, candidate, measure, CONFIRMING_TIMINGS) > target
        landed_slow = landed_slow + 1 if slow_again else 0
        tried.append(candidate)
        _log_round(log, candidate, seconds)
        plan = choose()
    if plan.options["measured_seconds"] < target * (1 - tolerance):
        near = [p for p in tried if len(p.options["timings"]) >= CONFIRMING_TIMINGS
                and target < p.options["measured_seconds"] <= target * (1 + MEETS_WITHIN)]
        if near:  # the nearest to the budget: the slower ones' timings are the likelier to have erred fast
            plan = min(near, key=lambda p: p.options["measured_seconds"])
    return plan


def _log_round(log: list[dict], plan: PruningPlan, seconds) -> None:
    log.append({"goal_seconds": plan.options["goal_seconds"], "predicted_seconds": seconds(plan),
                "measured_seconds": plan.options["measured_seconds"], "timings": len(plan.options["timings"]),
                "ranking": plan.options.get("ranking", "|γ|")})


def _time_plan(model, graph, plan: PruningPlan, measure, timings: int,
               confirm_if: Callable[[float], bool] = lambda seconds: False) -> float:
    """Time the compact model of ``plan`` until it has ``timings`` timings (``plan.options["timings"]``,
    in the tables' seconds), and up to :data:`CONFIRMING_TIMINGS` when their median satisfies
    ``confirm_if`` (the compact model built once for both); ``measured_seconds`` is the median of the
    timings, which it returns."""
    from .surgery import apply_plan

    done = plan.options.setdefault("timings", [])
    compact = None
    for wanted in (timings, CONFIRMING_TIMINGS):
        if len(done) < wanted and (wanted == timings or confirm_if(statistics.median(done))):
            if compact is None:
                compact = apply_plan(model, plan, graph=graph)
            done += [measure(compact) for _ in range(wanted - len(done))]
    plan.options["measured_seconds"] = statistics.median(done)
    return plan.options["measured_seconds"]


def _best_measured(tried: list[PruningPlan], kept, target: float, confirm) -> PruningPlan:
    """The plan keeping the most Σ|γ| among those measured at ``target`` or faster, once ``confirm`` (the
    median of :data:`CONFIRMING_TIMINGS` timings) still says so; else the fastest measured.

    The budget is met as measured, with no slack: choosing the most Σ|γ| among plans measured up to 5%
    too slow chose, each time, the one whose timing erred fastest, and timed again the compact models
    were up to 11% slower than the target (YOLOv8n, batch 1, 4x: 3.57x)."""
    meeting = [p for p in tried if p.options["measured_seconds"] <= target]
    for plan in sorted(meeting, key=kept, reverse=True):
        if confirm(plan) <= target:
            return plan
    return min(tried, key=lambda p: p.options["measured_seconds"])


def _next_goal(points: list[tuple[float, float]], target: float) -> float:
    """The (log) goal whose compact model should measure ``target``: first the goal scaled by target /
    measured (what the tables miss scales with the model), then the secant through the last two
    measurements, which also follows a measured latency that falls slower than the prediction."""
    (g1, m1), (g0, m0) = points[-1], points[-2] if len(points) > 1 else (None, None)
    step = target - m1
    if g0 is not None and abs(g1 - g0) > 1e-6:
        slope = (m1 - m0) / (g1 - g0)
        if slope > 0.05:
            step = (target - m1) / slope
    return g1 + max(-math.log(4), min(math.log(4), step))
