"""The one training loop: sparsity training, baseline training and fine-tuning, on CPU and GPU.

Defaults are the paper's (Sec. 4.3): SGD with Nesterov momentum 0.9, weight decay 1e-4, batch 64,
learning rate 0.1 divided by 10 at 50% and 75% of the epochs. The sparsity term is attached to the
optimizer (:func:`netslim.sparsify`, the same mechanism as in any other loop): added to the BN scales'
gradients right before each optimizer step (after unscaling under AMP and after clipping).
A checkpoint is written atomically after every epoch, and a run resumes from it exactly.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import describe
from .layers import batch_norms, device_of, evaluating
from .recalibration import recalibrate_bn  # noqa: F401  (netslim.train.recalibrate_bn, as before)
from .runstate import TrainingDiverged, check_weights, owning_out_dir, persist, start
from .sparsity import KINDS, Sparsity, SparsityRegularizer, init_bn_scales, lambda_at
from .stats import gamma_stats
from .steps import CompiledForward, EagerStep, GraphedStep, autocast, make_step

OPTIMIZERS = ("sgd", "adam", "adamw")
AUTO = "auto"  # the sparsity setting that lets netslim choose λ (netslim.sparsity_target)
AMP_MODES = ("auto", "bf16", "fp16", "off")


def _one_of(choices: tuple[str, ...]) -> str:
    return f"{', '.join(choices[:-1])} or {choices[-1]}"


@dataclass
class TrainConfig:
    """Hyper-parameters of one training stage (paper Sec. 4.3 defaults)."""

    epochs: int = 160
    batch_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of the epochs where lr /= 10
    sparsity: float | str = 0.0  # λ of Eq. 1; 0 = plain training; "auto": λ chosen to reach target_sparsity
    target_sparsity: float = 0.5  # with sparsity "auto": the share of channels made prunable (|γ| < 1e-2) ...
    sparsity_by: float = 2 / 3  # ... by this fraction of the epochs, then held
    sparsity_kind: str = "l1"
    sparsity_schedule: str = "constant"  # constant, warmup, step, linear (see sparsity.lambda_at)
    sparsity_warmup: float = 0.1  # fraction of the epochs for the warm-up schedule
    bn_include: tuple[str, ...] = ("*",)  # module-path patterns of the BNs to regularize
    bn_exclude: tuple[str, ...] = ()
    optimizer: str = "sgd"  # sgd (the paper), adam, adamw; adaptive ones get the proximal L1 step
    distill: float = 0.0  # weight of the distillation loss when a teacher is given (fine-tuning)
    temperature: float = 4.0
    bn_init: float | None = None  # initial BN scale; the paper uses 0.5 for sparsity training
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    amp: str = "auto"  # auto (bf16 on CUDA, fp16 + GradScaler where bf16 is missing; off on CPU), bf16, fp16, off
    compile: bool = False  # torch.compile the model (with mode="reduce-overhead" on GPU unless cuda_graph)
    cuda_graph: bool = False  # capture the whole training step as one CUDA graph and replay it (CUDA only)
    channels_last: bool = True  # on CUDA
    cudnn_benchmark: bool = True  # on CUDA: let cuDNN time its algorithms for the (fixed) shapes once
    progress: bool = True
    sync_bn: bool = False  # SyncBatchNorm across ranks (CUDA only, as in PyTorch)

    def __post_init__(self) -> None:
        if isinstance(self.amp, bool):  # older configs: amp: true/false
            self.amp = "auto" if self.amp else "off"
        if isinstance(self.bn_include, str):  # one pattern, not a sequence of one-letter patterns
            self.bn_include = (self.bn_include,)
        if isinstance(self.bn_exclude, str):
            self.bn_exclude = (self.bn_exclude,)
        problems = _config_problems(self)
        if problems:
            raise ValueError(problems[0])
        self.milestones = tuple(self.milestones)
        self.bn_include, self.bn_exclude = tuple(self.bn_include), tuple(self.bn_exclude)
        if self.sparsity != AUTO:
            lambda_at(self.sparsity, 0, self.epochs, self.sparsity_schedule, self.sparsity_warmup)  # validates

    @property
    def sparse(self) -> bool:
        """Whether this stage trains with the sparsity term (a fixed λ > 0, or λ chosen for a target)."""
        return self.sparsity == AUTO or self.sparsity > 0


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_real(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _config_problems(c: TrainConfig):
    """What is wrong with a training configuration, checked when it is made (from flags or a YAML file)."""
    def strings(v) -> bool:
        return isinstance(v, list | tuple) and all(isinstance(x, str) for x in v)

    checks = [
        (_is_int(c.epochs) and c.epochs >= 1, f"epochs must be an integer >= 1, got {c.epochs!r}"),
        (_is_int(c.batch_size) and c.batch_size >= 1, f"batch_size must be an integer >= 1, got {c.batch_size!r}"),
        (_is_real(c.lr) and c.lr > 0, f"lr must be a number > 0, got {c.lr!r}"),
        (_is_real(c.momentum) and 0 <= c.momentum < 1, f"momentum must be a number in [0, 1), got {c.momentum!r}"),
        (isinstance(c.nesterov, bool), f"nesterov must be true or false, got {c.nesterov!r}"),
        (_is_real(c.weight_decay) and c.weight_decay >= 0,
         f"weight_decay must be a number >= 0, got {c.weight_decay!r}"),
        (isinstance(c.milestones, list | tuple) and all(_is_real(m) and 0 < m <= 1 for m in c.milestones),
         f"milestones are fractions of the epochs in (0, 1], got {c.milestones!r}"),
        (c.sparsity == AUTO or (_is_real(c.sparsity) and c.sparsity >= 0),
         f"sparsity is λ, a number >= 0, or 'auto' (λ chosen for target_sparsity), got {c.sparsity!r}"),
        (_is_real(c.target_sparsity) and 0 < c.target_sparsity < 1,
         f"target_sparsity is the share of channels to make prunable, in (0, 1), got {c.target_sparsity!r}"),
        (_is_real(c.sparsity_by) and 0 < c.sparsity_by <= 1,
         f"sparsity_by is the fraction of the epochs by which target_sparsity is reached, got {c.sparsity_by!r}"),
        (c.sparsity != AUTO or c.sparsity_kind == "l1", "sparsity 'auto' plans the L1 term's reach: use "
         "sparsity_kind l1, or give a fixed λ"),
        (c.sparsity != AUTO or c.sparsity_schedule == "constant", "sparsity 'auto' chooses λ itself: it takes no "
         "sparsity_schedule"),
        (c.sparsity_kind in KINDS, f"sparsity_kind must be {_one_of(KINDS)}, got {c.sparsity_kind!r}"),
        (_is_real(c.sparsity_warmup) and 0 <= c.sparsity_warmup <= 1,
         f"sparsity_warmup must be a fraction in [0, 1], got {c.sparsity_warmup!r}"),
        (strings(c.bn_include) and strings(c.bn_exclude),
         "bn_include and bn_exclude are lists of module-path patterns"),
        (c.optimizer in OPTIMIZERS, f"optimizer must be {_one_of(OPTIMIZERS)}, got {c.optimizer!r}"),
        (_is_real(c.distill) and 0 <= c.distill <= 1, f"distill weight must be in [0, 1], got {c.distill!r}"),
        (_is_real(c.temperature) and c.temperature > 0, f"temperature must be > 0, got {c.temperature!r}"),
        (c.bn_init is None or (_is_real(c.bn_init) and c.bn_init > 0),
         f"bn_init must be a number > 0 (the paper uses 0.5), got {c.bn_init!r}"),
        (c.grad_clip is None or (_is_real(c.grad_clip) and c.grad_clip > 0),
         f"grad_clip must be a number > 0 (the largest gradient norm), got {c.grad_clip!r}"),
        (_is_int(c.seed) and 0 <= c.seed < 1 << 32, f"seed must be an integer in [0, 2**32), got {c.seed!r}"),
        (isinstance(c.device, str) and c.device.strip() != "",
         f"device must be auto, cpu or cuda[:N], got {c.device!r}"),
        (c.amp in AMP_MODES, f"amp must be {_one_of(AMP_MODES)}, got {c.amp!r}"),
    ]
    for name in ("compile", "cuda_graph", "channels_last", "cudnn_benchmark", "progress", "sync_bn"):
        checks.append((isinstance(getattr(c, name), bool), f"{name} must be true or false, got {getattr(c, name)!r}"))
    return [message for ok, message in checks if not ok]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without a GPU is a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", distributed.current().local_rank)
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, device: torch.device | None = None) -> dict:
    """Top-1 accuracy and mean cross-entropy of ``model`` over ``loader`` (eval mode)."""
    device = device or device_of(model)
    loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    with evaluating(model):
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with autocast(device, autocast_dtype("auto", device)):
                logits = model(images)
            loss += F.cross_entropy(logits.float(), labels, reduction="sum")
            correct += (logits.argmax(1) == labels).sum()
            count += len(labels)
    return {"loss": loss.item() / max(count, 1), "accuracy": correct.item() / max(count, 1)}


def autocast_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype for ``setting`` on ``device`` (None: full fp32)."""
    if setting == "off" or (setting == "auto" and device.type != "cuda"):
        return None
    bf16_ok = device.type != "cuda" or torch.cuda.is_bf16_supported()
    if setting == "auto":
        return torch.bfloat16 if bf16_ok else torch.float16
    if setting == "bf16" and not bf16_ok:
        raise ValueError("this GPU has no bf16 support; use --amp fp16 (with a GradScaler) or --amp off")
    return torch.bfloat16 if setting == "bf16" else torch.float16


