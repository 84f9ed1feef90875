"""Pruning for measured speed: latency plans against their targets, on this machine (issue 17).

For each model (BN scales randomized from a seeded generator, as a stand-in for a sparsity-trained
model), batch size and target speedup: the per-layer latency tables are measured (the time to build
them, and to read them back from the cache, is recorded), ``plan_for_latency`` picks the channels by
|γ|, and the compact model is measured end to end against the original, both BN-folded, side by side
in one run. Reported: target, predicted and measured speedup, the prediction's error, the share of
Σ|γ| kept, and the plan by FLOPs (``plan_for_budget``) at the FLOPs the latency plan reached, with its
measured speedup and Σ|γ| kept.

Usage: python benchmarks/latency.py [--full | --quick | --smoke] [--threads N]
"""

from __future__ import annotations

import tempfile
import time

import torch

import netslim
from common import begin, finish, randomize_bn
from netslim.export import fold_batchnorm
from netslim.latency import measure_latency, measure_table, plan_for_latency

NAME = "latency"
SETTINGS = {
    "full": {"models": {"vgg19": 32, "torchvision:resnet50": 224, "ultralytics:yolov8n.yaml": 320},
             "batches": [1, 32], "speedups": [2.0, 4.0], "repeats": 5},
    "quick": {"models": {"vgg19": 32}, "batches": [1, 8], "speedups": [2.0, 4.0], "repeats": 3},
    "smoke": {"models": {"mlp": None}, "batches": [1], "speedups": [1.5], "repeats": 1},
}


def _model(name: str, side: int | None) -> tuple[torch.nn.Module, tuple[int, ...]]:
    model = randomize_bn(netslim.models.create_model(name, {})).eval()
    size = tuple(model.input_size) if side is None else (3, side, side)
    return model, size


def _kept_gamma(model: torch.nn.Module, plan) -> float:
    total = kept = 0.0
    for path, positions in plan.kept.items():
        gamma = model.get_submodule(path).weight.detach().abs()
        total += float(gamma.sum())
        kept += float(gamma[list(positions)].sum())
    return kept / total


def measure(name: str, side: int | None, batch: int, speedups: list[float], repeats: int, cache: str) -> dict:
    model, size = _model(name, side)
    x = torch.zeros(batch, *size)
    graph = netslim.trace_channels(model, x)
    start = time.perf_counter()
    table = measure_table(model, x, graph=graph, repeats=repeats, cache_dir=cache)
    built = time.perf_counter() - start
    start = time.perf_counter()
    measure_table(model, x, graph=graph, repeats=repeats, cache_dir=cache)
    reread = time.perf_counter() - start
    original = measure_latency(fold_batchnorm(model, x), x, repeats=max(5, repeats))
    flops0 = netslim.count_flops(model, size)
    rows = []
    for target in speedups:
        try:
            plan, predicted = plan_for_latency(model, target_speedup=target, example_input=x, table=table)
        except ValueError as e:
            rows.append({"target_speedup": target, "error": str(e)})
            continue
        compact = netslim.apply_plan(model, plan, example_input=x)
        measured = measure_latency(fold_batchnorm(compact, x), x, repeats=max(5, repeats))
        flops = netslim.count_flops(compact, size) / flops0
        by_flops = netslim.plan_for_budget(model, target_flops=flops, example_input=x)
        flops_compact = netslim.apply_plan(model, by_flops, example_input=x)
        flops_measured = measure_latency(fold_batchnorm(flops_compact, x), x, repeats=max(5, repeats))
        rows.append({
            "target_speedup": target, "predicted_speedup": round(table.measured / predicted, 3),
            "measured_speedup": round(original / measured, 3),
            "prediction_error": round(predicted / measured - 1, 3),
            "within_10_percent": abs(original / measured / target - 1) <= 0.10,
            "flops_fraction": round(flops, 4), "gamma_kept": round(_kept_gamma(model, plan), 4),
            "flops_plan_measured_speedup": round(original / flops_measured, 3),
            "flops_plan_gamma_kept": round(_kept_gamma(model, by_flops), 4),
        })
    return {"model": name, "input": list(size), "batch": batch, "original_ms": round(1e3 * original, 3),
            "table_build_s": round(built, 2), "table_cached_s": round(reread, 2), "layers_timed": len(table.shapes),
            "shapes_timed": len(table.samples), "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    run = begin(__doc__, argv, SETTINGS)
    s = run.settings
    results = []
    with tempfile.TemporaryDirectory() as cache:  # a fresh cache: the build time is the real one
        for name, side in s["models"].items():
            for batch in s["batches"]:
                try:
                    results.append(measure(name, side, batch, s["speedups"], s["repeats"], cache))
                except ImportError as e:
                    results.append({"model": name, "batch": batch, "skipped": str(e)})
                print(results[-1], flush=True)
    notes = ["speedups are end to end, BN folded, eager PyTorch on this CPU, at the threads recorded"]
    return finish(NAME, run, {"models": results}, notes)


if __name__ == "__main__":
    main()
