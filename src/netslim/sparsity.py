"""The paper's Eq. 1: a sparsity-inducing penalty on BN scaling factors, added to their gradients.

:class:`SparsityRegularizer` computes the term: ``reg.step()`` adds λ·∂g(γ)/∂γ to every prunable γ's
gradient with fused ``torch._foreach`` ops (a handful of kernel launches for the whole network, not a
Python loop of small ops per layer like the official port's ``updateBN``); ``reg.after_step(lr)`` is
the proximal step for adaptive optimizers. :func:`sparsify` attaches a regularizer to an optimizer
through its step hooks, so that any loop calling ``optimizer.step()`` or ``scaler.step(optimizer)``
trains sparse; netslim's own loop uses it too (one mechanism).
"""

from __future__ import annotations

import math
import warnings
import weakref
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .layers import batch_norms, check_patterns, selected
from .sparsity_target import LR_FLOOR, TargetController, behind_warning, momentum_gain, reach_warning, stall_warning
from .stats import scale_stats

KINDS = ("l1", "smooth_l1", "polarization")


def prunable_bns(model: nn.Module, include: Sequence[str] = ("*",),
                 exclude: Sequence[str] = ()) -> dict[str, _BatchNorm]:
    """BN layers with a learnable scale, selected by module-path patterns (:func:`netslim.layers.selected`:
    a pattern selects the modules it matches and everything inside them; one matching no module is an error)."""
    check_patterns(model, exclude, "exclude")
    check_patterns(model, [p for p in include if p != "*"], "include")
    return {name: m for name, m in batch_norms(model, affine_only=True).items()
            if selected(name, include) and not selected(name, exclude)}


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
        self.weights: list[torch.Tensor] | None = None  # λ's weight per channel (see focus); None: 1 everywhere

    @torch.no_grad()
    def focus(self, chosen: torch.Tensor) -> None:
        """Pull only the channels where ``chosen`` is 1: a flat tensor over every regularized γ, in order (the
        reweighted L1 of Candès, Wakin & Boyd 2008, with weights 1 and 0). The weights are updated in place,
        so a captured CUDA graph reads the new ones."""
        pieces = chosen.to(self.gammas[0].device, self.gammas[0].dtype).split([g.numel() for g in self.gammas])
        pieces = [piece.view_as(g) for piece, g in zip(pieces, self.gammas, strict=True)]
        if self.weights is None:
            self.weights = [torch.empty_like(g) for g in self.gammas]
        torch._foreach_copy_(self.weights, pieces)

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
        present = [k for k, g in enumerate(self.gammas) if g.grad is not None]
        if not present:
            return
        gammas = [self.gammas[k] for k in present]
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
        if self.weights is not None:
            torch._foreach_mul_(slope, [self.weights[k] for k in present])
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
            if self.weights is not None:  # per channel: the threshold times its weight
                torch._foreach_sub_(updated, [w * x for w, x in zip(self.weights, thresholds, strict=True)])
            elif any(isinstance(x, torch.Tensor) for x in thresholds):  # tensor learning rates (capturable)
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


