"""Ultralytics YOLO end to end: sparse training with Ultralytics' own trainer, exact pruning, fine-tuning.

    from ultralytics import YOLO
    from netslim.integrations import ultralytics as slim

    yolo = YOLO("yolov8n.yaml")
    slim.add_sparsity(yolo, lam=1e-4)                       # paper Eq. 1 inside Ultralytics' trainer
    yolo.train(data="data.yaml", epochs=100)
    model = slim.load_yolo(yolo.trainer.best, trust_pickle=True)   # Ultralytics' .pt files are pickles
    compact, plan = slim.prune_yolo(model, percent=0.5, imgsz=640)
    trainer = slim.finetune_yolo(compact, data="data.yaml", epochs=50)   # Ultralytics' trainer again
    YOLO(trainer.best).val(data="data.yaml"); YOLO(trainer.best).export(format="onnx")

Sparsity is :func:`netslim.sparsify` attached to the trainer's optimizer when training starts, so it
runs under Ultralytics' AMP, gradient clipping, accumulation and DDP as they are (no patched trainer,
AMP and DDP left on). Ultralytics rebuilds a model from its yaml when it trains from a ``.pt`` file,
which would undo the pruning; :func:`finetune_yolo` hands its trainer the compact model itself.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..graph import trace_channels
from ..plan import PruningPlan, plan_pruning
from ..sparsity import Sparsity, sparsify
from ..surgery import apply_plan

__all__ = ["add_sparsity", "finetune_yolo", "load_yolo", "prune_yolo", "save_yolo", "sparsity_callbacks"]


def sparsity_callbacks(lam: float = 1e-4, kind: str = "l1", *, schedule: str = "constant",
                       log: Callable[[str], None] | None = None, **options) -> dict[str, Callable]:
    """Ultralytics trainer callbacks that train with the sparsity term: ``{event: function}``.

    ``options`` go to :func:`netslim.sparsify` (``exclude=[...]``, ``warmup``...). The γ statistics
    (fraction near zero, largest safe prune percent) are logged after every epoch.
    """
    state: dict[str, Sparsity] = {}

    def on_train_start(trainer) -> None:
        state["sparsity"] = sparsify(trainer.model, trainer.optimizer, lam, kind, schedule=schedule,
                                     epochs=trainer.epochs, **options)

    def on_train_epoch_start(trainer) -> None:
        if "sparsity" in state:
            state["sparsity"].set_epoch(trainer.epoch)

    def on_fit_epoch_end(trainer) -> None:
        if "sparsity" in state:
            s = state["sparsity"].stats()
            trainer.sparsity_stats = s
            (log or _log)(f"netslim sparsity: λ={s['lambda']:.3g}, median |γ| {s['gamma_median']:.4g}, "
                          f"|γ|<1e-2: {100 * s['gamma_below_1e-2']:.1f}%, safe prune {100 * s['safe_percent']:.0f}%")

    def on_train_end(trainer) -> None:
        if "sparsity" in state:
            state.pop("sparsity").remove()

    return {"on_train_start": on_train_start, "on_train_epoch_start": on_train_epoch_start,
            "on_fit_epoch_end": on_fit_epoch_end, "on_train_end": on_train_end}


def add_sparsity(yolo, lam: float = 1e-4, kind: str = "l1", **options) -> None:
    """Make ``yolo.train(...)`` (an ``ultralytics.YOLO``, or a trainer) train sparse: see :func:`sparsity_callbacks`."""
    for event, function in sparsity_callbacks(lam, kind, **options).items():
        yolo.add_callback(event, function)


def _log(message: str) -> None:
    try:
        from ultralytics.utils import LOGGER
        LOGGER.info(message)
    except ImportError:
        print(message)


def load_yolo(path: str | Path, *, trust_pickle: bool = False) -> nn.Module:
    """The model (EMA weights when present, in fp32, eval mode) of an Ultralytics ``.pt`` checkpoint.

    Ultralytics checkpoints are pickled objects: loading one runs code from the file. It is done only
    with ``trust_pickle=True`` (``--trust-pickle`` on the command line), for files you trust.
    """
    from ..foreign import load_foreign_model

    return load_foreign_model(path, trust_pickle=trust_pickle)[0]


def prune_yolo(model: nn.Module, percent: float = 0.5, imgsz: int | tuple[int, int] = 640,
               **plan_options) -> tuple[nn.Module, PruningPlan]:
    """Prune an Ultralytics model (``DetectionModel``, ``SegmentationModel``...) exactly: the compact model
    and the plan. ``plan_options`` go to :func:`netslim.plan_pruning` (``max_layer_fraction``,
    ``round_to``...). Detection and segmentation outputs keep their width; attention blocks keep their
    channels (the analysis proves which channels may go).
    """
    model = model.float().eval()
    channels = int(getattr(model, "yaml", {}).get("channels", 3))
    example = torch.zeros(1, channels, *_pair(imgsz), device=next(model.parameters()).device)
    graph = trace_channels(model, example)
    plan = plan_pruning(model, percent, graph=graph, **plan_options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # inexact β folds are reported by the plan's layers
        compact = apply_plan(model, plan, graph=graph)
    compact.input_size = (channels, *_pair(imgsz))
    return compact, plan


def save_yolo(model: nn.Module, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``model`` as an Ultralytics checkpoint (``ultralytics.YOLO(path)`` loads, validates, exports it).

    Ultralytics' format is a pickle of the model object, so the compact architecture travels with it.
    Written whole or not at all; an existing ``path`` is replaced only with ``overwrite``.
    """
    import copy
    import io
    from datetime import datetime

    from ultralytics import __version__

    from ..runfolder import check_output, write_atomic

    path = check_output(path, overwrite)
    model = copy.deepcopy(model).float().eval()
    args = getattr(model, "args", None)
    train_args = dict(args) if isinstance(args, dict) else dict(vars(args)) if hasattr(args, "__dict__") else {}
    if hasattr(model, "input_size"):
        train_args.setdefault("imgsz", model.input_size[-1])
    buffer = io.BytesIO()
    torch.save({"date": datetime.now().isoformat(), "version": __version__, "epoch": -1, "best_fitness": None,
                "model": model.half(), "ema": None, "updates": None, "optimizer": None,
                "train_args": train_args}, buffer)
    write_atomic(path, buffer.getbuffer())
    return path


