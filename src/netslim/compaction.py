"""Building the compact model from a channel graph and the channels it loses: one mechanism for every
architecture.

The compact model is a copy of the original module tree in which every conv, Linear and BN touching a removed
channel is replaced by a narrower one holding the surviving weights (paper Sec. 3, Fig. 1); no mask remains. It
equals :func:`masked` (the original with the removed channels' γ zeroed) in eval mode. A removed channel's
constant output (e.g. ReLU(β)) is folded into the bias of the layers that read it where that is exact (Linear,
and convs without zero padding); elsewhere β is zeroed too, unless a fold mode that also compensates zero-padded
convs is asked for (see :func:`netslim.surgery.apply_plan`).

Which channels go is the caller's: :mod:`netslim.surgery` takes them from a plan, and the channel analysis
(:mod:`netslim.width_probe`) removes one per BN to see whether the model's own code still runs narrower.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import warnings
from collections.abc import Sequence

import torch
from torch import nn

from .channel_graph import ChannelGraph, LayerUse
from .layers import device_of, evaluating, narrowed, with_selection
from .models.sources import after_narrowing
from .shape_only import ShapeOnly

_CONSUMERS = ("conv", "conv_t", "linear")

FoldMode = bool | str  # True or "exact", "approximate", "carrier", False


def compacted(model: nn.Module, graph: ChannelGraph, pruned: set[int], fold_bias: FoldMode) -> nn.Module:
    """A new model: ``model`` without the channels (root ids) ``pruned``, their constants folded per
    ``fold_bias`` (see :func:`netslim.surgery.apply_plan`)."""
    mode = _mode(fold_bias)
    constants, orphans, carriers = _pruned_constants(model, graph, pruned, mode)
    pruned = pruned - carriers
    narrow = {}
    for path, use in graph.layers.items():
        old = model.get_submodule(path)
        in_keep = _positions(graph, use.in_ids, pruned)
        out_keep = _positions(graph, use.out_ids, pruned)
        narrow[path] = _narrow(old, use, in_keep, out_keep)
        if path in constants:
            _fold(narrow[path], old, in_keep, out_keep, *constants[path])
        if path in orphans:
            _constant_outputs(narrow[path], out_keep, orphans[path])
        if use.kind in ("bn", "select_bn") and carriers:
            _silence(narrow[path], [k for k, j in enumerate(out_keep.tolist())
                                    if graph.root(use.out_ids[j]) in carriers])
    # a copy of everything else; the narrowed layers take the old ones' places (their weights not copied)
    compact = copy.deepcopy(model, memo={id(model.get_submodule(p)): new for p, new in narrow.items()})
    after_narrowing(compact)
    return compact


def masked(model: nn.Module, graph: ChannelGraph, pruned: set[int], fold_bias: FoldMode) -> nn.Module:
    """A copy of ``model`` with the channels ``pruned`` switched off: what :func:`compacted` equals (γ = 0; β zeroed
    too unless ``fold_bias`` lets every layer reading the channel absorb its constant)."""
    return _masked(model, graph, pruned, _foldable(model, graph, pruned, _mode(fold_bias)))


def fold_kinds(model: nn.Module, graph: ChannelGraph, pruned: set[int], fold_bias: FoldMode) -> dict[str, str]:
    """For each layer reading channels of ``pruned``, how their constant reaches it (see
    :func:`netslim.surgery.fold_report`)."""
    mode = _mode(fold_bias)
    report = {}
    for path, use in graph.layers.items():
        if use.kind in _CONSUMERS and not pruned.isdisjoint(graph.roots(use.in_ids)):
            how = _absorbs_constants(model.get_submodule(path), use, mode)
            report[path] = how or "dropped"
    return report


def shapes_only(model: nn.Module, graph: ChannelGraph, inputs: list, computed: Sequence[str] = ()) -> ShapeOnly:
    """Heavy ops on the input get stand-ins (see shape_only.py), except inside the modules kept as they are
    and the layers named in ``computed``."""
    exact = [model.get_submodule(path) for path in computed]
    if graph.fixed_modules:
        exact += [m for path, m in model.named_modules() if any(fnmatch.fnmatch(path, p) for p in graph.fixed_modules)]
    return ShapeOnly([t for t in inputs if isinstance(t, torch.Tensor)], exact).running()


def _mode(fold_bias: FoldMode) -> str:
    modes = {True: "exact", False: "none", "exact": "exact", "approximate": "approximate", "carrier": "carrier",
             "none": "none"}
    if not isinstance(fold_bias, bool | str) or fold_bias not in modes:
        raise ValueError(f"fold_bias must be True/'exact', 'approximate', 'carrier' or False, got {fold_bias!r}")
    return modes[fold_bias]


def _positions(graph: ChannelGraph, ids: tuple, pruned: set[int]) -> torch.Tensor:
    return torch.tensor([k for k, r in enumerate(graph.roots(ids)) if r not in pruned], dtype=torch.long)


def _foldable(model: nn.Module, graph: ChannelGraph, pruned: set[int], mode: str) -> set[int]:
    """Pruned channels whose every reader can take a constant input into its bias (per ``mode``)."""
    if mode == "none":
        return set()
    # A channel multiplied by an unpruned factor (an SE gate) is f(β) times that factor: not a
    # constant, only zero, and only when β is zeroed too.
    ok = set(pruned) - set(graph.roots(graph.gated))
    for path, use in graph.layers.items():
        # a removed group of a grouped conv outputs its bias only when its inputs are exactly zero
        if use.kind == "grouped" or use.kind in _CONSUMERS and not _absorbs_constants(model.get_submodule(path),
                                                                                     use, mode):
            ok -= set(graph.roots(use.in_ids))
    return ok


def _absorbs_constants(module: nn.Module, use: LayerUse, mode: str) -> str:
    """"exact", "approximate", "carrier" or "" (cannot): how a reader takes a constant input into its bias."""
    if mode == "none":
        return ""
    # Padding that repeats the image (reflect, replicate, circular) keeps a constant map constant.
    if use.kind == "linear" or use.kind == "conv" and (module.padding == "valid" or not any(module.padding)
                                                       or module.padding_mode != "zeros"):
        return "exact"
    # A zero-padded conv sees the constant only inside the image, not at its border: there the bias
    # is right in the interior and off at the border positions (paper Sec. 3 drops β outright). A kept
    # constant channel is cut off by the padding exactly like the pruned ones: it can carry them, in a
    # conv whose every filter reads every channel.
    if use.kind == "conv" and mode == "carrier" and module.groups == 1:
        return "carrier"
    if use.kind == "conv" and mode == "approximate":
        return "approximate"
    return ""


def _masked(model: nn.Module, graph: ChannelGraph, pruned: set[int], keep_beta: set[int]) -> nn.Module:
    masked = copy.deepcopy(model)
    _switch_off(masked, graph, pruned, keep_beta)
    return masked


@torch.no_grad()
def _switch_off(model: nn.Module, graph: ChannelGraph, pruned: set[int], keep_beta: set[int]) -> list:
    """Zero the pruned channels' γ (and β unless kept) in place; returns what to put back."""
    saved = []
    for path, use in graph.bns.items():
        roots = graph.roots(use.out_ids)
        positions = [pos for pos, r in enumerate(roots) if r in pruned]
        if not positions:
            continue
        bn = model.get_submodule(path)
        index = torch.tensor(positions, device=bn.weight.device)
        saved.append((bn, index, bn.weight[index].clone(), bn.bias[index].clone()))
        bn.weight[index] = 0
        zero_beta = [pos for pos in positions if roots[pos] not in keep_beta]
        if zero_beta:
            bn.bias[torch.tensor(zero_beta, device=bn.bias.device)] = 0
    return saved


