"""Where a CIFAR training epoch's time goes on one CUDA GPU, and whether pruning speeds up GPU inference.

Side by side in one run, for VGG-19 (``netslim.models.create("vgg19")``, CIFAR-10 shape, batch 64):

(a) reference data pipeline: a torch ``Dataset`` over 50,000 in-memory synthetic uint8 32x32 images with
    torchvision's per-image PIL transforms (RandomCrop(32, padding=4), RandomHorizontalFlip, ToTensor,
    Normalize) and a ``DataLoader`` with 1 and with 4 workers: the data time alone of one epoch (batches
    copied to the GPU, no model). Needs torchvision; skipped with a note without it.
(b) the model step alone (zero_grad, forward, cross-entropy, backward, SGD step; one batch already on
    the GPU): eager fp32, eager bf16 autocast + channels_last, and netslim's ``train()`` loop fed that
    same batch (bf16, channels_last, sparsity term; with ``compile=True``: torch.compile
    mode="reduce-overhead", i.e. CUDA graphs) -- the captured-step compute.
(c) the official port's per-module Python L1 loop (``updateBN``) vs ``SparsityRegularizer.step()``:
    per call and as the added time of a bf16 training step.
(d) netslim's ``Loader`` with the uint8 data on the GPU and batched augmentation: data alone per epoch.
(e) a full ``train()`` epoch (Loader on the GPU, sparsity λ=1e-4), and epoch time / (steps x captured step).
(f) compact models: VGG-19 with 70% of its channels pruned by ``plan_pruning`` on BN scales drawn from a
    seeded generator (not sparsity-trained; the widths are what matters for speed), with and without
    ``round_to=8``, BN folded (``netslim.export.fold_batchnorm``, when present), at batch 1/64/1024,
    fp32/bf16, eager and torch.compile: speedup over the original next to the FLOP ratio.

Timing: CUDA events around ``inner`` calls (or ``torch.cuda.synchronize`` + ``perf_counter`` for whole
epochs), after warm-up, medians over repeats. Results: ``benchmarks/results/gpu.json`` (``--quick``:
gpu_quick.json, ``--smoke``: gpu_smoke.json) and Markdown tables on stdout.

Without a CUDA device the script measures nothing: it prints "no CUDA device: GPU figures unmeasured",
writes ``{"measured": false, "reason": ...}`` and exits 0 (an existing measured result is kept).
``--smoke`` runs every code path on whatever device there is (the CPU here) with tiny sizes (a narrow
VGG-11, 256 images, batch 8, 1-2 repeats, torch.compile with the cheap "eager" backend only in (f));
its numbers mean nothing: it keeps the script from rotting (tests/test_gpu_bench.py).

Usage: python benchmarks/gpu.py [--full | --quick | --smoke] [--out DIR]
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib
import json
import random
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # imported from its path (tests) rather than run as a script
    sys.path.insert(0, str(HERE))

import netslim  # noqa: E402
from common import RESULTS, command, machine_record, randomize_bn, summary, write_json  # noqa: E402
from netslim.data import Dataset, Loader  # noqa: E402
from netslim.metrics import count_flops, count_params  # noqa: E402
from netslim.train import TrainConfig, train  # noqa: E402

NAME = "gpu"
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
LAM = 1e-4
UNMEASURED = "no CUDA device: GPU figures unmeasured"

SETTINGS = {
    "full": {"model": "vgg19", "kwargs": {}, "images": 50_000, "batch": 64, "workers": [1, 4], "data_epochs": 2,
             "step": [20, 7, 20], "train_steps": 200, "train_epochs": 4, "runners": ["compiled", "eager"],
             "reg_calls": 200, "reg_repeats": 7, "loader_epochs": 3, "epoch_epochs": 3,
             "percent": 0.7, "batches": [1, 64, 1024], "dtypes": ["fp32", "bf16"],
             "compile_batches": [1, 64, 1024], "compile_dtypes": ["fp32", "bf16"],
             "infer": {"1": [20, 7, 50], "64": [10, 7, 20], "1024": [3, 5, 3]}},
    "quick": {"model": "vgg19", "kwargs": {}, "images": 10_000, "batch": 64, "workers": [1, 4], "data_epochs": 1,
              "step": [10, 5, 10], "train_steps": 50, "train_epochs": 2, "runners": ["compiled", "eager"],
              "reg_calls": 50, "reg_repeats": 5, "loader_epochs": 2, "epoch_epochs": 2,
              "percent": 0.7, "batches": [1, 64, 1024], "dtypes": ["fp32", "bf16"],
              "compile_batches": [64], "compile_dtypes": ["bf16"],
              "infer": {"1": [5, 5, 20], "64": [3, 5, 5], "1024": [1, 3, 1]}},
    "smoke": {"model": "vgg11", "kwargs": {"widths": [16] * 8}, "images": 256, "batch": 8, "workers": [1, 2],
              "data_epochs": 1, "step": [1, 2, 1], "train_steps": 4, "train_epochs": 2, "runners": ["eager"],
              "reg_calls": 5, "reg_repeats": 2, "loader_epochs": 1, "epoch_epochs": 2,
              "percent": 0.5, "batches": [1, 8], "dtypes": ["fp32", "bf16"],
              "compile_batches": [1], "compile_dtypes": ["fp32"],
              "infer": {"1": [1, 2, 1], "8": [1, 2, 1]}},
}


# -- timing --

class Clock:
    """Times on one device: CUDA events (or synchronize + perf_counter) on a GPU, perf_counter on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def per_call(self, fn: Callable[[], object], warmup: int, repeats: int, inner: int = 1) -> dict:
        """Seconds per call of ``fn``: ``repeats`` samples, each the mean over ``inner`` back-to-back calls."""
        for _ in range(warmup):
            fn()
        self.sync()
        samples = []
        for _ in range(repeats):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                for _ in range(inner):
                    fn()
                end.record()
                end.synchronize()
                samples.append(start.elapsed_time(end) / 1e3 / inner)
            else:
                t = time.perf_counter()
                for _ in range(inner):
                    fn()
                samples.append((time.perf_counter() - t) / inner)
        return summary(samples)

    def wall(self, fn: Callable[[], object]) -> float:
        """Seconds of one call of ``fn``, the device idle before and after (for whole epochs)."""
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t


