"""How long pruning takes: channel analysis, planning and surgery (paper: a one-off step, no search).

For VGG-19, ResNet-164 and DenseNet-40 (CIFAR-10 heads, BN scales randomized from a seeded generator
as a stand-in for a sparsity-trained model) pruned at 70% and 40%, the three stages are timed apart:

  analysis  ``trace_channels(model)``: one recorded forward at batch 2 (plus a probe run with narrower
            widths when Python code reads channel counts)
  planning  ``plan_pruning(model, p, graph=graph)``: global |γ| ranking and guards
  surgery   ``apply_plan(model, plan, graph=graph)``: copy, narrow every layer, fold pruned constants
            (runs the masked model once to measure them)

and also the two calls as a user makes them (``plan_pruning`` analyses, ``apply_plan`` reuses that analysis).
Wall-clock and process CPU time are both recorded.

Usage: python benchmarks/surgery_time.py [--full | --quick | --smoke] [--threads N]
"""

from __future__ import annotations

import statistics
import time

import torch

import netslim
from common import Goal, begin, finish, ms, note_lines, randomize_bn, summaries, verdict

NAME = "surgery_time"
SETTINGS = {
    "full": {"models": {"vgg19": {}, "resnet164": {}, "densenet40": {}}, "percents": [0.7, 0.4],
             "warmup": 1, "repeats": 5},
    "quick": {"models": {"vgg19": {}, "resnet164": {}, "densenet40": {}}, "percents": [0.7, 0.4],
              "warmup": 1, "repeats": 1},
    "smoke": {"models": {"vgg11": {"widths": [8] * 8}, "preresnet20": {}}, "percents": [0.5],
              "warmup": 0, "repeats": 1},
}


def measure(name: str, kwargs: dict, percent: float, warmup: int, repeats: int) -> dict:
    model = randomize_bn(netslim.models.create(name, **kwargs)).eval()
    stages: dict[str, dict[str, list[float]]] = {
        k: {"wall": [], "cpu": []} for k in ("analysis", "planning", "surgery", "end_to_end")}
    for r in range(warmup + repeats):
        netslim.graph.clear_cache()  # time the analysis itself, not the cache of the previous repeat
        clock = [(time.perf_counter(), time.process_time())]
        graph = netslim.trace_channels(model)
        clock.append((time.perf_counter(), time.process_time()))
        plan = netslim.plan_pruning(model, percent, graph=graph)
        clock.append((time.perf_counter(), time.process_time()))
        compact = netslim.apply_plan(model, plan, graph=graph)
        clock.append((time.perf_counter(), time.process_time()))
        netslim.graph.clear_cache()  # as a user makes the calls: plan_pruning analyses, apply_plan reuses it
        netslim.apply_plan(model, netslim.plan_pruning(model, percent))
        clock.append((time.perf_counter(), time.process_time()))
        if r >= warmup:
            for k, key in enumerate(stages):
                stages[key]["wall"].append(clock[k + 1][0] - clock[k][0])
                stages[key]["cpu"].append(clock[k + 1][1] - clock[k][1])
    total = {c: statistics.median(a + b + d for a, b, d in zip(
        stages["analysis"][c], stages["planning"][c], stages["surgery"][c], strict=True)) for c in ("wall", "cpu")}
    f0, f1 = netslim.count_flops(model), netslim.count_flops(compact)
    return {
        "seconds": {k: summaries(v) for k, v in stages.items()},
        "total_seconds": total,
        "channels_pruned": plan.pruned_channels, "channels_prunable": plan.total_channels,
        "bn_layers": len(graph.bns), "graph_layers": len(graph.layers),
        "params": [netslim.count_params(model), netslim.count_params(compact)], "flops": [f0, f1],
    }


def main(argv: list[str] | None = None) -> dict:
    run = begin(__doc__, argv, SETTINGS)
    cfg = run.settings
    torch.manual_seed(0)
    results = {f"{name}@{int(round(100 * p))}%": measure(name, kwargs, p, cfg["warmup"], cfg["repeats"])
               for name, kwargs in cfg["models"].items() for p in cfg["percents"]}
    slowest = max(results, key=lambda k: results[k]["total_seconds"]["wall"])
    worst = results[slowest]["total_seconds"]
    notes = ["goal: well under a second per model (analysis + planning + surgery), in wall-clock time.",
             "BN scales are random (seeded U(0,1)), not sparsity-trained; the timings do not depend on the values.",
             f"slowest: {slowest}, {worst['wall']:.3f} s wall ({worst['cpu']:.3f} s CPU): goal "
             f"{'met' if worst['wall'] < 1 else 'not met'}."]
    rec = finish(NAME, run, results, notes, echo_notes=False)
    for key, r in results.items():
        s = r["seconds"]
        print(f"{key:<18} analysis {s['analysis']['wall']['median']:.3f}s "
              f"planning {s['planning']['wall']['median']:.3f}s surgery {s['surgery']['wall']['median']:.3f}s "
              f"total {r['total_seconds']['wall']:.3f}s (end-to-end calls {s['end_to_end']['wall']['median']:.3f}s)")
    return rec


def markdown(rec: dict) -> str:
    """The body of this benchmark's BENCHMARKS.md section."""
    r = rec["results"]
    lines = ["`trace_channels` (one recorded forward, its convolutions as stand-ins), `plan_pruning(..., "
             "graph=graph)` and `apply_plan(..., graph=graph)` timed apart (median wall clock; CPU time of the "
             "total alongside), and the two public calls as a user makes them (`plan_pruning` then `apply_plan`, "
             "each tracing anew). BN scales randomized from a seeded generator. Goal: well under a second per "
             "model.\n",
             "| model @ pruned | analysis | planning | surgery | total (CPU) | plan + apply calls | channels pruned "
             "| FLOPs after |",
             "|---|---|---|---|---|---|---|---|"]
    for key, x in r.items():
        s = {k: v["wall"]["median"] for k, v in x["seconds"].items()}
        lines.append(
            f"| {key} | {ms(s['analysis'])} | {ms(s['planning'])} | {ms(s['surgery'])} | "
            f"{ms(x['total_seconds']['wall'])} ({ms(x['total_seconds']['cpu'])}) | {ms(s['end_to_end'])} | "
            f"{x['channels_pruned']}/{x['channels_prunable']} | {100 * x['flops'][1] / x['flops'][0]:.1f}% |")
    ok = all(x["total_seconds"]["wall"] < 1 for x in r.values())
    lines += ["", f"Goal {verdict(ok)}. Surgery dominates: it deep-copies the model and runs the masked model "
              "once to measure the constant outputs of pruned channels (folded into the next layer's bias).",
              "", note_lines(rec)]
    return "\n".join(lines)


def goals(rec: dict) -> list[Goal]:
    """The summary row: the slowest analysis + planning + surgery."""
    r = rec["results"]
    slowest = max(r, key=lambda key: r[key]["total_seconds"]["wall"])
    total = r[slowest]["total_seconds"]["wall"]
    return [Goal("pruning (analysis, plan, surgery): well under a second per model",
                 f"{', '.join(sorted({key.split('@')[0] for key in r}))} (CPU, one thread)",
                 f"slowest {slowest}: {total:.3f} s: {verdict(total < 1)}")]


if __name__ == "__main__":
    main()
