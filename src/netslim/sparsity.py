"""The paper's Eq. 1: a sparsity-inducing penalty on BN scaling factors, added to their gradients.

``reg.step()`` runs after ``loss.backward()`` (and after ``scaler.unscale_(optimizer)`` under AMP)
and before ``optimizer.step()``. It adds λ·∂g(γ)/∂γ to every prunable γ's gradient with fused
``torch._foreach`` ops: a handful of kernel launches for the whole network, not a Python loop of
small ops per layer (the official port's ``updateBN``).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

KINDS = ("l1", "smooth_l1", "polarization")


def prunable_bns(model: nn.Module, include: Sequence[str] = ("*",),
                 exclude: Sequence[str] = ()) -> dict[str, _BatchNorm]:
    """BN layers with a learnable scale, selected by module-path patterns (fnmatch)."""
    found = {name: m for name, m in model.named_modules()
             if isinstance(m, _BatchNorm) and m.affine
             and any(fnmatch.fnmatch(name, p) for p in include)
             and not any(fnmatch.fnmatch(name, p) for p in exclude)}
    for pattern in list(exclude) + [p for p in include if p != "*"]:
        if not any(fnmatch.fnmatch(name, pattern) for name, m in model.named_modules() if isinstance(m, _BatchNorm)):
            raise ValueError(f"BN pattern {pattern!r} matches no BatchNorm layer of {type(model).__name__}")
    return found


class SparsityRegularizer:
    """λ·Σ g(γ) over the BN scaling factors of a model (paper Eq. 1), applied as a gradient term.

    ``kind``: ``"l1"`` (g = |γ|, subgradient sign(γ), the paper's choice), ``"smooth_l1"`` (Huber
    with width ``beta``: gradient clamp(γ/β, -1, 1), smooth at 0), or ``"polarization"`` (Zhuang et
    al., NeurIPS 2020: t·|γ| − |γ − mean(γ)| over all factors, with γ clamped to [0, ``upper``]
    after each optimizer step), which pushes factors apart, towards 0 or away from it.
    """

    def __init__(self, model: nn.Module, lam: float = 1e-4, kind: str = "l1", *, beta: float = 1e-2,
                 t: float = 1.2, upper: float = 1.0, include: Sequence[str] = ("*",),
                 exclude: Sequence[str] = (), proximal: bool = False) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown sparsity kind {kind!r}; choose one of {', '.join(KINDS)}")
        if not lam >= 0:
            raise ValueError(f"sparsity strength λ must be >= 0, got {lam!r}")
        if beta <= 0 or upper <= 0:
            raise ValueError("beta and upper must be > 0")
        if proximal and kind != "l1":
            raise ValueError("the proximal step is defined for the l1 penalty only")
        self.lam, self.kind, self.beta, self.t, self.upper = float(lam), kind, beta, t, upper
        self.proximal = proximal
        self.bns = prunable_bns(model, include, exclude)
        if not self.bns:
            raise ValueError(f"{type(model).__name__} has no BatchNorm with learnable scales: nothing to regularize")
        self.gammas = [bn.weight for bn in self.bns.values()]

    def penalty(self) -> torch.Tensor:
        """The value of λ·Σ g(γ) (for logging; the gradient comes from :meth:`step`)."""
        with torch.no_grad():
            flat = torch.cat([g.detach().flatten().float() for g in self.gammas])
            if self.kind == "l1":
                value = flat.abs().sum()
            elif self.kind == "smooth_l1":
                a = flat.abs()
                value = torch.where(a < self.beta, 0.5 * a * a / self.beta, a - 0.5 * self.beta).sum()
            else:
                value = self.t * flat.abs().sum() - (flat - flat.mean()).abs().sum()
        return self.lam * value

    @torch.no_grad()
    def step(self, lam: float | None = None) -> None:
        """Add λ·∂g/∂γ to each γ's gradient (call between backward and optimizer step)."""
        lam = self.lam if lam is None else float(lam)
        if lam == 0 or self.proximal:
            return
        gammas = [g for g in self.gammas if g.grad is not None]
        if not gammas:
            return
        grads = [g.grad for g in gammas]
        if self.kind == "l1":
            torch._foreach_add_(grads, torch._foreach_sign(gammas), alpha=lam)
        elif self.kind == "smooth_l1":
            slope = torch._foreach_div(gammas, self.beta)
            torch._foreach_clamp_min_(slope, -1.0)
            torch._foreach_clamp_max_(slope, 1.0)
            torch._foreach_add_(grads, slope, alpha=lam)
        else:
            # d/dγ_i [t·Σ|γ| − Σ_j|γ_j − m|] = t·sign(γ_i) − sign(γ_i − m) + mean_j sign(γ_j − m), computed on
            # the concatenated scales with plain tensor ops (no scalar-tensor overloads: no host sync, capturable)
            flat = torch.cat([g.flatten() for g in gammas])
            away = torch.sign(flat - flat.mean())
            slope = self.t * torch.sign(flat) - away + away.mean()
            parts = slope.split([g.numel() for g in gammas])
            torch._foreach_add_(grads, [p.view_as(g) for p, g in zip(parts, gammas, strict=True)], alpha=lam)

    @torch.no_grad()
    def after_step(self, lr: float | None = None) -> None:
        """Call after ``optimizer.step()``.

        Proximal mode (for Adam/AdamW, whose per-parameter scaling would rescale a subgradient
        away): soft-threshold γ ← sign(γ)·max(|γ| − lr·λ, 0), decoupled from the optimizer. The
        polarizer keeps γ in [0, upper]. A no-op otherwise.
        """
        if self.proximal:
            if lr is None:
                raise ValueError("the proximal step needs the learning rate: reg.after_step(lr)")
            shrunk = torch._foreach_abs(self.gammas)
            torch._foreach_sub_(shrunk, lr * self.lam)
            torch._foreach_clamp_min_(shrunk, 0.0)
            torch._foreach_mul_(shrunk, torch._foreach_sign(self.gammas))
            torch._foreach_copy_(self.gammas, shrunk)
        if self.kind == "polarization":
            torch._foreach_clamp_min_(self.gammas, 0.0)
            torch._foreach_clamp_max_(self.gammas, self.upper)


SCHEDULES = ("constant", "warmup", "step", "linear")


def lambda_at(lam: float, epoch: int, epochs: int, schedule: str = "constant", warmup: float = 0.1) -> float:
    """λ for ``epoch`` (0-based) of ``epochs``: constant; linear warm-up over the first ``warmup``
    fraction; step decay (/10 at 50% and 75%, like the learning rate); or linear decay to 0."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown λ schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    if lam < 0 or not 0 <= warmup <= 1:
        raise ValueError("λ must be >= 0 and the warm-up fraction in [0, 1]")
    progress = epoch / max(epochs, 1)
    if schedule == "warmup":
        return lam * min(1.0, (epoch + 1) / max(1.0, warmup * epochs))
    if schedule == "step":
        return lam * (0.1 ** ((progress >= 0.5) + (progress >= 0.75)))
    if schedule == "linear":
        return lam * (1 - progress)
    return lam


@torch.no_grad()
def init_bn_scales(model: nn.Module, value: float = 0.5) -> None:
    """Set every BN scale to ``value`` (the paper initialises γ to 0.5 for sparsity training, Sec. 4.3)."""
    for bn in prunable_bns(model).values():
        bn.weight.fill_(value)
