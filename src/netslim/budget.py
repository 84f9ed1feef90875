"""Pruning to a budget: the global |γ| threshold that meets a FLOPs or parameter target.

More channels pruned never costs more, so the smallest number of pruned channels meeting the target
is found by bisection over the ranked channels, each candidate measured on the real compact model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .graph import trace_channels
from .layers import device_of, evaluating
from .metrics import count_flops, count_params
from .plan import PruningPlan, plan_pruning
from .surgery import apply_plan, pruned_channels


def plan_for_budget(model: nn.Module, *, target_flops: float | None = None, target_params: float | None = None,
                    example_input: torch.Tensor | None = None, fixed: Sequence[str] = (), **plan_options
                    ) -> PruningPlan:
    """The least pruning whose compact model has at most ``target_flops`` (or ``target_params``)
    times the original's FLOPs (parameters). ``plan_options`` go to :func:`plan_pruning` (guards,
    ``round_to``, ``exclude``...). Raises ValueError when the guards make the target unreachable.

    Candidates are costed from per-layer counts (a conv's FLOPs and weights scale with its kept
    input and output channels); the plan returned is checked on the real compact model.
    """
    if (target_flops is None) == (target_params is None):
        raise ValueError("give exactly one of target_flops or target_params")
    target = target_flops if target_flops is not None else target_params
    if not (isinstance(target, (int, float)) and 0 < target <= 1):
        raise ValueError(f"a budget target is a fraction of the original in (0, 1], got {target!r}")
    graph = trace_channels(model, example_input, fixed)
    size = tuple(graph.input_shape[1:])
    costs = _layer_costs(model, graph, size, flops=target_flops is not None)
    limit = target * sum(costs.values())
    total = plan_pruning(model, 0.0, graph=graph, fixed=fixed, **plan_options).total_channels

    def plan_at(k: int) -> PruningPlan:
        return plan_pruning(model, min(k / total, math.nextafter(1.0, 0.0)), graph=graph, fixed=fixed,
                            **plan_options)

    def cost(plan: PruningPlan) -> float:
        pruned = pruned_channels(graph, plan)
        total_cost = 0.0
        for path, c in costs.items():
            use = graph.layers[path]
            kept_in, kept_out = _kept_fraction(graph, use, pruned)
            two_sided = use.kind in ("conv", "conv_t", "linear")  # cost ~ in x out; BN, depthwise ~ out
            total_cost += c * kept_out * (kept_in if two_sided else 1.0)
            if target_params is not None and two_sided and kept_in < 1 and model.get_submodule(path).bias is None:
                total_cost += kept_out * len(use.out_ids)  # an upper bound: the bias a fold may add
        return total_cost

    best = least_pruning(plan_at, total, lambda plan: cost(plan) <= limit)
    if best is None:
        what = "FLOPs" if target_flops is not None else "parameters"
        real = apply_plan(model, plan_at(total), graph=graph)
        achieved = (count_flops(real, size) / count_flops(model, size) if target_flops is not None
                    else count_params(real) / count_params(model))
        raise ValueError(f"target of {_percent(target)} {what} cannot be reached: pruning as much as the guards "
                         f"allow leaves {_percent(achieved)}; relax min_channels, max_layer_fraction or round_to")
    return best


def least_pruning(plan_at: Callable[[int], PruningPlan], total: int,
                  fits: Callable[[PruningPlan], bool]) -> PruningPlan | None:
    """The plan pruning the fewest ranked channels that ``fits`` (more pruning never costs more), by
    bisection over 0..``total``; None when even ``plan_at(total)`` does not fit."""
    if fits(first := plan_at(0)):
        return first
    best = plan_at(total)
    if not fits(best):
        return None
    low, high = 0, total
    while high - low > 1:  # invariant: plan_at(high) fits, plan_at(low) does not
        mid = (low + high) // 2
        plan = plan_at(mid)
        if fits(plan):
            high, best = mid, plan
        else:
            low = mid
    return best


def _layer_costs(model: nn.Module, graph, size: tuple[int, ...], flops: bool) -> dict[str, float]:
    """FLOPs (from torch's counter, per module) or parameters of every layer the graph knows."""
    if not flops:
        return {p: float(sum(t.numel() for t in model.get_submodule(p).parameters(recurse=False)))
                for p in graph.layers}
    with evaluating(model), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *size, device=device_of(model)))
    root = type(model).__name__
    per_module = counter.get_flop_counts()
    return {p: float(sum(per_module.get(f"{root}.{p}", {}).values())) for p in graph.layers}


def _kept_fraction(graph, use, pruned: set[int]) -> tuple[float, float]:
    def frac(ids) -> float:
        return sum(graph.root(i) not in pruned for i in ids) / max(len(ids), 1)

    return frac(use.in_ids), frac(use.out_ids)


def _percent(fraction: float) -> str:
    """A fraction as a percentage with the digits that tell small ones apart (0.01%, not 0.0%)."""
    return f"{100 * fraction:.3g}%"
