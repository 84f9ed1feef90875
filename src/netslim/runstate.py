"""What a training folder holds between processes: the checkpoint a run resumes from, and what it
may resume with.

A run resumes only with the options it was trained with: a changed learning rate, λ, seed... would
make ``last.pt`` describe a run that never happened. The one safe change is more epochs (the run
goes on after its last epoch with the schedule it had). A run that diverged is the exception: its
``last.pt`` is the last good epoch, and it resumes from there with a lower learning rate, λ or a
gradient clip (``diverged.json`` records that it diverged), the new values applied to the optimizer.

Weights that are not finite, or that have exploded, are never saved as a good epoch.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from . import distributed
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .runfolder import clean_orphans, locked, write_atomic

OWN_FILES = ("last.pt", "best.pt", "metrics.jsonl")
DIVERGED = "diverged.json"
# Options that change how a run is computed, not what it computes: free to change on resume.
HOW_IT_RUNS = {"device", "amp", "compile", "cuda_graph", "channels_last", "cudnn_benchmark", "progress", "sync_bn"}
# What a divergence message advises to change; a diverged run resumes with new values of these.
AFTER_DIVERGENCE = {"lr", "sparsity", "grad_clip"}
EXPLODED = 1e8  # a weight this large has left any trained network's range: the run is diverging


class TrainingDiverged(ValueError):
    """The loss or the weights became NaN, Inf or exploded; the message says what was kept."""

    def __init__(self, message: str, epoch: int | None = None) -> None:
        super().__init__(message)
        self.epoch = epoch


def check_weights(model: nn.Module, epoch: int) -> None:
    """:class:`TrainingDiverged` when a parameter is not finite or has exploded (checked before saving)."""
    params = [p.detach() for p in model.parameters() if p.is_floating_point() and p.numel()]
    if not params:
        return
    largest = torch.stack(torch._foreach_norm(params, math.inf)).max().item()
    if not largest <= EXPLODED:  # NaN fails this too
        raise TrainingDiverged(f"the weights {'became NaN or Inf' if not math.isfinite(largest) else 'exploded'} "
                               f"in epoch {epoch} (largest |w| = {largest:.3g})", epoch)


def owning_out_dir(train: Callable) -> Callable:
    """``train`` holds its ``out_dir`` for the whole run (one process at a time) and, when it diverges,
    says truthfully which checkpoint is left and records the divergence for the next run."""
    @functools.wraps(train)
    def wrapper(model, train_loader, config, *, out_dir=None, resume=True, **kwargs):
        main = distributed.current().is_main
        with contextlib.ExitStack() as stack:
            if out_dir is not None and main:
                stack.enter_context(locked(out_dir))
            before = _stamp(out_dir)
            try:
                return train(model, train_loader, config, out_dir=out_dir, resume=resume, **kwargs)
            except TrainingDiverged as e:
                raise TrainingDiverged(_after_divergence(e, out_dir, resume, before, config, main), e.epoch) from None
    return wrapper


def _stamp(out_dir) -> tuple | None:
    last = Path(out_dir) / "last.pt" if out_dir is not None else None
    if last is None or not last.exists():
        return None
    st = last.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def _after_divergence(error: TrainingDiverged, out_dir, resume: bool, before, config, main: bool) -> str:
    what = str(error)
    if out_dir is None:
        return f"{what}; nothing was saved (no output folder): lower the learning rate or the sparsity λ"
    out = Path(out_dir)
    last = out / "last.pt"
    ours = last.exists() and (_stamp(out) != before or (resume and before is not None))
    if not ours:
        left = f"; {out} is left as it was" if before is not None else ""
        return (f"{what}; no epoch finished, so no checkpoint was written{left}: start again with a lower learning "
                "rate (--lr) or sparsity λ (--sparsity)")
    if main:  # the next run may resume from the last good epoch with a lower lr or λ
        with contextlib.suppress(OSError):
            record = {"epoch": error.epoch, "why": what, "config": _plain(asdict(config))}
            write_atomic(out / DIVERGED, json.dumps(record))
    try:
        epoch = torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"]
    except Exception:  # the message must not fail
        epoch = "?"
    return (f"{what}; the last good checkpoint (epoch {epoch}) is kept in {last}: run again with a lower learning "
            "rate (--lr), sparsity λ (--sparsity) or a --grad-clip to resume from it with the new values, or with "
            "--no-resume to start over")


def start(out: Path, resume: bool, model, optimizer, scheduler, scaler, device, config, arch: Mapping,
          log: Callable[[str], None]) -> dict:
    """The training state to start from: a fresh one, or the one in ``out/last.pt`` when it may be resumed."""
    main = distributed.current().is_main
    if main:
        clean_orphans(out, OWN_FILES + (DIVERGED,))
    diverged = _read_json(out / DIVERGED)
    last = out / "last.pt"
    distributed.barrier()  # every rank has read the folder before rank 0 changes it
    fresh = {"epoch": 0, "history": [], "gammas": {}, "best": None}
    if not resume or not last.exists():
        if main:
            (out / DIVERGED).unlink(missing_ok=True)
            if last.exists():
                log(f"starting over in {out} (--no-resume): its earlier run is replaced epoch by epoch")
        return fresh
    data = load_checkpoint(last, map_location=device)
    saved = data.get("config") if isinstance(data.get("config"), dict) else {}
    changed = changed_options(saved, _plain(asdict(config)))
    changed.update(_changed_model(data.get("arch"), arch))
    done = data.get("epoch", 0)
    if diverged is not None:
        if not changed or not set(changed) <= AFTER_DIVERGENCE:
            _refuse_after_divergence(out, diverged, changed, done)
    elif changed:
        listed = ", ".join(f"{k} {old!r} (now {new!r})" for k, (old, new) in changed.items())
        raise ValueError(f"{out} holds a run trained with other options: {listed}; resuming would record a run that "
                         "never happened. Resume with the same options (only --epochs may grow), or start fresh with "
                         "--no-resume or another --out")
    state = restore(data, last, model, optimizer, scheduler, scaler)
    if diverged is not None and "lr" in changed:
        set_learning_rate(optimizer, scheduler, config.lr)
    if main:
        write_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in state["history"]))
        (out / DIVERGED).unlink(missing_ok=True)
    planned = saved.get("epochs", config.epochs)
    if diverged is not None:
        listed = ", ".join(f"{k} {new!r} (was {old!r})" for k, (old, new) in changed.items())
        log(f"{out} diverged in epoch {diverged.get('epoch', '?')}: resuming from epoch {done} with {listed}")
    elif done >= config.epochs:
        log(f"{out} already holds all {done} epochs: nothing to train (--no-resume starts over)")
    elif config.epochs > planned:
        log(f"extending {out} from {planned} to {config.epochs} epochs: resuming after epoch {done}, the learning "
            f"rate schedule of the {planned}-epoch run kept")
    else:
        log(f"resuming {out} from epoch {done} of {config.epochs}")
    return state


def _changed_model(saved, now: Mapping) -> dict[str, tuple]:
    """``{"model": (saved, now)}`` for another model, else ``{"model kwargs.K": ...}`` for each builder keyword
    that differs (saying "model 'mlp' (now 'mlp')" would not say what changed)."""
    saved = saved if isinstance(saved, Mapping) else {}
    if _plain(saved.get("name")) != _plain(now.get("name")):
        return {"model": (saved.get("name"), now.get("name"))}
    old, new = _plain(saved.get("kwargs", {})), _plain(now.get("kwargs", {}))
    if old == new:
        return {}
    if not isinstance(old, dict) or not isinstance(new, dict):
        return {"model kwargs": (old, new)}
    return {f"model kwargs.{k}": (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)}


def changed_options(saved: Mapping, now: Mapping) -> dict[str, tuple]:
    """``{option: (saved, now)}`` for every option that would change what a resumed run trains."""
    changed = {k: (saved[k], v) for k, v in now.items()
               if k in saved and k not in HOW_IT_RUNS | {"epochs"} and saved[k] != v}
    if isinstance(saved.get("epochs"), int) and now["epochs"] < saved["epochs"]:
        changed["epochs"] = (saved["epochs"], now["epochs"])  # fewer: the schedule was made for more
    return changed


def _refuse_after_divergence(out: Path, diverged: Mapping, changed: Mapping, done: int) -> None:
    when = f"in epoch {diverged.get('epoch', '?')}"
    if changed:
        others = ", ".join(k for k in changed if k not in AFTER_DIVERGENCE)
        raise ValueError(f"{out} diverged {when}; it resumes from epoch {done} only with a new lr, sparsity or "
                         f"grad_clip, not a new {others}: start fresh with --no-resume or another --out")
    raise ValueError(f"{out} diverged {when} and the same options would diverge again: lower the learning rate "
                     f"(--lr) or sparsity λ (--sparsity), or add --grad-clip, to resume from epoch {done} with them; "
                     "or start fresh with --no-resume")


def set_learning_rate(optimizer: torch.optim.Optimizer, scheduler, lr: float) -> None:
    """Make ``lr`` the base learning rate of a restored optimizer and its schedule, keeping the schedule's position."""
    for group in optimizer.param_groups:
        position = group["lr"] / group.get("initial_lr", group["lr"])  # 1, 0.1, 0.01 along the milestones
        group["initial_lr"], group["lr"] = lr, lr * position
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]


