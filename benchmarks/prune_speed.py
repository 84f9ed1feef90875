"""How long pruning takes beside Torch-Pruning: analysis + plan + surgery against its dependency graph + step.

For ResNet-50 and DenseNet-121 (torchvision) at 224 px and YOLOv8n (Ultralytics) at 640 px, built by their
own libraries with random weights, the zoo's protocol (``zoo.py``): BN statistics randomized from a seeded
generator, γ = β = 0 on a random 40% of every BN's channels, and each tool asked to remove exactly the
all-zero channels:

* netslim: ``trace_channels`` + ``plan_pruning(percent=(z + 0.5) / N)`` + ``apply_plan`` (a new model;
  the analysis cache cleared before every run, so each run analyses anew);
* Torch-Pruning: ``BNScalePruner(..., global_pruning=True, pruning_ratio=<the fraction netslim removed>,
  ignored_layers=<output layers>)`` + ``step()`` on a fresh deep copy (the copy not timed: it prunes in
  place). On YOLOv8n its step fails on the C2f blocks' split (``IndexError``); their ``cv1`` convs are
  ignored too, as its own YOLOv8 example works around it, and the failure is recorded.

The two run interleaved in one process with ``torch.set_num_threads(1)`` (each repeat runs both, the order
rotated), wall clock and process CPU time per stage. Both results are checked against the original
(max relative error of every output, exact: <= 1e-4). Needs torchvision, ultralytics and torch-pruning.

Usage: python benchmarks/prune_speed.py [--full | --quick | --smoke] [--threads N]
"""

from __future__ import annotations

import copy
import os
import statistics
import time

import torch
from torch import nn

import netslim
from common import Goal, begin, finish, interleaved_times, randomize_bn, summaries
from netslim.plan import channel_scores
from zoo import build, leaves, max_relative_error, output_layers, zero_channels

NAME = "prune_speed"
SETTINGS = {
    "full": {"models": {"torchvision/resnet50": 224, "ultralytics/yolov8n.yaml": 640,
                        "torchvision/densenet121": 224}, "warmup": 1, "repeats": 7, "zeroed": 0.4, "seed": 0},
    "quick": {"models": {"torchvision/resnet50": 224, "ultralytics/yolov8n.yaml": 640,
                         "torchvision/densenet121": 224}, "warmup": 1, "repeats": 2, "zeroed": 0.4, "seed": 0},
    "smoke": {"models": {"torchvision/resnet18": 64}, "warmup": 0, "repeats": 1, "zeroed": 0.4, "seed": 0},
}
TOLERANCE = 1e-4


def prepared(name: str, size: int, cfg: dict) -> tuple[nn.Module, torch.Tensor, dict]:
    """The model with 40% of every BN's channels zeroed, its example input, and its outputs on it."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    torch.manual_seed(cfg["seed"])
    model = zero_channels(randomize_bn(build(name), seed=cfg["seed"]).eval(), cfg["zeroed"], cfg["seed"] + 2)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(cfg["seed"] + 1))
    with torch.no_grad():
        reference = [t.clone() for t in leaves(model(x))]
    return model, x, reference


def netslim_run(model: nn.Module, x: torch.Tensor, stages: dict, out: dict) -> None:
    """One run of netslim, its stages timed into ``stages``; the compact model and plan left in ``out``."""
    netslim.graph.clear_cache()
    with _stage(stages, "analysis"):
        graph = netslim.trace_channels(model, x)
    with _stage(stages, "planning"):
        scores = channel_scores(model, graph)
        zeros = sum(v == 0 for v in scores.values())
        plan = netslim.plan_pruning(model, (zeros + 0.5) / len(scores), graph=graph)
    with _stage(stages, "surgery"):
        out["model"] = netslim.apply_plan(model, plan, graph=graph)
    out["plan"] = plan


def tp_run(name: str, model: nn.Module, x: torch.Tensor, ratio: float, stages: dict, out: dict) -> None:
    """One run of Torch-Pruning's BN-scale pruner on a deep copy (not timed), its stages timed."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    with _stage(stages, "analysis"):
        pruner = tp.pruner.BNScalePruner(pruned, x, tp.importance.BNScaleImportance(), global_pruning=True,
                                         pruning_ratio=ratio, ignored_layers=tp_ignored(name, pruned))
    with _stage(stages, "step"):
        pruner.step()
    out["model"] = pruned


