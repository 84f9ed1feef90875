"""Stand-ins that the tests and the benchmarks share (as ``torch.testing`` is for torch's own).

:func:`randomize_bn` gives a freshly built model the BN layers a trained one has, without training it;
:func:`official_update_bn` is the official port's ``updateBN``, the reference Eq. 1 is checked and timed against.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import batch_norms


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN scales, shifts and statistics from a seeded generator, like a trained model's
    (γ ~ U(0, 1), β ~ N(0, 0.1), mean ~ N(0, 0.1), var ~ U(0.5, 1.5)): a stand-in for sparsity training."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in batch_norms(model).values():
            m.weight.copy_(torch.rand(m.weight.shape, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
            m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


@torch.no_grad()
def official_update_bn(model: nn.Module, lam: float) -> None:
    """The official PyTorch port's ``updateBN``: λ·sign(γ) added to each BN scale's gradient, one layer at a
    time (a Python loop with two small ops per BN, where :class:`netslim.SparsityRegularizer` fuses them)."""
    for m in batch_norms(model, affine_only=True).values():
        m.weight.grad.add_(lam * torch.sign(m.weight))
