"""Building the physically narrower model from a plan.

A plan names the channels each BN keeps; :func:`pruned_channels` turns it into channels of the model's channel
graph, and :mod:`netslim.compaction` builds the compact model without them (paper Sec. 3, Fig. 1): one mechanism
for every architecture. The compact model equals :func:`masked_model` (the original with the pruned channels'
γ zeroed) in eval mode; how a pruned channel's constant output (e.g. ReLU(β)) is folded into the layers reading
it is :func:`apply_plan`'s ``fold_bias``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .compaction import FoldMode, compacted, fold_kinds, masked
from .graph import ChannelGraph, trace_channels
from .layers import device_of
from .plan import PruningPlan


def pruned_channels(graph: ChannelGraph, plan: PruningPlan) -> set[int]:
    """The channels (root ids) a plan removes; a clear error if the plan does not fit the graph."""
    bns = graph.bns
    extra = sorted(set(plan.kept) - set(bns))
    if extra:
        raise ValueError(f"plan does not fit the model: it names BN layers the model lacks: {extra[:3]}")
    prunable = graph.prunable_roots()
    kept_roots, pruned = set(), set()
    for path, use in bns.items():
        if path not in plan.kept:
            raise ValueError(f"plan does not fit the model: no entry for BN layer '{path}'")
        width = plan.layers[path].width if path in plan.layers else len(use.out_ids)
        if width != len(use.out_ids):
            raise ValueError(f"plan does not fit the model: layer '{path}' has {len(use.out_ids)} channels, "
                             f"the plan was made for {width}")
        outside = [k for k in plan.kept[path] if not 0 <= k < width]
        if outside:
            raise ValueError(f"plan is corrupt: it keeps channel {outside[0]} of layer '{path}', which has channels "
                             f"0..{width - 1}")
        keep = set(plan.kept[path])
        for pos, r in enumerate(graph.roots(use.out_ids)):
            (kept_roots if pos in keep else pruned).add(r)
    if pruned & kept_roots:
        raise ValueError("plan does not fit the model: it keeps a channel in one layer and prunes it in a "
                         "layer coupled to it")
    if pruned - prunable:
        raise ValueError("plan does not fit the model: it prunes channels that cannot be removed here")
    return pruned


def apply_plan(model: nn.Module, plan: PruningPlan, *, fold_bias: FoldMode = True,
               example_input: torch.Tensor | None = None, fixed: Sequence[str] = (),
               graph: ChannelGraph | None = None) -> nn.Module:
    """Return a new, physically narrower copy of ``model`` with the channels of ``plan`` removed.

    ``example_input`` and ``fixed`` default to those the plan was made with.
    ``fold_bias``: a pruned channel still outputs a constant (e.g. ReLU(β)); ``True``/``"exact"`` folds it
    into the readers' biases where that is exact (Linear, unpadded convs) and zeroes it elsewhere, so the
    compact model equals :func:`masked_model` exactly; ``"approximate"`` also folds it into zero-padded
    convs, exact in the interior and approximate only at the border positions (the masked model then
    keeps every β: γ zeroed only); ``"carrier"`` compensates zero-padded convs exactly at every position
    by keeping, per such conv, one pruned channel as a constant (γ = 0, β kept) that carries the other
    pruned channels' constants through that conv's weights, so zero padding cuts them off exactly as in
    the masked model; ``False`` drops it (see :func:`fold_report`).
    """
    graph = graph or _graph_for(model, plan, example_input, fixed)
    return compacted(model, graph, pruned_channels(graph, plan), fold_bias)


def _graph_for(model: nn.Module, plan: PruningPlan, example_input, fixed: Sequence[str]) -> ChannelGraph:
    """The analysis the plan was made on: its example input's shape and fixed patterns unless given."""
    shape = plan.options.get("input_shape")
    if example_input is None and shape:
        example_input = torch.zeros(*shape, device=device_of(model))
    return trace_channels(model, example_input, fixed or plan.options.get("fixed", ()))


def masked_model(model: nn.Module, plan: PruningPlan, *, fold_bias: FoldMode = True,
                 example_input: torch.Tensor | None = None, fixed: Sequence[str] = (),
                 graph: ChannelGraph | None = None) -> nn.Module:
    """The original model with the plan's channels switched off: what :func:`apply_plan` equals.

    Pruned channels get γ = 0; their β is zeroed too unless ``fold_bias`` and every layer reading
    the channel can absorb its constant output (exactly, or with ``"approximate"`` in a padded conv's
    interior too).
    """
    graph = graph or _graph_for(model, plan, example_input, fixed)
    pruned = pruned_channels(graph, plan)
    return masked(model, graph, pruned, fold_bias)


def fold_report(model: nn.Module, plan: PruningPlan, *, fold_bias: FoldMode = True,
                example_input: torch.Tensor | None = None, fixed: Sequence[str] = ()) -> dict[str, str]:
    """For each layer reading pruned channels: ``"exact"`` (their constant is folded exactly),
    ``"approximate"`` (folded into a padded conv: exact except at the border), ``"carrier"`` (folded
    exactly into the weights of one kept constant channel, see :func:`apply_plan`) or ``"dropped"``."""
    graph = _graph_for(model, plan, example_input, fixed)
    pruned = pruned_channels(graph, plan)
    return fold_kinds(model, graph, pruned, fold_bias)