def finetune_yolo(compact: nn.Module | str | Path, *, trust_pickle: bool = False, **train_args):
    """Fine-tune a compact model with Ultralytics' own trainer (the task's trainer class); returns the
    trainer (``trainer.best`` is the best checkpoint, loadable with ``ultralytics.YOLO``).

    ``compact``: the model, or an Ultralytics ``.pt`` file of it (unpickled only with ``trust_pickle``).
    ``train_args`` are Ultralytics' training arguments (``data``, ``epochs``, ``imgsz``, ``batch``...).
    """
    if not isinstance(compact, nn.Module):
        compact = load_yolo(compact, trust_pickle=trust_pickle)
    compact.requires_grad_(True)  # checkpoints store frozen tensors; Ultralytics freezes what it wants (DFL) itself
    trainer_class = _trainer_for(compact)

    class CompactTrainer(trainer_class):
        def get_model(self, cfg=None, weights=None, verbose=True):  # the compact model, not one rebuilt from yaml
            return compact

    args = {"model": compact.yaml.get("yaml_file", "compact.yaml") if hasattr(compact, "yaml") else "compact.yaml",
            "pretrained": False, **train_args}
    trainer = CompactTrainer(overrides=args)
    trainer.train()
    return trainer


def _trainer_for(model: nn.Module):
    from ultralytics.models import yolo
    from ultralytics.nn import tasks

    for model_class, trainer in ((tasks.SegmentationModel, yolo.segment.SegmentationTrainer),
                                 (tasks.PoseModel, yolo.pose.PoseTrainer), (tasks.OBBModel, yolo.obb.OBBTrainer),
                                 (tasks.DetectionModel, yolo.detect.DetectionTrainer)):
        if isinstance(model, model_class):
            return trainer
    raise ValueError(f"no Ultralytics trainer for a {type(model).__name__}")


def _pair(size) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int | float) else (int(size[0]), int(size[1]))
