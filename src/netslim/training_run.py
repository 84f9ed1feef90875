"""One training stage into a run folder, on a dataset named by its registry name: what ``netslim train`` and
``netslim finetune`` do, callable from a notebook.

Before anything is loaded, the folder is checked (it can be made and written) and the checkpoint read is
checked not to be one training rewrites (last.pt, best.pt, metrics.jsonl in the folder): it would be lost.
The folder is then locked (by rank 0 alone under torchrun) before the data is read, so a second run into
it stops at once; :func:`netslim.train.train` takes the same lock again (it is re-entrant).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import torch

from . import distributed
from .checkpoint import Factory, describe, load_model
from .data.experiment import make_loaders
from .pipeline import ExperimentConfig, build_model_for, check_model_fits
from .runfolder import check_folder, locked, refuse_overwriting_inputs
from .train import TrainConfig, epoch_line, resolve_device, train

TRAINING_WRITES = ("last.pt", "best.pt", "metrics.jsonl")


def train_run(config: TrainConfig, out_dir: str | Path, *, dataset: str, model: str | None = None,
              start_from: str | Path | None = None, model_kwargs: dict | None = None, data_dir: str | None = None,
              download: bool = True, val_size: int = 0, factory: Factory = None, trust_pickle: bool = False,
              resume: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train ``model`` (a registered name or ``package.module:factory``, built for ``dataset``: its classes
    and image size, with ``model_kwargs``), or the model of the checkpoint ``start_from`` with its weights,
    into ``out_dir`` (``last.pt``, ``best.pt``, ``metrics.jsonl``; an existing run there is resumed unless
    ``resume=False``). ``factory``, ``trust_pickle``: see :func:`netslim.checkpoint.load_model`.

    ``log`` gets one line per epoch and a closing line (rank 0 only). Returns :func:`netslim.train.train`'s
    result.
    """
    if model is None and start_from is None:
        raise ValueError("give model= (a new model) or start_from= (the checkpoint of a model)")
    info, out = _prepared(config, out_dir, {"--from": start_from})
    experiment = ExperimentConfig(model=model or str(start_from), dataset=dataset, data_dir=data_dir,
                                  download=download, val_size=val_size, model_kwargs=dict(model_kwargs or {}))
    with _owning(out, info):  # a second run into the same folder stops here, before loading anything
        loader, val, test, train_set = make_loaders(experiment, config.batch_size, resolve_device(config.device),
                                                    config.seed)
        torch.manual_seed(config.seed)  # the same initial weights on every run, rank and resume
        if start_from:
            net, data = load_model(start_from, factory=factory, trust_pickle=trust_pickle)
            if model is not None and model != data["arch"]["name"]:
                raise ValueError(f"--model {model}: {start_from} holds a {data['arch']['name']} (--from takes the "
                                 "model from the checkpoint: drop --model)")
            check_model_fits(net, train_set, str(start_from), dataset)
            arch = describe(net, data["arch"]["name"], data["arch"].get("kwargs", {}))
        else:
            net, kwargs = build_model_for(experiment, train_set)
            arch = describe(net, model, kwargs)
        result = _train(net, loader, config, val, test, out, arch, resume, log)
    final = result["final"]
    if info.is_main:
        log(f"done: test accuracy {100 * final.get('test_accuracy', float('nan')):.2f}% after {final.get('epoch')} "
            f"epochs; checkpoints in {out} (last.pt, best.pt), metrics in {out / 'metrics.jsonl'}")
    return result


def finetune_run(checkpoint: str | Path, config: TrainConfig, out_dir: str | Path, *, dataset: str,
                 data_dir: str | None = None, download: bool = True, val_size: int = 0, factory: Factory = None,
                 trust_pickle: bool = False, resume: bool = True, log: Callable[[str], None] = print) -> dict:
    """Fine-tune the (pruned) model of ``checkpoint`` on ``dataset`` into ``out_dir``; it keeps the checkpoint's
    architecture description. The rest as :func:`train_run`."""
    info, out = _prepared(config, out_dir, {"checkpoint": checkpoint})
    with _owning(out, info):
        model, data = load_model(checkpoint, factory=factory, trust_pickle=trust_pickle)
        experiment = ExperimentConfig(model=data["arch"]["name"], dataset=dataset, data_dir=data_dir,
                                      download=download, val_size=val_size)
        loader, val, test, train_set = make_loaders(experiment, config.batch_size, resolve_device(config.device),
                                                    config.seed)
        check_model_fits(model, train_set, str(checkpoint), dataset)
        result = _train(model, loader, config, val, test, out, data["arch"], resume, log)
    if info.is_main:
        log(f"done: test accuracy {100 * result['final'].get('test_accuracy', float('nan')):.2f}%; "
            f"checkpoints in {out}")
    return result


def _prepared(config: TrainConfig, out_dir: str | Path,
              reads: dict[str, str | Path | None]) -> tuple[distributed.DistInfo, Path]:
    """The process group joined, the folder and the device checked, and no input among the files training
    writes; nothing is created."""
    info = distributed.init_from_env(config.device)
    out = check_folder(out_dir)
    resolve_device(config.device)  # before the folder is made
    written = {f"--out ({name})": out / name for name in TRAINING_WRITES}
    refuse_overwriting_inputs(written, reads, advice="give another --out, or copy the checkpoint out of it")
    return info, out


def _owning(out: Path, info: distributed.DistInfo) -> contextlib.AbstractContextManager:
    """The run folder's lock (rank 0 alone writes, so it alone locks under torchrun)."""
    return locked(out) if info.is_main else contextlib.nullcontext()


def _train(model, loader, config: TrainConfig, val, test, out: Path, arch: dict, resume: bool,
           log: Callable[[str], None]) -> dict:
    return train(model, loader, config, val_loader=val, test_loader=test, out_dir=out, arch=arch, resume=resume,
                 on_epoch=lambda r: log(epoch_line(r)), log=log)
