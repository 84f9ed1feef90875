"""netslim vs Torch-Pruning (``pip install torch-pruning``), side by side, on BN-scale (network slimming) pruning.

    python benchmarks/torch_pruning_compare.py            # full: VGG-19, ResNet-164, resnet18/50, mobilenetv2
    python benchmarks/torch_pruning_compare.py --quick    # a narrow VGG-19 and the resnet18 fixture, 1 repeat

Both tools prune the same fraction of the channels they rank (coupled channels once; on ResNet-164 the
two counts differ, see the notes it prints) by a global ranking of BN |γ|:

* netslim: ``trace_channels`` + ``plan_pruning(percent)`` + ``apply_plan`` (timed separately);
* Torch-Pruning: ``BNScalePruner(global_pruning=True, pruning_ratio=...)`` with ``BNScaleImportance``,
  in its default configuration (coupled BNs averaged, scores divided by their group's mean) and raw
  (coupled BNs combined by max, no normalization: the paper's global |γ| ranking, as netslim ranks).
  The classifier (last Linear) is in ``ignored_layers``.

The models are untrained; their BN layers are randomized by a seeded generator to look sparse-trained
(see :func:`sparsify_bn`). Fidelity is measured on random inputs in eval mode. Torch-Pruning is a
benchmark-only dependency: nothing under src/ imports it.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

sys.path.insert(0, str(Path(__file__).resolve().parent))  # common, when imported from elsewhere (the tests)

import netslim  # noqa: E402
from common import RESULTS, Goal, commit, machine_record, verdict, write_json  # noqa: E402
from netslim.export import relative_error  # noqa: E402
from netslim.models.resnet import PreActResNet  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = RESULTS / "torch_pruning_compare.json"

BN_INIT = ("sparse-trained look-alike, per BN layer l: a fraction f_l ~ U(0.35, 0.85) of the channels (mean 0.6) "
           "get |γ| = 0.01*|N(0,1)| (near zero), the rest |γ| = s_l*|N(0,1)| with s_l ~ U(0.5, 1.5); "
           "β ~ N(0, 0.1); running_mean ~ 0.1*N(0,1); running_var ~ 0.5 + U(0,1); seeded generator")

# (model, fraction of the ranked channels to prune): netslim.models names or tests/topologies.py fixtures
FULL = [("vgg19", 0.7), ("resnet164", 0.5), ("resnet18", 0.5), ("resnet50", 0.5), ("mobilenetv2", 0.5)]
QUICK = [("vgg19_narrow", 0.7), ("resnet18", 0.5)]
FIXTURES = ("resnet18", "resnet50", "mobilenetv2")

# Torch-Pruning configurations compared: (key, group_reduction, normalizer)
TP_VARIANTS = [("tp_default", "mean", "mean"), ("tp_raw", "max", None)]


def build(name: str) -> nn.Module:
    if name in FIXTURES:
        sys.path.insert(0, str(ROOT / "tests"))
        try:
            import topologies
        finally:
            sys.path.remove(str(ROOT / "tests"))
        return topologies.create(name)
    if name == "vgg19_narrow":
        from netslim.models.vgg import VGG_CFGS, conv_widths
        return netslim.models.create("vgg19", widths=[w // 8 for w in conv_widths(VGG_CFGS["vgg19"])])
    return netslim.models.create(name)


@torch.no_grad()
def sparsify_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN the scales of a sparsity-trained model (see ``BN_INIT``), in place."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            n = m.num_features
            frac = 0.35 + 0.5 * torch.rand(1, generator=g).item()
            scale = 0.5 + torch.rand(1, generator=g).item()
            near_zero = torch.rand(n, generator=g) < frac
            mag = torch.randn(n, generator=g).abs()
            m.weight.copy_(torch.where(near_zero, 0.01 * mag, scale * mag))
            m.bias.copy_(0.1 * torch.randn(n, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
            m.running_var.copy_(0.5 + torch.rand(n, generator=g))
    return model.eval()


def last_linear(model: nn.Module) -> nn.Module:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def bn_paths(model: nn.Module) -> list[str]:
    return [p for p, m in model.named_modules() if isinstance(m, _BatchNorm)]


@torch.no_grad()
def outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x)


# -- the two pruners, one run each, timed by phase --

def run_netslim(model: nn.Module, percent: float) -> tuple[nn.Module, netslim.PruningPlan, dict]:
    m = copy.deepcopy(model)
    t0 = time.perf_counter()
    graph = netslim.trace_channels(m)
    t1 = time.perf_counter()
    plan = netslim.plan_pruning(m, percent, graph=graph)
    t2 = time.perf_counter()
    compact = netslim.apply_plan(m, plan, graph=graph)  # copies: the input model stays intact
    t3 = time.perf_counter()
    return compact, plan, {"trace": t1 - t0, "plan": t2 - t1, "surgery": t3 - t2, "total": t3 - t0}


def run_tp(model: nn.Module, ratio: float, reduction: str, normalizer: str | None,
           record: bool = False) -> tuple[nn.Module, list, dict]:
    """Torch-Pruning's BN-scale pruner, global; with ``record``, the output channels it removes per module.

    ``log``: (module path, "bn" | "conv" | "linear", removed output indices) in the order its groups ran
    (one step: each layer is pruned once, so the indices are those of the original layer).
    """
    import torch_pruning as tp

    m = copy.deepcopy(model).eval()  # eval: its tracing forward must not update BN running stats
    example = torch.randn(1, *m.input_size, generator=torch.Generator().manual_seed(1))
    names = {mod: p for p, mod in m.named_modules()}
    t0 = time.perf_counter()
    importance = tp.importance.BNScaleImportance(group_reduction=reduction, normalizer=normalizer)
    pruner = tp.pruner.BNScalePruner(m, example, importance, global_pruning=True, pruning_ratio=ratio,
                                     ignored_layers=[last_linear(m)])
    t1 = time.perf_counter()
    log = []
    if record:
        for group in pruner.step(interactive=True):
            log.append(("<group>", "root", list(range(len(group[0][1])))))  # channels this group removes
            for dep, idxs in group:
                module = dep.target.module
                if module in names and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                    log.append((names[module], _kind(module), sorted(int(i) for i in idxs)))
            group.prune()
        # the number of channels it ranked (a private attribute; coupled channels once)
        log.append(("<total>", "", list(range(getattr(pruner, "_scope_initial_channels", {}).get("DEFAULT_SCOPE", 0)))))
    else:
        pruner.step()
    t2 = time.perf_counter()
    return m, log, {"analysis": t1 - t0, "prune": t2 - t1, "total": t2 - t0}


def _kind(module: nn.Module) -> str:
    if isinstance(module, _BatchNorm):
        return "bn"
    return "linear" if isinstance(module, nn.Linear) else "conv" if isinstance(module, nn.modules.conv._ConvNd) else "?"


# -- what was removed, and the references to compare against --

def kept_by_matching(original: nn.Module, pruned: nn.Module) -> dict[str, list[int]]:
    """Per BN path: the original channels a pruned BN still holds (it keeps them in order)."""
    kept = {}
    for path in bn_paths(original):
        a, b = original.get_submodule(path), pruned.get_submodule(path)
        key_a = torch.stack([a.weight.detach(), a.bias.detach(), a.running_mean], 1)
        key_b = torch.stack([b.weight.detach(), b.bias.detach(), b.running_mean], 1)
        idx, j = [], 0
        for i in range(len(key_a)):
            if j < len(key_b) and torch.equal(key_a[i], key_b[j]):
                idx.append(i)
                j += 1
        if j != len(key_b):
            raise RuntimeError(f"cannot match the channels of pruned BN '{path}' to the original")
        kept[path] = idx
    return kept


@torch.no_grad()
def zeroed(model: nn.Module, kept: dict[str, list[int]], filters: dict[str, list[int]] = None) -> nn.Module:
    """The original with γ and β of the removed BN channels zeroed (and optionally removed conv/linear filters)."""
    ref = copy.deepcopy(model).eval()
    for path, idx in kept.items():
        bn = ref.get_submodule(path)
        drop = sorted(set(range(bn.num_features)) - set(idx))
        bn.weight[drop] = 0
        bn.bias[drop] = 0
    for path, drop in (filters or {}).items():
        layer = ref.get_submodule(path)
        layer.weight[drop] = 0
        if layer.bias is not None:
            layer.bias[drop] = 0
    return ref


def netslim_kept(model: nn.Module, plan: netslim.PruningPlan) -> dict[str, list[int]]:
    return {p: list(plan.kept[p]) for p in bn_paths(model)}


# -- one model --

def median(xs: list[float]) -> float:
    return statistics.median(xs)


def compare_model(name: str, percent: float, repeats: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)  # conv/linear init
    model = sparsify_bn(build(name), seed)
    x = torch.randn(8, *model.input_size, generator=torch.Generator().manual_seed(2))
    y = outputs(model, x)
    paths = bn_paths(model)
    gammas = torch.cat([model.get_submodule(p).weight.detach().abs() for p in paths])
    row: dict = {
        "model": name, "percent": percent, "input_size": list(model.input_size), "bn_layers": len(paths),
        "bn_channels": int(gammas.numel()), "near_zero_gamma_fraction": float((gammas < 0.05).float().mean()),
        "original": {"params": netslim.count_params(model), "flops": netslim.count_flops(model)},
    }

    # netslim
    run_netslim(model, percent)  # warm-up (first-call costs: imports, fx, allocator), not timed
    runs = [run_netslim(model, percent) for _ in range(repeats)]
    compact, plan, _ = runs[-1]
    ns_kept = netslim_kept(model, plan)
    masked = netslim.masked_model(model, plan)
    yc = outputs(compact, x)
    nofold = outputs(netslim.apply_plan(model, plan, fold_bias=False), x)
    row["netslim"] = {
        "time_s": {k: median([r[2][k] for r in runs]) for k in runs[0][2]},
        "prunable_channels": plan.total_channels, "pruned_channels": plan.pruned_channels,
        "achieved_percent": plan.achieved_percent,
        "kept_bn_channels": sum(len(v) for v in ns_kept.values()),
        "params": netslim.count_params(compact), "flops": netslim.count_flops(compact),
        "widths": {p: len(v) for p, v in ns_kept.items()},
        "fidelity_vs_masked": relative_error(yc, outputs(masked, x)),
        "drift_vs_original": relative_error(yc, y),
        # without folding the pruned channels' constants: the brief's reference (γ and β zeroed), exactly
        "nofold_fidelity_vs_zeroed": relative_error(nofold, outputs(zeroed(model, ns_kept), x)),
        "nofold_drift_vs_original": relative_error(nofold, y),
        "selection_bns": sum(isinstance(m, netslim.SelectBatchNorm) for m in compact.modules()),
    }

    for key, reduction, normalizer in TP_VARIANTS:
        pruned, log, _ = run_tp(model, percent, reduction, normalizer, record=True)  # also the warm-up
        timings = [run_tp(model, percent, reduction, normalizer)[2] for _ in range(repeats)]
        kept = kept_by_matching(model, pruned)
        # cross-check the matching against what Torch-Pruning says it removed from each BN
        pruned_channels = sum(len(drop) for p, kind, drop in log if p == "<group>")
        ranked_channels = sum(len(drop) for p, kind, drop in log if p == "<total>")
        log = [e for e in log if not e[0].startswith("<")]
        for p, kind, drop in log:
            width = model.get_submodule(p).num_features if kind == "bn" else None
            if kind == "bn" and sorted(set(range(width)) - set(drop)) != kept[p]:
                raise RuntimeError(f"Torch-Pruning's log and the BN weights disagree at '{p}'")
        removed_bns = {p for p, kind, drop in log if kind == "bn" and drop}
        filters = {p: drop for p, kind, drop in log if kind in ("conv", "linear") and drop}
        # conv filters removed whose output does not go straight into a BN that loses the same channels
        unscaled = sorted(p for p, drop in filters.items() if _bn_after(model, p) not in removed_bns)
        yt = outputs(pruned, x)
        widths = {p: len(v) for p, v in kept.items()}
        row[key] = {
            "group_reduction": reduction, "normalizer": normalizer,
            "time_s": {k: median([t[k] for t in timings]) for k in timings[0]},
            "ranked_channels": ranked_channels,  # coupled channels once, as netslim's prunable_channels
            "pruned_channels": pruned_channels,
            "kept_bn_channels": sum(widths.values()),
            "params": netslim.count_params(pruned), "flops": netslim.count_flops(pruned),
            "widths": widths,
            "widths_equal_netslim": sum(widths[p] == len(ns_kept[p]) for p in paths),
            "kept_sets_equal_netslim": sum(kept[p] == ns_kept[p] for p in paths),
            "fidelity_vs_zeroed": relative_error(yt, outputs(zeroed(model, kept), x)),
            "fidelity_vs_zeroed_filters": relative_error(yt, outputs(zeroed(model, kept, filters), x)),
            "drift_vs_original": relative_error(yt, y),
            "filters_removed_without_own_bn": unscaled,
            # layers whose every channel ranked below the threshold: netslim keeps the largest (min_channels=1);
            # TP skips such a group (DependencyGraph.check_pruning_group refuses to empty a layer)
            "width_where_netslim_guarded": {p: widths[p] for p in plan.guarded},
        }
        if isinstance(model, PreActResNet):
            row[key]["preact"] = _preact_summary(model, pruned)
    if isinstance(model, PreActResNet):
        row["netslim"]["preact"] = _preact_summary(model, compact)
    return row


def _preact_summary(original: nn.Module, pruned: nn.Module) -> dict:
    """Pre-activation ResNet: residual-stream width per stage, and the mean fraction of the stream that the
    blocks' BN-before-conv layers (bn1, blocks 2..n) still pass on."""
    out: dict = {"stream_width": {}, "bn1_kept_fraction_mean": {}}
    for stage in ("layer1", "layer2", "layer3"):
        blocks, ref = pruned.get_submodule(stage), original.get_submodule(stage)
        out["stream_width"][stage] = f"{blocks[0].conv3.out_channels}/{ref[0].conv3.out_channels}"
        fractions = [b.bn1.num_features / r.bn1.num_features for b, r in zip(blocks[1:], ref[1:], strict=True)]
        out["bn1_kept_fraction_mean"][stage] = round(sum(fractions) / len(fractions), 4)
    out["stem_width"] = f"{pruned.conv1.out_channels}/{original.conv1.out_channels}"
    out["final_bn_width"] = f"{pruned.bn.num_features}/{original.bn.num_features}"
    return out


