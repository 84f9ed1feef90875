"""Sparsity in a detector practitioner's own workflow: YOLOv8n, Ultralytics' trainer, λ chosen by netslim.

The workflow of a YOLO user, on a seeded, learnable detection dataset written here (shapes on noisy
backgrounds, YOLO format: benchmarks/shapes_data.py), with YOLOv8n built from ``yolov8n.yaml`` and
trained by Ultralytics' own trainer, offline, on the CPU:

  baseline   trained without sparsity
  target     ``add_sparsity(yolo, target=0.5)``: λ chosen and corrected by netslim
  lambda-X   a fixed λ (a short sweep; the README's old 1e-4 among them), same schedule
  prune      for the target run and the best fixed λ (the most accurate among those reaching 45% of
             |γ| below 1e-2, else the sparsest): 30% and 50% of the channels, and the plan for a 2x
             ONNX Runtime speedup at batch 1 (netslim's latency planner, measured rounds); each
             evaluated pruned as is, after re-estimating BN statistics on the training images
             (``prune_yolo(..., data=, recalibrate=)``), and after fine-tuning with Ultralytics' trainer;
             beside an unpruned control fine-tuned for the same extra epochs
Reported: mAP50 and mAP50-95 (Ultralytics' validator on the validation split), parameters, FLOPs, ONNX
Runtime CPU latency at batch 1 (one thread, all models timed in turns), |γ| below 1e-2 and 1e-3, the λ
trajectory (Ultralytics' results.csv), warnings netslim gave, and |γ| histograms (PNG).

Usage: python benchmarks/yolo.py [--full | --quick | --smoke] [--seed N] [--lambdas 0.3] [--work runs/yolo]
(needs ultralytics, onnx, onnxruntime: ``make zoo``). Every run folder is kept under ``--work``: a second
invocation reuses finished runs.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")  # no downloads: fonts, weights, version checks

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import netslim  # noqa: E402
from common import Goal, begin, finish, mode_of, write_json  # noqa: E402
from netslim.stats import gamma_stats  # noqa: E402
from shapes_data import write_shapes_dataset  # noqa: E402

NAME = "yolo"
SETTINGS = {
    "full": {"train": 400, "val": 100, "imgsz": 128, "epochs": 15, "finetune": 5, "batch": 16,
             "lambdas": [1e-4, 1e-2, 3e-2, 1e-1, 2e-1, 3e-1], "percents": [0.3, 0.5], "speedup": 2.0,
             "recalibrate": 25, "repeats": 30},
    "quick": {"train": 64, "val": 32, "imgsz": 64, "epochs": 3, "finetune": 1, "batch": 16,
              "lambdas": [1e-4, 1e-1], "percents": [0.5], "speedup": 1.5, "recalibrate": 4, "repeats": 5},
    "smoke": {"train": 16, "val": 8, "imgsz": 64, "epochs": 1, "finetune": 1, "batch": 8,
              "lambdas": [1e-4], "percents": [0.5], "speedup": None, "recalibrate": 2, "repeats": 2},
}
TARGET = 0.5
REACHED = 0.45  # a fixed λ "reaches" the target when this share of |γ| ends below 1e-2


def train_args(settings: dict, data: Path, seed: int, project: Path, name: str, epochs: int) -> dict:
    """Ultralytics' training arguments: its defaults (warm-up, lr decay, mosaic, EMA) with SGD at lr0 0.01."""
    return dict(data=str(data), epochs=epochs, imgsz=settings["imgsz"], batch=settings["batch"], workers=0,
                device="cpu", optimizer="SGD", lr0=0.01, amp=False, plots=False, seed=seed, deterministic=True,
                project=str(project), name=name, exist_ok=True, verbose=False, val=True)


def _cached(folder: Path, make) -> dict:
    done = folder / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    result = make()
    write_json(result, done)
    return result