def _median(s: dict) -> float:
    return s["median"]


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _reset_compiler() -> None:
    """Fresh dynamo caches: every compiled VGG shares ``VGG.forward``, whose recompile limit would otherwise run out."""
    torch._dynamo.reset()


def _torchvision():
    """torchvision, or the reason it is unavailable (missing, or built for another torch)."""
    try:
        return importlib.import_module("torchvision"), None
    except Exception as e:  # noqa: BLE001 - a mismatched build fails with RuntimeError/OSError, not ImportError
        return None, f"torchvision unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"


def _bf16(device: torch.device) -> torch.dtype | None:
    return torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else None


def _autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def _model(s: dict, device: torch.device, channels_last: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = netslim.models.create(s["model"], **s["kwargs"]).to(device).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def _synthetic(s: dict, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, (s["images"], 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, s["images"], dtype=np.int64))


# -- (a) the reference data pipeline --

class ArrayImages(torch.utils.data.Dataset):
    """In-memory HWC uint8 images served as PIL images through a per-image transform (torchvision's CIFAR10)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


class StandInTransform:
    """Smoke mode without torchvision only: the reference's per-image steps written with PIL and numpy
    (pad 4 + random 32x32 crop, random flip, to float tensor, normalize), so the DataLoader path still runs."""

    def __call__(self, img):
        from PIL import ImageOps

        padded = ImageOps.expand(img, border=4, fill=0)
        dx, dy = random.randint(0, 8), random.randint(0, 8)
        img = padded.crop((dx, dy, dx + 32, dy + 32))
        if random.random() < 0.5:
            img = ImageOps.mirror(img)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
        return (x - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR_STD).view(3, 1, 1)


def reference_data(s: dict, mode: str, device: torch.device, clock: Clock, notes: list[str]) -> dict:
    tv, reason = _torchvision()
    if tv is None and mode != "smoke":
        notes.append(f"(a) reference DataLoader skipped: {reason}")
        return {"skipped": reason}
    if tv is None:
        transform, kind = StandInTransform(), "stand-in (PIL/numpy; torchvision missing)"
        notes.append(f"(a) smoke: {reason}; a PIL/numpy stand-in for its transforms ran instead")
    else:
        t = tv.transforms
        transform = t.Compose([t.RandomCrop(32, padding=4), t.RandomHorizontalFlip(), t.ToTensor(),
                               t.Normalize(CIFAR_MEAN, CIFAR_STD)])
        kind = f"torchvision {tv.__version__}"
    images, labels = _synthetic(s)
    dataset = ArrayImages(images, labels, transform)
    out = {"transform": kind, "images": len(dataset), "batch": s["batch"]}
    for workers in s["workers"]:
        loader = torch.utils.data.DataLoader(dataset, batch_size=s["batch"], shuffle=True, num_workers=workers,
                                             pin_memory=clock.cuda)

        def epoch(loader=loader):
            for x, y in loader:
                x.to(device, non_blocking=True), y.to(device, non_blocking=True)

        times = [clock.wall(epoch) for _ in range(s["data_epochs"])]
        out[f"workers_{workers}"] = {"epoch_seconds": summary(times),
                                     "images_per_second": len(dataset) / statistics.median(times)}
    return out


# -- (b) the model step alone --

class SameBatch:
    """``steps`` copies of one device-resident batch: ``train()``'s loop with no data cost."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
        self.x, self.y, self.steps = x, y, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.x, self.y


def _config(s: dict, device: torch.device, compiled: bool, epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=s["batch"], lr=0.01, sparsity=LAM, bn_init=0.5, device=str(device),
                       amp="auto", compile=compiled, channels_last=True, progress=False)


def _epoch_seconds(model: nn.Module, loader, config: TrainConfig) -> list[float]:
    seconds: list[float] = []
    with warnings.catch_warnings():  # a few epochs on random data: "sparsity is not emerging" is expected
        warnings.filterwarnings("ignore", message="sparsity is not emerging")
        train(model, loader, config, on_epoch=lambda r: seconds.append(r["seconds"]))
    return seconds


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)