def _orphans(graph: ChannelGraph, pruned: set[int]) -> dict[str, list[int]]:
    """Kept output positions of selection BNs whose input channel is pruned (see ``close_selection``)."""
    found = {}
    for path, use in graph.bns.items():
        if use.kind == "select_bn":
            inputs, outputs = graph.roots(use.in_ids), graph.roots(use.out_ids)
            lost = [j for j, s in enumerate(use.source) if outputs[j] not in pruned and inputs[s] in pruned]
            if lost:
                found[path] = lost
    return found


@torch.no_grad()
def _pruned_constants(model: nn.Module, graph: ChannelGraph, pruned: set[int], mode: str
                      ) -> tuple[dict[str, tuple], dict[str, dict[int, float]], set[int]]:
    """The constants pruned channels leave behind, measured on the masked model.

    First, for each layer reading pruned channels (when folding, ``mode``): their positions, the
    constant value they carry, the map size and, in ``"carrier"`` mode for a zero-padded conv, the
    position of the one that carries them all; only constants that are truly constant and nonzero,
    at readers that can absorb them, are returned. Second, for each selection BN with kept outputs
    whose input is pruned: the constant each such output has before its activation, ``{position: value}``.
    Third, the carriers: pruned channels (roots) that stay, as constants (γ = 0, β kept).
    Measured, not derived: the masked model runs once and each reader's input is recorded, so any
    chain of elementwise ops and pooling between BN and reader is handled.
    """
    keep_beta = _foldable(model, graph, pruned, mode)
    readers = {p: u for p, u in graph.layers.items()
               if mode != "none" and u.kind in _CONSUMERS and not pruned.isdisjoint(graph.roots(u.in_ids))}
    selecting = {p for p, u in graph.bns.items()
                 if u.kind == "select_bn" and not pruned.isdisjoint(graph.roots(u.in_ids))}
    if not readers and not selecting:
        return {}, {}, set()
    with evaluating(model):
        saved = _switch_off(model, graph, pruned, keep_beta)  # the masked model, in place and put back
        try:
            generator = torch.Generator().manual_seed(0)
            example = torch.randn(1, *graph.input_shape[1:], generator=generator)
            floating = next((t for t in model.parameters() if t.is_floating_point()), example)
            example = example.to(device_of(model), floating.dtype)
            # A removed channel's value does not depend on what the convolutions compute: stand-ins do
            # (random, so a data-dependent gate still shows); where a chain of stand-ins overflowed into a
            # removed channel (0 * inf in its BN), the model runs again as it is.
            # Removed channels a layer computes without a BN replacing them by β (a removed group of a
            # grouped conv outputs its bias) are computed as they are.
            owned = set(graph.producers.values())
            computed = [p for p, u in graph.layers.items() if u.kind not in ("bn", "select_bn") and p not in owned
                        and not pruned.isdisjoint(graph.roots(u.out_ids))]
            seen = _inputs_seen(model, [*readers, *selecting], example, graph, computed)
            for path, values in seen.items():
                at = torch.tensor([k for k, r in enumerate(graph.roots(graph.layers[path].in_ids)) if r in pruned])
                axis = graph.layers[path].axis
                if values.is_floating_point() and not bool(values.index_select(axis, at).isfinite().all()):
                    seen = _inputs_seen(model, [*readers, *selecting], example, None)
                    break
        finally:
            for bn, index, gamma, beta in saved:
                bn.weight[index] = gamma
                bn.bias[index] = beta
    measured, inexact = {}, []
    for path, use in readers.items():
        positions = torch.tensor([k for k, r in enumerate(graph.roots(use.in_ids)) if r in pruned])
        # float64 on the CPU: the weights these are folded into may be float64 (and MPS has no float64)
        values = seen[path].index_select(use.axis, positions.to(seen[path].device)).to("cpu", torch.float64)
        per_channel = values.movedim(use.axis, 0).reshape(len(positions), -1)
        mean = per_channel.mean(1)
        spread = (per_channel - mean[:, None]).abs().amax(1)
        scale = 1e-5 * (1 + mean.abs())
        nonzero = (mean.abs() > scale) | (spread > scale)
        if not nonzero.any():
            continue
        if not _absorbs_constants(model.get_submodule(path), use, mode) or (spread > scale).any():
            inexact.append(path)
            continue
        measured[path] = (positions[nonzero], mean[nonzero], tuple(seen[path].shape[2:]))
    if inexact:
        warnings.warn(f"pruned channels read by {inexact[:3]} carry a nonzero value these layers cannot absorb; "
                      "the compact model differs slightly from the masked one there", stacklevel=3)
    carriers = _carriers(model, graph, readers, measured) if mode == "carrier" else set()
    constants = {}
    for path, (positions, values, spatial) in measured.items():
        roots = [graph.root(readers[path].in_ids[int(k)]) for k in positions]
        carried = [n for n, r in enumerate(roots) if r in carriers]
        # a kept carrier reaches its readers by itself, with its own weights: only one of a reader's
        # carriers takes the other constants, and it is counted once
        best = max(carried, key=lambda n: abs(float(values[n]))) if carried else None
        carrying = _absorbs_constants(model.get_submodule(path), readers[path], mode) == "carrier"
        rest = torch.tensor([n for n in range(len(roots)) if n not in carried or carrying and n == best],
                            dtype=torch.long)
        if carrying:
            constants[path] = (positions[rest], values[rest], spatial, int(positions[best]))
        elif len(rest):  # into the bias
            constants[path] = (positions[rest], values[rest], spatial, None)
    orphans = {}  # a carrier's own BN channels are silenced (γ = 0, β): not orphans, even where they select
    for path, positions in _orphans(graph, pruned - carriers).items():
        positions = [j for j in positions if graph.root(graph.layers[path].out_ids[j]) not in carriers]
        if positions:
            orphans[path] = positions
    return constants, {path: _selected_constants(model.get_submodule(path), graph.layers[path], positions,
                                                 seen[path]) for path, positions in orphans.items()}, carriers