def make_optimizer(model: nn.Module, config: TrainConfig, capturable: bool = False) -> torch.optim.Optimizer:
    """The stage's optimizer. ``capturable``: Adam/AdamW keep their step count on the device, as a
    CUDA-graph capture of ``step()`` requires (SGD needs nothing of the kind)."""
    # Weight decay acts on every parameter, BN scales included, as in the paper's Torch code; the
    # sparsity term is separate and explicit (the official port lets weight decay act on γ without saying so).
    adaptive = {"capturable": True} if capturable else {}
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, **adaptive)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, **adaptive)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)


def _make_capturable(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """After resuming a run saved without CUDA graphs: Adam/AdamW keep their step on the device, as capture
    requires (load_state_dict restores the saved ``capturable`` flag and a CPU step count)."""
    if not any("capturable" in g for g in optimizer.param_groups):
        return  # SGD: nothing to do
    for group in optimizer.param_groups:
        group["capturable"] = True
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float32, device=device)


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    milestones = sorted({max(1, round(m * config.epochs)) for m in config.milestones})
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)


def epoch_line(r: Mapping) -> str:
    """One epoch's record as the one line the command line prints after it."""
    parts = [f"epoch {r['epoch']}", f"loss {r['train_loss']:.4f}", f"train {100 * r['train_accuracy']:.2f}%"]
    if "val_accuracy" in r:
        parts.append(f"val {100 * r['val_accuracy']:.2f}%")
    if "test_accuracy" in r:
        parts.append(f"test {100 * r['test_accuracy']:.2f}%")
    parts.append(f"|γ|<1e-2: {100 * r.get('gamma_below_1e-2', 0):.1f}%, "
                 f"safe prune {100 * r.get('safe_percent', 0):.0f}%")
    return ", ".join(parts)


