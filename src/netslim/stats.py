"""Is sparsity happening? Summaries of the BN scaling factors, cheap enough to log every epoch."""

from __future__ import annotations

import torch
from torch import nn

from .layers import batch_norms


def bn_scales(model: nn.Module) -> dict[str, torch.Tensor]:
    """|γ| of every affine BN layer, by module path."""
    return {n: m.weight.detach().abs().float().cpu() for n, m in batch_norms(model, affine_only=True).items()}


def gamma_stats(model: nn.Module) -> dict[str, float]:
    """:func:`scale_stats` of every affine BN layer of ``model``."""
    return scale_stats(bn_scales(model))


def scale_stats(scales: dict[str, torch.Tensor]) -> dict[str, float]:
    """Quantiles of |γ|, the fraction below 1e-2 and 1e-3, and the largest safe global percent.

    ``scales``: |γ| per BN layer. ``safe_percent``: the largest global prune ratio that leaves every
    BN layer at least one channel (beyond it the plan's guard steps in): the sparsity training
    'budget' reached so far.
    """
    if not scales:
        return {}
    flat = torch.cat(list(scales.values()))
    ordered = flat.sort().values
    quantiles = torch.quantile(flat, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]))
    # A layer empties once every channel up to its largest |γ| is pruned.
    emptied_at = min(int(torch.searchsorted(ordered, s.max(), right=True)) for s in scales.values())
    return {
        "gamma_min": quantiles[0].item(), "gamma_q25": quantiles[1].item(), "gamma_median": quantiles[2].item(),
        "gamma_q75": quantiles[3].item(), "gamma_max": quantiles[4].item(),
        "gamma_below_1e-2": (flat < 1e-2).float().mean().item(),
        "gamma_below_1e-3": (flat < 1e-3).float().mean().item(),
        "safe_percent": (emptied_at - 1) / len(flat),
    }