def _inputs_seen(model: nn.Module, paths: list[str], example: torch.Tensor, stand_ins: ChannelGraph | None,
                 computed: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """The input of each layer in ``paths`` (its first call) on ``example``; with stand-ins for the heavy ops
    on the input when ``stand_ins`` gives the graph (its fixed modules and the layers ``computed`` are
    computed as they are)."""
    seen: dict[str, torch.Tensor] = {}

    def record(path: str, args: tuple) -> None:  # a pre-hook returning a value would replace the inputs
        seen.setdefault(path, args[0].detach())

    hooks = [model.get_submodule(p).register_forward_pre_hook(lambda m, args, p=p: record(p, args), prepend=True)
             for p in paths]
    try:
        with shapes_only(model, stand_ins, [example], computed) if stand_ins is not None else \
                contextlib.nullcontext():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _carriers(model: nn.Module, graph: ChannelGraph, readers: dict[str, LayerUse], measured: dict) -> set[int]:
    """One pruned channel (root) per zero-padded conv that must carry constants, shared where convs share
    inputs: the one with the largest constant (the carried weights are scaled by value / its value)."""
    carriers: set[int] = set()
    for path, (positions, values, _) in measured.items():
        if _absorbs_constants(model.get_submodule(path), readers[path], "carrier") != "carrier":
            continue
        roots = [graph.root(readers[path].in_ids[int(k)]) for k in positions]
        if not carriers.intersection(roots):
            carriers.add(roots[int(values.abs().argmax())])
    return carriers


def _selected_constants(bn: nn.Module, use: LayerUse, positions: list[int], seen: torch.Tensor) -> dict[int, float]:
    """A selection BN's pre-activation output at ``positions`` when its (removed) inputs are constants."""
    out = {}
    for j in positions:
        channel = seen[:, use.source[j]].to("cpu", torch.float64)
        value = float(channel.mean())
        if float((channel - value).abs().max()) > 1e-5 * (1 + abs(value)):
            warnings.warn(f"'{use.path}' reads a removed channel that is not constant; the compact model differs "
                          "slightly from the masked one there", stacklevel=4)
        mean = float(bn.running_mean[j]) if bn.running_mean is not None else value
        var = float(bn.running_var[j]) if bn.running_var is not None else 1.0
        out[j] = float(bn.weight[j]) * (value - mean) / (var + bn.eps) ** 0.5 + float(bn.bias[j])
    return out


@torch.no_grad()
def _constant_outputs(bn: nn.Module, out_keep: torch.Tensor, constants: dict[int, float]) -> None:
    """Make the compact BN output ``constants`` at those (original) positions: γ = 0, β = the constant."""
    for k, j in enumerate(out_keep.tolist()):
        if j in constants:
            bn.weight[k] = 0
            bn.bias[k] = constants[j]
            if bn.running_mean is not None:
                bn.running_mean[k] = 0
                bn.running_var[k] = 1


# -- narrowing (layers.narrowed keeps each module's class and behaviour) --

def _narrow(old: nn.Module, use: LayerUse, in_keep: torch.Tensor, out_keep: torch.Tensor) -> nn.Module:
    if len(in_keep) == 0 or len(out_keep) == 0:
        raise ValueError(f"pruning would leave '{use.path}' with no channels; keep at least one (min_channels)")
    if use.kind == "select_bn":
        # Where does each kept output channel sit in the *compact* input?
        compact_pos = {p: k for k, p in enumerate(in_keep.tolist())}
        # an output whose input is removed reads any kept channel: it becomes a constant (_constant_outputs)
        index = torch.tensor([compact_pos.get(use.source[j], 0) for j in out_keep.tolist()], dtype=torch.long)
        return with_selection(narrowed(old, out_keep, out_keep), index, len(in_keep))
    if use.kind in ("bn", "depthwise"):
        in_keep = out_keep
    return narrowed(old, in_keep, out_keep)


@torch.no_grad()
def _fold(new: nn.Module, old: nn.Module, in_keep: torch.Tensor, out_keep: torch.Tensor, positions: torch.Tensor,
          value: torch.Tensor, spatial: tuple[int, ...], carrier: int | None) -> None:
    """Add the contribution of constant pruned inputs to ``new``: into its bias, or into the weights of the
    kept constant input ``carrier`` (an original input position).

    Carrier: the carrier's column becomes Σ (value / carrier's value) × the constants' columns, so each
    output position sees exactly the taps the masked model sees, border included. Bias: Linear and
    unpadded convs see every tap everywhere, so the contribution is exact. A zero-padded conv
    (approximate mode) sees fewer taps at the border: where most output positions (at the size the
    analysis ran) are interior, the bias is the interior value (exact there); on a small map, mostly
    border (a 3x3 or 1x1 map deep in a CIFAR network), it is the mean over the positions, which is the
    least-squares choice and exact on a 1x1 map.
    """
    w = old.weight.detach().index_select(1, positions.to(old.weight.device))  # the few pruned inputs first
    w = w.index_select(0, out_keep.to(w.device)).to("cpu", torch.float64)
    value = value.to("cpu", torch.float64)
    if carrier is not None:
        at = positions.tolist().index(carrier)
        column = (w * (value / value[at]).view(1, -1, *([1] * (w.dim() - 2)))).sum(1)
        new.weight[:, in_keep.tolist().index(carrier)] = column.to(new.weight.device, new.weight.dtype)
        return
    if w.dim() > 2 and _absorbs_constants(old, LayerUse("", "conv", (), ()), "exact") != "exact":
        constant = value.view(1, -1, *([1] * len(spatial))).expand(1, len(value), *spatial)
        conv = getattr(nn.functional, f"conv{len(spatial)}d")
        per_position = conv(constant, w, None, old.stride, old.padding, old.dilation).flatten(2)[0]
        interior = w.flatten(2).sum(2) @ value
        at_interior = torch.isclose(per_position, interior[:, None], rtol=1e-4, atol=1e-6).all(0)
        contribution = interior if at_interior.float().mean() >= 0.5 else per_position.mean(1)
    else:
        contribution = (w.flatten(2).sum(2) if w.dim() > 2 else w) @ value
    if new.bias is None:
        new.bias = nn.Parameter(torch.zeros(new.weight.shape[0], device=new.weight.device, dtype=new.weight.dtype))
    new.bias.add_(contribution.to(new.bias.device, new.bias.dtype))


@torch.no_grad()
def _silence(bn: nn.Module, positions: list[int]) -> None:
    """A carrier's BN channels output their β alone (γ = 0), as in the masked model."""
    if positions:
        bn.weight[torch.tensor(positions, device=bn.weight.device)] = 0