def tp_ignored(name: str, model: nn.Module) -> list[nn.Module]:
    """The output layers, and on Ultralytics models the C2f blocks' ``cv1`` convs (see the module docstring)."""
    layers = output_layers(name, model)
    if name.startswith("ultralytics/"):
        from ultralytics.nn.modules.block import C2f

        layers += [m.cv1.conv for m in model.modules() if isinstance(m, C2f)]
    return layers


class _stage:
    """Adds a stage's wall and CPU seconds to ``stages[key]`` (and to ``stages["total"]``)."""

    def __init__(self, stages: dict, key: str) -> None:
        self.stages, self.key = stages, key

    def __enter__(self):
        self.start = _now()

    def __exit__(self, *exc):
        if exc[0] is None:
            end = _now()
            for key in (self.key, "total"):
                entry = self.stages.setdefault(key, {"wall": 0.0, "cpu": 0.0})
                entry["wall"] += end[0] - self.start[0]
                entry["cpu"] += end[1] - self.start[1]


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def measure(name: str, size: int, cfg: dict) -> dict:
    model, x, reference = prepared(name, size, cfg)
    first: dict = {}
    netslim_run(model, x, {}, first)
    ratio = first["plan"].achieved_percent
    runs: dict[str, list[dict]] = {"netslim": [], "torch_pruning": []}
    results: dict[str, dict] = {"netslim": {}, "torch_pruning": {}}

    def ours() -> None:
        stages: dict = {}
        netslim_run(model, x, stages, results["netslim"])
        runs["netslim"].append(stages)

    def theirs() -> None:
        stages: dict = {}
        tp_run(name, model, x, ratio, stages, results["torch_pruning"])
        runs["torch_pruning"].append(stages)

    failure = None
    if name.startswith("ultralytics/"):  # Torch-Pruning without the workaround, once, untimed
        try:
            import torch_pruning as tp

            tp.pruner.BNScalePruner(copy.deepcopy(model).eval(), x, tp.importance.BNScaleImportance(),
                                    global_pruning=True, pruning_ratio=ratio,
                                    ignored_layers=output_layers(name, model)).step()
        except Exception as e:  # recorded: the reason for the workaround
            failure = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
    interleaved_times({"netslim": ours, "torch_pruning": theirs}, warmup=cfg["warmup"], repeats=cfg["repeats"])
    row = {"model": name, "size": size, "channels_pruned": first["plan"].pruned_channels,
           "channels_prunable": first["plan"].total_channels, "ratio": ratio, "tp_without_workaround": failure}
    p0 = netslim.count_params(model)
    for tool, samples in runs.items():
        samples = samples[cfg["warmup"]:]
        stages = {key: {clock: [s[key][clock] for s in samples] for clock in ("wall", "cpu")} for key in samples[0]}
        with torch.no_grad():
            error = max_relative_error(results[tool]["model"].eval()(x), reference)
        row[tool] = {"stages": {k: summaries(v) for k, v in stages.items()}, "samples": stages,
                     "params_ratio": netslim.count_params(results[tool]["model"]) / p0,
                     "max_relative_error": error, "exact": error <= TOLERANCE}
    for clock in ("wall", "cpu"):
        ours_t, theirs_t = row["netslim"]["samples"]["total"][clock], row["torch_pruning"]["samples"]["total"][clock]
        row[f"speedup_{clock}"] = statistics.median(theirs_t) / statistics.median(ours_t)
        row[f"paired_speedup_{clock}"] = statistics.median(b / a for a, b in zip(ours_t, theirs_t, strict=True))
    return row


def main(argv: list[str] | None = None) -> dict:
    run = begin(__doc__, argv, SETTINGS)
    cfg = run.settings
    rows = []
    for name, size in cfg["models"].items():
        rows.append(measure(name, size, cfg))
        print(_line(rows[-1]), flush=True)
    notes = [_line(r) for r in rows]
    resnet = next((r for r in rows if r["model"] == "torchvision/resnet50"), None)
    if resnet is not None:
        seconds = resnet["netslim"]["stages"]["total"]["wall"]["median"]
        notes.append(f"ResNet-50 at 224 px: {seconds:.3f} s wall (median), goal < 0.5 s: "
                     f"{'met' if seconds < 0.5 else 'not met'}.")
    faster = [r for r in rows if r["speedup_wall"] > 1 and r["speedup_cpu"] > 1]
    notes.append(f"netslim faster than Torch-Pruning (median wall and CPU time) on {len(faster)} of {len(rows)} "
                 "models.")
    return finish(NAME, run, {"models": rows}, notes)


