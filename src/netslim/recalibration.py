"""Re-estimating BN statistics after pruning ("adaptive BN", EagleEye), on any data the user has.

A compact model's BN running statistics still describe the wide network's activations: a pruned
channel's constant output (β, or its fold into the next layer's bias) shifts what the next layers
see. Running the compact model over some training batches in train mode, with cumulative averages,
re-estimates them; no weight changes. The paper fine-tunes instead (Sec. 4.3); re-estimation is the
cheap first step that makes "pruned, before fine-tuning" a usable model (users of other slimming tools
often report accuracy near zero right after pruning; stale BN statistics are part of why).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from .layers import batch_norms, device_of, evaluating

INPUT_KEYS = ("img", "image", "images", "input", "inputs", "x")  # Ultralytics batches are dicts with "img"


def batch_input(batch: object) -> torch.Tensor:
    """The model input in one batch: the batch itself (a tensor), its first element (``(images, labels)``),
    or the tensor under a usual key of a mapping (``{"img": ...}``)."""
    if torch.is_tensor(batch):
        return batch
    if isinstance(batch, Mapping):
        for key in INPUT_KEYS:
            if torch.is_tensor(batch.get(key)):
                return batch[key]
        raise ValueError(f"a batch mapping has none of the input keys {', '.join(INPUT_KEYS)} (keys: "
                         f"{', '.join(map(str, list(batch)[:6]))}); pass inputs=lambda batch: ... to pick the input")
    if isinstance(batch, Sequence) and batch and torch.is_tensor(batch[0]):
        return batch[0]
    raise ValueError(f"cannot find the model input in a batch of type {type(batch).__name__}; pass "
                     "inputs=lambda batch: ... to pick it")


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Iterable, batches: int | None = 50, *,
                   inputs: Callable[[object], torch.Tensor] | None = None) -> nn.Module:
    """Re-estimate every BN's running statistics of ``model`` on up to ``batches`` batches of ``data``.

    ``data``: any iterable of batches (a DataLoader, a list of tensors, an Ultralytics loader...);
    ``inputs`` turns a batch into the model's input (default :func:`batch_input`). ``batches``: how many
    to use (None: all); when ``data`` holds fewer, a warning says how many were used. Weights do not
    change; the model's own train/eval mode is restored. Returns ``model``.
    """
    if batches is not None and (not isinstance(batches, int) or batches < 1):
        raise ValueError(f"batches must be an integer >= 1 (or None for all), got {batches!r}")
    pick = inputs or batch_input
    device = device_of(model)
    bns = list(batch_norms(model).values())
    if not bns:
        raise ValueError(f"{type(model).__name__} has no BatchNorm layer: nothing to re-estimate")
    saved = [(m.momentum, m.running_mean.clone() if m.running_mean is not None else None,
              m.running_var.clone() if m.running_var is not None else None) for m in bns]
    used = 0
    with evaluating(model):
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches seen
            m.train()
        try:
            for batch in data:
                if batches is not None and used >= batches:
                    break
                model(pick(batch).to(device))
                used += 1
        except BaseException:
            _restore(bns, saved)  # an interrupted re-estimation leaves the statistics it found
            raise
        finally:
            for m, (momentum, _, _) in zip(bns, saved, strict=True):
                m.momentum = momentum
    if used == 0:
        _restore(bns, saved)
        raise ValueError("the data given for BN re-estimation hold no batch")
    if batches is not None and used < batches:
        warnings.warn(f"BN statistics re-estimated on {used} batches: the data hold {used}, not the {batches} "
                      "asked for", stacklevel=2)
    model.recalibrated_batches = used
    return model


def _restore(bns: list, saved: list) -> None:
    for m, (momentum, mean, var) in zip(bns, saved, strict=True):
        m.momentum = momentum
        if mean is not None:
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
