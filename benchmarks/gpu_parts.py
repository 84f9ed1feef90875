"""The measurements of benchmarks/gpu.py, one function per part (a)-(i); see that script's docstring."""

from __future__ import annotations

import copy
import gc
import importlib
import os
import random
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import netslim
from common import randomize_bn, summary, synthetic_jpegs
from netslim.data import Dataset, Loader, StreamLoader, list_image_folder
from netslim.data.jpeg import gpu_decode_available
from netslim.deployment import deploy, target_defaults
from netslim.metrics import count_flops, count_params
from netslim.steps import autocast
from netslim.testing import official_update_bn
from netslim.train import TrainConfig, train

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
LAM = 1e-4
RUNNERS = {"eager": {}, "compiled": {"compile": True}, "graph": {"cuda_graph": True},
           "compiled_graph": {"compile": True, "cuda_graph": True}}


# -- timing and helpers --

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


def median(s: dict) -> float:
    return s["median"]


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_compiler() -> None:
    """Fresh dynamo caches: every compiled VGG shares ``VGG.forward``, whose recompile limit would otherwise run out."""
    torch._dynamo.reset()


def torchvision_module():
    """torchvision, or the reason it is unavailable (missing, or built for another torch)."""
    try:
        return importlib.import_module("torchvision"), None
    except Exception as e:  # noqa: BLE001 - a mismatched build fails with RuntimeError/OSError, not ImportError
        return None, f"torchvision unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})"


def bf16(device: torch.device) -> torch.dtype | None:
    return torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else None


def make_model(s: dict, device: torch.device, channels_last: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = netslim.models.create(s["model"], **s["kwargs"]).to(device).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def synthetic(n: int, seed: int = 0, learnable: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uint8 32x32x3 images and labels; ``learnable``: each class has its own mean colour."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n, dtype=np.int64)
    if not learnable:
        return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), labels
    colours = rng.integers(40, 216, (10, 3))
    images = colours[labels][:, None, None, :] + rng.normal(0, 48, (n, 32, 32, 3))
    return images.clip(0, 255).astype(np.uint8), labels


def dataset(n: int, seed: int = 0, learnable: bool = False) -> Dataset:
    images, labels = synthetic(n, seed, learnable)
    return Dataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels), 10,
                   CIFAR_MEAN, CIFAR_STD, "synthetic-cifar")


def config(s: dict, device: torch.device, runner: str, epochs: int, **kw) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=s["batch"], lr=0.01, sparsity=LAM, bn_init=0.5, device=str(device),
                       amp="auto", channels_last=True, progress=False, **{**RUNNERS[runner], **kw})


def epoch_seconds(model: nn.Module, loader, cfg: TrainConfig, **kw) -> list[float]:
    """Seconds of each epoch of ``train()`` (its own record: training and evaluation, not checkpointing)."""
    seconds: list[float] = []
    with warnings.catch_warnings():  # a few epochs on synthetic data: "sparsity is not emerging" is expected
        warnings.filterwarnings("ignore", message="sparsity is not emerging")
        train(model, loader, cfg, on_epoch=lambda r: seconds.append(r["seconds"]), **kw)
    return seconds



def sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)


def step_fn(model, optimizer, x, y, precision, device, extra=None) -> Callable[[], None]:
    """A plain eager training step (the reference loop's), with ``extra`` between backward and the update."""
    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        if extra is not None:
            extra()
        optimizer.step()
    return step


# -- (a) the reference data pipeline, and a whole reference epoch --

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
    """Without torchvision only: the reference's per-image steps written with PIL and numpy (pad 4 + random
    32x32 crop, random flip, to float tensor, normalize), so the DataLoader path still runs."""

    def __call__(self, img):
        from PIL import ImageOps

        padded = ImageOps.expand(img, border=4, fill=0)
        dx, dy = random.randint(0, 8), random.randint(0, 8)
        img = padded.crop((dx, dy, dx + 32, dy + 32))
        if random.random() < 0.5:
            img = ImageOps.mirror(img)
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
        return (x - torch.tensor(CIFAR_MEAN).view(3, 1, 1)) / torch.tensor(CIFAR_STD).view(3, 1, 1)


