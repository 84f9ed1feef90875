"""The paper's Eq. 1: a sparsity-inducing penalty on BN scaling factors, added to their gradients.

:class:`SparsityRegularizer` computes the term: ``reg.step()`` adds λ·∂g(γ)/∂γ to every prunable γ's
gradient with fused ``torch._foreach`` ops (a handful of kernel launches for the whole network, not a
Python loop of small ops per layer like the official port's ``updateBN``); ``reg.after_step(lr)`` is
the proximal step for adaptive optimizers. :func:`sparsify` attaches a regularizer to an optimizer
through its step hooks, so that any loop calling ``optimizer.step()`` or ``scaler.step(optimizer)``
trains sparse; netslim's own loop uses it too (one mechanism).
"""

from __future__ import annotations

import fnmatch
import math
import weakref
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .layers import batch_norms
from .stats import scale_stats

KINDS = ("l1", "smooth_l1", "polarization")


def prunable_bns(model: nn.Module, include: Sequence[str] = ("*",),
                 exclude: Sequence[str] = ()) -> dict[str, _BatchNorm]:
    """BN layers with a learnable scale, selected by module-path patterns (fnmatch)."""
    found = {name: m for name, m in batch_norms(model, affine_only=True).items()
             if any(fnmatch.fnmatch(name, p) for p in include)
             and not any(fnmatch.fnmatch(name, p) for p in exclude)}
    every = batch_norms(model)
    for pattern in list(exclude) + [p for p in include if p != "*"]:
        if not any(fnmatch.fnmatch(name, pattern) for name in every):
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
        check_lambda(lam)
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
    def step(self, lam: float | None = None, scale: torch.Tensor | None = None) -> None:
        """Add λ·∂g/∂γ to each γ's gradient (call between backward and optimizer step).

        ``scale``: the factor the gradients are still multiplied by (a GradScaler's scale, for fused
        optimizers that unscale inside their own step); the term is scaled alike.
        """
        lam = self.lam if lam is None else float(lam)
        if lam == 0 or self.proximal:
            return
        gammas = [g for g in self.gammas if g.grad is not None]
        if not gammas:
            return
        grads = [g.grad for g in gammas]
        if self.kind == "l1":
            slope = torch._foreach_sign(gammas)
        elif self.kind == "smooth_l1":
            slope = torch._foreach_div(gammas, self.beta)
            torch._foreach_clamp_min_(slope, -1.0)
            torch._foreach_clamp_max_(slope, 1.0)
        else:
            # d/dγ_i [t·Σ|γ| − Σ_j|γ_j − m|] = t·sign(γ_i) − sign(γ_i − m) + mean_j sign(γ_j − m), computed on
            # the concatenated scales with plain tensor ops (no scalar-tensor overloads: no host sync, capturable)
            flat = torch.cat([g.flatten() for g in gammas])
            away = torch.sign(flat - flat.mean())
            flat_slope = self.t * torch.sign(flat) - away + away.mean()
            slope = [p.view_as(g) for p, g in zip(flat_slope.split([g.numel() for g in gammas]), gammas, strict=True)]
        if scale is not None:
            torch._foreach_mul_(slope, scale)
        torch._foreach_add_(grads, slope, alpha=lam)

    @torch.no_grad()
    def after_step(self, lr: float | Sequence[float] | None = None, skipped: torch.Tensor | None = None) -> None:
        """Call after ``optimizer.step()``.

        Proximal mode (for Adam/AdamW, whose per-parameter scaling would rescale a subgradient
        away): soft-threshold γ ← sign(γ)·max(|γ| − lr·λ, 0), decoupled from the optimizer. ``lr``: one
        learning rate, or one per γ (that of its parameter group). The polarizer keeps γ in
        [0, upper]. A no-op otherwise. ``skipped``: a tensor, nonzero when the optimizer skipped this
        step (a fused optimizer's ``found_inf`` under a GradScaler); γ then stays as it is.
        """
        if not self.proximal and self.kind != "polarization":
            return
        updated = self.gammas
        if self.proximal:
            if lr is None:
                raise ValueError("the proximal step needs the learning rate: reg.after_step(lr)")
            lrs = list(lr) if isinstance(lr, Sequence) else [lr] * len(self.gammas)
            thresholds = [rate * self.lam for rate in lrs]
            updated = torch._foreach_abs(self.gammas)
            if any(isinstance(x, torch.Tensor) for x in thresholds):  # tensor learning rates (capturable optimizers)
                for shrunk, x in zip(updated, thresholds, strict=True):
                    shrunk.sub_(x)
            elif len(set(thresholds)) == 1:
                torch._foreach_sub_(updated, thresholds[0])
            else:
                torch._foreach_sub_(updated, thresholds)
            torch._foreach_clamp_min_(updated, 0.0)
            torch._foreach_mul_(updated, torch._foreach_sign(self.gammas))
        if self.kind == "polarization":
            if updated is self.gammas and skipped is not None:
                updated = [g.clone() for g in self.gammas]
            torch._foreach_clamp_min_(updated, 0.0)
            torch._foreach_clamp_max_(updated, self.upper)
        if skipped is not None:
            updated = [torch.where(skipped != 0, g, new) for g, new in zip(self.gammas, updated, strict=True)]
        if updated is not self.gammas:
            torch._foreach_copy_(self.gammas, updated)


