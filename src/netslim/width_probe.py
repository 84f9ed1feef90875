"""The channel analysis's probe of narrower widths: does the model's own code still run once they change?

:func:`netslim.graph.trace_channels` asks it when Python code read a channel count; it builds a narrower compact
model (:mod:`netslim.compaction`) and names the module that fails on it.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import torch
from torch import nn
from torch.utils import _pytree as pytree

from .channel_graph import ChannelGraph
from .compaction import compacted, shapes_only


@torch.no_grad()
def width_sensitive_module(model: nn.Module, graph: ChannelGraph, example_input) -> str | None:
    """The module that fails once widths change, or None: a probe for what the analysis cannot see.

    Forward code may read a tensor's channel count as a Python int (``B, C, H, W = x.shape``) and
    reshape another tensor with it; ints are invisible to the analysis. So one channel of every BN
    layer that can lose one is removed, the compact model runs on the example input, and the
    innermost module running when it fails is returned (the caller keeps that module as it is).
    """
    prunable, pruned = graph.prunable_roots(), set()
    counts, left, touching = {}, {}, defaultdict(list)  # per layer side: ids per root, ids left
    for path, use in graph.layers.items():
        for side, ids in (("in", use.in_ids), ("out", use.out_ids)):
            counts[path, side] = Counter(graph.root(i) for i in ids)
            left[path, side] = len(ids)
            for r in counts[path, side]:
                touching[r].append((path, side))
    readers = defaultdict(set)  # channel -> selection-BN channels reading it (they must go with it)
    for use in graph.bns.values():
        if use.kind == "select_bn":
            for out_id, pos in zip(use.out_ids, use.source, strict=True):
                readers[graph.root(use.in_ids[pos])].add(graph.root(out_id))
    for use in graph.bns.values():
        roots = [graph.root(i) for i in use.out_ids]
        candidate = next((r for r in roots if r in prunable), None)
        if candidate is None or any(r in pruned for r in roots):
            continue
        group, todo = set(), [candidate]
        while todo:
            r = todo.pop()
            if r not in group and r in prunable:
                group.add(r)
                todo.extend(readers[r])
        keys = {key for r in group for key in touching[r]}
        if all(left[key] - sum(counts[key][r] for r in group) >= 1 for key in keys):  # never empty a layer
            pruned |= group
            for key in keys:
                left[key] -= sum(counts[key][r] for r in group)
    pruned = graph.close_selection(pruned)
    if not pruned:
        return None
    compact = compacted(model, graph, pruned, "none").eval()
    where: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, p=path: where.append(p)) for path, m in
             compact.named_modules()] + [m.register_forward_hook(lambda mod, args, out: _pop(where)) for m in
                                         compact.modules()]
    inputs = example_input if isinstance(example_input, tuple | list | dict) else (example_input,)
    try:
        with shapes_only(compact, graph, pytree.tree_leaves(inputs)):  # it only has to run
            compact(**inputs) if isinstance(inputs, dict) else compact(*inputs)
    except Exception:  # a width written into the forward code: any error means the same
        return where[-1] if where else ""
    finally:
        for h in hooks:
            h.remove()
    return None


def _pop(stack: list) -> None:
    stack.pop()