def train_run(name: str, settings: dict, data: Path, seed: int, work: Path, *, target: float | None = None,
              lam: float | None = None) -> dict:
    """Train YOLOv8n from its yaml with Ultralytics' trainer, sparse when ``target`` or ``lam`` is given."""
    from ultralytics import YOLO

    from netslim.integrations import ultralytics as slim

    def make() -> dict:
        started = time.perf_counter()
        yolo = YOLO("yolov8n.yaml")
        if target is not None or lam is not None:
            slim.add_sparsity(yolo, lam=lam, target=target)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yolo.train(**train_args(settings, data, seed, work, name, settings["epochs"]))
        last = Path(yolo.trainer.last)
        model = slim.load_yolo(last, trust_pickle=True)  # our own run's file
        return {"name": name, "target": target, "lambda": lam, "seconds": time.perf_counter() - started,
                "checkpoint": str(last), **_validate(last, data, settings), "gamma": gamma_stats(model),
                "warnings": sorted({str(w.message) for w in caught if "sparsity" in str(w.message)}),
                "trajectory": _trajectory(last.parent.parent / "results.csv")}

    return _cached(work / name, make)


def _trajectory(results_csv: Path) -> list[dict]:
    """λ and the share of |γ| below 1e-2 per epoch, from Ultralytics' results.csv (netslim's columns)."""
    if not results_csv.exists():
        return []
    with open(results_csv) as f:
        rows = list(csv.DictReader(f))
    keys = {"epoch": "epoch", "lambda": "netslim/lambda", "below_1e-2": "netslim/below_1e-2",
            "map50": "metrics/mAP50(B)", "map": "metrics/mAP50-95(B)"}
    return [{k: float(row[v]) for k, v in keys.items() if row.get(v) not in (None, "")} for row in rows]


def _validate(path: Path, data: Path, settings: dict) -> dict:
    from ultralytics import YOLO

    metrics = YOLO(str(path)).val(data=str(data), imgsz=settings["imgsz"], batch=settings["batch"], workers=0,
                                  device="cpu", plots=False, verbose=False, project=str(path.parent),
                                  name="val", exist_ok=True)
    return {"map50": float(metrics.box.map50), "map": float(metrics.box.map)}


def _evaluate(model: torch.nn.Module, path: Path, data: Path, settings: dict) -> dict:
    from netslim.integrations import ultralytics as slim

    slim.save_yolo(model, path)
    side = settings["imgsz"]
    return {**_validate(path, data, settings), "params": netslim.count_params(model),
            "flops": netslim.count_flops(model, (3, side, side))}