def reference_loader(s: dict, workers: int, pin: bool, notes: list[str]):
    """The official port's data pipeline: torchvision transforms per PIL image, a DataLoader; and its name."""
    tv, reason = torchvision_module()
    if tv is None:
        if not any("stand-in" in n for n in notes):
            notes.append(f"(a) {reason}; a PIL/numpy stand-in for its transforms ran instead")
        transform, kind = StandInTransform(), "stand-in (PIL/numpy; torchvision missing)"
    else:
        t = tv.transforms
        transform = t.Compose([t.RandomCrop(32, padding=4), t.RandomHorizontalFlip(), t.ToTensor(),
                               t.Normalize(CIFAR_MEAN, CIFAR_STD)])
        kind = f"torchvision {tv.__version__}"
    images, labels = synthetic(s["images"])
    loader = torch.utils.data.DataLoader(ArrayImages(images, labels, transform), batch_size=s["batch"],
                                         shuffle=True, num_workers=workers, pin_memory=pin,
                                         persistent_workers=workers > 0)
    return loader, kind


def reference_data(s: dict, device: torch.device, clock: Clock, notes: list[str]) -> dict:
    out = {"images": s["images"], "batch": s["batch"]}
    for workers in s["workers"]:
        loader, out["transform"] = reference_loader(s, workers, clock.cuda, notes)

        def epoch(loader=loader):
            for x, y in loader:
                x.to(device, non_blocking=True), y.to(device, non_blocking=True)

        times = [clock.wall(epoch) for _ in range(s["data_epochs"])]
        out[f"workers_{workers}"] = {"epoch_seconds": summary(times),
                                     "images_per_second": s["images"] / statistics.median(times)}
        del loader
    return out


