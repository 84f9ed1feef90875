"""Pruning a checkpoint (or the model a factory builds) into a compact checkpoint file: what ``netslim prune``
does, callable from a notebook.

The amount is :func:`netslim.pruning.plan_for`'s (a percent, a FLOPs, parameter or latency budget); the
compact model is :func:`netslim.apply_plan`'s. Along the way ``log`` is told what was done: the widths per
layer, what became of the pruned channels' β, parameters and FLOPs before and after, the latency measured
here for a latency budget, and, given a dataset, the test accuracy before and after pruning (and after
re-estimating BN statistics). The plan is written before the model: a plan without its model harms less
than a model without its plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import models
from .checkpoint import Factory, describe, layer_shapes, load_model, save_checkpoint
from .data.experiment import evaluation_loader, recalibration_loader
from .deployment import resolve_target
from .integrations.ultralytics import recalibrate_yolo, save_yolo
from .metrics import checked_input_size, count_flops, count_params
from .plan import PruningPlan
from .pruning import plan_for
from .recalibration import recalibrate_bn
from .runfolder import clean_stale
from .surgery import apply_plan, fold_report
from .timing import RUNTIME_NAMES, speed_check, timing_input
from .train import evaluate


@dataclass(frozen=True)
class Pruned:
    model: nn.Module  # the compact model, as saved
    plan: PruningPlan
    path: Path  # where it was saved


def prune_checkpoint(source: str, out: str | Path, *, plan_out: str | Path | None = None,
                     ultralytics_out: str | Path | None = None, overwrite: bool = False,
                     percent: float | None = None, layer_percent: float | None = None,
                     target_flops: float | None = None, target_params: float | None = None,
                     target_latency: float | None = None, target_speedup: float | None = None,
                     latency_batch: int = 1, latency_backend: str = "eager", refresh_latency_tables: bool = False,
                     max_layer_fraction: float | None = None, min_channels: int = 1, round_to: int | None = None,
                     target: str = "auto", fold_bias: bool | str = "exact", input_size: Sequence[int] | None = None,
                     num_classes: int | None = None, factory: Factory = None, trust_pickle: bool = False,
                     recalibrate: int | None = None, data: str | Path | None = None, dataset: str | None = None,
                     data_dir: str | None = None, download: bool = True,
                     log: Callable[[str], None] = print) -> Pruned:
    """Prune the model of ``source`` (a netslim checkpoint, or a registered name, ``torchvision:NAME`` or
    ``package.module:factory`` with its own weights) and save the compact model to ``out``.

    Amounts and guards (at most one amount; ``target_latency`` in seconds): see :func:`plan_for`, timed at
    ``latency_batch`` on ``latency_backend``. ``fold_bias``: see :func:`netslim.apply_plan`. ``input_size``:
    (C, H, W) or one side, for a model that declares none. ``dataset`` (a registry name): the test accuracy
    before and after; ``recalibrate`` N: BN statistics re-estimated on N training batches of ``dataset``, or,
    for an Ultralytics model, of the dataset yaml ``data``. ``plan_out``: the plan as JSON too;
    ``ultralytics_out``: the compact model as an Ultralytics checkpoint too.
    """
    model, arch = _model_of(source, num_classes, factory, trust_pickle)
    model.input_size = checked_input_size(model, input_size, source)
    model.eval()
    _check_requests(model, source, ultralytics_out, recalibrate, data, dataset)
    example = torch.zeros(2, *model.input_size)
    by_latency = target_latency is not None or target_speedup is not None
    # in the deployment's format: bf16 channels_last on CUDA for a gpu target, fp32 on the CPU otherwise
    timed = timing_input(model.input_size, latency_batch, resolve_target(target), latency_backend) \
        if by_latency else None
    planned = plan_for(model, example, percent=percent, layer_percent=layer_percent, target_flops=target_flops,
                       target_params=target_params, target_latency=target_latency, target_speedup=target_speedup,
                       timing_input=timed, max_layer_fraction=max_layer_fraction, min_channels=min_channels,
                       round_to=round_to, target=target, latency_backend=latency_backend,
                       refresh_tables=refresh_latency_tables)
    plan = planned.plan
    if planned.round_to > 1:
        why = "the latency tables show layers stepping by such blocks here" if by_latency and not round_to \
            else f"target {planned.target}"
        log(f"channel counts rounded to multiples of {planned.round_to} ({why}; --round-to 1 prunes exactly "
            "the percent asked)")
    compact = apply_plan(model, plan, fold_bias=fold_bias, example_input=example)
    _report(model, compact, plan, fold_report(model, plan, fold_bias=fold_bias, example_input=example), log)
    if by_latency:
        check = speed_check(model, compact, timed, backend=latency_backend)
        on = "" if latency_backend == "eager" else f" with {RUNTIME_NAMES[latency_backend]}"
        if timed.is_cuda:
            on += f" on {torch.cuda.get_device_name(timed.device)} ({str(timed.dtype).split('.')[-1]})"
        _log_rounds(plan, log)
        log(f"latency at batch {latency_batch}{on}: predicted {1e3 * planned.predicted_latency:.3g} ms; "
            f"{check.line()}")
        if warning := check.missed(target_latency or check.original / target_speedup, latency_batch):
            log(warning)
    if data is not None and recalibrate:
        recalibrate_yolo(compact, data, recalibrate, imgsz=model.input_size[-1])
        log(f"BN statistics re-estimated on {compact.recalibrated_batches} batches of {data}")
    if dataset:
        _measure(model, compact, dataset, data_dir, download, recalibrate, log)
    arch["shapes"], arch["input_size"] = layer_shapes(compact), list(model.input_size)
    return _save(compact, plan, arch, Path(out), plan_out, ultralytics_out, overwrite, log)


def _model_of(source: str, num_classes: int | None, factory: Factory, trust_pickle: bool) -> tuple[nn.Module, dict]:
    """The model to prune and its description: a checkpoint's, or (a factory's name) one built with its weights."""
    if Path(source).is_file() or (":" not in source and source not in models.names()):
        model, data = load_model(source, factory=factory, trust_pickle=trust_pickle)
        return model, dict(data["arch"])
    kwargs = {"num_classes": num_classes} if num_classes else {}
    model = models.create_model(source, kwargs)
    return model, describe(model, source, kwargs)


def _is_ultralytics(model: nn.Module) -> bool:
    return type(model).__module__.startswith("ultralytics.")


def _check_requests(model: nn.Module, source: str, ultralytics_out, recalibrate: int | None, data,
                    dataset: str | None) -> None:
    """What was asked of the model fits it, before any work."""
    if ultralytics_out is not None and not _is_ultralytics(model):
        raise ValueError(f"--ultralytics-out: {source} is not an Ultralytics model")
    if recalibrate and not (dataset or data):
        raise ValueError("--recalibrate needs the training batches to re-estimate BN statistics on: --dataset NAME, "
                         "or --data data.yaml for an Ultralytics model")
    if data is not None:
        if not _is_ultralytics(model):
            raise ValueError(f"--data: {source} is not an Ultralytics model; use --dataset")
        if not Path(data).is_file():
            raise ValueError(f"--data: {data} does not exist (an Ultralytics dataset yaml)")


def _report(model: nn.Module, compact: nn.Module, plan: PruningPlan, folds: dict[str, str],
            log: Callable[[str], None]) -> None:
    """What pruning did: β of the pruned channels, widths per layer, the threshold, parameters and FLOPs."""
    folds = list(folds.values())
    if folds:
        carried = sum(compact.get_submodule(path).num_features - len(kept) for path, kept in plan.kept.items())
        log(f"β of pruned channels: folded exactly into {folds.count('exact')} layer(s), approximately (at the "
            f"border) into {folds.count('approximate')}, carried exactly into {folds.count('carrier')} (by "
            f"{carried} channel(s) kept as constants), dropped at {folds.count('dropped')}")
    log(f"{'layer':<28} {'before':>7} {'after':>7}  guard")
    for path, report in plan.layers.items():
        log(f"{path:<28} {report.width:>7} {report.kept:>7}  {report.guard}")
    size = model.input_size
    p0, p1, f0, f1 = count_params(model), count_params(compact), count_flops(model, size), count_flops(compact, size)
    collapsed = [p for p, r in plan.layers.items() if r.guard == "collapsed"]
    if collapsed:
        log(f"warning: every |γ| of {len(collapsed)} layer(s) is ~0 ({', '.join(collapsed[:3])}...): λ was too "
            "strong for them; the guard keeps min_channels there")
    ranking = plan.options.get("ranking", "|γ|")
    log(f"channels pruned: {plan.pruned_channels}/{plan.total_channels} ({100 * plan.achieved_percent:.1f}%), "
        + (f"threshold |γ| = {plan.threshold:.4g}" if ranking == "|γ|" else
           f"ranked by {ranking} (kept the most Σ|γ| within the latency; smallest |γ| first in each layer)"))
    log(f"params: {p0:,} -> {p1:,} ({100 * (1 - p1 / p0):.1f}% pruned); "
        f"FLOPs: {f0:.3g} -> {f1:.3g} ({100 * (1 - f1 / f0):.1f}% pruned)")


def _log_rounds(plan: PruningPlan, log: Callable[[str], None]) -> None:
    """The latency planner's rounds: each goal, prediction and measurement."""
    for k, step in enumerate(plan.options.get("rounds", []), 1):
        log(f"  planning round {k}: goal {1e3 * step['goal_seconds']:.3g} ms, predicted "
            f"{1e3 * step['predicted_seconds']:.3g} ms, measured {1e3 * step['measured_seconds']:.3g} ms"
            + (f" (median of {step['timings']} timings)" if step.get("timings", 1) > 1 else "")
            + f" (ranked by {step['ranking']})")