def _on_terminal() -> bool:
    """Whether the progress bar's stream (stderr) is a terminal: in a log file or a pipe a bar redrawn
    every few batches is hundreds of lines, so there each epoch is one line instead."""
    return bool(getattr(sys.stderr, "isatty", None) and sys.stderr.isatty())


@owning_out_dir
def train(
    model: nn.Module,
    train_loader: Iterable,
    config: TrainConfig,
    *,
    val_loader: Iterable | None = None,
    test_loader: Iterable | None = None,
    out_dir: str | Path | None = None,
    arch: Mapping | None = None,
    resume: bool = True,
    regularizer: SparsityRegularizer | None = None,
    teacher: nn.Module | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Train ``model`` for ``config.epochs``; returns the final metrics and the best epoch's.

    With ``out_dir``: after every epoch ``last.pt`` (all state: model, optimizer, schedule, RNG,
    metrics, γ history) is replaced atomically, ``best.pt`` holds the model with the best
    validation accuracy, and ``metrics.jsonl`` gets one line. An existing ``last.pt`` is resumed
    (``resume=True``), so an interrupted run ends with the same weights as an uninterrupted one;
    it resumes only with the options it was trained with, or more epochs (:mod:`netslim.runstate`).
    The folder is locked while training. ``log``: where to say that a run resumes or is extended, and,
    with ``config.progress`` when stderr is not a terminal (no progress bar then), one line per epoch
    unless ``on_epoch`` is given.
    """
    device = resolve_device(config.device)
    dist_info = distributed.current()
    torch.manual_seed(config.seed)
    if config.bn_init is not None:
        init_bn_scales(model, config.bn_init)
    model.to(device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark  # process-wide, as PyTorch has it
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
    if regularizer is None and config.sparse:
        # A subgradient inside Adam is rescaled per parameter and loses its pull to zero: use the decoupled
        # proximal step there instead, and with "auto" (λ the controller's from the first step; see sparsify).
        regularizer = SparsityRegularizer(model, 0.0 if config.sparsity == AUTO else config.sparsity,
                                          config.sparsity_kind, include=config.bn_include,
                                          exclude=config.bn_exclude,
                                          proximal=config.optimizer != "sgd" or config.sparsity == AUTO)
    if teacher is not None:
        teacher.to(device).eval()
    net = _wrap_distributed(model, config, device, dist_info)
    precision = autocast_dtype(config.amp, device)
    # fp16 needs loss scaling; the sparsity term then goes on the unscaled gradients (after unscale_).
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
    graphed = config.cuda_graph and device.type == "cuda" and not dist_info.enabled
    optimizer = make_optimizer(model, config, capturable=graphed)
    scheduler = make_scheduler(optimizer, config)
    forward = CompiledForward(net, _compiled(net, device, graphed)) if config.compile else net
    # λ follows the schedule from the regularizer's own λ (config.sparsity for the one made here), or the
    # controller's for a target; one optimizer step per batch
    steps = config.epochs * len(train_loader) if hasattr(train_loader, "__len__") else None
    sparsity = None if regularizer is None else Sparsity(
        regularizer, optimizer, schedule=config.sparsity_schedule, epochs=config.epochs, warmup=config.sparsity_warmup,
        target=config.target_sparsity if config.sparsity == AUTO else None, by=config.sparsity_by, steps=steps)
    step = make_step(EagerStep(forward, model, optimizer, scaler, device, precision,
                               grad_clip=config.grad_clip, teacher=teacher, distill=config.distill,
                               temperature=config.temperature),
                     config.cuda_graph, distributed=dist_info.enabled)
    arch = dict(arch or describe(model, type(model).__name__))
    state = {"epoch": 0, "history": [], "gammas": {}, "best": None}
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if dist_info.is_main:
            out.mkdir(parents=True, exist_ok=True)
        distributed.barrier()
        say = log if log is not None and dist_info.is_main else (lambda message: None)
        state = start(out, resume, model, optimizer, scheduler, scaler, device, config, arch, say)
        if graphed and state["epoch"]:
            _make_capturable(optimizer, device)
        if sparsity is not None and state.get("sparsity"):
            sparsity.load_state_dict(state["sparsity"])

    if on_epoch is None and log is not None and config.progress and not _on_terminal():
        on_epoch = lambda r: log(f"{epoch_line(r)} ({r['epoch']}/{config.epochs})")  # noqa: E731
    for epoch in range(state["epoch"], config.epochs):
        if hasattr(train_loader, "set_epoch"):
            train_loader.set_epoch(epoch)
        started = time.perf_counter()
        if sparsity is not None:
            sparsity.set_epoch(epoch)
        stats = _train_epoch(step, train_loader, optimizer, config, device, epoch, dist_info)
        scheduler.step()
        check_weights(model, epoch + 1)  # never saved as a good epoch
        record = {"epoch": epoch + 1, **stats}
        if val_loader is not None:
            record.update({f"val_{k}": v for k, v in evaluate(model, val_loader, device).items()})
        if test_loader is not None:
            record.update({f"test_{k}": v for k, v in evaluate(model, test_loader, device).items()})
        record["seconds"] = time.perf_counter() - started
        record.update(gamma_stats(model))
        if sparsity is not None:
            record["sparsity"] = sparsity.lam  # λ at the end of the epoch, under the name a config gives it
            if sparsity.controller is not None:  # the λ trajectory: its range over the epoch
                seen = sparsity.stats()
                record.update(sparsity_min=seen["lambda_min"], sparsity_max=seen["lambda_max"],
                              target_sparsity=seen["target"])
            state["sparsity"] = sparsity.state_dict()
        _append_gammas(state["gammas"], model)
        state["history"].append(record)
        score = record.get("val_accuracy", record.get("test_accuracy", record["train_accuracy"]))
        improved = state["best"] is None or score > state["best"]["score"]
        if improved:
            state["best"] = {"score": score, "epoch": epoch + 1}
        state["epoch"] = epoch + 1
        if out is not None and dist_info.is_main:  # one writer; the others wait for the file
            persist(out, model, optimizer, scheduler, scaler, state, arch, config, improved)
        distributed.barrier()
        if on_epoch is not None and dist_info.is_main:
            on_epoch(record)
    final = state["history"][-1] if state["history"] else {}
    return {"history": state["history"], "best": state["best"], "final": final}


def _wrap_distributed(model: nn.Module, config: TrainConfig, device: torch.device, info) -> nn.Module:
    """DDP around the model when launched by torchrun with several processes; the model itself otherwise."""
    if not info.enabled:
        return model
    if config.sync_bn:
        if device.type != "cuda":
            raise ValueError("sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel); drop --sync-bn on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _compiled(net: nn.Module, device: torch.device, graphed: bool) -> Callable:
    """torch.compile of the model. On a GPU without a whole-step graph, mode="reduce-overhead" replays
    forward and backward as CUDA graphs; inside a whole-step graph, plain compilation (the capture is ours)."""
    return torch.compile(net, mode="reduce-overhead" if device.type == "cuda" and not graphed else "default")


def _train_epoch(step: EagerStep | GraphedStep, loader, optimizer, config, device, epoch, dist_info) -> dict:
    step.model.train()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss·n and correct, summed on the device
    count = 0
    lr = optimizer.param_groups[0]["lr"]
    show = config.progress and dist_info.is_main and _on_terminal()
    # The bar is moved when its figures are (tqdm iterating the loader itself updates its count only now
    # and then, so the figures changed while it sat at 0%).
    bar = tqdm(total=len(loader) if hasattr(loader, "__len__") else None, desc=f"epoch {epoch + 1}/{config.epochs}",
               leave=False, disable=not show, dynamic_ncols=True)
    for k, (images, labels) in enumerate(loader):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        if device.type == "cuda" and config.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        step(images, labels, totals)
        count += labels.shape[0]
        if show and k % 20 == 0:  # the only host synchronisation inside an epoch: the progress bar's figures
            loss, correct = totals.tolist()
            bar.update(k + 1 - bar.n)
            bar.set_postfix(loss=f"{loss / count:.3f}", acc=f"{correct / count:.3f}", lr=f"{lr:.3g}")
    bar.close()
    step.end_epoch()
    if dist_info.enabled:  # epoch statistics over all ranks
        totals = torch.cat([totals, torch.tensor([float(count)], dtype=torch.float64, device=device)])
        torch.distributed.all_reduce(totals)
        count = int(totals[2].item())
    loss_sum, correct = totals[:2].tolist()
    train_loss = loss_sum / max(count, 1)
    if not math.isfinite(train_loss):
        raise TrainingDiverged(f"the loss became {train_loss} in epoch {epoch + 1}", epoch + 1)
    return {"lr": lr, "train_loss": train_loss, "train_accuracy": correct / max(count, 1)}


def _append_gammas(history: dict, model: nn.Module) -> None:
    """Record |γ| of every BN for this epoch (paper Fig. 6 plots one layer along training)."""
    for name, m in batch_norms(model, affine_only=True).items():
        row = m.weight.detach().abs().float().cpu()[None]
        history[name] = torch.cat([history[name], row]) if name in history else row
