"""Is the default export ever slower than the original model? (on the CPU; gpu.py part (f) on a GPU)

VGG-19 (CIFAR-10, 32x32) with BN statistics and scales from a seeded generator, pruned by
``plan_pruning`` at 10% (widths barely change and become odd: where an export could lose to the
original) and at 70%, is exported with the CPU target's defaults (``netslim.deploy``: BN folded, fp32,
contiguous layout; widths as pruned) and compared with the original as trained (BN layers, eager) at
batch 1, 8, 64 and 256. Runtimes of the export: eager PyTorch and the ``torch.export`` program
(``netslim.export_program``): the defaults the goal is judged on; in full mode also the optional
AOTInductor package (``netslim.export_aoti``), reported beside them.
Timings: interleaved medians of process CPU time (one thread) and wall clock. The GPU target
(bf16, channels_last, widths rounded to 8) is measured by benchmarks/gpu.py, part (f).

Usage: python benchmarks/export_speed.py [--full | --quick | --smoke] [--threads N]
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

import netslim
from common import Goal, begin, finish, interleaved_times, ms, note_lines, randomize_bn, summaries, verdict

NAME = "export_speed"
DEFAULT_RUNTIMES = ("deploy_eager", "torch_export")  # what `netslim export` writes without --aoti
SETTINGS = {
    "full": {"model": "vgg19", "kwargs": {}, "percents": [0.1, 0.7], "aoti": True,
             "batches": {"1": [10, 30], "8": [5, 15], "64": [2, 7], "256": [1, 5]}},
    "quick": {"model": "vgg19", "kwargs": {}, "percents": [0.1, 0.7], "aoti": False,
              "batches": {"1": [3, 7], "64": [1, 3]}},
    "smoke": {"model": "vgg11", "kwargs": {"widths": [16] * 8}, "percents": [0.5], "aoti": False,
              "batches": {"1": [1, 2], "4": [1, 1]}},
}


def exports(model: torch.nn.Module, folder: Path, aoti: bool) -> dict:
    """The default CPU export of ``model`` in each runtime, as callables on a batch."""
    out = {"deploy_eager": netslim.deploy(model)}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No complete tensor found")
        path = netslim.export_program(model, folder / f"{id(model)}.pt2")
        out["torch_export"] = torch.export.load(str(path)).module()
    if aoti:
        path = netslim.export_aoti(model, folder / f"{id(model)}-aoti.pt2")
        out["aoti"] = torch._inductor.aoti_load_package(str(path))
    return out


def main(argv: list[str] | None = None) -> dict:
    run = begin(__doc__, argv, SETTINGS)
    cfg = run.settings
    torch.manual_seed(0)
    original = randomize_bn(netslim.models.create(cfg["model"], **cfg["kwargs"]), seed=0).eval()
    size = original.input_size
    results: dict = {"original_flops": netslim.count_flops(original), "pruned": {}}
    notes = ["goal: the default export is never slower than the original model (as trained: BN layers, eager) "
             "at any batch size measured; judged on process CPU time."]
    slowest = []
    with tempfile.TemporaryDirectory() as tmp:
        for percent in cfg["percents"]:
            compact = netslim.apply_plan(original, netslim.plan_pruning(original, percent)).eval()
            runtimes = exports(compact, Path(tmp), cfg["aoti"])
            entry = {"flops": netslim.count_flops(compact), "widths": [m.out_channels for m in compact.modules()
                                                                        if isinstance(m, torch.nn.Conv2d)],
                     "latency": {}, "speedup": {}}
            for batch, (warmup, repeats) in cfg["batches"].items():
                x = torch.randn(int(batch), *size)
                fns = {"original": original, **runtimes}
                calls = {k: (lambda m=m, x=x: _infer(m, x)) for k, m in fns.items()}
                samples = interleaved_times(calls, warmup, repeats)
                entry["latency"][batch] = {k: summaries(v) for k, v in samples.items()}
                base = entry["latency"][batch]["original"]["cpu"]["median"]
                entry["speedup"][batch] = {k: base / v["cpu"]["median"] for k, v in entry["latency"][batch].items()
                                           if k != "original"}
            worst = min((s, f"{k}@{b}") for b, row in entry["speedup"].items() for k, s in row.items()
                        if k in DEFAULT_RUNTIMES)
            slowest.append(worst[0])
            entry["slowest"] = {"speedup": worst[0], "where": worst[1]}
            results["pruned"][f"{round(100 * percent)}%"] = entry
            notes.append(f"{round(100 * percent)}% pruned ({results['original_flops'] / entry['flops']:.2f}x fewer "
                         f"FLOPs): the slowest default export is {worst[0]:.2f}x the original's speed ({worst[1]})")
            if cfg["aoti"]:
                aoti = min((row["aoti"], b) for b, row in entry["speedup"].items())
                entry["slowest_aoti"] = {"speedup": aoti[0], "where": f"aoti@{aoti[1]}"}
                notes.append(f"{round(100 * percent)}% pruned, the optional AOTInductor package: slowest "
                             f"{aoti[0]:.2f}x (batch {aoti[1]})")
    results["never_slower"] = min(slowest) >= 1.0
    notes.append(f"goal {'met' if results['never_slower'] else 'NOT met'}: slowest export/original speed ratio "
                 f"{min(slowest):.2f}")
    return finish(NAME, run, results, notes)


def _infer(model, x):
    with torch.inference_mode():
        return model(x)


def markdown(rec: dict) -> str:
    """The body of this benchmark's BENCHMARKS.md section."""
    r = rec["results"]
    lines = ["VGG-19 (CIFAR-10, 32x32; BN scales and statistics from a seeded generator) pruned at each percent and "
             "exported with the CPU defaults (`netslim.deploy`: BN folded, fp32), against the original as trained "
             "(BN layers, eager PyTorch). Speed ratio = original time / export time (process CPU time, one thread; "
             "> 1: the export is faster). Goal: never below 1 at any batch size, for what `netslim export` writes "
             "by default (`deploy_eager`, `torch_export`); `aoti` (the optional `--aoti` package) is shown beside "
             "them.\n"]
    for key, x in r["pruned"].items():
        runtimes = list(next(iter(x["speedup"].values())))
        lines += [f"**{key} pruned** ({r['original_flops'] / x['flops']:.2f}x fewer FLOPs; conv widths "
                  f"{', '.join(map(str, x['widths']))})\n",
                  "| batch | original | " + " | ".join(runtimes) + " |", "|---|---|" + "---|" * len(runtimes)]
        for batch, row in x["speedup"].items():
            base = x["latency"][batch]["original"]["cpu"]["median"]
            lines.append(f"| {batch} | {ms(base)} | " + " | ".join(
                f"{ms(x['latency'][batch][k]['cpu']['median'])} ({row[k]:.2f}x)" for k in runtimes) + " |")
        lines.append("")
    lines += [f"Goal {verdict(r['never_slower'])}.", "", note_lines(rec)]
    return "\n".join(lines)


def goals(rec: dict) -> list[Goal]:
    """The summary row: the slowest default export against the original model."""
    r = rec["results"]
    slowest = min(row[k] for x in r["pruned"].values() for row in x["speedup"].values() for k in row
                  if k != "aoti")
    return [Goal("default export: never slower than the original model",
                 f"VGG-19 {' and '.join(r['pruned'])} pruned, `netslim.deploy` CPU defaults, every batch size",
                 f"slowest {slowest:.2f}x the original's speed: {verdict(r['never_slower'])}")]


if __name__ == "__main__":
    main()
