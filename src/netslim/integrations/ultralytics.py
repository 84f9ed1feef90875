"""Ultralytics YOLO end to end: sparse training with Ultralytics' own trainer, exact pruning, fine-tuning.

    from ultralytics import YOLO
    from netslim.integrations import ultralytics as slim

    yolo = YOLO("yolov8n.yaml")
    slim.add_sparsity(yolo, target=0.5)                     # paper Eq. 1 inside Ultralytics' trainer, λ chosen
    yolo.train(data="data.yaml", epochs=100)
    model = slim.load_yolo(yolo.trainer.best, trust_pickle=True)   # Ultralytics' .pt files are pickles
    compact, plan = slim.prune_yolo(model, percent=0.5, imgsz=640, data="data.yaml", recalibrate=50)
    trainer = slim.finetune_yolo(compact, data="data.yaml", epochs=50)   # Ultralytics' trainer again
    YOLO(trainer.best).val(data="data.yaml"); YOLO(trainer.best).export(format="onnx")

Sparsity is :func:`netslim.sparsify` attached to the trainer's optimizer when training starts, so it
runs under Ultralytics' AMP, gradient clipping, accumulation and DDP as they are (no patched trainer,
AMP and DDP left on). Ultralytics rebuilds a model from its yaml when it trains from a ``.pt`` file,
which would undo the pruning; :func:`finetune_yolo` hands its trainer the compact model itself.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from ..graph import trace_channels
from ..plan import PruningPlan, plan_pruning
from ..recalibration import recalibrate_bn
from ..sparsity import sparsify
from ..surgery import apply_plan

__all__ = ["add_sparsity", "finetune_yolo", "load_yolo", "prune_yolo", "recalibrate_yolo", "save_yolo",
           "sparsity_callbacks", "yolo_batches"]


def sparsity_callbacks(lam: float | None = None, kind: str = "l1", *, target: float | None = None, by: float = 2 / 3,
                       schedule: str = "constant", log: Callable[[str], None] | None = None,
                       **options) -> dict[str, Callable]:
    """Ultralytics trainer callbacks that train with the sparsity term: ``{event: function}``.

    ``target``: the share of channels to make prunable (|γ| < 1e-2) by the fraction ``by`` of the run, λ
    chosen and corrected by netslim (:func:`netslim.sparsify`); else the fixed ``lam`` (default 1e-4), with a
    warning at the start when the trainer's learning rate, momentum and steps cannot carry it far enough.
    The length of the run is Ultralytics' own (epochs, batches, accumulation), its progress counted in
    batches (its warm-up accumulates fewer at first). ``options`` go to :func:`netslim.sparsify`
    (``exclude=[...]``, ``warmup``...). λ and the share below 1e-2 are columns of Ultralytics' results.csv
    (``netslim/lambda``, ``netslim/below_1e-2``), and a line of γ statistics is logged after every epoch.
    """
    state: dict = {}

    def on_train_start(trainer) -> None:
        batches = len(trainer.train_loader) * trainer.epochs
        steps = max(1, math.ceil(batches / max(int(getattr(trainer, "accumulate", 1)), 1)))
        state["sparsity"] = sparsify(trainer.model, trainer.optimizer, lam, kind, target=target, by=by, steps=steps,
                                     schedule=schedule, epochs=trainer.epochs, **options)
        state["batches"], state["seen"] = batches, trainer.start_epoch * len(trainer.train_loader)

    def on_train_batch_end(trainer) -> None:
        if "sparsity" in state:
            state["seen"] += 1
            state["sparsity"].set_progress(state["seen"] / state["batches"])

    def on_train_epoch_start(trainer) -> None:
        if "sparsity" in state:
            state["sparsity"].set_epoch(trainer.epoch)

    def on_train_epoch_end(trainer) -> None:
        if "sparsity" in state and isinstance(getattr(trainer, "lr", None), dict):
            share, _ = state["sparsity"].collapsed()  # trainer.lr is saved with the epoch's metrics (results.csv)
            trainer.lr.update({"netslim/lambda": state["sparsity"].lam, "netslim/below_1e-2": share})

    def on_fit_epoch_end(trainer) -> None:
        if "sparsity" in state:
            s = state["sparsity"].stats()
            trainer.sparsity_stats = s
            aim = f" (target {100 * s['target']:.0f}%)" if "target" in s else ""
            (log or _log)(f"netslim sparsity: λ={s['lambda']:.3g}, median |γ| {s['gamma_median']:.4g}, |γ|<1e-2: "
                          f"{100 * s['gamma_below_1e-2']:.1f}%{aim}, safe prune {100 * s['safe_percent']:.0f}%")

    def on_train_end(trainer) -> None:
        if "sparsity" in state:
            state.pop("sparsity").remove()

    return {"on_train_start": on_train_start, "on_train_batch_end": on_train_batch_end,
            "on_train_epoch_start": on_train_epoch_start, "on_train_epoch_end": on_train_epoch_end,
            "on_fit_epoch_end": on_fit_epoch_end, "on_train_end": on_train_end}


def add_sparsity(yolo, lam: float | None = None, kind: str = "l1", *, target: float | None = None, **options) -> None:
    """Make ``yolo.train(...)`` (an ``ultralytics.YOLO``, or a trainer) train sparse: see :func:`sparsity_callbacks`.

        slim.add_sparsity(yolo, target=0.5)   # half of the channels prunable before the last third of the run
    """
    for event, function in sparsity_callbacks(lam, kind, target=target, **options).items():
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


def prune_yolo(model: nn.Module, percent: float = 0.5, imgsz: int | tuple[int, int] = 640, *,
               data: str | Path | None = None, recalibrate: int = 0, batch: int = 16,
               **plan_options) -> tuple[nn.Module, PruningPlan]:
    """Prune an Ultralytics model (``DetectionModel``, ``SegmentationModel``...) exactly: the compact model
    and the plan. ``plan_options`` go to :func:`netslim.plan_pruning` (``max_layer_fraction``,
    ``round_to``...). Detection and segmentation outputs keep their width; attention blocks keep their
    channels (the analysis proves which channels may go).

    ``data`` (a dataset yaml, as for ``yolo.train``) with ``recalibrate=N``: re-estimate the compact model's
    BN statistics on N batches of its training images, loaded by Ultralytics (:func:`yolo_batches`), so
    that the compact model is usable before fine-tuning.
    """
    if recalibrate and data is None:
        raise ValueError("recalibrate= needs data= (the dataset yaml whose training images re-estimate BN statistics)")
    model = model.float().eval()
    channels = int(getattr(model, "yaml", {}).get("channels", 3))
    example = torch.zeros(1, channels, *_pair(imgsz), device=next(model.parameters()).device)
    graph = trace_channels(model, example)
    plan = plan_pruning(model, percent, graph=graph, **plan_options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # inexact β folds are reported by the plan's layers
        compact = apply_plan(model, plan, graph=graph)
    compact.input_size = (channels, *_pair(imgsz))
    if recalibrate:
        recalibrate_yolo(compact, data, recalibrate, imgsz, batch=batch)
    return compact, plan


def recalibrate_yolo(model: nn.Module, data: str | Path, batches: int, imgsz: int | tuple[int, int] = 640, *,
                     batch: int = 16) -> nn.Module:
    """Re-estimate the BN statistics of an Ultralytics model on ``batches`` batches of the training images of
    the dataset yaml ``data`` (:func:`yolo_batches`, :func:`netslim.recalibrate_bn`); returns it in eval mode."""
    stride = getattr(model, "stride", None)
    stride = int(max(stride.max().item(), 32)) if torch.is_tensor(stride) else 32
    recalibrate_bn(model, yolo_batches(data, imgsz, batch=batch, stride=stride), batches, inputs=_yolo_input)
    return model.eval()


def yolo_batches(data: str | Path, imgsz: int | tuple[int, int] = 640, *, batch: int = 16, split: str = "train",
                 stride: int = 32) -> Iterable[dict]:
    """Batches of a dataset yaml's ``split`` images, loaded and letterboxed by Ultralytics' own dataloader
    (no augmentation, shuffled with a fixed seed): ``batch["img"]`` is uint8, as Ultralytics trains on it."""
    from ultralytics.cfg import get_cfg
    from ultralytics.data import build_dataloader, build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset

    info = check_det_dataset(str(data), autodownload=False)
    if split not in info:
        raise ValueError(f"{data} has no '{split}' split")
    side = max(_pair(imgsz))
    cfg = get_cfg(overrides={"imgsz": side, "batch": batch, "workers": 0, "cache": False, "task": "detect"})
    dataset = build_yolo_dataset(cfg, info[split], batch, info, mode="val", stride=stride)
    generator = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(1 << 30, (1,), generator=generator)))
        loader = build_dataloader(dataset, batch, workers=0, shuffle=True, device="cpu")
    return loader


def _yolo_input(batch: dict) -> torch.Tensor:
    return batch["img"].float() / 255  # as Ultralytics' trainer and validator preprocess a batch


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