SCHEDULES = ("constant", "warmup", "step", "linear")


def check_lambda(lam) -> None:
    """A ValueError unless ``lam`` is a finite number >= 0 (an infinite λ sends every γ to -inf)."""
    if isinstance(lam, bool) or not isinstance(lam, int | float) or not math.isfinite(lam) or lam < 0:
        raise ValueError(f"sparsity strength λ must be >= 0 and a finite number (e.g. 1e-4), got {lam!r}")


def lambda_at(lam: float, epoch: int, epochs: int, schedule: str = "constant", warmup: float = 0.1) -> float:
    """λ for ``epoch`` (0-based) of ``epochs``: constant; linear warm-up over the first ``warmup``
    fraction; step decay (/10 at 50% and 75%, like the learning rate); or linear decay to 0."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown λ schedule {schedule!r}; choose one of {', '.join(SCHEDULES)}")
    check_lambda(lam)
    if not 0 <= warmup <= 1:
        raise ValueError(f"the warm-up fraction must be in [0, 1], got {warmup!r}")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch must be an integer >= 0 (0-based), got {epoch!r}")
    progress = epoch / max(epochs, 1)
    if schedule == "warmup":
        return lam * min(1.0, (epoch + 1) / max(1.0, warmup * epochs))
    if schedule == "step":
        return lam * (0.1 ** ((progress >= 0.5) + (progress >= 0.75)))
    if schedule == "linear":
        return lam * (1 - progress)
    return lam


_ATTACHED: weakref.WeakKeyDictionary[torch.optim.Optimizer, Sparsity] = weakref.WeakKeyDictionary()


class Sparsity:
    """A :class:`SparsityRegularizer` attached to an optimizer through its step hooks (see :func:`sparsify`).

    Before each real step (a pre-hook) the gradient term is added; after it (a post-hook) the proximal
    step or the polarizer's clamp runs, with the learning rate of each γ's parameter group. Under a
    GradScaler, ``scaler.step(optimizer)`` unscales first (or finds that ``scaler.unscale_`` already
    did) and calls ``optimizer.step()`` only when the gradients are finite, so the term goes on true
    gradients and is never applied for a skipped step; a fused optimizer that unscales inside its own
    step gets the term multiplied by the scale and, when it skips, no proximal step. A closure passed
    to ``step`` (Lightning, LBFGS) is wrapped so that the term follows its backward.

    Gradient clipping runs before ``optimizer.step()``, hence before the term: clipping bounds the data
    gradient, and the term (at most λ per factor for L1) is never scaled down by it, so λ means the
    same with or without clipping. Gradient accumulation gets the term once per real step.
    """

    def __init__(self, regularizer: SparsityRegularizer, optimizer: torch.optim.Optimizer, *,
                 schedule: str = "constant", epochs: int | None = None, warmup: float = 0.1) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"sparsity attaches to the torch.optim.Optimizer that trains the model, got "
                             f"{optimizer!r:.60} (e.g. sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1)))")
        if optimizer in _ATTACHED:
            raise ValueError("this optimizer already has a sparsity term attached; .remove() that one first")
        if schedule != "constant" and epochs is None:
            raise ValueError(f"the λ schedule {schedule!r} needs the number of epochs (epochs=...)")
        lambda_at(regularizer.lam, 0, epochs or 1, schedule, warmup)  # validates the schedule
        self.regularizer = regularizer
        self._optimizer = weakref.ref(optimizer)  # weakly: _ATTACHED's entry must not keep the optimizer alive
        self.base_lam, self.schedule, self.epochs, self.warmup = regularizer.lam, schedule, epochs, warmup
        self.groups = _param_groups_of(regularizer, optimizer)
        self.hooks = [optimizer.register_step_pre_hook(self._before_step),
                      optimizer.register_step_post_hook(self._after_step)]
        _ATTACHED[optimizer] = self

    @property
    def lam(self) -> float:
        """λ in use now (set it directly, or through :meth:`set_epoch` and the schedule)."""
        return self.regularizer.lam

    @lam.setter
    def lam(self, value: float) -> None:
        check_lambda(value)
        self.regularizer.lam = float(value)

    def set_epoch(self, epoch: int) -> float:
        """λ for ``epoch`` (0-based) from the schedule (:func:`lambda_at`); returns it."""
        self.lam = lambda_at(self.base_lam, epoch, self.epochs or 1, self.schedule, self.warmup)
        return self.lam

    def stats(self) -> dict[str, float]:
        """Is sparsity happening? |γ| quantiles, fractions near zero and the largest safe prune percent
        over the regularized BNs (:func:`netslim.stats.scale_stats`), with λ and the penalty's value."""
        scales = {name: bn.weight.detach().abs().float().cpu() for name, bn in self.regularizer.bns.items()}
        return {**scale_stats(scales), "lambda": self.lam, "penalty": self.regularizer.penalty().item()}

    def remove(self) -> None:
        """Detach from the optimizer: from the next step on, plain training (idempotent)."""
        for hook in self.hooks:
            hook.remove()
        self.hooks = []
        optimizer = self._optimizer()
        if optimizer is not None and _ATTACHED.get(optimizer) is self:
            del _ATTACHED[optimizer]

    def __enter__(self) -> Sparsity:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def _add_term(self, optimizer: torch.optim.Optimizer) -> None:
        # a fused optimizer under a GradScaler still holds scaled gradients here (it unscales in its step)
        self.regularizer.step(scale=getattr(optimizer, "grad_scale", None))

    def _before_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> tuple | None:
        closure = kwargs.get("closure", args[1] if len(args) > 1 else None)
        if closure is None:
            self._add_term(optimizer)
            return None

        def closure_then_term() -> object:  # the closure runs backward inside step(): the term comes after it
            loss = closure()
            self._add_term(optimizer)
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": closure_then_term}
        return (args[0], closure_then_term, *args[2:]), kwargs

    def _after_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        lrs = [optimizer.param_groups[i]["lr"] for i in self.groups]
        self.regularizer.after_step(lrs, skipped=getattr(optimizer, "found_inf", None))


