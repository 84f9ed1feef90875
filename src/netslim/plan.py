"""Which channels survive: the paper's global |γ| threshold with per-layer guards, as plain data.

A :class:`PruningPlan` is frozen and JSON-serializable: for every BN (keyed by its module path) the
indices of the channels it keeps, the threshold and a per-layer report. Planning never touches the
model; :func:`netslim.surgery.apply_plan` turns a plan into a compact model.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .graph import ChannelGraph, trace_channels
from .layers import check_patterns, selected
from .runfolder import check_output, write_atomic

DEFAULT_PERCENT = 0.7  # what the CLI and a config prune when told no amount (the paper's VGG/CIFAR-10 70%)
COLLAPSED = 1e-6  # |γ| below this is numerically zero: the channel contributes only its shift β


@dataclass(frozen=True)
class LayerReport:
    """One BN layer in a plan: width before and after, and whether a guard kept channels."""

    width: int
    kept: int
    guard: str = ""  # "min_channels", "max_layer_fraction", "round_to", "collapsed" (every |γ| ~ 0) or ""


@dataclass(frozen=True)
class PruningPlan:
    """Kept channel indices per BN layer, and how they were chosen."""

    kept: dict[str, tuple[int, ...]]
    layers: dict[str, LayerReport]
    threshold: float
    percent: float
    total_channels: int
    pruned_channels: int
    options: dict = field(default_factory=dict)

    @property
    def achieved_percent(self) -> float:
        """Fraction of prunable channels actually pruned (guards may keep some of the requested)."""
        return self.pruned_channels / max(self.total_channels, 1)

    @property
    def guarded(self) -> list[str]:
        """BN layers where a guard kept channels the threshold alone would have pruned."""
        return [p for p, r in self.layers.items() if r.guard]

    def __repr__(self) -> str:  # the dataclass's own would print every kept index
        ranking = self.options.get("ranking", "|γ|")
        how = f"threshold |γ| {self.threshold:.4g}" if ranking == "|γ|" else f"ranked by {ranking}"
        return (f"PruningPlan({self.pruned_channels}/{self.total_channels} channels pruned "
                f"({100 * self.achieved_percent:.1f}%) in {len(self.layers)} BN layers, {how})")

    def __str__(self) -> str:
        """A summary: totals, the guards, and the layers that lose the most (plan.layers has them all)."""
        lines = [repr(self)]
        if self.guarded:
            lines.append(f"  guards kept channels in {len(self.guarded)} layers: " + ", ".join(
                f"{p} ({self.layers[p].guard})" for p in self.guarded[:4]) + (", ..." if len(self.guarded) > 4 else ""))
        cut = sorted(self.layers.items(), key=lambda kv: kv[1].kept / max(kv[1].width, 1))  # model order on ties
        shown = [(p, r) for p, r in cut if r.kept < r.width][:8]
        if shown:
            lines.append("  most pruned (width before -> after):")
            lines += [f"    {p:<32} {r.width:>5} -> {r.kept}" for p, r in shown]
            if len(self.layers) > len(shown):
                lines.append(f"    ... {len(self.layers) - len(shown)} more layers in plan.layers")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["kept"] = {k: list(v) for k, v in self.kept.items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> PruningPlan:
        """A plan from plain data (a JSON file), checked: each layer's kept indices are integers inside its width,
        in order, once; its report agrees with them; an input shape is a few positive sizes of a tensor of at
        most :data:`MAX_INPUT_ELEMENTS`; fixed patterns are strings. A ValueError names what is wrong."""
        if not isinstance(d, Mapping):
            raise ValueError(f"not a pruning plan: a JSON {type(d).__name__}, not an object")
        try:
            layers = {k: LayerReport(**v) for k, v in d["layers"].items()}
            kept = {k: _kept_indices(k, v, layers.get(k)) for k, v in d["kept"].items()}
            plan = cls(kept=kept, layers=layers,
                       threshold=float(d["threshold"]), percent=float(d["percent"]),
                       total_channels=int(d["total_channels"]), pruned_channels=int(d["pruned_channels"]),
                       options=dict(d.get("options", {})))
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"not a pruning plan: {e!r}") from None
        if set(layers) != set(kept):
            raise ValueError("not a pruning plan: its layer reports and its kept indices name different layers")
        _check_options(plan.options)
        return plan

    def save(self, path: str | Path, *, overwrite: bool = False) -> None:
        """Write the plan as JSON, whole or not at all; an existing ``path`` is replaced only with ``overwrite``."""
        write_atomic(check_output(path, overwrite), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> PruningPlan:
        try:
            data = json.loads(Path(path).read_text())
        except (ValueError, RecursionError) as e:  # not JSON, not text, or nested past what the parser follows
            why = "nested too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0]
            raise ValueError(f"{path} is not a JSON pruning plan: {why}") from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


MAX_INPUT_ELEMENTS = 1 << 28  # an example input of 1 GiB in fp32: more than any analysis needs


def _kept_indices(path: str, values, report: LayerReport | None) -> tuple[int, ...]:
    """The kept channel indices of one layer, checked against its report (see PruningPlan.from_dict)."""
    if not isinstance(values, list | tuple) or not all(type(i) is int for i in values):  # no floats, no bools
        raise ValueError(f"not a pruning plan: kept['{path}'] must list integer channel indices, got "
                         f"{str(values)[:60]}")
    if report is None or not (type(report.width) is int and type(report.kept) is int):
        raise ValueError(f"not a pruning plan: layer '{path}' has no report of integer width and kept count")
    outside = [i for i in values if not 0 <= i < report.width]
    if outside:
        raise ValueError(f"plan is corrupt: it keeps channel {outside[0]} of layer '{path}', which has channels "
                         f"0..{report.width - 1}")
    if list(values) != sorted(set(values)) or len(values) != report.kept or not 1 <= report.kept <= report.width:
        raise ValueError(f"not a pruning plan: kept['{path}'] must list {report.kept} distinct channels (at least one) "
                         "in increasing order, as its layer report says")
    return tuple(values)


def _check_options(options: dict) -> None:
    shape, fixed = options.get("input_shape"), options.get("fixed", [])
    if shape is not None and not (isinstance(shape, list | tuple) and 1 <= len(shape) <= 6
                                  and all(type(s) is int and 1 <= s <= 1 << 16 for s in shape)
                                  and math.prod(shape) <= MAX_INPUT_ELEMENTS):
        raise ValueError(f"not a pruning plan: options.input_shape must be a few positive sizes (a tensor of at most "
                         f"{MAX_INPUT_ELEMENTS:,} elements), got {str(shape)[:60]}")
    if not isinstance(fixed, list | tuple) or not all(isinstance(p, str) for p in fixed):
        raise ValueError(f"not a pruning plan: options.fixed must be a list of module-path patterns, got "
                         f"{str(fixed)[:60]}")


def channel_scores(model: nn.Module, graph: ChannelGraph, aggregate: str = "max") -> dict[int, float]:
    """|γ| per prunable channel (root id); coupled BN channels combine by ``max`` or ``sum``."""
    if aggregate not in ("max", "sum"):
        raise ValueError(f"aggregate must be 'max' or 'sum', got {aggregate!r}")
    prunable = graph.prunable_roots()
    scores: dict[int, float] = {}
    for path, use in graph.bns.items():
        gamma = scales_of(model, path)
        for pos, r in enumerate(graph.roots(use.out_ids)):
            if r not in prunable:
                continue
            old = scores.get(r)
            if old is None:
                scores[r] = gamma[pos]
            else:
                scores[r] = max(old, gamma[pos]) if aggregate == "max" else old + gamma[pos]
    return scores


def scales_of(model: nn.Module, path: str) -> list[float]:
    """|γ| of the BN at ``path``; a ValueError naming it when its scales are NaN or infinite (a ranking of
    them would keep arbitrary channels) or hold no data (the meta device)."""
    weight = model.get_submodule(path).weight.detach()
    if weight.is_meta:
        raise ValueError(f"the weights of {type(model).__name__} are on the meta device (shapes, no values): load "
                         "them first (model.to_empty(device='cpu'), then load_state_dict)")
    gamma = weight.abs().float().cpu()
    if not torch.isfinite(gamma).all():
        raise ValueError(f"BN '{path}' has {int((~torch.isfinite(gamma)).sum())} NaN or infinite scale(s): the model "
                         "diverged; prune an earlier checkpoint")
    return gamma.tolist()


def plan_pruning(
    model: nn.Module,
    percent: float | None = None,
    *,
    layer_percent: float | Mapping[str, float] | None = None,
    max_layer_fraction: float | None = None,
    min_channels: int = 1,
    round_to: int = 1,
    aggregate: str = "max",
    exclude: Sequence[str] = (),
    fixed: Sequence[str] = (),
    example_input: torch.Tensor | None = None,
    graph: ChannelGraph | None = None,
    channel_cost: Mapping[int, float] | None = None,
) -> PruningPlan:
    """Plan the pruning of ``model`` by the magnitude of its BN scaling factors (paper Sec. 3).

    ``percent``: prune exactly ``floor(N * percent)`` of the N prunable channels with the smallest
    |γ| across the whole network (ties broken by graph order), before guards.
    ``layer_percent``: instead, prune that fraction of every BN layer (a float, or a mapping from
    module-path patterns to fractions), as the paper does for the MLP (Table 3).
    Guards, applied after: keep at least ``min_channels`` per layer, prune at most
    ``max_layer_fraction`` of a layer (the multi-pass scheme uses 0.5), round kept counts up to a
    multiple of ``round_to``. Kept-back channels are those with the largest |γ| among the pruned.
    ``exclude``: module-path patterns whose BNs are never pruned; ``fixed``: module-path patterns kept as
    they are. Both follow one rule: a pattern selects the modules it matches and everything inside them,
    and one that matches no module is a ValueError.
    ``channel_cost``: rank by |γ| / cost instead of |γ| (cost per root channel id of ``graph``, e.g. the
    seconds removing it saves: :func:`netslim.latency.plan_for_latency`); inside a layer, where every
    channel costs the same, the smallest |γ| still go first. The threshold is then in those units.
    """
    _check_args(percent, layer_percent, max_layer_fraction, min_channels, round_to)
    graph = graph or trace_channels(model, example_input, fixed)
    scores = channel_scores(model, graph, aggregate)
    check_patterns(model, exclude, "exclude")  # the rule of fixed= too (netslim.layers.selected)
    for path, use in graph.bns.items():
        if selected(path, exclude):
            for i in use.out_ids:
                scores.pop(graph.root(i), None)
    if scores and max(scores.values()) < COLLAPSED:
        raise ValueError(f"every BN scale has collapsed to ~0 (largest |γ| = {max(scores.values()):.2g}): the "
                         "sparsity λ was too strong and the ranking is meaningless; retrain with a smaller λ")
    if not scores:
        raise ValueError("the model has no prunable channel (every BN is fixed, excluded or coupled to a "
                         "fixed tensor)")
    members = {p: graph.roots(u.out_ids) for p, u in graph.bns.items()}
    # Ties (e.g. an untrained model, all γ = 0.5) break by relative position inside the layer, then by
    # graph order: deterministic, and spread over layers instead of emptying the first ones.
    order: dict[int, tuple[float, int]] = {}
    for roots in members.values():
        for pos, r in enumerate(roots):
            order.setdefault(r, (pos / len(roots), r))
    rank = scores if channel_cost is None else {r: v / max(channel_cost.get(r, 1.0), 1e-30) for r, v in scores.items()}
    ranked = sorted(scores, key=lambda r: (rank[r], order[r]))

    if layer_percent is None:
        n_prune = math.floor(len(ranked) * percent)
        pruned = set(ranked[:n_prune])
        threshold = rank[ranked[n_prune]] if n_prune < len(ranked) else math.inf
    else:
        pruned = set()
        for path, roots in members.items():
            p = _layer_fraction(layer_percent, path)
            own = sorted({r for r in roots if r in scores}, key=lambda r: (scores[r], order[r]))
            pruned.update(own[: math.floor(len(roots) * p)])
        threshold = math.nan

    guards: dict[str, str] = {}
    for path, roots in members.items():
        _apply_guards(path, roots, pruned, scores, min_channels, max_layer_fraction, round_to, guards)
    pruned = graph.close_selection(pruned)

    kept = {p: tuple(k for k, r in enumerate(roots) if r not in pruned) for p, roots in members.items()}
    for path, roots in members.items():  # a whole layer near zero: the guard keeps it, but say why
        if all(scores.get(r, math.inf) < COLLAPSED for r in roots):
            guards[path] = "collapsed"
    layers = {p: LayerReport(len(members[p]), len(kept[p]), guards.get(p, "")) for p in members}
    options = dict(percent=percent, layer_percent=layer_percent, max_layer_fraction=max_layer_fraction,
                   min_channels=min_channels, round_to=round_to, aggregate=aggregate, exclude=list(exclude),
                   fixed=list(fixed), input_shape=list(graph.input_shape))  # apply_plan needs no repeating
    return PruningPlan(kept, layers, float(threshold), float(percent or 0.0), len(ranked),
                       len(pruned & set(scores)), options)


def _apply_guards(path: str, roots: list[int], pruned: set[int], scores: dict[int, float], min_channels: int,
                  max_fraction: float | None, round_to: int, guards: dict[str, str]) -> None:
    """Un-prune the largest-|γ| pruned channels of one layer until its guards hold."""
    width = len(roots)
    candidates = sorted({r for r in roots if r in pruned}, key=lambda r: -scores.get(r, math.inf))

    def n_kept() -> int:
        return sum(r not in pruned for r in roots)

    rules = [("min_channels", min(min_channels, width))]
    if max_fraction is not None:
        rules.append(("max_layer_fraction", width - math.floor(width * max_fraction)))
    for name, needed in rules:
        while n_kept() < needed and candidates:
            pruned.discard(candidates.pop(0))
            guards[path] = name
    if round_to > 1:
        target = min(width, math.ceil(n_kept() / round_to) * round_to)
        while n_kept() < target and candidates:
            pruned.discard(candidates.pop(0))
            guards.setdefault(path, "round_to")


def _layer_fraction(layer_percent: float | Mapping[str, float], path: str) -> float:
    if isinstance(layer_percent, Mapping):
        for pattern, p in layer_percent.items():
            if fnmatch.fnmatch(path, pattern):
                return float(p)
        return 0.0
    return float(layer_percent)


def _check_args(percent, layer_percent, max_layer_fraction, min_channels, round_to) -> None:
    if (percent is None) == (layer_percent is None):
        raise ValueError("give exactly one of percent (global) or layer_percent (per layer)")
    fractions = [("percent", percent), ("max_layer_fraction", max_layer_fraction)]
    if isinstance(layer_percent, Mapping):
        fractions += [(f"layer_percent[{k!r}]", v) for k, v in layer_percent.items()]
    else:
        fractions.append(("layer_percent", layer_percent))
    for name, value in fractions:
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise ValueError(f"{name} must be a fraction in [0, 1), got {value!r} (e.g. 0.7 prunes 70%)")
    if not isinstance(min_channels, int) or min_channels < 1:
        raise ValueError(f"min_channels must be an integer >= 1 (a layer is never emptied), got {min_channels!r}")
    if not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be an integer >= 1, got {round_to!r}")
