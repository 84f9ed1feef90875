"""The paper's accuracy claims on real data here (Fashion-MNIST, digits), with shortened schedules.

Experiments (each resumable: results land in benchmarks/results/accuracy_<name>.json):
  table3      MLP 784-500-300-10, 80% of each hidden layer pruned (paper Table 3), paper schedule
  table1      VGG-19 cfg at reduced width: baseline, λ=1e-4 sparse, 50/60/70% pruned + fine-tuned (Table 1)
  multipass   the same VGG, 3 passes of 50% global / at most 50% per layer (Table 4)
  figure5     error before and after fine-tuning for prune ratios 10%..90% (Figure 5)
  scratch     the 70% compact architecture trained from scratch ('Rethinking the value of network pruning')
  polarize    L1 vs the polarization regularizer, pruned to the same FLOPs
  recover     accuracy right after pruning with/without BN re-calibration; fine-tuning with/without distillation

Usage: python benchmarks/accuracy.py table3 [--quick] [--out runs/bench]
The sparse-trained model of an experiment is shared by its variants: a stage folder is copied, and
the pipeline resumes it (finished) instead of training it again.
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from netslim import apply_plan, count_flops, count_params, plan_pruning
from netslim.budget import plan_for_budget
from netslim.checkpoint import build_model, describe, load_model
from netslim.data import make_loaders
from netslim.pipeline import ExperimentConfig, run_experiment
from netslim.train import evaluate, recalibrate_bn, train

RESULTS = Path(__file__).resolve().parent / "results"


def machine_record() -> dict:
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"platform": platform.platform(), "cpu": cpu, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}


def write_result(name: str, record: dict, folder: Path = RESULTS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(record, indent=1, default=str))
    return path

# VGG-19's cfg (the paper's CIFAR VGGNet) at 1/8 width, so an epoch of Fashion-MNIST fits a 2-core CPU.
VGG_WIDTHS = [8, 8, 16, 16, 32, 32, 32, 32, 64, 64, 64, 64, 64, 64, 64, 64]
# A CPU budget, not the paper's schedule: a fixed 10,000-image subset of the training set (the whole
# 10,000-image test set for testing), 8 epochs of sparse training and 4 of fine-tuning instead of the
# paper's 160 + 160. The L1 term's total pull on a scale is about λ·lr·steps; the paper's runs take
# ~100x more steps, so λ is raised from 1e-4 to 3e-3 (1e-2 collapsed 90% of the scales of this
# narrow net and cost it half its accuracy: measured, then lowered).
EPOCHS = 8
VGG_SUBSET = 10_000
VGG_LAMBDA = 3e-3


def mlp_config(quick: bool) -> ExperimentConfig:
    epochs = 2 if quick else 30  # the paper's MNIST schedule: 30 epochs, batch 256, lr 0.1 /10 at 1/3, 2/3
    return ExperimentConfig(model="mlp", dataset="fashion-mnist", baseline=True, train_subset=2000 if quick else 0,
                            train={"epochs": epochs, "batch_size": 256, "lr": 0.1, "milestones": [0.3334, 0.6667],
                                   "sparsity": 1e-4, "progress": False},
                            finetune={"epochs": epochs}, prune={"layer_percent": 0.8})


def vgg_config(quick: bool, percent: float = 0.7, **overrides) -> ExperimentConfig:
    epochs, tune = (1, 1) if quick else (EPOCHS, EPOCHS // 2)
    train_options = {"epochs": epochs, "batch_size": 64, "lr": 0.1, "sparsity": VGG_LAMBDA, "bn_init": 0.5,
                     "progress": False, **overrides.pop("train", {})}
    return ExperimentConfig(model="vgg19", dataset="fashion-mnist", model_kwargs={"widths": VGG_WIDTHS},
                            baseline=True, train_subset=1000 if quick else VGG_SUBSET, train=train_options,
                            finetune={"epochs": tune}, prune={"percent": percent}, **overrides)


def _reuse(source: Path, target: Path, *stages: str) -> None:
    """Seed a run folder with finished stages of another run (the pipeline then skips them)."""
    for stage in stages:
        if (source / stage).exists() and not (target / stage).exists():
            shutil.copytree(source / stage, target / stage)


def table3(out: Path, quick: bool) -> dict:
    return run_experiment(mlp_config(quick), out / "table3", progress=False)


def table1(out: Path, quick: bool) -> dict:
    results = {}
    for percent in (0.5, 0.6, 0.7):
        run = out / f"table1-{int(100 * percent)}"
        _reuse(out / "table1-50", run, "baseline", "pass1/sparse")
        results[percent] = run_experiment(vgg_config(quick, percent), run, progress=False)["rows"]
    return results


def multipass(out: Path, quick: bool) -> dict:
    config = vgg_config(quick, 0.5, passes=3)
    config.prune["max_layer_fraction"] = 0.5
    run = out / "multipass"
    _reuse(out / "table1-50", run, "baseline", "pass1/sparse")
    return run_experiment(config, run, progress=False)


def figure5(out: Path, quick: bool) -> dict:
    sparse = out / "table1-50" / "pass1" / "sparse" / "last.pt"
    if not sparse.exists():
        table1(out, quick)
    model, _ = load_model(sparse)
    config = vgg_config(quick)
    tune = config.finetune_config()
    tune.progress, tune.epochs = False, 1  # one epoch of fine-tuning per ratio: a CPU budget
    loader, _, test, _ = make_loaders(config, tune.batch_size, "cpu", tune.seed)
    rows = []
    for percent in [p / 10 for p in range(1, 10)]:
        small = apply_plan(model.eval(), plan_pruning(model, percent))
        before = 1 - evaluate(small, test)["accuracy"]
        train(small, loader, tune, out_dir=out / f"figure5-{int(100 * percent)}")
        rows.append({"percent": percent, "error_before_finetune": before,
                     "error_after_finetune": 1 - evaluate(small, test)["accuracy"],
                     "params": count_params(small), "flops": count_flops(small)})
    return {"rows": rows}


def scratch(out: Path, quick: bool) -> dict:
    pruned = out / "table1-70" / "pass1" / "pruned.pt"
    if not pruned.exists():
        table1(out, quick)
    _, data = load_model(pruned)
    torch.manual_seed(0)
    fresh = build_model(data["arch"])  # the compact architecture, new random weights
    config = vgg_config(quick)
    plain = config.train_config()
    plain.sparsity, plain.bn_init, plain.progress = 0.0, None, False
    loader, _, test, _ = make_loaders(config, plain.batch_size, "cpu", plain.seed)
    train(fresh, loader, plain, out_dir=out / "scratch", arch=describe(fresh, "vgg19", data["arch"]["kwargs"]))
    slimmed = json.loads((out / "table1-70" / "results.json").read_text())["rows"][-1]
    return {"scratch_error": 1 - evaluate(fresh, test)["accuracy"], "scratch_epochs": plain.epochs,
            "slimmed_error": slimmed["test_error"] / 100, "params": count_params(fresh)}


def polarize(out: Path, quick: bool) -> dict:
    l1_rows = json.loads((out / "table1-70" / "results.json").read_text())["rows"] \
        if (out / "table1-70" / "results.json").exists() else table1(out, quick)[0.7]
    l1_flops = l1_rows[-1]["flops"]
    config = vgg_config(quick, train={"sparsity_kind": "polarization", "sparsity": VGG_LAMBDA})
    run = out / "polarize"
    _reuse(out / "table1-50", run, "baseline")
    sparse_cfg = config.train_config()
    loader, _, test, train_set = make_loaders(config, sparse_cfg.batch_size, "cpu", sparse_cfg.seed)
    model, _ = load_model(out / "table1-50" / "baseline" / "last.pt")  # only for the architecture
    torch.manual_seed(sparse_cfg.seed)
    model = build_model(describe(model, "vgg19", {"widths": VGG_WIDTHS, "num_classes": 10,
                                                  "in_channels": 1, "input_size": 28}))
    train(model, loader, sparse_cfg, out_dir=run / "sparse")
    full_flops = count_flops(model)
    plan = plan_for_budget(model.eval(), target_flops=l1_flops / full_flops)
    small = apply_plan(model, plan)
    before = 1 - evaluate(small, test)["accuracy"]
    tune = config.finetune_config()
    tune.progress = False
    train(small, loader, tune, out_dir=run / "finetune")
    return {"l1": {"flops": l1_flops, "error": l1_rows[-1]["test_error"] / 100},
            "polarization": {"flops": count_flops(small), "error_before_finetune": before,
                             "error": 1 - evaluate(small, test)["accuracy"]}}


def recover(out: Path, quick: bool) -> dict:
    """BN re-calibration right after pruning, and distillation during fine-tuning (MLP and VGG)."""
    results = {}
    for name, config in (("mlp", mlp_config(quick)), ("vgg", vgg_config(quick))):
        base = out / ("table3" if name == "mlp" else "table1-70")
        if not (base / "results.json").exists():
            (table3 if name == "mlp" else table1)(out, quick)
        sparse, _ = load_model(base / "pass1" / "sparse" / "last.pt")
        plan = plan_pruning(sparse, **config.prune)
        cfg = config.train_config()
        loader, _, test, _ = make_loaders(config, cfg.batch_size, "cpu", cfg.seed)
        small = apply_plan(sparse.eval(), plan)
        row = {"error_pruned": 1 - evaluate(small, test)["accuracy"]}
        recalibrated = recalibrate_bn(copy.deepcopy(small), loader, 50)
        row["error_pruned_recalibrated"] = 1 - evaluate(recalibrated, test)["accuracy"]
        for distill in (0.0, 0.7):
            tune = config.finetune_config()
            tune.progress, tune.distill = False, distill
            student = copy.deepcopy(small)
            train(student, loader, tune, teacher=sparse if distill else None,
                  out_dir=out / f"recover-{name}-distill{distill}")
            row[f"error_finetuned_distill_{distill}"] = 1 - evaluate(student, test)["accuracy"]
        results[name] = row
    return results


EXPERIMENTS = {"table3": table3, "table1": table1, "multipass": multipass, "figure5": figure5, "scratch": scratch,
               "polarize": polarize, "recover": recover}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=[*EXPERIMENTS, "all"])
    parser.add_argument("--quick", action="store_true", help="1-3 epochs per stage: checks the script, not the claim")
    parser.add_argument("--out", default="runs/bench-accuracy")
    parser.add_argument("--results", default=str(RESULTS), help="folder for the JSON results")
    args = parser.parse_args(argv)
    out = Path(args.out) / ("quick" if args.quick else "full")
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    results = {}
    for name in names:
        started = time.perf_counter()
        result = EXPERIMENTS[name](out, args.quick)
        record = {"experiment": name, "quick": args.quick, "seconds": time.perf_counter() - started,
                  "command": "python benchmarks/accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "machine": machine_record(), "result": result}
        write_result(f"accuracy_{name}{'_quick' if args.quick else ''}", record, Path(args.results))
        results[name] = record
        print(json.dumps({name: record["result"]}, indent=1, default=str)[:4000])
    return results


if __name__ == "__main__":
    main()