def _param_groups_of(regularizer: SparsityRegularizer, optimizer: torch.optim.Optimizer) -> list[int]:
    """The index of the parameter group of each regularized γ; an error naming the BNs the optimizer leaves out."""
    group_of = {id(p): i for i, group in enumerate(optimizer.param_groups) for p in group["params"]}
    missing = [name for name, bn in regularizer.bns.items() if id(bn.weight) not in group_of]
    if missing:
        raise ValueError(f"the optimizer does not update the BN scales of {', '.join(missing[:3])}"
                         f"{' and others' if len(missing) > 3 else ''}; give it those parameters or exclude "
                         "those BNs (exclude=[...])")
    return [group_of[id(g)] for g in regularizer.gammas]


def attached(optimizer: torch.optim.Optimizer) -> Sparsity | None:
    """The sparsity term attached to ``optimizer`` by :func:`sparsify`, if any."""
    return _ATTACHED.get(optimizer)


def sparsify(model: nn.Module, optimizer: torch.optim.Optimizer, lam: float = 1e-4, kind: str = "l1", *,
             schedule: str = "constant", epochs: int | None = None, warmup: float = 0.1,
             include: Sequence[str] = ("*",), exclude: Sequence[str] = (), proximal: bool | None = None,
             beta: float = 1e-2, t: float = 1.2, upper: float = 1.0) -> Sparsity:
    """Train ``model`` sparse (paper Eq. 1) in any loop that calls ``optimizer.step()``/``scaler.step(optimizer)``.

        sparsity = netslim.sparsify(model, optimizer, lam=1e-4)   # then train as usual
        sparsity.set_epoch(epoch); log(sparsity.stats())           # λ schedule; is sparsity happening?
        sparsity.remove()                                          # plain training again

    Covers every affine BN (any ``_BatchNorm`` subclass, timm's ``BatchNormAct2d`` included) whose
    module path matches ``include`` and not ``exclude`` (fnmatch patterns); a DDP or ``torch.compile``
    wrapper is looked through. ``kind``, ``beta``, ``t``, ``upper``: see :class:`SparsityRegularizer`.
    ``proximal``: None chooses the paper's subgradient for SGD and, for L1 with any other optimizer
    (Adam-type ones rescale a subgradient per parameter), the proximal step after ``optimizer.step()``.
    ``schedule``/``epochs``/``warmup``: λ per epoch through :meth:`Sparsity.set_epoch` (:func:`lambda_at`).
    The order of operations (clipping, AMP, accumulation, closures) is :class:`Sparsity`'s.
    """
    model = _unwrapped(model)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"sparsify(model, optimizer): the optimizer must be a torch.optim.Optimizer that trains the "
                         f"model, got {optimizer!r:.60} (e.g. torch.optim.SGD(model.parameters(), lr=0.1))")
    if proximal is None:
        proximal = kind == "l1" and not isinstance(optimizer, torch.optim.SGD)
    regularizer = SparsityRegularizer(model, lam, kind, beta=beta, t=t, upper=upper, include=include,
                                      exclude=exclude, proximal=proximal)
    return Sparsity(regularizer, optimizer, schedule=schedule, epochs=epochs, warmup=warmup)


def _unwrapped(model: nn.Module) -> nn.Module:
    """The module inside DDP/DataParallel and ``torch.compile`` wrappers (so BN paths read as the model's own)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel | nn.DataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


@torch.no_grad()
def init_bn_scales(model: nn.Module, value: float = 0.5) -> None:
    """Set every BN scale to ``value`` (the paper initialises γ to 0.5 for sparsity training, Sec. 4.3)."""
    for bn in prunable_bns(model).values():
        bn.weight.fill_(value)
