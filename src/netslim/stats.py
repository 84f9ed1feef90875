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


# A layer's BN passes on Σγ² of variance (each channel's normalized input has unit variance; β is kept
# as a constant by the masked model). Pruning channels that carry at most this share of it in every
# layer, an amplitude of at most 1% of the layer's, changed the test error by under 1 point on the
# Fashion-MNIST VGG runs of benchmarks/fidelity.py (the paper's 'channels with near-zero scaling
# factors', Sec. 3). A share of 1e-3 (3%), fitted on the first seed, cost 1.2 points on the second.
SAFE_SHARE = 1e-4


def scale_stats(scales: dict[str, torch.Tensor]) -> dict[str, float]:
    """Quantiles of |γ|, the fraction below 1e-2 and 1e-3, and two prune ratios.

    ``scales``: |γ| per BN layer. ``safe_percent``: the largest global prune ratio (smallest |γ| first)
    at which the pruned channels carry at most ``SAFE_SHARE`` of any layer's Σγ², the ratio that
    should cost (almost) nothing before fine-tuning: 0 without sparsity training, growing as it works.
    ``max_percent``: the largest ratio that leaves every BN layer a channel (beyond it the plan's
    per-layer guard steps in).
    """
    if not scales:
        return {}
    flat = torch.cat(list(scales.values())).double()
    ordered = flat.sort().values
    quantiles = torch.quantile(flat, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0], dtype=flat.dtype))
    # A layer empties once every channel up to its largest |γ| is pruned.
    emptied_at = min(int(torch.searchsorted(ordered, s.double().max(), right=True)) for s in scales.values())
    return {
        "gamma_min": quantiles[0].item(), "gamma_q25": quantiles[1].item(), "gamma_median": quantiles[2].item(),
        "gamma_q75": quantiles[3].item(), "gamma_max": quantiles[4].item(),
        "gamma_below_1e-2": (flat < 1e-2).float().mean().item(),
        "gamma_below_1e-3": (flat < 1e-3).float().mean().item(),
        "safe_percent": _safe_count(scales, ordered) / len(flat),
        "max_percent": (emptied_at - 1) / len(flat),
    }


def _safe_count(scales: dict[str, torch.Tensor], ordered: torch.Tensor) -> int:
    """How many of the smallest |γ| can go before some layer loses more than SAFE_SHARE of its Σγ²."""
    limit = float("inf")  # the smallest |γ| that may not be pruned, over all layers
    for s in scales.values():
        s = s.double().sort().values
        energy = (s * s).cumsum(0)
        allowed = int((energy <= SAFE_SHARE * energy[-1]).sum()) if energy[-1] > 0 else 0
        limit = min(limit, float(s[min(allowed, len(s) - 1)]))
    return int(torch.searchsorted(ordered, torch.tensor(limit, dtype=ordered.dtype), right=False))