def prune_run(source: dict, settings: dict, data: Path, seed: int, work: Path) -> dict:
    """The sparse model of ``source`` pruned three ways, each evaluated as is, recalibrated and fine-tuned,
    beside the unpruned model fine-tuned as long; ONNX Runtime latencies at batch 1 timed in turns."""
    from netslim.integrations import ultralytics as slim
    from netslim.latency import plan_for_latency
    from netslim.timing import deployed_latencies, timing_input

    folder = work / f"prune-{source['name']}"

    def make() -> dict:
        model = slim.load_yolo(source["checkpoint"], trust_pickle=True)
        side = settings["imgsz"]
        plans = {f"{round(100 * p)}%": {"percent": p} for p in settings["percents"]}
        if settings["speedup"]:
            example = timing_input((3, side, side), 1, "cpu", "onnxruntime")
            plan, _ = plan_for_latency(copy.deepcopy(model), target_speedup=settings["speedup"], example_input=example,
                                       backend="onnxruntime", measured_rounds=3)
            plans[f"{settings['speedup']:g}x latency"] = {"plan": plan}
        rows, compacts = [], {}
        for label, how in plans.items():
            if "percent" in how:
                pruned, plan = slim.prune_yolo(copy.deepcopy(model), how["percent"], imgsz=side)
            else:
                plan = how["plan"]
                pruned = netslim.apply_plan(copy.deepcopy(model).eval(), plan)
            pruned.input_size = (3, side, side)
            row = {"plan": label, "pruned_channels": plan.achieved_percent,
                   "before": _evaluate(pruned, folder / f"{label}-before.pt", data, settings)}
            recalibrated = slim.recalibrate_yolo(copy.deepcopy(pruned), data, settings["recalibrate"], side,
                                                 batch=settings["batch"])
            row["recalibrated"] = _evaluate(recalibrated, folder / f"{label}-recalibrated.pt", data, settings)
            trainer = slim.finetune_yolo(copy.deepcopy(recalibrated), **train_args(
                settings, data, seed, folder, f"finetune-{label.replace(' ', '-')}", settings["finetune"]))
            row["finetuned"] = _validate(Path(trainer.last), data, settings)
            rows.append(row)
            compacts[label] = recalibrated
        trainer = slim.finetune_yolo(copy.deepcopy(model), **train_args(settings, data, seed, folder,
                                                                         "finetune-control", settings["finetune"]))
        control = {"before": _evaluate(model, folder / "unpruned.pt", data, settings),
                   "finetuned": _validate(Path(trainer.last), data, settings)}
        example = timing_input((3, side, side), 1, "cpu", "onnxruntime")
        seconds = deployed_latencies([model, *compacts.values()], example, "onnxruntime", settings["repeats"])
        control["onnx_ms"] = 1e3 * seconds[0]
        for row, s in zip(rows, seconds[1:], strict=True):
            row["onnx_ms"], row["speedup"] = 1e3 * s, seconds[0] / s
        return {"source": source["name"], "rows": rows, "control": control}

    return _cached(folder, make)


def best_fixed(runs: list[dict]) -> dict:
    """The most accurate fixed-λ run among those whose |γ| ended at least REACHED below 1e-2; else the sparsest."""
    reached = [r for r in runs if r["gamma"]["gamma_below_1e-2"] >= REACHED]
    if reached:
        return max(reached, key=lambda r: r["map"])
    return max(runs, key=lambda r: r["gamma"]["gamma_below_1e-2"])