def _line(r: dict) -> str:
    ours, theirs = r["netslim"]["stages"]["total"], r["torch_pruning"]["stages"]["total"]
    return (f"{r['model']} at {r['size']} px: netslim {ours['wall']['median']:.3f} s wall / {ours['cpu']['median']:.3f}"
            f" s CPU, Torch-Pruning {theirs['wall']['median']:.3f} s / {theirs['cpu']['median']:.3f} s: "
            f"{r['speedup_wall']:.2f}x / {r['speedup_cpu']:.2f}x faster (median of paired ratios "
            f"{r['paired_speedup_wall']:.2f}x / {r['paired_speedup_cpu']:.2f}x)")


def markdown(rec: dict) -> str:
    s = rec["settings"]
    lines = ["Analysis + plan + surgery (netslim: `trace_channels`, `plan_pruning`, `apply_plan`, a new model) "
             "against Torch-Pruning's `BNScalePruner` construction (its dependency graph) + `step()` (in place, on "
             "a deep copy made outside the timing), on models built by their own libraries with random weights: the "
             f"zoo's protocol (γ = β = 0 on a random {100 * s['zeroed']:.0f}% of every BN's channels, each tool "
             "removing exactly the all-zero channels). One process, `torch.set_num_threads(1)`, the two tools "
             f"interleaved (order rotated each repeat), {s['repeats']} repeats after {s['warmup']} warm-up; median "
             "seconds, wall clock and process CPU time.\n",
             "| model (input) | netslim: analysis | plan | surgery | **total** wall (CPU) | Torch-Pruning: graph "
             "| step | **total** wall (CPU) | netslim faster: wall (CPU) | channels removed | params after: netslim "
             "/ TP | exact: netslim / TP |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rec["results"]["models"]:
        o, t = r["netslim"]["stages"], r["torch_pruning"]["stages"]
        med = _median_of
        lines.append(
            f"| {r['model']} ({r['size']} px) | {med(o, 'analysis')} | {med(o, 'planning')} | {med(o, 'surgery')} | "
            f"**{med(o, 'total')}** ({med(o, 'total', 'cpu')}) | {med(t, 'analysis')} | {med(t, 'step')} | "
            f"**{med(t, 'total')}** ({med(t, 'total', 'cpu')}) | {r['speedup_wall']:.2f}x ({r['speedup_cpu']:.2f}x)"
            f" | {r['channels_pruned']} of {r['channels_prunable']} | {100 * r['netslim']['params_ratio']:.1f}% / "
            f"{100 * r['torch_pruning']['params_ratio']:.1f}% | {_exact(r['netslim'])} / "
            f"{_exact(r['torch_pruning'])} |")
    lines.append("")
    failures = [r for r in rec["results"]["models"] if r.get("tp_without_workaround")]
    lines += [f"- {r['model']}: Torch-Pruning as configured for the other models fails in `step()` "
              f"(`{r['tp_without_workaround']}`); timed with the C2f blocks' `cv1` convs also ignored."
              for r in failures]
    lines += [f"- {n}" for n in rec["notes"]]
    return "\n".join(lines) + "\n"


def _median_of(stages: dict, key: str, clock: str = "wall") -> str:
    return f"{stages[key][clock]['median']:.3f}" if key in stages else "-"


def _exact(r: dict) -> str:
    if r["exact"]:
        return "yes"
    error = r["max_relative_error"]
    return "no (outputs of another shape)" if error is None else f"no ({error:.0e})"


def goals(rec: dict) -> list[Goal]:
    """The summary row: netslim's pruning time against Torch-Pruning's, and ResNet-50's against 0.5 s."""
    rows = rec["results"]["models"]
    faster = [r for r in rows if r["speedup_wall"] > 1 and r["speedup_cpu"] > 1]
    resnet = next((r for r in rows if r["model"] == "torchvision/resnet50"), None)
    limit = (f"; ResNet-50 at {resnet['size']} px "
             f"{resnet['netslim']['stages']['total']['wall']['median']:.3f} s (goal < 0.5 s)") if resnet else ""
    return [Goal("pruning speed: faster than Torch-Pruning",
                 ", ".join(f"{r['model'].split('/')[-1]} ({r['size']} px)" for r in rows) + ", one thread, interleaved",
                 f"faster on {len(faster)} of {len(rows)}: {min(r['speedup_wall'] for r in rows):.2f}x to "
                 f"{max(r['speedup_wall'] for r in rows):.2f}x (wall){limit}")]


if __name__ == "__main__":
    main()