def restore(data: Mapping, path: Path, model, optimizer, scheduler, scaler) -> dict:
    """Load model, optimizer, schedule, scaler and RNG state from a ``last.pt``; the rest of the state it held."""
    try:
        model.load_state_dict(data["state_dict"])
        optimizer.load_state_dict(data["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"cannot resume from {path}: it belongs to another model or run "
                              f"({e.__class__.__name__}); use another --out folder or --no-resume") from None
    try:
        scheduler.load_state_dict(data["scheduler"])
        if data.get("scaler"):
            scaler.load_state_dict(data["scaler"])
        torch.set_rng_state(data["rng"]["torch"].cpu())
        if "cuda" in data["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in data["rng"]["cuda"]])
        state = {"epoch": int(data["epoch"]), "history": list(data["history"]), "gammas": dict(data["gammas"]),
                 "best": data["best"], "sparsity": data.get("sparsity")}
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise CheckpointError(f"cannot resume from {path}: its training state is incomplete ({type(e).__name__}: "
                              f"{e}); use another --out folder or --no-resume") from None
    return state


def persist(out: Path, model, optimizer, scheduler, scaler, state: dict, arch: Mapping, config,
            improved: bool) -> None:
    """Save the epoch: ``metrics.jsonl`` first (never behind ``last.pt`` after a kill; a resume rewrites it
    from ``last.pt``), then ``best.pt`` when the epoch improved, then ``last.pt``."""
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    plain = _plain(asdict(config))
    write_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in state["history"]))
    if improved:
        save_checkpoint(out / "best.pt", {"arch": arch, "state_dict": weights, "epoch": state["epoch"],
                                          "metrics": state["history"][-1], "config": plain})
    save_checkpoint(out / "last.pt", {
        "arch": arch, "state_dict": weights, "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": state["epoch"],
        "history": state["history"], "gammas": state["gammas"], "best": state["best"], "config": plain,
        "sparsity": state.get("sparsity"),
        "rng": {"torch": torch.get_rng_state(),
                **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})},
    })


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _plain(value):
    """Config values as JSON/weights-only friendly primitives."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