def reference_epoch(s: dict, device: torch.device, clock: Clock, notes: list[str]) -> dict:
    """The reference recipe end to end: its DataLoader (most workers) feeding a plain eager fp32 loop with the
    official per-module L1 loop (``updateBN``) and SGD: one epoch, timed whole."""
    workers = max(s["workers"])
    loader, kind = reference_loader(s, workers, clock.cuda, notes)
    model = make_model(s, device)
    optimizer = sgd(model)

    def epoch(loader=loader, model=model, optimizer=optimizer):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            step_fn(model, optimizer, x, y, None, device, lambda: official_update_bn(model, LAM))()

    seconds = [clock.wall(epoch) for _ in range(s["reference_epochs"])]
    del epoch, loader, model, optimizer
    free()
    return {"workers": workers, "transform": kind, "precision": "fp32", "epoch_seconds": summary(seconds),
            "steps": -(-s["images"] // s["batch"])}


# -- (b) the model step alone: a plain loop, and train()'s loop fed one resident batch --

class SameBatch:
    """``steps`` copies of one device-resident batch: ``train()``'s loop with no data cost."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, steps: int) -> None:
        self.x, self.y, self.steps = x, y, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self):
        for _ in range(self.steps):
            yield self.x, self.y


def model_step(s: dict, device: torch.device, clock: Clock, notes: list[str]) -> dict:
    warmup, repeats, inner = s["step"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(s["batch"], 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (s["batch"],), generator=g).to(device)
    out: dict = {"batch": s["batch"]}
    for name, (precision, channels_last) in {"eager_fp32": (None, False),
                                             "eager_bf16_channels_last": (bf16(device), True)}.items():
        if name != "eager_fp32" and precision is None:
            notes.append(f"(b) {name} skipped: this GPU has no bf16")
            continue
        model = make_model(s, device, channels_last)
        xx = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        out[name] = clock.per_call(step_fn(model, sgd(model), xx, y, precision, device), warmup, repeats, inner)
        del model
        free()
    for runner in s["runners"]:
        reset_compiler()
        cfg = config(s, device, runner, s["train_epochs"])
        seconds = epoch_seconds(make_model(s, device), SameBatch(x, y, s["train_steps"]), cfg)
        steady = seconds[1:]  # the first epoch holds compilation and capture
        out[f"train_loop_{runner}"] = {**summary([t / s["train_steps"] for t in steady]),
                                       "first_epoch_seconds": seconds[0], "steps_per_epoch": s["train_steps"],
                                       "amp": cfg.amp, "compile": cfg.compile, "cuda_graph": cfg.cuda_graph}
        free()
    return out


# -- (c) the sparsity term: official per-module loop vs fused foreach --

def regularizer(s: dict, device: torch.device, clock: Clock) -> dict:
    warmup, repeats, inner = s["step"]
    model = make_model(s, device, channels_last=clock.cuda)
    reg = netslim.SparsityRegularizer(model, LAM)
    x = torch.randn(s["batch"], 3, 32, 32, device=device)
    if clock.cuda:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (s["batch"],), device=device)
    F.cross_entropy(model(x), y).backward()  # gradients to add to
    calls = {"foreach": reg.step, "loop": lambda model=model: official_update_bn(model, LAM)}
    per_call = {k: clock.per_call(fn, 3, s["reg_repeats"], s["reg_calls"]) for k, fn in calls.items()}
    optimizer, precision = sgd(model), bf16(device)
    steps = {"plain": clock.per_call(step_fn(model, optimizer, x, y, precision, device), warmup, repeats, inner)}
    for k, fn in calls.items():
        steps[k] = clock.per_call(step_fn(model, optimizer, x, y, precision, device, fn), warmup, repeats, inner)
    plain = median(steps["plain"])
    out = {"bn_layers": len(reg.bns), "per_call_us": {k: 1e6 * median(v) for k, v in per_call.items()},
           "per_call": per_call, "step_seconds": steps, "step_precision": str(precision),
           "step_overhead": {k: median(steps[k]) / plain - 1 for k in calls}}
    del model, optimizer
    free()
    return out


# -- (d) netslim's Loader on the device, (e) whole train() epochs and a stage --

def netslim_loader(s: dict, device: torch.device, clock: Clock) -> dict:
    loader = Loader(dataset(s["images"]), s["batch"], train=True, augment="cifar", device=device)

    def epoch(loader=loader):
        for _ in loader:
            pass

    times = []
    for e in range(s["loader_epochs"]):
        loader.set_epoch(e)
        times.append(clock.wall(epoch))
    out = {"images": s["images"], "batch": s["batch"], "batches": len(loader), "augment": "cifar",
           "epoch_seconds": summary(times), "images_per_second": s["images"] / statistics.median(times)}
    del loader
    free()
    return out


def train_epoch(s: dict, device: torch.device, step: dict) -> dict:
    out = {}
    for runner in s["runners"]:
        reset_compiler()
        loader = Loader(dataset(s["images"]), s["batch"], train=True, augment="cifar", device=device)
        seconds = epoch_seconds(make_model(s, device), loader, config(s, device, runner, s["epoch_epochs"]))
        steady = seconds[1:]
        captured = step.get(f"train_loop_{runner}", {}).get("median")
        compute = captured * len(loader) if captured else None
        out[runner] = {"epoch_seconds": summary(steady), "first_epoch_seconds": seconds[0], "steps": len(loader),
                       "step_compute_seconds": compute,
                       "epoch_over_step_compute": statistics.median(steady) / compute if compute else None}
        del loader
        free()
    return out


def stage(s: dict, device: torch.device, runner: str) -> dict:
    """A stage as ``netslim train`` runs it (evaluation on 10,000 test images and checkpoints every epoch),
    for ``stage_epochs`` epochs: the wall time between epochs, and 160 epochs projected from it."""
    train_loader = Loader(dataset(s["images"]), s["batch"], train=True, augment="cifar", device=device)
    test_loader = Loader(dataset(10_000 if s["images"] >= 10_000 else s["images"], seed=1), 1000, train=False,
                         device=device)
    stamps: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="sparsity is not emerging")
        reset_compiler()
        train(make_model(s, device), train_loader, config(s, device, runner, s["stage_epochs"]),
              test_loader=test_loader, out_dir=tmp, on_epoch=lambda r: stamps.append(time.perf_counter()))
    per_epoch = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    free()
    return {"runner": runner, "epochs": s["stage_epochs"], "seconds_between_epochs": summary(per_epoch),
            "projected_160_epochs_seconds": 160 * statistics.median(per_epoch)}


# -- (g) the same training on CPU and GPU: loss curves --

def loss_curves(s: dict, device: torch.device) -> dict:
    """Per-epoch training loss over ``curve_epochs`` x ``curve_steps`` steps of one small VGG on learnable
    synthetic data: CPU fp32 (two data orders: the noise), and the device's eager fp32 and bf16 graph paths."""
    steps, epochs = s["curve_steps"], s["curve_epochs"]
    data = dataset(steps * 64, seed=2, learnable=True)
    runs = {"cpu_fp32_eager": ("cpu", "off", "eager", 0), "cpu_fp32_eager_other_order": ("cpu", "off", "eager", 1)}
    if device.type == "cuda":
        runs.update({"cuda_fp32_eager": ("cuda", "off", "eager", 0), "cuda_bf16_graph": ("cuda", "auto", "graph", 0)})
    else:
        runs["cpu_bf16_eager"] = ("cpu", "bf16", "eager", 0)
    curves = {}
    for name, (where, amp, runner, seed) in runs.items():
        torch.manual_seed(0)
        model = netslim.models.create("vgg11", widths=s["curve_widths"])
        cfg = TrainConfig(epochs=epochs, batch_size=64, lr=0.05, sparsity=LAM, bn_init=0.5, device=where, amp=amp,
                          seed=seed, progress=False, milestones=(1.0,), **RUNNERS[runner])
        loader = Loader(data, 64, train=True, augment="cifar", seed=seed, device=where)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="sparsity is not emerging")
            curves[name] = [r["train_loss"] for r in train(model, loader, cfg)["history"]]
        free()
    ref = curves["cpu_fp32_eager"]
    noise = max(abs(a - b) for a, b in zip(ref, curves["cpu_fp32_eager_other_order"], strict=True))
    gaps = {k: max(abs(a - b) for a, b in zip(ref, v, strict=True)) for k, v in curves.items()
            if k not in ("cpu_fp32_eager", "cpu_fp32_eager_other_order")}
    return {"steps": steps * epochs, "epochs": epochs, "curves": curves, "noise": noise, "gaps": gaps,
            "within_noise": {k: g <= 2 * noise for k, g in gaps.items()}}


# -- (f) compact models at inference, and the default export --

def compact(s: dict, device: torch.device, clock: Clock, notes: list[str]) -> dict:
    base = randomize_bn(netslim.models.create(s["model"], **s["kwargs"]), seed=0).eval()
    plans = {"pruned": netslim.plan_pruning(base, s["percent"]),
             "pruned_round8": netslim.plan_pruning(base, s["percent"], round_to=8)}
    compacts = {k: netslim.apply_plan(base, p).eval() for k, p in plans.items()}
    models = {k: netslim.fold_batchnorm(m) for k, m in {"original": base, **compacts}.items()}
    info = {k: {"flops": count_flops(m), "params": count_params(m),
                "widths": [int(c) for c in getattr(m, "cfg", []) if c != "M"]} for k, m in models.items()}
    for k in info:
        info[k]["flop_ratio"] = info["original"]["flops"] / info[k]["flops"]
    input_size = base.input_size
    compile_kwargs = {"mode": "reduce-overhead"} if clock.cuda else {"backend": "eager"}
    rows = []
    for dtype_name in s["dtypes"]:
        dtype = torch.float32 if dtype_name == "fp32" else bf16(device)
        if dtype is None:
            notes.append("(f) bf16 rows skipped: this GPU has no bf16")
            continue
        for batch in s["batches"]:
            warmup, repeats, inner = s["infer"][str(batch)]
            runtimes = ["eager"] + (["compile"] if batch in s["compile_batches"]
                                    and dtype_name in s["compile_dtypes"] else [])
            for runtime in runtimes:
                row = {"dtype": dtype_name, "batch": batch, "runtime": runtime, "seconds": {}}
                for name, m in models.items():
                    net = copy.deepcopy(m).to(device=device, dtype=dtype)
                    x = torch.randn(batch, *input_size, device=device, dtype=dtype)
                    if clock.cuda:
                        net = net.to(memory_format=torch.channels_last)
                        x = x.contiguous(memory_format=torch.channels_last)
                    if runtime == "compile":
                        reset_compiler()
                        net = torch.compile(net, dynamic=False, **compile_kwargs)
                    with torch.inference_mode():
                        row["seconds"][name] = clock.per_call(lambda net=net, x=x: net(x), warmup, repeats, inner)
                    del net, x
                    free()
                ref = median(row["seconds"]["original"])
                row["speedup"] = {k: ref / median(v) for k, v in row["seconds"].items()}
                row["flop_ratio"] = {k: info[k]["flop_ratio"] for k in row["seconds"]}
                rows.append(row)
    return {"percent": s["percent"], "bn_scales": "randomized from a seeded generator (seed 0), not sparsity-trained",
            "bn_folded": True, "compile": compile_kwargs, "models": info, "rows": rows,
            "default_export": default_export(s, base, device, clock)}


def default_export(s: dict, base: nn.Module, device: torch.device, clock: Clock) -> dict:
    """netslim's default export for this device (GPU: widths rounded to 8 by the plan, BN folded, bf16,
    channels_last) against the original as trained (BN layers) in the same precision and layout."""
    defaults = target_defaults("gpu" if clock.cuda else "cpu")
    plan = netslim.plan_pruning(base, s["percent"], round_to=defaults["round_to"])
    compact_model = netslim.apply_plan(base, plan).eval()
    kw = dict(device=device, dtype=defaults["dtype"], channels_last=defaults["channels_last"])
    variants = {"original": deploy(base, fold=False, **kw), "export": deploy(compact_model, **kw)}
    if s["export_compile"]:
        reset_compiler()
        variants["export_compiled"] = deploy(compact_model, compile=True, **kw)
    out = {"target": "gpu" if clock.cuda else "cpu", "dtype": str(defaults["dtype"]),
           "channels_last": defaults["channels_last"], "round_to": defaults["round_to"], "rows": []}
    for batch in s["batches"]:
        warmup, repeats, inner = s["infer"][str(batch)]
        x = torch.randn(batch, *base.input_size, device=device)
        with torch.inference_mode():
            seconds = {k: clock.per_call(lambda m=m, x=x: m(x), warmup, repeats, inner) for k, m in variants.items()}
        ref = median(seconds["original"])
        out["rows"].append({"batch": batch, "seconds": seconds,
                            "speedup": {k: ref / median(v) for k, v in seconds.items() if k != "original"}})
    out["slowest"] = min(v for row in out["rows"] for v in row["speedup"].values())
    out["never_slower"] = out["slowest"] >= 1.0
    del variants
    free()
    return out


# -- (h) ImageNet-size JPEGs: decoding against what training consumes --

def jpeg(s: dict, device: torch.device, clock: Clock, notes: list[str]) -> dict:
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        made = synthetic_jpegs(tmp, s["jpeg_images"])
        files = list_image_folder(Path(tmp), "train")
        files.image_size = s["jpeg_size"]
        out.update(images=len(files), mean_kb=made["mean_kb"], size=s["jpeg_size"], batch=s["jpeg_batch"])
        variants = {f"cpu_threads_{os.cpu_count()}": dict(gpu_decode=False)}
        if device.type == "cuda":
            if gpu_decode_available(device):
                variants["nvjpeg"] = dict(gpu_decode=True)
            else:
                notes.append("(h) nvJPEG skipped: torchvision does not load")
        for name, kw in variants.items():
            with StreamLoader(files, s["jpeg_batch"], device=device, **kw) as loader:
                def epoch(loader=loader):
                    for _ in loader:
                        pass
                epoch()  # warm-up: threads, page cache, nvJPEG handles
                times = [clock.wall(epoch) for _ in range(s["jpeg_repeats"])]
            out[name] = {"epoch_seconds": summary(times), "images_per_second": len(files) / statistics.median(times)}
    model = netslim.models.create(s["jpeg_model"], **s["jpeg_model_kwargs"]).to(device).train()
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x = torch.randn(s["jpeg_batch"], 3, s["jpeg_size"], s["jpeg_size"], device=device)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    y = torch.randint(0, model.classifier.out_features, (s["jpeg_batch"],), device=device)
    step = clock.per_call(step_fn(model, sgd(model), x, y, bf16(device) if clock.cuda else None, device), 2, 3, 1)
    out["training"] = {"model": s["jpeg_model"], "step_seconds": step,
                       "images_per_second": s["jpeg_batch"] / median(step)}
    out["decode_over_training"] = {k: v["images_per_second"] / out["training"]["images_per_second"]
                                   for k, v in out.items() if isinstance(v, dict) and "epoch_seconds" in v}
    del model
    free()
    return out


# -- (i) Fashion-MNIST with the paper's full schedule --

def fmnist(out_dir: Path) -> dict:
    """``netslim run fmnist-vgg19-gpu``: 160 epochs with sparsity, prune 70%, 160 of fine-tuning; timed."""
    from netslim.pipeline import load_config, run_experiment

    started = time.perf_counter()
    result = run_experiment(load_config("fmnist-vgg19-gpu"), out_dir, progress=False, log=lambda *a: None)
    return {"preset": "fmnist-vgg19-gpu", "seconds": time.perf_counter() - started, "rows": result["rows"]}