def _bn_after(model: nn.Module, path: str) -> str | None:
    """The BN registered right after module ``path`` in its parent (conv -> BN), if any."""
    parent, _, leaf = path.rpartition(".")
    children = list((model.get_submodule(parent) if parent else model).named_children())
    for (name, _), (nxt_name, nxt) in zip(children, children[1:], strict=False):
        if name == leaf and isinstance(nxt, _BatchNorm):
            return f"{parent}.{nxt_name}" if parent else nxt_name
    return None


# -- reporting --

def machine() -> dict:
    """``common.machine_record`` and Torch-Pruning's version."""
    try:
        tp_version = importlib.metadata.version("torch-pruning")
    except importlib.metadata.PackageNotFoundError:
        tp_version = "not installed"
    return {**machine_record(), "torch_pruning": tp_version}


def _fmt_count(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e5 else f"{n / 1e3:.1f}k"


def table(rows: list[dict]) -> str:
    head = ("| model | method | pruned / ranked ch. | time s | params | FLOPs | BN widths = netslim "
            "| fidelity vs masked | drift vs original |")
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        o, ns, n = r["original"], r["netslim"], r["bn_layers"]
        lines.append(f"| **{r['model']}** ({100 * r['percent']:.0f}%) | original | — | — | {_fmt_count(o['params'])} "
                     f"| {_fmt_count(o['flops'])} | {n} BN layers | — | — |")
        t = ns["time_s"]
        lines.append(
            f"| | netslim | {ns['pruned_channels']}/{ns['prunable_channels']} | {t['total']:.3f} (trace "
            f"{t['trace']:.3f} / plan {t['plan']:.3f} / surgery {t['surgery']:.3f}) | {_fmt_count(ns['params'])} "
            f"| {_fmt_count(ns['flops'])} | {n}/{n} | {ns['fidelity_vs_masked']:.1e} "
            f"| {ns['drift_vs_original']:.1e} (no fold: {ns['nofold_drift_vs_original']:.1e}) |")
        for key, _, _ in TP_VARIANTS:
            v = r[key]
            t = v["time_s"]
            fid = f"{v['fidelity_vs_zeroed']:.1e}"
            if v["fidelity_vs_zeroed"] > 1e-4:
                fid += f" (+ removed filters zeroed: {v['fidelity_vs_zeroed_filters']:.1e})"
            same = f"{v['widths_equal_netslim']}/{n} (same sets {v['kept_sets_equal_netslim']})"
            lines.append(
                f"| | TP {v['group_reduction']}, norm={v['normalizer']} "
                f"| {v['pruned_channels']}/{v['ranked_channels']} "
                f"| {t['total']:.3f} (DG {t['analysis']:.3f} / step {t['prune']:.3f}) | {_fmt_count(v['params'])} "
                f"| {_fmt_count(v['flops'])} | {same} | {fid} | {v['drift_vs_original']:.1e} |")
    return "\n".join(lines)


NOTES = [
    "fidelity vs masked = max|compact(x) - ref(x)| / max|ref(x)| on 8 random inputs, eval mode. netslim: ref = "
    "netslim.masked_model (pruned γ zeroed; β zeroed too except where apply_plan folds the channel's constant "
    "output into the next Linear / unpadded conv bias). TP: ref = original with γ and β zeroed on the BN channels "
    "it removed (recovered by matching BN weights before/after, cross-checked against the groups it pruned); "
    "where that is not exact, also with the conv filters it removed zeroed.",
    "drift vs original = the same measure against the unpruned model: removing a near-zero-γ channel also drops "
    "its constant output ReLU(β); netslim folds that constant into the next layer's bias where exact ('no fold' = "
    "apply_plan(fold_bias=False), comparable to TP, which never folds).",
    "pruned / ranked ch.: channels removed / channels ranked, coupled channels counted once. TP prunes "
    "N - int(N*(1-p)), netslim floor(N*p): they can differ by one. 'BN widths = netslim': BN layers whose kept "
    "width equals netslim's ('same sets': identical kept channel indices).",
    "A layer whose every channel ranks below the threshold: netslim keeps its largest-|γ| channel (min_channels "
    "guard); TP skips the whole group and keeps it at full width (see width_where_netslim_guarded in the JSON).",
    "TP mean, norm=mean is BNScaleImportance's default (coupled BNs averaged, then each group's scores divided by "
    "their mean: a per-group relative ranking); TP max, norm=None ranks raw |γ| globally, as the paper and netslim.",
]


def preact_note(rows: list[dict]) -> str | None:
    """How each tool treated ResNet-164's BN-before-conv layers, from the measured widths."""
    r = next((r for r in rows if "preact" in r["netslim"]), None)
    if r is None:
        return None
    parts = []
    for key in ["netslim"] + [k for k, _, _ in TP_VARIANTS]:
        v = r[key]["preact"]
        label = key if key == "netslim" else f"TP {r[key]['group_reduction']}, norm={r[key]['normalizer']}"
        parts.append(f"{label}: stream widths {', '.join(v['stream_width'].values())}, stem {v['stem_width']}, "
                     f"final BN {v['final_bn_width']}, mean fraction of the stream the blocks' bn1 pass on "
                     f"{', '.join(f'{x:.2f}' for x in v['bn1_kept_fraction_mean'].values())}")
    return (f"{r['model']} (pre-activation): netslim turns every BN-before-conv into a selection BN (the stream keeps "
            "its width, each block reads its own subset); Torch-Pruning has no selection layer: a stream channel is "
            "one group with every bn1 reading it (scored by the group reduction over all of them) and is removed "
            "everywhere or nowhere, and the stem conv is pruned by layer1.0.bn1's γ although the first block's "
            "shortcut reads the stem un-normalized (so its result is not a BN masking). " + "; ".join(parts) + ".")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="narrow VGG-19 + resnet18 fixture, 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per method (default 3; quick 1)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: pruning is single-threaded Python, and OpenMP spinning on a "
                             "loaded 2-core machine made tiny convs 50x slower)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"JSON output (default {DEFAULT_OUT.relative_to(ROOT)} in full mode; quick writes none)")
    args = parser.parse_args(argv)
    import torch_pruning  # noqa: F401  (fail early with a clear ImportError: pip install torch-pruning)

    specs = QUICK if args.quick else FULL
    measured_at = commit()  # the code measured: the commit the run began at
    repeats = args.repeats or (1 if args.quick else 3)
    rows = []
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        for name, percent in specs:
            start = time.perf_counter()
            rows.append(compare_model(name, percent, repeats))
            print(f"{name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        info = {**machine(), "commit": measured_at}
    finally:
        torch.set_num_threads(threads)
    result = {
        "benchmark": "torch_pruning_compare", "mode": "quick" if args.quick else "full", "repeats": repeats,
        "machine": info, "bn_init": BN_INIT,
        "timing": "median of repeats after one untimed warm-up, each on a fresh deepcopy (copy not timed); "
                  "netslim total = trace_channels + plan_pruning + apply_plan (apply_plan's own deepcopy and its "
                  "one masked forward pass included); Torch-Pruning total = BNScaleImportance + BNScalePruner "
                  "construction (dependency graph, one forward pass) + pruner.step()",
        "tp_variants": {k: {"group_reduction": r, "normalizer": n} for k, r, n in TP_VARIANTS},
        "notes": NOTES + [n for n in [preact_note(rows)] if n], "models": rows,
    }
    out = args.out or (None if args.quick else DEFAULT_OUT)
    if out is not None:
        write_json(result, out)
    print(f"BN init: {BN_INIT}\n")
    print(table(rows))
    for note in result["notes"]:
        print(f"\n- {note}")
    return result



# -- rendering (called by benchmarks/render.py) --

def markdown(rec: dict) -> str:
    """The body of BENCHMARKS.md's section on this comparison."""
    lines = ["Same models, same BN scales (randomized by a seeded generator so ~60% are near zero, as after sparse",
             "training), same channel ratio, classifier kept. Torch-Pruning (TP) in global mode, with its default",
             "group normalization and with raw scores (the paper's ranking). Fidelity = max|compact − masked| /",
             "max|masked| where masked zeroes the removed channels' BN scales; drift = the same against the unpruned",
             f"model. {rec['timing']}.", "",
             "| model | method | pruned | time (s) | params | FLOPs | BN widths equal to netslim's | fidelity "
             "| drift |",
             "|---|---|---|---|---|---|---|---|---|"]
    for model in rec["models"]:
        lines.append(f"| {model['model']} ({100 * model['percent']:.0f}%) | original | | | "
                     f"{model['original']['params'] / 1e6:.3g}M | {model['original']['flops']:.3g} | | | |")
        for method in ("netslim", "tp_default", "tp_raw"):
            r = model.get(method)
            if not r:
                continue
            widths = f"{r['widths_equal_netslim']}/{model['bn_layers']}" if method != "netslim" else "-"
            lines.append(f"| | {method} | {r.get('pruned_channels')} | {r['time_s']['total']:.3f} | "
                         f"{r['params'] / 1e6:.3g}M | {r['flops']:.3g} | {widths} | "
                         f"{_fmt(r.get('fidelity_vs_masked', r.get('fidelity_vs_zeroed')))} | "
                         f"{_fmt(r.get('drift_vs_original'))} |")
    lines += ["", f"Torch-Pruning {rec['machine'].get('torch_pruning', '?')}.", ""]
    lines += ["Notes: " + " ".join(rec["notes"]) if isinstance(rec["notes"], list) else str(rec["notes"]), ""]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else str(v)


def goals(rec: dict) -> list[Goal]:
    """The summary row: the compact model against the masked one, netslim's worst beside Torch-Pruning's."""
    def worst(method: str) -> float:
        return max(m[method].get("fidelity_vs_masked", m[method].get("fidelity_vs_zeroed")) for m in rec["models"])

    ours = worst("netslim")
    return [Goal("compact model equals the masked model (within 1e-4), beside Torch-Pruning",
                 ", ".join(f"{m['model']} ({100 * m['percent']:.0f}%)" for m in rec["models"]) + ", random γ",
                 f"largest error {ours:.1g}: {verdict(ours <= 1e-4)}; Torch-Pruning (default) "
                 f"{worst('tp_default'):.1g}", (rec,))]


if __name__ == "__main__":
    main()
