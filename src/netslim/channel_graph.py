"""What the channel analysis finds, as data: the layers, the channel ids they read and write, and which ids
are one channel (a union-find); the queries planning and surgery ask of it.

:mod:`netslim.graph` fills a :class:`ChannelGraph` by running the model (its module docstring gives the whole
algorithm); :mod:`netslim.compaction` reads one to build the compact model, for surgery and for the analysis's own
probe of narrower widths (:mod:`netslim.width_probe`), so this data sits below both.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .channel_ops import Ann


class GraphError(ValueError):
    """The model cannot be analysed (data-dependent control flow, a failing forward, nothing to prune)."""


@dataclass
class LayerUse:
    """One module's role in the graph: which channel ids it reads and writes."""

    path: str
    kind: str  # "conv", "conv_t", "linear", "depthwise", "grouped", "bn" (owning), "select_bn"
    in_ids: Ann
    out_ids: Ann
    source: tuple[int, ...] = ()  # select_bn: the input position each output channel reads
    axis: int = 1  # the input's channel dimension (a Linear over tokens: the last one)


@dataclass
class ChannelGraph:
    """The result of :func:`netslim.graph.trace_channels`: layers, channel ids and their unification."""

    layers: dict[str, LayerUse] = field(default_factory=dict)
    parent: list[int] = field(default_factory=list)
    fixed: set[int] = field(default_factory=set)
    scored: set[int] = field(default_factory=set)  # ids zeroed with their BN scales (see the module docstring)
    gated: set[int] = field(default_factory=set)  # scored ids constant only if β is zeroed (an unscored factor, a pad)
    reads: set[int] = field(default_factory=set)  # ids some layer reads
    notes: list[str] = field(default_factory=list)  # ops that forced channels to stay (fixed)
    input_shape: tuple[int, ...] = ()  # of the example input the analysis ran on
    fixed_modules: tuple[str, ...] = ()  # module-path patterns kept as they are (their code may branch on values)
    unused: tuple[str, ...] = ()  # conv/Linear/BN layers the forward never ran on the example input
    calls: dict[str, int] = field(default_factory=dict)  # layer path -> times it ran
    producers: dict[str, str] = field(default_factory=dict)  # owning BN path -> the layer it follows
    width_reads: set[int] = field(default_factory=set)  # ids of tensors whose shape Python code read
    flat: bool = field(default=False, repr=False, compare=False)  # every id points at its root (see flatten)
    _prunable: frozenset[int] | None = field(default=None, repr=False, compare=False)

    # -- union-find over channel ids --
    def new_ids(self, n: int, fixed: bool = False) -> Ann:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        ids = tuple(range(start, start + n))
        if fixed:
            self.fixed.update(ids)
        return ids

    def root(self, i: int) -> int:
        parent = self.parent
        r = parent[i]
        if parent[r] == r:  # the common case once the analysis has flattened the trees
            return r
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def unify(self, a: Ann, b: Ann) -> None:
        parent, root = self.parent, self.root
        for i, j in zip(a, b, strict=True):
            ri, rj = parent[i], parent[j]
            if parent[ri] != ri:
                ri = root(i)
            if parent[rj] != rj:
                rj = root(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
                self.flat, self._prunable = False, None

    def flatten(self) -> None:
        """Point every id at its root: then :meth:`roots` is one lookup per id (planning and surgery ask
        for millions on a large model)."""
        parent = self.parent
        for i in range(len(parent)):
            r = parent[i]
            if parent[r] != r:
                parent[i] = self.root(i)
        self.flat = True

    def roots(self, ids: Sequence[int]) -> list[int]:
        """The root of each of ``ids``."""
        if not self.flat:
            self.flatten()
        parent = self.parent
        return [parent[i] for i in ids]

    # -- queries used by planning and surgery --
    @property
    def bns(self) -> dict[str, LayerUse]:
        """The BN layers (owning and selection), in graph order."""
        return {p: u for p, u in self.layers.items() if u.kind in ("bn", "select_bn")}

    def prunable_roots(self) -> frozenset[int]:
        """Channels (root ids) that may be removed: a BN's, every id a layer reads scored, none fixed."""
        if self._prunable is None or not self.flat:
            blocked = set(self.roots(self.fixed | (self.reads - self.scored)))
            self._prunable = frozenset(r for u in self.bns.values() for r in self.roots(u.out_ids)) - blocked
        return self._prunable

    def close_selection(self, pruned: set[int]) -> set[int]:
        """Keep a channel for every selection BN that would otherwise read nothing at all.

        A kept selection-BN channel whose input channel is removed does not keep that input alive: in
        the masked model the removed channel is a constant, so the BN's output there is a constant too,
        and the compact BN produces it with γ = 0 and β = that constant (surgery measures it). Only a
        selection BN left with kept outputs and no kept input at all needs one input channel back.
        """
        pruned = set(pruned)
        for use in self.bns.values():
            if use.kind != "select_bn":
                continue
            inputs = self.roots(use.in_ids)
            kept_out = [k for k, r in enumerate(self.roots(use.out_ids)) if r not in pruned]
            if kept_out and all(r in pruned for r in inputs):
                pruned.discard(inputs[use.source[kept_out[0]]])
        return pruned