def _measure(model: nn.Module, compact: nn.Module, dataset: str, data_dir: str | None, download: bool,
             recalibrate: int | None, log: Callable[[str], None]) -> None:
    """Test accuracy before and right after pruning, and after re-estimating BN statistics when asked."""
    test = evaluation_loader(dataset, data_dir, download)
    before, after = evaluate(model, test)["accuracy"], evaluate(compact, test)["accuracy"]
    log(f"test accuracy: {100 * before:.2f}% before, {100 * after:.2f}% right after pruning (before fine-tuning)")
    if recalibrate:
        recalibrate_bn(compact, recalibration_loader(dataset, data_dir, download), recalibrate)
        log(f"test accuracy after re-estimating BN statistics on {compact.recalibrated_batches} batches: "
            f"{100 * evaluate(compact, test)['accuracy']:.2f}%")


def _save(compact: nn.Module, plan: PruningPlan, arch: dict, out: Path, plan_out, ultralytics_out,
          overwrite: bool, log: Callable[[str], None]) -> Pruned:
    if plan_out is not None:  # first: a plan without its model harms less than a model without its plan
        plan.save(plan_out, overwrite=overwrite)
    clean_stale(out)  # what a killed writer of this name left
    save_checkpoint(out, {"arch": arch, "state_dict": compact.state_dict(), "plan": plan.to_dict()})
    if ultralytics_out is not None:
        log(f"Ultralytics checkpoint of the compact model: {save_yolo(compact, ultralytics_out, overwrite=overwrite)} "
            "(fine-tune it with netslim.integrations.ultralytics.finetune_yolo)")
    log(f"compact model saved to {out}" + (f", plan to {plan_out}" if plan_out is not None else ""))
    return Pruned(compact, plan, out)
