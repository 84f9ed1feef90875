"""A layer's time as a function of its widths, from the samples a latency table measured (netslim.latency).

Two effects, both measured here (AMD EPYC with AVX-512, 2 threads, PyTorch 2.14 eager: oneDNN):

- *smooth*: a fixed cost, reading, writing and multiply-adds, t = a + b·in + c·out + d·in·out, fitted by
  least squares (:func:`fit_surface`), because one sample is noisy on a shared machine;
- *steps*: kernels work on blocks of channels (oneDNN and ONNX Runtime's MLAS on x86: 8 or 16; tensor
  cores: 8), so a width costs what the next multiple of its block costs, often more. A 1x1 conv 64 -> w at
  batch 32, 28x28: 48 outputs 1.1 ms, 41 outputs 1.4 ms, 49 outputs 5.7 ms, 64 outputs 5.3 ms; a 1x1 conv
  2048 -> w at batch 1, 7x7: 2032 outputs 2.9 ms, 2033 or 2047 outputs 3.6-3.7 ms, 2048 outputs 2.8 ms.

The surface is fitted on widths that are multiples of the largest block tried (:data:`QUANTA`), which
is where the tables sample (:func:`grid_widths`); a few probes just past a multiple
(:func:`probe_widths`) say, for each side of the layer, which block it steps with and what a ragged
width costs on top (:class:`Side`). The planner then snaps widths to the blocks the tables found.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import torch

# The channel blocks a layer's time may step with; the tables sample the largest on its grid.
QUANTA = (1, 8, 16)
# Fractions of a layer's full width at which it is timed.
GRID = (0.125, 0.25, 0.5, 0.75, 1.0)
# The noise of one probe (log ratio, measured 3-10% here): a block > 1 is believed only when it explains
# the probes better than smooth widths by more than its free parameter (the ragged widths' cost) would
# by fitting noise.
PROBE_NOISE = 0.05


def grid_step(full: int) -> int:
    """The multiple the grid widths of a layer of ``full`` channels are snapped to: the largest quantum
    that leaves at least two steps."""
    return max((q for q in QUANTA if full >= 2 * q), default=1)


def grid_widths(full: int) -> list[int]:
    """Widths at which a layer of ``full`` channels is timed: the :data:`GRID`'s fractions snapped to
    :func:`grid_step`, and the full width itself."""
    step = grid_step(full)
    widths = {full} | {max(step, step * round(full * f / step)) for f in GRID}
    return sorted(w for w in widths if w <= full)


def probe_widths(full: int) -> list[int]:
    """Widths just past a multiple ``a`` of the largest quantum, near half of ``full``: a + 1, and a + q and
    a + q + 1 for each smaller quantum q > 1 (a + 8: aligned for a block of 8, ragged for 16). None when
    the grid is not snapped to the largest quantum (narrow layers)."""
    top = QUANTA[-1]
    if grid_step(full) != top:
        return []
    a = top * (full // (2 * top))
    return sorted({a + 1} | {a + q for q in QUANTA[1:-1]} | {a + q + 1 for q in QUANTA[1:-1]})


def fit_surface(points: dict[tuple[int, int], float]) -> Callable[[int, int], float] | None:
    """t(in, out) = a + b·in + c·out + d·in·out, fitted by least squares to a layer's samples: a fixed cost,
    reading, writing, and multiply-adds. On a shared machine one sample is noise-ridden: measured here
    (VGG-19, batch 1, 2 threads), a sample moved 15-40% (median) between two builds of the same table, and
    the per-channel costs the knapsack ranks by moved 30%; fitted, they moved 9.5%, the fit's residuals
    being 3% (median) of the samples. None below 6 samples (too few to smooth 4 coefficients)."""
    if len(points) < 6:
        return None
    top_in, top_out = max(i for i, _ in points), max(o for _, o in points)
    design = torch.tensor([[1.0, i / top_in, o / top_out, i * o / (top_in * top_out)] for i, o in points],
                          dtype=torch.float64)
    times = torch.tensor(list(points.values()), dtype=torch.float64).unsqueeze(1)
    # gelsd: least squares by SVD, which copes with a depthwise layer's samples (in = out: rank 3)
    a, b, c, d = torch.linalg.lstsq(design, times, driver="gelsd").solution.squeeze(1).tolist()

    def surface(n_in: int, n_out: int) -> float:
        i, o = n_in / top_in, n_out / top_out
        return max(a + b * i + c * o + d * i * o, 0.0)

    return surface


def interpolate(points: dict[tuple[int, int], float]) -> Callable[[int, int], float]:
    """Bilinear interpolation between samples on a grid (extrapolating past its ends): the surface of a
    layer timed at too few widths to fit one."""
    ins, outs = sorted({i for i, _ in points}), sorted({o for _, o in points})

    def at(i: int, o: int) -> float:
        return points.get((i, o), points.get((i, min(outs, key=lambda v: abs(v - o))), 0.0))

    def surface(n_in: int, n_out: int) -> float:
        (i0, i1, wi), (o0, o1, wo) = _bracket(ins, n_in), _bracket(outs, n_out)
        low = at(i0, o0) * (1 - wo) + at(i0, o1) * wo
        high = at(i1, o0) * (1 - wo) + at(i1, o1) * wo
        return max(low * (1 - wi) + high * wi, 0.0)

    return surface


def _bracket(values: list[int], x: int) -> tuple[int, int, float]:
    """Neighbours of ``x`` among sorted ``values`` and its weight towards the upper one (extrapolates)."""
    if len(values) == 1:
        return values[0], values[0], 0.0
    k = next((k for k in range(1, len(values)) if x <= values[k]), len(values) - 1)
    a, b = values[k - 1], values[k]
    return a, b, (x - a) / (b - a)


@dataclass(frozen=True)
class Side:
    """One side (inputs or outputs) of a layer: a width costs what the next multiple of ``quantum`` costs
    (never more than the full width), times ``ragged`` when it is not such a multiple."""

    full: int
    quantum: int = 1
    ragged: float = 1.0

    def width(self, n: int) -> int:
        return min(self.full, -(-n // self.quantum) * self.quantum)

    def aligned(self, n: int) -> bool:
        return n % self.quantum == 0 or n >= self.full

    def factor(self, n: int) -> float:
        return 1.0 if self.aligned(n) else self.ragged


@dataclass(frozen=True)
class LayerLaw:
    """Seconds of a layer shape at (in, out) widths: the surface at the widths its blocks make, times what
    ragged widths cost. ``joint``: a depthwise layer, whose one width is both its input and its output."""

    surface: Callable[[int, int], float]
    inputs: Side
    outputs: Side
    joint: bool = False

    def __call__(self, n_in: int, n_out: int) -> float:
        seconds = self.surface(self.inputs.width(n_in), self.outputs.width(n_out)) * self.outputs.factor(n_out)
        return seconds if self.joint else seconds * self.inputs.factor(n_in)


def fit_law(points: dict[tuple[int, int], float]) -> LayerLaw:
    """The :class:`LayerLaw` of a layer shape's samples: the surface through those on the grid (fitted, or
    interpolated where they are too few), each side's block from the probes off it (:func:`fit_side`)."""
    top_in, top_out = max(i for i, _ in points), max(o for _, o in points)
    joint = all(i == o for i, o in points)
    def probed(axis: int, full: int) -> set[int]:
        """The probe widths of one side, when it was probed as latency.probe_pairs does: each probe width
        timed once, the other side at one width (else those widths are samples like any other)."""
        widths = set(probe_widths(full))
        seen = [pair[axis] for pair in points if pair[axis] in widths]
        return widths if widths and sorted(seen) == sorted(widths) else set()

    probing = (probed(0, top_in), probed(1, top_out)) if not joint else (set(), probed(1, top_out))
    grid = {(i, o): t for (i, o), t in points.items() if i not in probing[0] and o not in probing[1]} or points
    surface = fit_surface(grid) or interpolate(grid)
    if joint:
        side = fit_side(top_out, {o: t for (_, o), t in points.items() if o in probing[1]}, lambda w: surface(w, w))
        return LayerLaw(surface, side, side, joint=True)
    sides = []
    for axis, full in ((0, top_in), (1, top_out)):
        # the probes of one side, the other side at one grid width (see latency.probe_pairs)
        probes = {pair[axis]: t for pair, t in points.items()
                  if pair[axis] in probing[axis] and pair[1 - axis] not in probing[1 - axis]}
        others = [pair[1 - axis] for pair in points if pair[axis] in probing[axis]]
        other = others[0] if others else 0

        def along(w: int, axis=axis, other=other) -> float:
            return surface(w, other) if axis == 0 else surface(other, w)

        sides.append(fit_side(full, probes, along))
    return LayerLaw(surface, *sides)


def fit_side(full: int, probes: dict[int, float], smooth: Callable[[int], float]) -> Side:
    """The block a side of ``full`` channels steps with: for each quantum q, the probes are predicted by
    ``smooth`` (the surface along this side) at the next multiple of q, the ragged ones times one common
    factor (their mean log ratio); the quantum whose prediction errs least (in log, a free factor
    counting as :data:`PROBE_NOISE` squared twice, as Akaike's criterion counts a parameter) wins."""
    best, best_score = Side(full), math.inf
    for q in QUANTA:
        blocks = Side(full, q)
        logs = [(w, math.log(t / max(smooth(blocks.width(w)), 1e-12)), blocks.aligned(w))
                for w, t in probes.items() if t > 0]
        ragged = [e for _, e, aligned in logs if not aligned]
        shift = statistics.fmean(ragged) if ragged else 0.0
        error = sum((e - (0.0 if aligned else shift)) ** 2 for _, e, aligned in logs)
        score = error + (2 * PROBE_NOISE ** 2 if ragged else 0.0)
        if score < best_score:
            best, best_score = Side(full, q, math.exp(shift)), score
    return best
