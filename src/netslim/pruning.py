"""One call from a model and an amount to prune to the plan: a global percent (the paper), a fraction of
every layer, a FLOPs or parameter budget, or a latency target. The command line's ``prune`` calls it;
so can a notebook."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .budget import plan_for_budget
from .deployment import resolve_target, target_defaults
from .latency import plan_for_latency
from .plan import DEFAULT_PERCENT, PruningPlan, plan_pruning

# The width multiples a latency plan tries (the one keeping the most Σ|γ| within the budget wins): tensor
# cores want multiples of 8 and sometimes 16 (other widths leave a pruned model no faster on a GPU); on a
# CPU, None: any width, and the channel blocks the latency tables found layers stepping with (16 for
# oneDNN with AVX-512 here).
LATENCY_WIDTH_MULTIPLES: dict[str, tuple[int, ...] | None] = {"gpu": (8, 16), "cpu": None}
AMOUNTS = ("percent", "layer_percent", "target_flops", "target_params", "target_latency", "target_speedup")


@dataclass(frozen=True)
class Planned:
    plan: PruningPlan
    target: str  # the deployment target the widths were rounded for ("auto" resolved)
    round_to: int  # the width multiple: as given, else the target's default
    predicted_latency: float | None = None  # seconds per forward pass, for a latency target


def plan_for(model: nn.Module, example_input: torch.Tensor, *, percent: float | None = None,
             layer_percent: float | None = None, target_flops: float | None = None,
             target_params: float | None = None, target_latency: float | None = None,
             target_speedup: float | None = None, timing_input: torch.Tensor | None = None,
             max_layer_fraction: float | None = None, min_channels: int = 1, round_to: int | None = None,
             target: str = "auto", measured_rounds: int = 3, latency_backend: str = "eager",
             refresh_tables: bool = False) -> Planned:
    """Plan the pruning of ``model`` by at most one amount (none: ``DEFAULT_PERCENT`` globally).

    ``target_latency`` (seconds) or ``target_speedup``: planned from latency tables measured on this machine
    at ``timing_input`` (default ``example_input``), trying width multiples ``round_to`` or the target's
    :data:`LATENCY_WIDTH_MULTIPLES`, then corrected by timing the compact model up to ``measured_rounds``
    times, all on ``latency_backend`` (see ``plan_for_latency``); ``refresh_tables``: measured again, not read
    from the cache.
    Otherwise widths are rounded to ``round_to``, by default the ``target``'s (8 for a gpu, 1 for a cpu).
    """
    given = [name for name, value in zip(AMOUNTS, (percent, layer_percent, target_flops, target_params,
                                                   target_latency, target_speedup), strict=True) if value is not None]
    if len(given) > 1:
        raise ValueError(f"give one amount to prune, not {' and '.join(given)}")
    target = resolve_target(target)
    multiple = round_to or target_defaults(target)["round_to"]
    if target_latency is not None or target_speedup is not None:
        plan, predicted = plan_for_latency(
            model, target_latency=target_latency, target_speedup=target_speedup,
            example_input=timing_input if timing_input is not None else example_input,
            max_layer_fraction=max_layer_fraction, min_channels=min_channels,
            round_to=(round_to,) if round_to else LATENCY_WIDTH_MULTIPLES[target], measured_rounds=measured_rounds,
            backend=latency_backend, refresh_tables=refresh_tables)
        return Planned(plan, target, plan.options["round_to"], predicted)
    options = dict(max_layer_fraction=max_layer_fraction, min_channels=min_channels, round_to=multiple,
                   example_input=example_input)
    if target_flops is not None or target_params is not None:
        plan = plan_for_budget(model, target_flops=target_flops, target_params=target_params, **options)
    elif layer_percent is not None:
        plan = plan_pruning(model, None, layer_percent=layer_percent, **options)
    else:
        plan = plan_pruning(model, DEFAULT_PERCENT if percent is None else percent, **options)
    return Planned(plan, target, multiple)