def _step_fn(model, optimizer, x, y, precision, device, extra=None) -> Callable[[], None]:
    def step():
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, precision):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        if extra is not None:
            extra()
        optimizer.step()
    return step


def model_step(s: dict, device: torch.device, clock: Clock, notes: list[str]) -> dict:
    warmup, repeats, inner = s["step"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(s["batch"], 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (s["batch"],), generator=g).to(device)
    out: dict = {"batch": s["batch"]}
    variants = {"eager_fp32": (None, False), "eager_bf16_channels_last": (_bf16(device), True)}
    for name, (precision, channels_last) in variants.items():
        if name != "eager_fp32" and precision is None:
            notes.append(f"(b) {name} skipped: this GPU has no bf16")
            continue
        model = _model(s, device, channels_last)
        xx = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        out[name] = clock.per_call(_step_fn(model, _sgd(model), xx, y, precision, device), warmup, repeats, inner)
        del model
        _free()
    for runner in s["runners"]:
        _reset_compiler()
        config = _config(s, device, runner == "compiled", s["train_epochs"])
        seconds = _epoch_seconds(_model(s, device), SameBatch(x, y, s["train_steps"]), config)
        steady = seconds[1:]  # the first epoch holds compilation and CUDA-graph capture
        out[f"train_loop_{runner}"] = {
            **summary([t / s["train_steps"] for t in steady]), "first_epoch_seconds": seconds[0],
            "steps_per_epoch": s["train_steps"], "amp": str(config.amp), "compile": config.compile,
            "compile_mode": "reduce-overhead" if config.compile and clock.cuda else None,
        }
        _free()
    return out


# -- (c) the sparsity term: official per-module loop vs fused foreach --

def official_update_bn(model: nn.Module, s: float) -> None:
    """The official PyTorch port's ``updateBN``: a Python loop with two small ops per BN."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.grad.data.add_(s * torch.sign(m.weight.data))


def regularizer(s: dict, device: torch.device, clock: Clock, captured_step: float | None) -> dict:
    warmup, repeats, inner = s["step"]
    model = _model(s, device, channels_last=clock.cuda)
    reg = netslim.SparsityRegularizer(model, LAM)
    x = torch.randn(s["batch"], 3, 32, 32, device=device)
    if clock.cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (s["batch"],), device=device)
    F.cross_entropy(model(x), y).backward()  # gradients to add to
    calls = {"foreach": reg.step, "loop": lambda model=model: official_update_bn(model, LAM)}
    per_call = {k: clock.per_call(fn, 3, s["reg_repeats"], s["reg_calls"]) for k, fn in calls.items()}
    optimizer, precision = _sgd(model), _bf16(device)
    steps = {"plain": clock.per_call(_step_fn(model, optimizer, x, y, precision, device), warmup, repeats, inner)}
    for k, fn in calls.items():
        steps[k] = clock.per_call(_step_fn(model, optimizer, x, y, precision, device, fn), warmup, repeats, inner)
    plain = _median(steps["plain"])
    out = {"bn_layers": len(reg.bns), "per_call_us": {k: 1e6 * _median(v) for k, v in per_call.items()},
           "per_call": per_call, "step_seconds": steps, "step_precision": str(precision),
           "step_overhead": {k: _median(steps[k]) / plain - 1 for k in calls},
           "loop_over_foreach_per_call": _median(per_call["loop"]) / _median(per_call["foreach"])}
    if captured_step:
        out["per_call_over_captured_step"] = {k: _median(v) / captured_step for k, v in per_call.items()}
    del model, optimizer
    _free()
    return out


# -- (d) netslim's Loader on the GPU, (e) full train() epochs --

def _dataset(s: dict) -> Dataset:
    images, labels = _synthetic(s)
    return Dataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels), 10,
                   CIFAR_MEAN, CIFAR_STD, "synthetic-cifar")


def netslim_loader(s: dict, device: torch.device, clock: Clock) -> dict:
    loader = Loader(_dataset(s), s["batch"], train=True, augment="cifar", device=device, drop_last=True)

    def epoch(loader=loader):
        for _ in loader:
            pass

    times = []
    for e in range(s["loader_epochs"]):
        loader.set_epoch(e)
        times.append(clock.wall(epoch))
    out = {"images": len(loader.dataset), "batch": s["batch"], "batches": len(loader), "augment": "cifar",
           "epoch_seconds": summary(times), "images_per_second": len(loader.dataset) / statistics.median(times)}
    del loader
    _free()
    return out


def train_epoch(s: dict, device: torch.device, step: dict) -> dict:
    out = {}
    for runner in s["runners"]:
        _reset_compiler()
        loader = Loader(_dataset(s), s["batch"], train=True, augment="cifar", device=device,
                        drop_last=runner == "compiled")  # fixed shapes for CUDA-graph replay
        config = _config(s, device, runner == "compiled", s["epoch_epochs"])
        seconds = _epoch_seconds(_model(s, device), loader, config)
        steady = seconds[1:]
        captured = step.get(f"train_loop_{runner}", {}).get("median")
        compute = captured * len(loader) if captured else None
        out[runner] = {"epoch_seconds": summary(steady), "first_epoch_seconds": seconds[0], "steps": len(loader),
                       "step_compute_seconds": compute,
                       "epoch_over_step_compute": statistics.median(steady) / compute if compute else None}
        del loader
        _free()
    return out


# -- (f) compact models at inference --

def _fold():
    """``netslim.export.fold_batchnorm``, or None (imported lazily: export is optional)."""
    try:
        return getattr(importlib.import_module("netslim.export"), "fold_batchnorm", None)
    except ImportError:
        return None


def compact(s: dict, device: torch.device, clock: Clock, notes: list[str]) -> dict:
    base = randomize_bn(netslim.models.create(s["model"], **s["kwargs"]), seed=0).eval()
    plans = {"pruned": netslim.plan_pruning(base, s["percent"]),
             "pruned_round8": netslim.plan_pruning(base, s["percent"], round_to=8)}
    models = {"original": base, **{k: netslim.apply_plan(base, p).eval() for k, p in plans.items()}}
    fold = _fold()
    if fold is None:
        notes.append("(f) netslim.export.fold_batchnorm not found: BNs left unfolded")
    else:
        models = {k: fold(m) for k, m in models.items()}
    info = {k: {"flops": count_flops(m), "params": count_params(m),
                "widths": [int(c) for c in getattr(m, "cfg", []) if c != "M"]} for k, m in models.items()}
    for k in info:
        info[k]["flop_ratio"] = info["original"]["flops"] / info[k]["flops"]
    input_size = base.input_size
    compile_kwargs = {"mode": "reduce-overhead"} if clock.cuda else {"backend": "eager"}
    rows = []
    for dtype_name in s["dtypes"]:
        dtype = torch.float32 if dtype_name == "fp32" else _bf16(device)
        if dtype is None:
            notes.append("(f) bf16 rows skipped: this GPU has no bf16")
            continue
        for batch in s["batches"]:
            warmup, repeats, inner = s["infer"][str(batch)]
            runtimes = ["eager"]
            if batch in s["compile_batches"] and dtype_name in s["compile_dtypes"]:
                runtimes.append("compile")
            for runtime in runtimes:
                row = {"dtype": dtype_name, "batch": batch, "runtime": runtime, "seconds": {}, "compile_seconds": {}}
                for name, m in models.items():
                    net = copy.deepcopy(m).to(device=device, dtype=dtype)
                    x = torch.randn(batch, *input_size, device=device, dtype=dtype)
                    if clock.cuda:
                        net = net.to(memory_format=torch.channels_last)
                        x = x.contiguous(memory_format=torch.channels_last)
                    if runtime == "compile":
                        _reset_compiler()
                        net = torch.compile(net, dynamic=False, **compile_kwargs)
                    with torch.inference_mode():
                        if runtime == "compile":
                            row["compile_seconds"][name] = clock.wall(lambda net=net, x=x: net(x))
                        row["seconds"][name] = clock.per_call(lambda net=net, x=x: net(x), warmup, repeats, inner)
                    del net, x
                    _free()
                ref = _median(row["seconds"]["original"])
                row["speedup"] = {k: ref / _median(v) for k, v in row["seconds"].items()}
                row["flop_ratio"] = {k: info[k]["flop_ratio"] for k in row["seconds"]}
                rows.append(row)
    return {"percent": s["percent"], "bn_scales": "randomized from a seeded generator (seed 0), not sparsity-trained",
            "bn_folded": fold is not None, "compile": compile_kwargs, "models": info, "rows": rows}


# -- the record, the tables --

def gpu_record(device: torch.device) -> dict:
    rec = {"device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        rec.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version(), capability=".".join(map(str, (props.major, props.minor))))
    tv, reason = _torchvision()
    rec["torchvision"] = tv.__version__ if tv is not None else reason
    return rec


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{1e3 * seconds:.3f} ms" if seconds < 0.01 else f"{1e3 * seconds:.1f} ms"


def markdown(rec: dict) -> str:
    if not rec.get("measured"):
        return f"**{rec.get('reason', UNMEASURED)}**\n"
    r, lines = rec["results"], []
    steps = r["loader"]["batches"]
    lines += [f"### One epoch on {rec['machine'].get('gpu', rec['device'])} ({rec['mode']} mode, "
              f"{r['loader']['images']} images, batch {r['model_step']['batch']}, {steps} steps)\n",
              "| part | per epoch | per step |", "|---|---|---|"]
    ref = r["reference_data"]
    for key, v in ref.items():
        if key.startswith("workers_"):
            t = _median(v["epoch_seconds"])
            lines.append(f"| (a) reference DataLoader, {key[8:]} worker(s), data alone [{ref['transform']}] "
                         f"| {_ms(t)} | {_ms(t / steps)} |")
    if "skipped" in ref:
        lines.append(f"| (a) reference DataLoader | skipped: {ref['skipped']} | |")
    t = _median(r["loader"]["epoch_seconds"])
    lines.append(f"| (d) netslim Loader on {rec['device']}, data alone | {_ms(t)} | {_ms(t / steps)} |")
    for key, v in r["model_step"].items():
        if isinstance(v, dict):
            lines.append(f"| (b) step alone: {key} | {_ms(v['median'] * steps)} | {_ms(v['median'])} |")
    for runner, v in r["train_epoch"].items():
        ratio = v["epoch_over_step_compute"]
        lines.append(f"| (e) full train() epoch, {runner} | {_ms(_median(v['epoch_seconds']))} "
                     f"| {_ms(_median(v['epoch_seconds']) / v['steps'])} (epoch / step compute = "
                     f"{'–' if ratio is None else f'{ratio:.2f}'}) |")
    g = r["regularizer"]
    lines += ["", f"### (c) Sparsity term ({g['bn_layers']} BN layers)\n",
              "| | per call | added to a step |", "|---|---|---|"]
    for k, label in (("loop", "official per-module Python loop"), ("foreach", "SparsityRegularizer.step()")):
        lines.append(f"| {label} | {g['per_call_us'][k]:.1f} µs | {100 * g['step_overhead'][k]:+.1f}% |")
    c = r["compact"]
    names = list(c["models"])
    lines += ["", f"### (f) Compact VGG ({100 * c['percent']:.0f}% channels pruned; BN scales {c['bn_scales']}; "
              f"BN {'folded' if c['bn_folded'] else 'not folded'})\n",
              "FLOP ratio: " + ", ".join(f"{k} {c['models'][k]['flop_ratio']:.2f}x" for k in names) + "\n",
              "| dtype | batch | runtime | " + " | ".join(names) + " | " + " | ".join(
                  f"speedup {k} (FLOP ratio)" for k in names[1:]) + " |",
              "|---" * (3 + 2 * len(names) - 1) + "|"]
    for row in c["rows"]:
        times = " | ".join(_ms(_median(row["seconds"][k])) for k in names)
        speed = " | ".join(f"{row['speedup'][k]:.2f}x ({row['flop_ratio'][k]:.2f}x)" for k in names[1:])
        lines.append(f"| {row['dtype']} | {row['batch']} | {row['runtime']} | {times} | {speed} |")
    lines += ["", *[f"- {n}" for n in rec["notes"]]]
    return "\n".join(lines) + "\n"


def _out_path(out: Path, mode: str) -> Path:
    return Path(out) / ("gpu.json" if mode == "full" else f"gpu_{mode}.json")


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true", help="the full measurement (default)")
    mode.add_argument("--quick", action="store_true", help="10,000 images, fewer repeats and compiled cases")
    p.add_argument("--smoke", action="store_true", help="every code path, tiny sizes, any device (numbers meaningless)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON result")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: unchanged on a GPU, 1 on the CPU, where OpenMP threads "
                        "competing with other processes on a small shared machine slow down by orders of magnitude)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    started = time.perf_counter()
    base = {"benchmark": NAME, "mode": mode, "command": command(f"{NAME}.py", argv), "machine": machine_record()}
    path = _out_path(args.out, mode)
    if not torch.cuda.is_available() and mode != "smoke":
        rec = {**base, "measured": False, "reason": UNMEASURED}
        print(UNMEASURED)
        previous = json.loads(path.read_text()) if path.exists() else {}
        if previous.get("measured"):
            print(f"kept the measured result already in {path}")
        else:
            write_json(rec, path)
        return rec
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    s, clock, notes = SETTINGS[mode], Clock(device), []
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads:
        torch.set_num_threads(threads)
    if mode == "smoke":
        notes.append(f"smoke mode on {device}: tiny sizes, numbers meaningless; torch.compile only in (f), "
                     "with the 'eager' backend off CUDA")
    results = {"reference_data": reference_data(s, mode, device, clock, notes)}
    results["model_step"] = model_step(s, device, clock, notes)
    captured = results["model_step"].get(f"train_loop_{s['runners'][0]}", {}).get("median")
    results["regularizer"] = regularizer(s, device, clock, captured)
    results["loader"] = netslim_loader(s, device, clock)
    results["train_epoch"] = train_epoch(s, device, results["model_step"])
    results["compact"] = compact(s, device, clock, notes)
    notes.append("(f) BN scales randomized from a seeded generator (seed 0): a stand-in for a sparsity-trained "
                 "VGG; the pruned widths, not the weights, set the speed")
    rec = {**base, "measured": True, "machine": {**machine_record(), **gpu_record(device)}, "device": str(device),
           "torch_set_num_threads": threads, "settings": s, "results": results, "notes": notes,
           "wall_seconds": round(time.perf_counter() - started, 1)}
    write_json(rec, path)
    print(markdown(rec))
    return rec


if __name__ == "__main__":
    main()
