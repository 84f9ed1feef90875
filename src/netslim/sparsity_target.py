"""λ chosen for the user: how far the L1 term can move a BN scale, and a controller that reaches a target.

The paper (Sec. 3, Eq. 1) leaves λ to the user (1e-4 or 1e-5 for 160 epochs on CIFAR). How much
sparsity a λ gives depends on the schedule far more than on the model: with SGD, every step moves a
γ towards zero by lr·λ, and momentum μ amplifies a steady pull by 1/(1−μ), so over the whole run
the term can move a γ by at most

    reach = λ · Σ_t lr_t · 1/(1−μ)              (subgradient, SGD with momentum)
    reach = λ · Σ_t lr_t                         (proximal step, Adam-type optimizers)

A schedule of 100 steps at lr 0.01 with μ = 0.937 gives reach = 16·λ: with λ = 1e-4 a γ of order 1
cannot move 0.2% of the way to zero, whatever the data say. :func:`reach` is that bound (from the
optimizer's real learning rates and momentum), :func:`lam_to_reach` its inverse, and
:func:`reach_warning` the one line said at the start when a fixed λ cannot work.

:class:`TargetController` makes λ the tool's job: given a target share of channels whose |γ| has
collapsed (below ``threshold``) by a point of the schedule (``by``, default before the last third), it
steers the |γ| at the target quantile, which must reach the threshold. The share itself is a poor
thing to steer on: it does not move until scales have travelled all the way to zero, so a controller
on the share pushes λ up while nothing shows and overshoots once everything arrives; the quantile
moves from the first step.

- The ramp steers the pull per step, λ·lr·gain: the pull that brings the quantile to the threshold
  half-way to ``by`` (the network then trains with the share it will be pruned to), divided by the
  efficiency measured over the last checks (how far the quantile moved per unit of pull: the data
  hold scales up, momentum lags; believed between 0.3 and 1.5). Steering the pull, not λ, follows a
  learning rate that warms up or drops at once; the pull changes by at most x1.5 per momentum lag.
- Once the share is reached (or at ``by``) it is held, on λ itself (a collapsed channel stays at zero
  while λ is over its data gradient, whatever the learning rate): λ rises while the quantile at the
  target is above the threshold, falls while the quantile a little past it is below, gently (a hold
  that reacts faster than momentum lets it see its effect oscillates).
- λ is capped so that one step's pull stays small next to a typical γ (and, for the subgradient, next
  to the threshold it must settle under).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

WINDOW = 0.06  # the efficiency of the pull is measured over this fraction of the schedule (or 2 lags)
LAG = 10  # steps before a change of the subgradient's λ shows in full: the momentum's 1/(1−μ), at least 10
PROXIMAL_LAG = 2  # the proximal step applies λ at once, outside the momentum: it can slow down within steps
EFFICIENCY = (0.3, 1.5)  # the range it is believed in: a quantile held up harder than that (rising, even) is
# the network needing those channels now, and pulling harder only breaks it (seen on YOLOv8n in a 15-epoch run)
MAX_CHANGE = math.log(1.5)  # the ramp's pull changes by at most x1.5 or /1.5 per lag
HOLD_TOLERANCE = 0.02  # once the share is within this of the target (or at ``by``), it is held:
HOLD_GAIN = 0.25  # log λ moves by this times the log of how far the quantile is out of its band ...
HOLD_CHANGE = math.log(1.25)  # ... by at most x1.25 per quarter lag ...
HOLD_DEPTH = 0.1  # ... towards this fraction of the threshold ...
HOLD_CREEP = 0.0  # ... and inside the band it stays (creeping down let collapsed channels regrow, in cycles)
SWEEP = 0.05  # a lag's pull carries at most this share of the channels past the threshold
BUNCHED, SPREAD = 0.05, 0.25  # coefficients of variation of the live |γ|: ranked per layer, then globally
FLOOR = 0.03  # the steps left to ``by`` are counted as at least this fraction of the schedule
LR_FLOOR = 0.1  # λ's cap counts the learning rate as at least this share of the largest seen
ARRIVAL = 0.5  # the ramp aims at this fraction of ``by``: the network then trains with the share held


def momentum_gain(group: Mapping, proximal: bool) -> float:
    """How much the optimizer amplifies a steady pull on a parameter of ``group``: 1/(1−μ) for SGD with
    momentum μ (heavy ball and Nesterov alike), 1 for the proximal step (applied after the optimizer)."""
    if proximal:
        return 1.0
    momentum = group.get("momentum", 0.0)
    momentum = momentum if isinstance(momentum, int | float) and 0 <= momentum < 1 else 0.0
    return 1.0 / (1.0 - momentum)


def reach(lam: float, lr: float, gain: float, steps: float) -> float:
    """The farthest the L1 term moves a γ towards zero in ``steps`` steps at learning rate ``lr``."""
    return lam * lr * gain * steps


def lam_to_reach(distance: float, lr: float, gain: float, steps: float) -> float:
    """The λ whose :func:`reach` over ``steps`` steps is ``distance``."""
    return distance / max(lr * gain * steps, 1e-30)


def reach_warning(lam: float, lr: float, gain: float, steps: float, median: float, where: str) -> str | None:
    """One line when a fixed λ cannot move a typical γ (``median`` |γ|) a quarter of the way to zero over
    ``steps`` steps (``where`` says which: "the 94 optimizer steps planned", "one epoch of 25 steps")."""
    distance = reach(lam, lr, gain, steps)
    if median <= 0 or distance >= 0.25 * median:
        return None
    needed = lam_to_reach(median, lr, gain, steps)
    momentum = f", momentum gain x{gain:.3g}" if gain > 1 else ""
    return (f"sparsity λ={lam:g} can move a BN scale by at most {distance:.2g} over {where} (lr {lr:.3g}{momentum}), "
            f"far below the median |γ| {median:.3g}: no channel can become prunable; it takes λ ≥ {needed:.2g} at "
            f"the very least (the data hold scales up: in practice several times more), or let netslim choose λ "
            f"for a share of channels: target=0.5 (--sparsity auto --target-sparsity 0.5)")


def stall_warning(share: float, lam: float, lr: float, gain: float, median: float, steps_left: float,
                  threshold: float, proximal: bool) -> str | None:
    """Half-way with a fixed λ: one line when under 5% of the scales are below ``threshold``, with what to do."""
    if share >= 0.05:
        return None
    needed = lam_to_reach(median, lr, gain, steps_left)
    if not proximal and lr * lam > 5e-3:
        advice = (f"λ is too strong for SGD, not too weak: each step moves every γ by lr·λ = {lr * lam:.3g}, so the "
                  "scales jump across 0 instead of settling below it; lower λ, or use an Adam-type optimizer (a "
                  "proximal step that sets them to 0)")
    elif lam >= needed:  # the pull reaches, but it carries every scale down together (median |γ| falling)
        advice = (f"every γ is being pulled down together (median |γ| {median:.3g}): when they reach zero they go "
                  "at once, and which channels matter cannot be told from their scales; a target pulls only the "
                  "channels it will make prunable: target=0.5 (--sparsity auto)")
    else:
        advice = (f"λ ≥ {needed:.2g} could still move a typical γ to zero in the steps left, or let netslim choose "
                  "λ: target=0.5 (--sparsity auto)")
    return (f"sparsity is not emerging: half-way only {100 * share:.1f}% of BN scales are below {threshold:g} "
            f"(λ={lam:g}); {advice}")


def behind_warning(share: float, target: float, cap: float, threshold: float, capped: bool) -> str:
    """Half-way with a target far from reached (λ at its cap, or the scales not yet near zero): the schedule
    is too short for it."""
    why = (f"reaching target={target:g} in time needs a pull over the cap (λ={cap:.3g} now: more would move a "
           "typical γ to zero in under 5% of the run)" if capped else
           f"target={target:g} may be reached late, or not, in the steps left")
    return (f"sparsity is not emerging fast enough: half-way {100 * share:.1f}% of BN scales are below "
            f"{threshold:g}, and {why}: plan a longer schedule, a later point (by=) or a smaller target")


def ranking(scales: torch.Tensor, sizes: Sequence[int], threshold: float) -> torch.Tensor:
    """The order in which channels are made prunable: by |γ| across the network (the paper's global ranking)
    while the scales are spread; relative to their layer's median while they are bunched together.

    Bunched scales (all within a few % of each other: γ initialised to one value, or YOLOv8n's after 15
    epochs, whose layers drift apart by a fraction of a percent) carry no information about the channels
    but their layers' drift: ranked globally, every channel of the backbone came first, and zeroing them cut
    the network (mAP 0). Relative to its layer, each layer gives up its own smallest. The weight of the
    layer's median moves from 1 to 0 as the coefficient of variation of the live scales goes from
    BUNCHED to SPREAD.
    """
    live = scales[scales >= threshold]
    spread = float(live.std() / live.mean()) if len(live) > 1 and float(live.mean()) > 0 else 0.0
    weight = min(1.0, max(0.0, (SPREAD - spread) / (SPREAD - BUNCHED)))
    if weight == 0.0:
        return scales.argsort(stable=True)
    medians = []
    for piece in scales.split(list(sizes)):
        alive = piece[piece >= threshold]
        medians.append(torch.full_like(piece, max(float((alive if len(alive) else piece).median()), threshold)))
    return (scales / torch.cat(medians) ** weight).argsort(stable=True)


class TargetController:
    """λ over the schedule so that about ``target`` of the channels have |γ| < ``threshold`` by ``by``.

    ``update(progress, steps_done, scales, lr, gain)`` is called at each check with the fraction of the
    schedule done, the optimizer steps done, the |γ| of every regularized channel, and the learning rate
    and momentum gain of the γ; it returns the new λ. ``lam``: the λ to start from (None: chosen at the
    first check from the schedule). State is plain numbers (:meth:`state_dict`), so a resumed run goes
    on with the same λ.
    """

    def __init__(self, target: float, *, by: float = 2 / 3, threshold: float = 1e-2, lam: float | None = None,
                 steps: float | None = None) -> None:
        if not 0 < target < 1:
            raise ValueError(f"target is the share of channels to make prunable, in (0, 1), got {target!r}")
        if not 0 < by <= 1:
            raise ValueError(f"by is the fraction of the schedule at which the target is reached, in (0, 1], "
                             f"got {by!r}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold is the |γ| below which a channel counts as collapsed, got {threshold!r}")
        self.target, self.by, self.threshold, self.steps = float(target), float(by), float(threshold), steps
        self.lam = lam
        self.scale: float | None = None  # the median |γ| at the first check: what the pull has to move
        self.efficiency = 1.0
        self.max_lr = 0.0  # the largest learning rate seen at a check
        self.held = False  # the target is reached (or ``by`` passed): λ now holds the share
        self.chosen: torch.Tensor | None = None  # 1 for the channels pulled, over the flattened scales
        self.capped = False  # the λ wanted at the last check was over the cap
        self.history: list[list[float]] = []  # [progress, steps done, quantile, λ·lr·gain] at each check

    def planned_share(self, progress: float) -> float:
        """The share planned at ``progress``: reached at ``by`` (a linear ramp to it before), then held."""
        return self.target * min(1.0, max(progress, 0.0) / self.by)

    def update(self, progress: float, steps_done: int, scales: torch.Tensor, lr: float, gain: float,
               subgradient: bool = True, sizes: Sequence[int] | None = None) -> float:
        if not bool(torch.isfinite(scales).all()) or not lr > 0:
            # a diverging run (the trainer's to handle), or a warm-up's first step at lr 0 (no pull to steer):
            # λ stays as it is
            return self.lam if self.lam is not None else 0.0
        steps = self.steps or 1.0
        lag = max(gain, LAG) if subgradient else PROXIMAL_LAG
        self.max_lr = max(self.max_lr, lr)
        per_lam = max(lr * gain, 1e-30)  # the pull per step of λ = 1 now
        since = steps_done - self.history[-1][1] if self.history else lag
        scales = scales.float()
        ordered = scales.sort().values
        share = float((ordered < self.threshold).float().mean())
        # The channels pulled (SparsityRegularizer.focus): the target's share first in :func:`ranking`, in full;
        # the others as much as the data hold the first ones up (1 − the pull's efficiency) times the share
        # still lacking, so that a channel the data need can be overtaken by another. Once the share is reached,
        # the channels kept train free of the term, however bunched the scales are (YOLOv8n: a pull on every
        # channel there left them all at the threshold). The quantile steered: the largest |γ| of the first.
        wanted_count = max(1, round(self.target * len(ordered)))
        collapsed = int((ordered < self.threshold).sum())
        shortfall = max(0.0, 1.0 - collapsed / wanted_count)
        # the data holding the pulled channels up (a low efficiency) widens the pull to the others
        self.chosen = torch.full_like(scales, shortfall * min(1.0, max(0.0, 1.0 - self.efficiency)))
        first = ranking(scales, sizes or [len(scales)], self.threshold)[:wanted_count]
        self.chosen[first] = 1.0
        quantile = float(scales[first].max())
        if self.scale is None:
            self.scale = max(float(ordered[len(ordered) // 2]), self.threshold)
        self.held = self.held or share >= self.target - HOLD_TOLERANCE or progress >= self.by
        if not self.held:
            # the ramp steers the pull (λ·lr·gain): a learning rate that warms up or drops changes λ at once,
            # the measured efficiency changes the pull by at most x1.5 per lag (checks closer than the lag see
            # too little of the last change to make a full one)
            self._measure_efficiency(progress, steps_done, quantile, max(WINDOW * steps, 2 * lag))
            left = max((ARRIVAL * self.by - progress) * steps, FLOOR * steps)
            # aimed at half the threshold, so that the quantile crosses it
            wanted = (quantile - self.threshold / 2) / (left * self.efficiency)
            pull = self.history[-1][3] if self.history else (self.lam * per_lam if self.lam else wanted)
            limit = MAX_CHANGE * min(1.0, since / lag)
            pull = pull * math.exp(max(-limit, min(limit, math.log(max(wanted, 1e-30) / max(pull, 1e-30)))))
            # and no lag's worth of pull carries more than SWEEP of the channels past the threshold at once: a
            # proximal step zeroes every scale within lr·λ of zero, and the channels let go as the share fills
            # must still be above it (YOLOv8n: 5% -> 68% in one epoch without this)
            upper = float(ordered[min(len(ordered) - 1, int((share + SWEEP) * len(ordered)))])
            pull = min(pull, max(upper - self.threshold, 1e-12) / (lag if subgradient else 1))
            lam = pull / per_lam
        else:
            # held: λ itself (a collapsed channel stays while λ is over its data gradient, whatever the lr)
            # keeps the channels pulled below the threshold, reacting within a quarter lag
            lam = self.lam if self.lam is not None else lam_to_reach(self.scale, lr, gain, steps)
            # the channels pulled are driven well below the threshold (a tenth of it: they must be pruned without
            # being missed, and not hover at its edge), and λ then eases to the least that keeps them there
            deep, floor = self.threshold * HOLD_DEPTH, self.threshold * HOLD_DEPTH / 100
            if quantile > deep:  # not deep enough, or regrowing: pull harder
                change = HOLD_GAIN * math.log(quantile / deep)
            elif quantile < floor:  # at zero: the least λ that keeps them there is smaller
                change = -HOLD_GAIN * math.log(floor / max(quantile, 1e-12))
            else:
                change = HOLD_CREEP
            limit = HOLD_CHANGE * min(1.0, 4 * since / lag)
            lam *= math.exp(max(-limit, min(limit, change)))
        # capped at a tenth of the largest learning rate seen, at least: a warm-up from lr 0 asks for an
        # unbounded λ, which the momentum would carry into the first steps at the full learning rate
        cap = self.cap(max(lr, LR_FLOOR * self.max_lr), gain, steps, subgradient)
        self.capped = lam > cap
        self.lam = min(lam, cap)
        self.history.append([progress, float(steps_done), quantile, self.lam * per_lam])
        return self.lam

    def _measure_efficiency(self, progress: float, steps_done: int, quantile: float, window: float) -> None:
        """How far the target quantile moved per unit of pull (λ·lr·gain·steps) over the last ``window`` steps."""
        recent = [h for h in self.history if h[1] >= steps_done - window]
        if len(recent) < 2 and self.history:
            recent = self.history[-1:]
        if not recent:
            return
        points = [*recent, [progress, float(steps_done), quantile, 0.0]]
        pull = sum(a[3] * (b[1] - a[1]) for a, b in zip(points, points[1:], strict=False))
        if pull <= 0:
            return
        observed = (points[0][2] - quantile) / pull
        low, high = EFFICIENCY
        self.efficiency = 0.5 * self.efficiency + 0.5 * min(high, max(low, observed))

    def cap(self, lr: float, gain: float, steps: float, subgradient: bool = True) -> float:
        """The largest λ allowed now: its pull moves a typical γ to zero in no less than 5% of the schedule,
        and, for the subgradient (which leaves γ swinging around zero by about lr·λ), one step moves a γ
        by at most half the threshold."""
        cap = lam_to_reach(self.scale or 1.0, lr, gain, 0.05 * steps)
        return min(cap, 0.5 * self.threshold / max(lr, 1e-30)) if subgradient else cap

    def state_dict(self) -> dict:
        return {"lam": self.lam, "scale": self.scale, "efficiency": self.efficiency, "held": self.held,
                "max_lr": self.max_lr,
                "history": self.history[-64:]}

    def load_state_dict(self, state: Mapping) -> None:
        lam, scale, efficiency = state.get("lam"), state.get("scale"), state.get("efficiency")
        self.lam = float(lam) if _positive(lam) else None
        self.scale = float(scale) if _positive(scale) else None
        self.efficiency = float(efficiency) if _positive(efficiency) else 1.0
        self.held = state.get("held") is True
        self.max_lr = float(state["max_lr"]) if _positive(state.get("max_lr")) else 0.0
        history = state.get("history")
        self.history = [[float(v) for v in h] for h in history if isinstance(h, list | tuple) and len(h) == 4
                        and all(isinstance(v, int | float) for v in h)] if isinstance(history, list) else []


def _positive(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
