"""Markdown sections of BENCHMARKS.md for the accuracy experiments and the Torch-Pruning comparison.

Used by run_all.py's renderer; reads benchmarks/results/accuracy_<name>.json (full mode only: quick
runs check the scripts, not the claims) and torch_pruning_compare.json.
"""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _load(name: str) -> dict | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _provenance(rec: dict) -> str:
    m = rec["machine"]
    return (f"Command: `{rec['command']}` ({rec['seconds'] / 60:.0f} min)  \n"
            f"Machine: {m['cpu']}, {m['platform']}, torch {m['torch']}, {m['threads']} threads  \nDate: {m['date']}\n")


def _rows_table(rows: list[dict]) -> list[str]:
    out = ["| Model | Test error (%) | Parameters | Pruned | FLOPs | Pruned |", "|---|---|---|---|---|---|"]
    for r in rows:
        pp = f"{100 * r['params_pruned']:.1f}%" if r["params_pruned"] else "-"
        fp = f"{100 * r['flops_pruned']:.1f}%" if r["flops_pruned"] else "-"
        out.append(f"| {r['model']} | {r['test_error']:.2f} | {r['params'] / 1e3:.1f}K | {pp} | "
                   f"{r['flops']:.3g} | {fp} |")
    return out


def accuracy_section() -> str:
    lines = ["## Accuracy: the paper's claims on real data (Fashion-MNIST)", "",
             "Real data available here: Fashion-MNIST (Debian's `dataset-fashion-mnist`). Schedules are shortened to",
             "fit a 2-core CPU and say so; every figure below was measured by the command shown.", ""]
    table3 = _load("accuracy_table3")
    if table3:
        lines += ["### Table 3 analogue: MLP 784-500-300-10, 80% of each hidden layer pruned", "",
                  "The paper's MNIST schedule (30 epochs, batch 256, lr 0.1 /10 at 1/3 and 2/3, λ = 1e-4) on",
                  "Fashion-MNIST. Paper (MNIST): 1.43% -> 1.49% error, 84.4% of parameters pruned.", ""]
        lines += _rows_table(table3["result"]["rows"]) + ["", _provenance(table3)]
        lines += ["With λ = 1e-4 and only 7,000 steps the scales do not become sparse (the training log warns",
                  "'sparsity is not emerging' half-way), so removing 80% of the neurons hurts before fine-tuning;",
                  "fine-tuning recovers the baseline error at 84.4% fewer parameters. See the re-calibration",
                  "figures below for how much of the drop is stale BN statistics.", ""]
    table1 = _load("accuracy_table1")
    if table1:
        lines += ["### Table 1 analogue: VGG-19 configuration at 1/8 width", "",
                  "VGG-19's layer configuration at 1/8 of its widths (8 to 64 channels) on Fashion-MNIST 28x28.",
                  "A CPU budget instead of the paper's schedule: a fixed 10,000-image training subset, 8 epochs",
                  "of (sparse) training and 4 of fine-tuning instead of 160 + 160; λ = 3e-3 instead of 1e-4 to",
                  "give the L1 term a comparable pull (λ·lr·steps) in ~100x fewer steps. Test set: all 10,000.", ""]
        for percent, rows in table1["result"].items():
            lines += [f"**{float(percent) * 100:.0f}% of channels pruned**", ""] + _rows_table(rows) + [""]
        lines += [_provenance(table1),
                  "Right after pruning, the error is at chance: every conv here is a zero-padded 3x3, so the",
                  "constant output ReLU(β) of a pruned channel cannot be folded exactly and is dropped, and the",
                  "BN statistics of the following layers no longer fit. Re-estimating them (the re-calibration",
                  "figures below) recovers the accuracy before any fine-tuning.", ""]
    multipass = _load("accuracy_multipass")
    if multipass:
        lines += ["### Table 4 analogue: multi-pass (50% global, at most 50% per layer, 3 passes)", ""]
        lines += _rows_table(multipass["result"]["rows"]) + ["", _provenance(multipass)]
    figure5 = _load("accuracy_figure5")
    if figure5:
        lines += ["### Figure 5 analogue: error before and after fine-tuning (1 epoch) by prune ratio", "",
                  "| pruned | error before fine-tuning (%) | after (%) | parameters | FLOPs |", "|---|---|---|---|---|"]
        for r in figure5["result"]["rows"]:
            lines.append(f"| {100 * r['percent']:.0f}% | {100 * r['error_before_finetune']:.2f} | "
                         f"{100 * r['error_after_finetune']:.2f} | {r['params'] / 1e3:.1f}K | {r['flops']:.3g} |")
        lines += ["", _provenance(figure5),
                  "One epoch of fine-tuning is a CPU budget: it runs entirely at the schedule's first learning",
                  "rate (0.1), which perturbs a model that pruning barely changed (10-30%) more than it helps;",
                  "from 40% on, where pruning (β of padded convs dropped, see above) breaks the BN statistics,",
                  "it recovers most of the accuracy up to 60%.", ""]
    scratch = _load("accuracy_scratch")
    if scratch:
        r = scratch["result"]
        lines += ["### The same compact architecture trained from scratch ('Rethinking the Value of Network Pruning')",
                  "", f"70%-pruned VGG architecture, new random weights, {r['scratch_epochs']} epochs: "
                  f"{100 * r['scratch_error']:.2f}% test error; slimmed and fine-tuned: {100 * r['slimmed_error']:.2f}%"
                  f" ({r['params'] / 1e3:.1f}K parameters).", "", _provenance(scratch)]
    polarize = _load("accuracy_polarize")
    if polarize:
        r = polarize["result"]
        lines += ["### L1 vs the polarization regularizer at equal FLOPs", "",
                  "| regularizer | FLOPs | error before fine-tuning (%) | fine-tuned error (%) |", "|---|---|---|---|",
                  f"| L1 (70% pruned) | {r['l1']['flops']:.3g} | - | {100 * r['l1']['error']:.2f} |",
                  f"| polarization (same FLOPs budget) | {r['polarization']['flops']:.3g} | "
                  f"{100 * r['polarization']['error_before_finetune']:.2f} | {100 * r['polarization']['error']:.2f} |",
                  "", _provenance(polarize)]
    recover = _load("accuracy_recover")
    if recover:
        lines += ["### Recovering accuracy: BN re-calibration and distillation", "",
                  "Right after pruning, with and without re-estimating BN statistics on 50 training batches;",
                  "then fine-tuning with and without distillation from the unpruned model (weight 0.7, T = 4).", "",
                  "| model | pruned (%) | pruned + BN re-estimated (%) | fine-tuned (%) "
                  "| fine-tuned + distillation (%) |",
                  "|---|---|---|---|---|"]
        for name, r in recover["result"].items():
            lines.append(f"| {name} | {100 * r['error_pruned']:.2f} | {100 * r['error_pruned_recalibrated']:.2f} | "
                         f"{100 * r['error_finetuned_distill_0.0']:.2f} | "
                         f"{100 * r['error_finetuned_distill_0.7']:.2f} |")
        lines += ["", "(test errors)", "", _provenance(recover)]
    fidelity = _fidelity_section()
    if fidelity:
        lines += [fidelity, ""]
    missing = [n for n in ("table3", "table1", "multipass", "figure5", "scratch", "polarize", "recover")
               if _load(f"accuracy_{n}") is None]
    if missing:
        lines += [f"Not measured in full mode yet: {', '.join(missing)} (`python benchmarks/accuracy.py NAME`; "
                  "their `--quick` modes run in the test suite).", ""]
    return "\n".join(lines)


def _fidelity_section() -> str:
    """Issue 19's experiment (benchmarks/fidelity.py), when its results exist."""
    if not any(not p.stem.endswith("_quick") for p in RESULTS.glob("fidelity_*.json")):
        return ""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fidelity

    return fidelity.markdown(RESULTS)


def torch_pruning_section() -> str:
    rec = _load("torch_pruning_compare")
    if not rec:
        return ""
    m = rec["machine"]
    lines = ["## netslim vs Torch-Pruning's BN-scale pruner", "",
             "Same models, same BN scales (randomized by a seeded generator so ~60% are near zero, as after sparse",
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
    lines += ["", f"Command: `python benchmarks/torch_pruning_compare.py`  \nMachine: {m['cpu']} ({m['cores']} cores), "
              f"torch {m['torch']}, torch-pruning {m['torch_pruning']}, {m['threads']} thread, load average "
              f"{m['load_average_1min']:.1f} during the run  \nDate: {m['date'][:10]}", ""]
    lines += ["Notes: " + " ".join(rec["notes"]) if isinstance(rec["notes"], list) else str(rec["notes"]), ""]
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "" if v is None else str(v)