CHECKS = 100  # how many times over a planned schedule the share of collapsed channels is measured

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
                 schedule: str = "constant", epochs: int | None = None, warmup: float = 0.1,
                 target: float | None = None, by: float = 2 / 3, steps: int | None = None,
                 threshold: float = 1e-2, warn: bool = True) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"sparsity attaches to the torch.optim.Optimizer that trains the model, got "
                             f"{optimizer!r:.60} (e.g. sparsify(model, torch.optim.SGD(model.parameters(), lr=0.1)))")
        if optimizer in _ATTACHED:
            raise ValueError("this optimizer already has a sparsity term attached; .remove() that one first")
        if schedule != "constant" and epochs is None:
            raise ValueError(f"the λ schedule {schedule!r} needs the number of epochs (epochs=...)")
        if steps is not None and not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
            raise ValueError(f"steps is the number of optimizer steps planned, an integer >= 1, got {steps!r}")
        if target is not None:
            if steps is None:
                raise ValueError("target= needs the length of the schedule to plan λ over: steps=N (the optimizer "
                                 "steps planned, e.g. epochs * len(loader) / accumulation)")
            if schedule != "constant":
                raise ValueError(f"target= chooses λ itself: it takes no λ schedule ({schedule!r})")
        lambda_at(regularizer.lam, 0, epochs or 1, schedule, warmup)  # validates the schedule
        self.regularizer = regularizer
        self._optimizer = weakref.ref(optimizer)  # weakly: _ATTACHED's entry must not keep the optimizer alive
        self.base_lam, self.schedule, self.epochs, self.warmup = regularizer.lam, schedule, epochs, warmup
        self.steps, self.threshold, self.warn = steps, float(threshold), warn
        self.groups = _param_groups_of(regularizer, optimizer)
        self.controller = None if target is None else TargetController(
            target, by=by, threshold=threshold, lam=regularizer.lam if regularizer.lam > 0 else None, steps=steps)
        self.step_count, self.epoch, self.epoch_started_at, self.steps_per_epoch = 0, 0, 0, None
        self._progress: float | None = None
        self.warned: set[str] = set()
        self.trajectory: list[tuple[float, float, float]] = []  # (progress, λ, share collapsed) at each check
        self.hooks = [optimizer.register_step_pre_hook(self._before_step),
                      optimizer.register_step_post_hook(self._after_step)]
        _ATTACHED[optimizer] = self
        if self.controller is not None:
            self.check()  # λ for the first steps, from the schedule
        elif steps is not None:
            self._warn_unreachable(steps, f"the {steps} optimizer steps planned")

    @property
    def lam(self) -> float:
        """λ in use now (set it directly, or through :meth:`set_epoch` and the schedule)."""
        return self.regularizer.lam

    @lam.setter
    def lam(self, value: float) -> None:
        check_lambda(value)
        self.regularizer.lam = float(value)

    def set_epoch(self, epoch: int) -> float:
        """Start epoch ``epoch`` (0-based): λ from the schedule (:func:`lambda_at`), or the controller's; the
        length of an epoch is learnt from the first, for the checks of a run planned in epochs; returns λ."""
        if epoch >= 1 and self.epoch == 0 and self.steps_per_epoch is None and self.step_count > 0:
            self.steps_per_epoch = self.step_count / epoch
            if self.steps is None and self.controller is None:  # a fixed λ: its reach, now that an epoch is known
                planned = self.epochs * self.steps_per_epoch if self.epochs else self.steps_per_epoch
                where = f"the {self.epochs} epochs planned" if self.epochs else \
                    f"one epoch of {self.steps_per_epoch:.0f} optimizer steps"
                self._warn_unreachable(planned, where)
        self.epoch, self.epoch_started_at = epoch, self.step_count
        if self.controller is None:
            self.lam = lambda_at(self.base_lam, epoch, self.epochs or 1, self.schedule, self.warmup)
            if self.epochs and epoch >= self.epochs / 2 and "stall" not in self.warned:
                self.check()  # half-way: is sparsity emerging?
        return self.lam

    def set_progress(self, fraction: float) -> None:
        """Where training stands, as a fraction of the schedule (a trainer that counts it itself, such as
        Ultralytics with its warm-up accumulation, says so here; otherwise optimizer steps are counted)."""
        self._progress = float(fraction)

    def progress(self) -> float:
        """The fraction of the schedule done: as told (:meth:`set_progress`), else optimizer steps over
        ``steps``, else epochs over ``epochs``; 0 when the length is unknown."""
        if self._progress is not None:
            return self._progress
        if self.steps:
            return self.step_count / self.steps
        if self.epochs:
            within = (self.step_count - self.epoch_started_at) / self.steps_per_epoch if self.steps_per_epoch else 0
            return (self.epoch + min(within, 1.0)) / self.epochs
        return 0.0

    def collapsed(self) -> tuple[float, float]:
        """The share of regularized channels with |γ| < ``threshold``, and the median |γ| (one host sync)."""
        flat = torch.cat([g.detach().flatten().abs().float() for g in self.regularizer.gammas])
        share, median = torch.stack([(flat < self.threshold).float().mean(), flat.median()]).tolist()
        return share, median

    def check(self) -> None:
        """Measure the share of collapsed channels: the controller corrects λ (the same λ on every rank of a
        distributed run), and half-way through, a share that is not emerging is said once."""
        scales = torch.cat([g.detach().flatten().abs().float() for g in self.regularizer.gammas]).cpu()
        share, median = float((scales < self.threshold).float().mean()), float(scales.median())
        progress = self.progress()
        lr, gain = self._learning_rate()
        if self.controller is not None:
            lam = self.controller.update(progress, self.step_count, scales, lr, gain,
                                         subgradient=not self.regularizer.proximal,
                                         sizes=[g.numel() for g in self.regularizer.gammas])
            self.lam = _same_on_every_rank(lam, self.regularizer.gammas[0].device)
            if self.controller.chosen is not None:
                self.regularizer.focus(self.controller.chosen)
        self.trajectory.append((progress, self.lam, share))
        if progress >= 0.5 and "stall" not in self.warned:
            self.warned.add("stall")
            self._warn_stall(share, lr, gain, median)

    def stats(self) -> dict[str, float]:
        """Is sparsity happening? |γ| quantiles, fractions near zero and the largest safe prune percent
        over the regularized BNs (:func:`netslim.stats.scale_stats`), with λ, the penalty's value and,
        for a target, the target and the λ trajectory's range since the last call."""
        scales = {name: bn.weight.detach().abs().float().cpu() for name, bn in self.regularizer.bns.items()}
        stats = {**scale_stats(scales), "lambda": self.lam, "penalty": self.regularizer.penalty().item()}
        if self.controller is not None:
            seen = [lam for _, lam, _ in self.trajectory[self._reported:]] or [self.lam]
            self._reported = len(self.trajectory)
            stats.update({"target": self.controller.target, "lambda_min": min(seen), "lambda_max": max(seen)})
        return stats

    _reported = 0

    def state_dict(self) -> dict:
        """What a resumed run needs to go on with the same λ (plain numbers, weights-only friendly)."""
        weights = self.regularizer.weights
        return {"steps_done": self.step_count, "steps_per_epoch": self.steps_per_epoch, "lam": self.lam,
                "warned": sorted(self.warned),
                "controller": self.controller.state_dict() if self.controller is not None else None,
                "focus": torch.cat([w.detach().flatten().cpu() for w in weights]) if weights is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict):
            return
        if isinstance(state.get("steps_done"), int):
            self.step_count = self.epoch_started_at = state["steps_done"]
        if isinstance(state.get("steps_per_epoch"), int | float):
            self.steps_per_epoch = float(state["steps_per_epoch"])
        self.warned = {w for w in state.get("warned", []) if isinstance(w, str)}
        if self.controller is not None and isinstance(state.get("controller"), dict):
            self.controller.load_state_dict(state["controller"])
            if self.controller.lam is not None:
                self.lam = self.controller.lam
        focus = state.get("focus")
        if torch.is_tensor(focus) and focus.numel() == sum(g.numel() for g in self.regularizer.gammas):
            self.regularizer.focus(focus)  # the channels pulled when the run stopped, not those chosen on attaching
        self.trajectory, self._reported = [], 0  # the check made when attached belongs to no epoch of the run

    def _learning_rate(self) -> tuple[float, float]:
        """The largest learning rate among the γ's parameter groups, and the momentum gain of that group."""
        optimizer = self._optimizer()
        if optimizer is None:
            return 0.0, 1.0
        group = max((optimizer.param_groups[i] for i in set(self.groups)), key=lambda g: float(g["lr"]))
        return float(group["lr"]), momentum_gain(group, self.regularizer.proximal)

    def _warn_unreachable(self, steps: float, where: str) -> None:
        if not self.warn or self.regularizer.kind != "l1" or self.lam <= 0:
            return
        lr, gain = self._learning_rate()
        message = reach_warning(self.lam, lr, gain, steps, self.collapsed()[1], where)
        if message is not None:
            self.warned.add("reach")
            warnings.warn(message, stacklevel=4)

    def _warn_stall(self, share: float, lr: float, gain: float, median: float) -> None:
        if not self.warn or self.lam <= 0:
            return
        if self.controller is not None:
            capped = self.controller.capped
            behind = share < (0.5 if capped else 0.25) * self.controller.target
            message = None if not behind else behind_warning(
                share, self.controller.target, self.controller.cap(max(lr, LR_FLOOR * self.controller.max_lr), gain,
                                                                   self.steps, not self.regularizer.proximal),
                self.threshold, capped)
        else:
            left = (1 - self.progress()) * (self.steps or (self.epochs or 1) * (self.steps_per_epoch or 1))
            message = stall_warning(share, self.lam, lr, gain, median, left, self.threshold, self.regularizer.proximal)
        if message is not None:
            warnings.warn(message, stacklevel=4)

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
        if not (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
            self.count_step()  # a captured step is counted at each replay (steps.GraphedStep), where no hook runs

    def count_step(self) -> None:
        """One optimizer step done: counted towards the schedule, and the share measured when a check is due."""
        self.step_count += 1
        if self.steps and (self.controller is not None or "stall" not in self.warned):
            interval = max(1, round(self.steps / CHECKS))
            if self.step_count % interval == 0 and (self.controller is not None or self.progress() >= 0.5):
                self.check()


def _same_on_every_rank(lam: float, device: torch.device) -> float:
    """λ of rank 0 on every rank of a distributed run (γ are equal on all ranks, λ computed from them
    should be too; this makes it exact whatever the floating point does)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return lam
    if torch.distributed.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    value = torch.tensor([lam], dtype=torch.float64, device=device)
    torch.distributed.broadcast(value, src=0)
    return float(value.item())


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


def sparsify(model: nn.Module, optimizer: torch.optim.Optimizer, lam: float | None = None, kind: str = "l1", *,
             target: float | None = None, by: float = 2 / 3, steps: int | None = None, threshold: float = 1e-2,
             schedule: str = "constant", epochs: int | None = None, warmup: float = 0.1,
             include: Sequence[str] = ("*",), exclude: Sequence[str] = (), proximal: bool | None = None,
             beta: float = 1e-2, t: float = 1.2, upper: float = 1.0, warn: bool = True) -> Sparsity:
    """Train ``model`` sparse (paper Eq. 1) in any loop that calls ``optimizer.step()``/``scaler.step(optimizer)``.

        sparsity = netslim.sparsify(model, optimizer, target=0.5, steps=epochs * len(loader))  # λ chosen
        sparsity = netslim.sparsify(model, optimizer, lam=1e-4)    # or a fixed λ (the paper's way)
        sparsity.set_epoch(epoch); log(sparsity.stats())           # λ schedule; is sparsity happening?
        sparsity.remove()                                          # plain training again

    ``target``: the share of channels to make prunable (|γ| < ``threshold``) by the fraction ``by`` of the
    ``steps`` optimizer steps planned; λ is then the tool's job (:mod:`netslim.sparsity_target`): set from
    how far the term can move a γ in the schedule, corrected from the measured share, held after ``by``
    (``lam``, if given, is where it starts). Without a target, ``lam`` (default 1e-4) is fixed; when the
    optimizer's learning rate and momentum cannot carry it far enough over ``steps`` (or, without them,
    the first epoch), one warning says so at the start with a λ that could; half-way, a share that is
    not emerging is said once either way.
    Covers every affine BN (any ``_BatchNorm`` subclass, timm's ``BatchNormAct2d`` included) whose
    module path matches ``include`` and not ``exclude`` (fnmatch patterns); a DDP or ``torch.compile``
    wrapper is looked through. ``kind``, ``beta``, ``t``, ``upper``: see :class:`SparsityRegularizer`.
    ``proximal``: None chooses the paper's subgradient for SGD with a fixed λ and, for L1 with any other
    optimizer (Adam-type ones rescale a subgradient per parameter) or a target, the proximal step after
    ``optimizer.step()``.
    ``schedule``/``epochs``/``warmup``: λ per epoch through :meth:`Sparsity.set_epoch` (:func:`lambda_at`).
    The order of operations (clipping, AMP, accumulation, closures) is :class:`Sparsity`'s.
    """
    model = _unwrapped(model)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"sparsify(model, optimizer): the optimizer must be a torch.optim.Optimizer that trains the "
                         f"model, got {optimizer!r:.60} (e.g. torch.optim.SGD(model.parameters(), lr=0.1))")
    if target is not None and kind != "l1":
        raise ValueError(f"target= plans the reach of the L1 term; the {kind!r} penalty takes a fixed λ")
    if proximal is None:
        # With a target, λ grows as large as the schedule needs: the subgradient then leaves collapsed scales
        # swinging around zero (by lr·λ a step, changing sign), so the network trains on noise where the
        # channels should be gone; the proximal step sets them to exactly 0 and keeps them there.
        proximal = kind == "l1" and (target is not None or not isinstance(optimizer, torch.optim.SGD))
    start = (0.0 if target is not None else 1e-4) if lam is None else lam
    regularizer = SparsityRegularizer(model, start, kind, beta=beta, t=t, upper=upper, include=include,
                                      exclude=exclude, proximal=proximal)
    return Sparsity(regularizer, optimizer, schedule=schedule, epochs=epochs, warmup=warmup, target=target, by=by,
                    steps=steps, threshold=threshold, warn=warn)


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