def histogram(runs: list[dict], path: Path) -> Path | None:
    """log10 |γ| at the end of training, one curve per run (the paper's Fig. 4, on YOLOv8n)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from netslim.integrations import ultralytics as slim
    from netslim.stats import bn_scales

    fig, ax = plt.subplots(figsize=(7, 4))
    for run in runs:
        scales = torch.cat(list(bn_scales(slim.load_yolo(run["checkpoint"], trust_pickle=True)).values()))
        ax.hist(torch.log10(scales.clamp_min(1e-8)).numpy(), bins=80, histtype="step", label=run["name"])
    ax.axvline(-2, color="grey", linestyle=":")
    ax.set(xlabel="log10 |γ|", ylabel="channels", title="YOLOv8n BN scales after training")
    ax.legend(fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> dict:
    import argparse

    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--seed", type=int, default=0)
    extra.add_argument("--work", default="runs/yolo")
    extra.add_argument("--lambdas", type=lambda text: [float(v) for v in text.split(",") if v],
                       help="the fixed λ to train (default: the mode's sweep; another seed may take seed 0's best)")
    known, rest = extra.parse_known_args(sys.argv[1:] if argv is None else argv)
    run = begin(__doc__, rest, SETTINGS)
    settings, seed = dict(run.settings), known.seed
    if known.lambdas is not None:
        settings["lambdas"] = known.lambdas
    work = Path(known.work) / f"{mode_of(run.args)}-seed{seed}"
    data = write_shapes_dataset(Path(known.work) / f"shapes-{settings['train']}-{settings['imgsz']}-seed{seed}",
                                settings["train"], settings["val"], settings["imgsz"], seed)
    baseline = train_run("baseline", settings, data, seed, work)
    target = train_run(f"target-{TARGET:g}", settings, data, seed, work, target=TARGET)
    fixed = [train_run(f"lambda-{lam:g}", settings, data, seed, work, lam=lam) for lam in settings["lambdas"]]
    best = best_fixed(fixed)
    pruned = [prune_run(target, settings, data, seed, work), prune_run(best, settings, data, seed, work)]
    figure = histogram([baseline, target, *fixed], HERE / "results" / "yolo" / f"gamma-seed{seed}.png") \
        if run.args.out == HERE / "results" and not run.args.smoke else None
    results = {"seed": seed, "settings": settings, "baseline": baseline, "target": target, "fixed": fixed,
               "best_fixed": best["name"], "pruned": pruned, "histogram": str(figure) if figure else None}
    notes = [f"{r['name']}: mAP50-95 {r['map']:.3f}, |γ|<1e-2 {100 * r['gamma']['gamma_below_1e-2']:.1f}%"
             for r in (baseline, target, *fixed)]
    rec = finish(NAME, run, results, notes)
    if seed:  # one file per seed: <name>_<mode>-seedN.json
        path = Path(run.args.out) / f"{NAME}_{rec['mode']}.json"
        path.rename(path.with_name(f"{NAME}_{rec['mode']}-seed{seed}.json"))
    return rec


# -- rendering (called by benchmarks/render.py) --

def _mean(values: list[float], scale: float = 100.0) -> str:
    """mean ± sample standard deviation over the seeds (the value alone for one seed)."""
    import statistics

    values = [scale * v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def markdown(records: list[dict]) -> str:
    """The BENCHMARKS.md section from the full runs' records, one per seed."""
    runs = sorted((r["results"] for r in records), key=lambda r: r["seed"])  # seed 0, with the whole sweep, first
    seeds = ", ".join(str(r["seed"]) for r in runs)
    s = runs[0]["settings"]
    lines = [f"YOLOv8n from `yolov8n.yaml`, trained by Ultralytics' own trainer (SGD, lr0 0.01, its warm-up, decay, "
             f"mosaic and EMA), {s['epochs']} epochs, batch {s['batch']}, {s['imgsz']} px, on a seeded shapes dataset "
             f"written by the benchmark ({s['train']} training and {s['val']} validation images, 4 classes; "
             f"benchmarks/shapes_data.py). mAP by Ultralytics' validator on the validation images, in points "
             f"(mean ± sd over seeds {seeds}; every seed trains the baseline, the target and seed 0's best fixed λ, "
             "seed 0 the whole sweep). |γ| below 1e-2 over every BN of the model.\n",
             "| training | λ | mAP50 | mAP50-95 | \\|γ\\| < 1e-2 (%) | \\|γ\\| < 1e-3 (%) | netslim's warnings |",
             "|---|---|---|---|---|---|---|"]
    names = [runs[0]["baseline"]["name"], runs[0]["target"]["name"], *[f["name"] for f in runs[0]["fixed"]]]
    for name in names:
        rows = [x for r in runs for x in (r["baseline"], r["target"], *r["fixed"]) if x["name"] == name]
        lam = "chosen" if rows[0]["target"] else f"{rows[0]['lambda']:g}" if rows[0]["lambda"] else "0"
        said = [w for row in rows for w in row["warnings"]]
        said = " and ".join(when for when, words in (("at the start (reach)", "can move a BN scale"),
                                                      ("half-way (not emerging)", "not emerging"))
                            if any(words in w for w in said)) or "none"
        lines.append(f"| {name} | {lam} | "
                     f"{_mean([r['map50'] for r in rows])} | {_mean([r['map'] for r in rows])} | "
                     f"{_mean([r['gamma']['gamma_below_1e-2'] for r in rows])} | "
                     f"{_mean([r['gamma']['gamma_below_1e-3'] for r in rows])} | {said} |")
    trajectory = runs[0]["target"]["trajectory"]
    if trajectory:
        steps = ", ".join(f"{t['lambda']:.3g}" for t in trajectory if "lambda" in t)
        shares = ", ".join(f"{100 * t['below_1e-2']:.0f}" for t in trajectory if "below_1e-2" in t)
        lines += ["", f"λ chosen at the end of each epoch (seed {runs[0]['seed']}): {steps}; % of |γ| below 1e-2: "
                      f"{shares}."]
    lines += ["", "Pruned from the sparse model of each run, before and after re-estimating BN statistics on 25 "
                  "batches of the training images (Ultralytics' loader, `prune_yolo(..., data=, recalibrate=)`), "
                  f"and after {s['finetune']} epochs of fine-tuning with Ultralytics' trainer, beside the unpruned "
                  "model fine-tuned as long (control). mAP50-95 in points; ONNX Runtime on the CPU at batch 1, one "
                  "thread, every model timed in turns.", "",
              "| sparse model | plan | channels pruned (%) | params | FLOPs | mAP50-95 pruned | recalibrated | "
              "fine-tuned | control fine-tuned | ONNX ms | speedup |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for pruned in runs[0]["pruned"]:
        sources = [p for r in runs for p in r["pruned"] if p["source"] == pruned["source"]]
        for j, row in enumerate(pruned["rows"]):
            rows = [src["rows"][j] for src in sources]
            control = [src["control"] for src in sources]
            lines.append(
                f"| {pruned['source']} | {row['plan']} | {_mean([r['pruned_channels'] for r in rows])} | "
                f"{row['before']['params'] / 1e6:.2f}M | {row['before']['flops'] / 1e6:.0f}M | "
                f"{_mean([r['before']['map'] for r in rows])} | {_mean([r['recalibrated']['map'] for r in rows])} | "
                f"{_mean([r['finetuned']['map'] for r in rows])} | {_mean([c['finetuned']['map'] for c in control])}"
                f" | {_mean([r['onnx_ms'] for r in rows], 1.0)} | {_mean([r['speedup'] for r in rows], 1.0)}x |")
        control = [src["control"] for src in sources]
        first = pruned["control"]["before"]
        lines.append(f"| {pruned['source']} | unpruned | 0 | {first['params'] / 1e6:.2f}M | "
                     f"{first['flops'] / 1e6:.0f}M | {_mean([c['before']['map'] for c in control])} | - | - | "
                     f"{_mean([c['finetuned']['map'] for c in control])} | "
                     f"{_mean([c['onnx_ms'] for c in control], 1.0)} | 1x |")
    figures = [r["histogram"] for r in runs if r.get("histogram")]
    if figures:
        lines += ["", f"![|γ| at the end of training](benchmarks/results/yolo/{Path(figures[0]).name})"]
    return "\n".join(lines) + "\n"


def goals(records: list[dict]) -> list[Goal]:
    """The summary row: the target run's share of collapsed scales, and its 50% pruned model fine-tuned beside
    the unpruned control and timed (means over the seeds)."""
    runs = [r["results"] for r in records]
    target = [r["target"] for r in runs]
    pruned = [row for r in runs for p in r["pruned"] if p["source"] == target[0]["name"] for row in p["rows"]
              if row["plan"] == f"{100 * TARGET:.0f}%"]
    control = [p["control"] for r in runs for p in r["pruned"] if p["source"] == target[0]["name"]]
    figure = f"{_mean([t['gamma']['gamma_below_1e-2'] for t in target])}% of |γ| below 1e-2"
    if pruned:
        tuned = _mean([p["finetuned"]["map"] for p in pruned])
        controls = _mean([c["finetuned"]["map"] for c in control])
        figure += (f"; {100 * TARGET:.0f}% pruned and fine-tuned: mAP50-95 {tuned} (unpruned control {controls}), "
                   f"{_mean([p['speedup'] for p in pruned], 1.0)}x faster on ONNX Runtime")
    return [Goal(f"YOLOv8n in Ultralytics' own trainer: target={TARGET:g} reached, pruned model as accurate "
                 "after fine-tuning", f"{runs[0]['settings']['epochs']} epochs on a shapes dataset, "
                 f"{len(runs)} seed{'s' if len(runs) > 1 else ''}", figure)]


if __name__ == "__main__":
    main()
