"""Where a CIFAR training epoch's time goes on one CUDA GPU, against the reference recipe; and compact-model speed.

Side by side in one run, for VGG-19 (``netslim.models.create("vgg19")``, CIFAR-10 shape, batch 64, synthetic
uint8 images; measurement code in gpu_parts.py):

(a) the reference data pipeline: a torch ``Dataset`` of in-memory images with torchvision's per-image PIL
    transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor, Normalize) and a ``DataLoader``
    with 1 and 4 workers (the official PyTorch port's pipeline): data alone per epoch; and one whole
    reference epoch: that DataLoader feeding a plain eager fp32 loop with the port's per-module L1 loop.
(b) the model step alone (one batch already on the GPU): a plain eager loop in fp32, and in bf16 with
    channels_last; and netslim's ``train()`` loop fed that batch, per runner: ``eager`` (bf16,
    channels_last, fused sparsity term), ``compiled`` (torch.compile mode="reduce-overhead"), ``graph``
    (the whole step captured as one CUDA graph, ``cuda_graph=True``), ``compiled_graph`` (both).
(c) the official port's per-module L1 loop (``updateBN``) against ``SparsityRegularizer.step()``.
(d) netslim's ``Loader``: the uint8 dataset on the GPU, batched crop/flip/normalize there: data alone.
(e) whole ``train()`` epochs per runner, and epoch time / (steps x that runner's step compute from (b));
    a stage as ``netslim train`` runs it (evaluation and checkpoints every epoch), projected to 160 epochs.
(g) the same training on the CPU (fp32, two data orders: the noise) and on the GPU (eager fp32, bf16 graph):
    per-epoch loss over a few hundred steps of a small VGG on learnable synthetic data.
(f) compact models: VGG-19 with 70% of its channels pruned by ``plan_pruning`` on BN scales from a seeded
    generator (the widths set the speed), with and without ``round_to=8``, BN folded, batch 1/64/1024,
    fp32/bf16, eager and torch.compile (CUDA graphs), next to the FLOP ratio; and netslim's default GPU
    export (round_to=8, BN folded, bf16, channels_last) against the original as trained.
(h) ImageNet-size synthetic JPEGs streamed by ``StreamLoader`` (nvJPEG when torchvision loads; CPU threads)
    against the images per second a VGG-A training step consumes.
(i) with ``--fmnist``: ``netslim run fmnist-vgg19-gpu`` (real Fashion-MNIST, the paper's full schedule:
    160 epochs with sparsity, prune 70%, 160 of fine-tuning), timed, with the accuracy it reached.

Timing: CUDA events around ``inner`` calls (or synchronize + perf_counter for whole epochs), after warm-up,
medians over repeats. Results: ``benchmarks/results/gpu.json`` (``--quick``: gpu_quick.json, ``--smoke``:
gpu_smoke.json) and Markdown tables on stdout. ``--quick`` is sized for a short device session.

Without a CUDA device the script measures nothing: it prints "no CUDA device: GPU figures unmeasured",
writes ``{"measured": false, "reason": ...}`` and exits 0 (an existing measured result is kept), and the
tables in BENCHMARKS.md show what would be measured. ``--smoke`` runs every code path that does not need
CUDA on whatever device there is, with tiny sizes (numbers meaningless): tests/test_gpu_bench.py.

Usage: python benchmarks/gpu.py [--full | --quick | --smoke] [--fmnist] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from its path (tests) rather than run as a script
    sys.path.insert(0, str(HERE))

import gpu_parts as parts  # noqa: E402
from common import RESULTS, Goal, command, machine_record, verdict, write_json  # noqa: E402

NAME = "gpu"
UNMEASURED = "no CUDA device: GPU figures unmeasured"
TARGETS = {"epoch_seconds": 2.0, "over_reference": 7.0, "stage_seconds": 360.0, "epoch_over_compute": 1.05,
           "compact_efficiency": 0.6, "fmnist_seconds": 900.0}
_VGG = {"model": "vgg19", "kwargs": {}, "batch": 64, "percent": 0.7, "curve_steps": 25,
        "curve_widths": [16, 32, 64, 64, 128, 128, 128, 128], "jpeg_size": 224, "jpeg_model": "vgg11a",
        "jpeg_model_kwargs": {}}
SETTINGS = {
    "full": {**_VGG, "images": 50_000, "workers": [1, 4], "data_epochs": 2, "reference_epochs": 1,
             "step": [20, 7, 20], "train_steps": 200, "train_epochs": 4,
             "runners": ["eager", "compiled", "graph", "compiled_graph"], "reg_calls": 200, "reg_repeats": 7,
             "loader_epochs": 3, "epoch_epochs": 3, "stage_epochs": 6, "curve_epochs": 12,
             "batches": [1, 64, 1024], "dtypes": ["fp32", "bf16"], "compile_batches": [1, 64, 1024],
             "compile_dtypes": ["bf16"], "export_compile": True,
             "infer": {"1": [20, 7, 50], "64": [10, 7, 20], "1024": [3, 5, 3]},
             "jpeg_images": 1024, "jpeg_batch": 256, "jpeg_repeats": 2},
    "quick": {**_VGG, "images": 10_000, "workers": [4], "data_epochs": 1, "reference_epochs": 1,
              "step": [10, 5, 10], "train_steps": 50, "train_epochs": 2, "runners": ["eager", "graph"],
              "reg_calls": 50, "reg_repeats": 5, "loader_epochs": 2, "epoch_epochs": 2, "stage_epochs": 3,
              "curve_epochs": 8, "batches": [1, 64, 1024], "dtypes": ["fp32", "bf16"], "compile_batches": [64],
              "compile_dtypes": ["bf16"], "export_compile": False,
              "infer": {"1": [5, 5, 20], "64": [3, 5, 5], "1024": [1, 3, 1]},
              "jpeg_images": 256, "jpeg_batch": 128, "jpeg_repeats": 1},
    "smoke": {"model": "vgg11", "kwargs": {"widths": [16] * 8}, "batch": 8, "percent": 0.5, "images": 256,
              "workers": [1, 2], "data_epochs": 1, "reference_epochs": 1, "step": [1, 2, 1], "train_steps": 4,
              "train_epochs": 2, "runners": ["eager"], "reg_calls": 5, "reg_repeats": 2, "loader_epochs": 1,
              "epoch_epochs": 2, "stage_epochs": 3, "curve_steps": 4, "curve_epochs": 3, "curve_widths": [8] * 8,
              "batches": [1, 8], "dtypes": ["fp32", "bf16"], "compile_batches": [1], "compile_dtypes": ["fp32"],
              "export_compile": False, "infer": {"1": [1, 2, 1], "8": [1, 2, 1]}, "jpeg_images": 8,
              "jpeg_size": 32, "jpeg_batch": 4, "jpeg_repeats": 1, "jpeg_model": "vgg11",
              "jpeg_model_kwargs": {"widths": [8] * 8}},
}


def measure(s: dict, device: torch.device, notes: list[str], fmnist: bool) -> dict:
    clock = parts.Clock(device)
    if device.type != "cuda":
        notes.append(f"smoke mode on {device}: tiny sizes, numbers meaningless; CUDA-graph runners and nvJPEG "
                     "need CUDA; torch.compile only in (f), with the 'eager' backend off CUDA")
    r = {"reference_data": parts.reference_data(s, device, clock, notes)}
    r["reference_epoch"] = parts.reference_epoch(s, device, clock, notes)
    r["model_step"] = parts.model_step(s, device, clock, notes)
    r["regularizer"] = parts.regularizer(s, device, clock)
    r["loader"] = parts.netslim_loader(s, device, clock)
    r["train_epoch"] = parts.train_epoch(s, device, r["model_step"])
    r["stage"] = parts.stage(s, device, "graph" if "graph" in s["runners"] else s["runners"][0])
    r["loss_curves"] = parts.loss_curves(s, device)
    r["compact"] = parts.compact(s, device, clock, notes)
    r["jpeg"] = parts.jpeg(s, device, clock, notes)
    if fmnist:
        with tempfile.TemporaryDirectory() as tmp:
            r["fmnist"] = parts.fmnist(Path(tmp))
    notes.append("(f) BN scales randomized from a seeded generator (seed 0): a stand-in for a sparsity-trained "
                 "VGG; the pruned widths, not the weights, set the speed")
    return r


def gpu_record(device: torch.device) -> dict:
    rec = {"device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rec.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), capability=".".join(map(str, (props.major, props.minor))))
    tv, reason = parts.torchvision_module()
    rec["torchvision"] = tv.__version__ if tv is not None else reason
    return rec


# -- Markdown --

def _t(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{1e3 * seconds:.3f} ms" if seconds < 0.01 else f"{1e3 * seconds:.1f} ms"


def markdown(rec: dict) -> str:
    if not rec.get("measured"):
        return unmeasured_markdown(rec)
    r, lines = rec["results"], []
    steps = r["loader"]["batches"]
    ref_epoch = parts.median(r["reference_epoch"]["epoch_seconds"])
    lines += [f"### One epoch on {rec['machine'].get('gpu', rec['device'])} ({rec['mode']} mode, "
              f"{r['loader']['images']} images, batch {r['model_step']['batch']}, {steps} steps)\n",
              "| part | per epoch | per step |", "|---|---|---|"]
    for key, v in r["reference_data"].items():
        if key.startswith("workers_"):
            t = parts.median(v["epoch_seconds"])
            lines.append(f"| (a) reference DataLoader, {key[8:]} worker(s), data alone "
                         f"[{r['reference_data']['transform']}] | {_t(t)} | {_t(t / steps)} |")
    lines.append(f"| (a) reference recipe, whole epoch ({r['reference_epoch']['workers']} workers, eager fp32, "
                 f"per-module L1 loop) | {_t(ref_epoch)} | {_t(ref_epoch / steps)} |")
    t = parts.median(r["loader"]["epoch_seconds"])
    lines.append(f"| (d) netslim Loader on {rec['device']}, data alone | {_t(t)} | {_t(t / steps)} |")
    for key, v in r["model_step"].items():
        if isinstance(v, dict):
            lines.append(f"| (b) step alone: {key} | {_t(v['median'] * steps)} | {_t(v['median'])} |")
    best = None
    for runner, v in r["train_epoch"].items():
        e, ratio = parts.median(v["epoch_seconds"]), v["epoch_over_step_compute"]
        best = e if best is None or e < best else best
        lines.append(f"| (e) full train() epoch, {runner} | {_t(e)} | {_t(e / v['steps'])} (epoch / step compute "
                     f"= {'–' if ratio is None else f'{ratio:.3f}'}) |")
    st = r["stage"]
    lines += ["", f"Targets: epoch <= {TARGETS['epoch_seconds']} s: {verdict(best <= TARGETS['epoch_seconds'])} "
              f"({_t(best)}); >= {TARGETS['over_reference']:.0f}x the reference epoch: "
              f"{verdict(ref_epoch / best >= TARGETS['over_reference'])} ({ref_epoch / best:.1f}x); 160-epoch stage "
              f"(evaluation and checkpoints every epoch, projected from {st['epochs']} epochs of the "
              f"{st['runner']} runner) <= {TARGETS['stage_seconds'] / 60:.0f} min: "
              f"{verdict(st['projected_160_epochs_seconds'] <= TARGETS['stage_seconds'])} "
              f"({st['projected_160_epochs_seconds'] / 60:.1f} min); epoch / step compute <= "
              f"{TARGETS['epoch_over_compute']}: " + ", ".join(
                  f"{k} {v['epoch_over_step_compute']:.3f}" for k, v in r["train_epoch"].items()
                  if v["epoch_over_step_compute"]) + "."]
    g = r["regularizer"]
    lines += ["", f"### (c) Sparsity term ({g['bn_layers']} BN layers)\n", "| | per call | added to a step |",
              "|---|---|---|"]
    for k, label in (("loop", "official per-module Python loop"), ("foreach", "SparsityRegularizer.step()")):
        lines.append(f"| {label} | {g['per_call_us'][k]:.1f} µs | {100 * g['step_overhead'][k]:+.1f}% |")
    lc = r["loss_curves"]
    lines += ["", f"### (g) Loss curves, {lc['steps']} steps ({lc['epochs']} epochs)\n",
              "| run | " + " | ".join(f"epoch {k + 1}" for k in range(lc["epochs"])) + " | max gap to CPU fp32 |",
              "|---" * (lc["epochs"] + 2) + "|"]
    for name, curve in lc["curves"].items():
        gap = lc["gaps"].get(name, lc["noise"] if name.endswith("other_order") else 0.0)
        lines.append(f"| {name} | " + " | ".join(f"{x:.3f}" for x in curve) + f" | {gap:.3f} |")
    lines.append(f"\nSeed-to-seed noise (two data orders on the CPU): {lc['noise']:.3f}; within 2x noise: "
                 + ", ".join(f"{k} {'yes' if v else '**no**'}" for k, v in lc["within_noise"].items()) + ".")
    lines += _compact_markdown(r["compact"])
    lines += _jpeg_markdown(r["jpeg"])
    if "fmnist" in r:
        f = r["fmnist"]
        final = f["rows"][-1]
        lines += ["", "### (i) Fashion-MNIST, the paper's full schedule (`netslim run fmnist-vgg19-gpu`)\n",
                  f"{f['seconds'] / 60:.1f} min (target <= {TARGETS['fmnist_seconds'] / 60:.0f} min: "
                  f"{verdict(f['seconds'] <= TARGETS['fmnist_seconds'])}); final test error {final['test_error']:.2f}% "
                  f"with {100 * final['params_pruned']:.1f}% of parameters and {100 * final['flops_pruned']:.1f}% "
                  "of FLOPs pruned.\n", "| model | test error (%) | params | FLOPs |", "|---|---|---|---|"]
        lines += [f"| {x['model']} | {x['test_error']:.2f} | {x['params']:,} | {x['flops']:.3g} |" for x in f["rows"]]
    lines += ["", *[f"- {n}" for n in rec["notes"]]]
    return "\n".join(lines) + "\n"


def _compact_markdown(c: dict) -> list[str]:
    names = list(c["models"])
    lines = ["", f"### (f) Compact VGG ({100 * c['percent']:.0f}% channels pruned; BN scales {c['bn_scales']}; "
             "BN folded)\n",
             "FLOP ratio: " + ", ".join(f"{k} {c['models'][k]['flop_ratio']:.2f}x" for k in names) + "\n",
             "| dtype | batch | runtime | " + " | ".join(names) + " | "
             + " | ".join(f"speedup {k} (FLOP ratio)" for k in names[1:]) + " |",
             "|---" * (3 + 2 * len(names) - 1) + "|"]
    for row in c["rows"]:
        times = " | ".join(_t(parts.median(row["seconds"][k])) for k in names)
        speed = " | ".join(f"{row['speedup'][k]:.2f}x ({row['flop_ratio'][k]:.2f}x)" for k in names[1:])
        lines.append(f"| {row['dtype']} | {row['batch']} | {row['runtime']} | {times} | {speed} |")
    bf = [row for row in c["rows"] if row["dtype"] == "bf16" and row["batch"] == 1024]
    if bf:
        eff = max(row["speedup"]["pruned_round8"] / row["flop_ratio"]["pruned_round8"] for row in bf)
        lines.append(f"\nbf16, batch 1024: speedup / FLOP reduction (round_to=8) {eff:.2f} (target >= "
                     f"{TARGETS['compact_efficiency']}: {verdict(eff >= TARGETS['compact_efficiency'])}).")
    d = c["default_export"]
    variants = list(d["rows"][0]["speedup"])
    lines += ["", f"Default export for {d['target']} (round_to={d['round_to']}, BN folded, {d['dtype']}, "
              f"{'channels_last' if d['channels_last'] else 'contiguous'}) against the original as trained, in the "
              "same precision and layout:\n", "| batch | original | " + " | ".join(variants) + " |",
              "|---|---|" + "---|" * len(variants)]
    for row in d["rows"]:
        lines.append(f"| {row['batch']} | {_t(parts.median(row['seconds']['original']))} | " + " | ".join(
            f"{_t(parts.median(row['seconds'][k]))} ({row['speedup'][k]:.2f}x)" for k in variants) + " |")
    lines.append(f"\nNever slower than the original: {verdict(d['never_slower'])} (slowest {d['slowest']:.2f}x).")
    return lines


def _jpeg_markdown(j: dict) -> list[str]:
    lines = ["", f"### (h) {j['images']} ImageNet-size JPEGs (mean {j['mean_kb']:.0f} KB) to {j['size']}x{j['size']} "
             f"crops, batch {j['batch']}\n", "| decoder | img/s | / training step's img/s |", "|---|---|---|"]
    for k, ratio in j["decode_over_training"].items():
        lines.append(f"| {k} | {j[k]['images_per_second']:.0f} | {ratio:.2f} |")
    t = j["training"]
    lines.append(f"\nTraining {t['model']}: {t['images_per_second']:.0f} img/s ({_t(parts.median(t['step_seconds']))} "
                 "per step). A ratio above 1: decoding keeps up with training.")
    return lines


def unmeasured_markdown(rec: dict) -> str:
    """The tables this script fills on a GPU, with every figure marked unmeasured and the reason."""
    s, u = SETTINGS["full"], "unmeasured"
    lines = [f"**{rec.get('reason', UNMEASURED)}**: {rec.get('why', 'no GPU was available where this ran')}. "
             f"Run `python benchmarks/gpu.py` (or `--quick`; `--fmnist` adds part (i)) on a CUDA machine to fill "
             "these tables; every figure below is unmeasured.\n",
             f"### One epoch: VGG-19, {s['images']:,} images, batch {s['batch']}\n",
             "| part | per epoch | per step |", "|---|---|---|"]
    rows = [f"(a) reference DataLoader, {w} worker(s), data alone" for w in s["workers"]]
    rows += ["(a) reference recipe, whole epoch (eager fp32, per-module L1 loop)", "(d) netslim Loader, data alone",
             "(b) step alone: eager_fp32", "(b) step alone: eager_bf16_channels_last"]
    rows += [f"(b) step alone: train_loop_{k}" for k in s["runners"]]
    rows += [f"(e) full train() epoch, {k}" for k in s["runners"]]
    lines += [f"| {x} | {u} | {u} |" for x in rows]
    lines += ["", f"Targets (one H100): epoch <= {TARGETS['epoch_seconds']} s and >= {TARGETS['over_reference']:.0f}x "
              f"the reference epoch; a 160-epoch stage <= {TARGETS['stage_seconds'] / 60:.0f} min; epoch / captured "
              f"step compute <= {TARGETS['epoch_over_compute']}; compact VGG-19 70%, bf16, batch 1024: speedup >= "
              f"{TARGETS['compact_efficiency']} x the FLOP reduction, and the default export never slower than "
              f"the original; Fashion-MNIST full schedule <= {TARGETS['fmnist_seconds'] / 60:.0f} min. "
              f"Status: {u}.", "",
              "### (f) Compact VGG-19 (70% of channels pruned), BN folded\n",
              "| dtype | batch | runtime | original | pruned | pruned_round8 | speedup pruned (FLOP ratio) | "
              "speedup pruned_round8 (FLOP ratio) |", "|---|---|---|---|---|---|---|---|"]
    for dtype in s["dtypes"]:
        for batch in s["batches"]:
            for runtime in ["eager"] + (["compile"] if dtype in s["compile_dtypes"] else []):
                lines.append(f"| {dtype} | {batch} | {runtime} | {u} | {u} | {u} | {u} | {u} |")
    lines += ["", "| default GPU export vs original, batch | original | export | export_compiled |",
              "|---|---|---|---|"]
    lines += [f"| {b} | {u} | {u} | {u} |" for b in s["batches"]]
    lines += ["", "### (g) Loss curves CPU vs GPU, (h) nvJPEG vs CPU threads, (i) Fashion-MNIST full schedule\n",
              f"All {u}. The CPU-side figures of (h) are in 'Streaming ImageNet-size JPEGs (CPU)' above; the CPU "
              "check of (g) (bf16 against fp32 within seed noise over 315 steps) is tests/test_steps.py."]
    return "\n".join(lines) + "\n"


def _out_path(out: Path, mode: str) -> Path:
    return Path(out) / ("gpu.json" if mode == "full" else f"gpu_{mode}.json")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="the full measurement (default)")
    mode.add_argument("--quick", action="store_true", help="10,000 images, fewer repeats, runners and compiled cases")
    p.add_argument("--smoke", action="store_true", help="every code path, tiny sizes, any device (numbers meaningless)")
    p.add_argument("--fmnist", action="store_true", help="also part (i): netslim run fmnist-vgg19-gpu (~15 min)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    p.add_argument("--why", default="no GPU was available where this ran",
                   help="the reason recorded when no CUDA device is present")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: unchanged on a GPU, 1 on the CPU, where OpenMP threads "
                        "competing with other processes on a small shared machine slow down by orders of magnitude)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    started = time.perf_counter()
    shown = [a for k, a in enumerate(argv) if a != "--why" and (k == 0 or argv[k - 1] != "--why")]
    base = {"benchmark": NAME, "mode": mode, "command": command(f"{NAME}.py", shown), "machine": machine_record()}
    path = _out_path(args.out, mode)
    if not torch.cuda.is_available() and mode != "smoke":
        rec = {**base, "measured": False, "reason": UNMEASURED, "why": args.why}
        print(UNMEASURED)
        previous = json.loads(path.read_text()) if path.exists() else {}
        if previous.get("measured"):
            print(f"kept the measured result already in {path}")
        else:
            write_json(rec, path)
        return rec
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    notes: list[str] = []
    results = measure(SETTINGS[mode], device, notes, args.fmnist and device.type == "cuda")
    rec = {**base, "measured": True, "machine": {**machine_record(), **gpu_record(device)}, "device": str(device),
           "torch_set_num_threads": threads, "settings": SETTINGS[mode], "results": results, "notes": notes,
           "wall_seconds": round(time.perf_counter() - started, 1)}
    write_json(rec, path)
    print(markdown(rec))
    return rec


def goals(rec: dict) -> list[Goal]:
    """The summary row: the one-GPU epoch time against its target, or why it is unmeasured."""
    goal = f"GPU training: VGG-19 epoch (50,000 images) under {TARGETS['epoch_seconds']:g} s on one H100"
    if not rec.get("measured"):
        return [Goal(goal, "unmeasured", f"{rec.get('reason', UNMEASURED)}")]
    best = min(parts.median(v["epoch_seconds"]) for v in rec["results"]["train_epoch"].values())
    return [Goal(goal, f"train() epoch on {rec['machine'].get('gpu', rec.get('device'))}",
                 f"{_t(best)}: {verdict(best <= TARGETS['epoch_seconds'])}")]


if __name__ == "__main__":
    main()
