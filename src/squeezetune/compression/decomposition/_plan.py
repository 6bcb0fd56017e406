"""Ranks per layer to reach a fraction of the dense model's MACs, or of its predicted latency.

Every layer to plan has a rank limit (above it the factors hold more weights than the layer) and
a cost that grows with the rank: its MACs, linear in the rank, or (``cost: latency``) its
factors' milliseconds, timed alone on this machine at a few ranks and interpolated
(:func:`timed`). ``uniform`` gives each layer the same fraction of its own MACs; ``energy`` keeps
the same fraction of each layer's (BatchNorm-weighted) singular-value energy, so a layer whose
spectrum falls fast gets a low rank and one that needs its rank keeps it. Either way one number (the fraction) is bisected until the whole model meets the target.
Ranks are multiples of ``round_to`` where the limit allows (CPU and GPU kernels work on blocks of
channels), and a layer is replaced only where its factors cost less than it does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from squeezetune.compression.decomposition._base import Technique
from squeezetune.compression.latency_model import GRID, LayerTimes, interpolate

BISECTIONS = 40


@dataclass(frozen=True)
class Candidate:
    """A layer the planner may replace, and what each rank of its factors costs."""

    name: str
    technique: Technique
    limit: int
    macs: int
    """The layer's own MACs."""
    base: int
    per_rank: int
    energy: torch.Tensor
    own_ms: float | None = None
    """With a latency cost: the layer's own milliseconds; ``curve`` then gives its factors' at some ranks."""
    curve: tuple[tuple[int, float], ...] = ()

    def ranks(self, round_to: int) -> list[int]:
        """The ranks the planner may give: multiples of ``round_to`` up to the limit, or every rank below it."""
        step = round_to if self.limit >= round_to else 1
        return list(range(step, self.limit + 1, step))

    def cost(self, rank: int) -> float:
        """MACs of the factors at ``rank`` (0: of the layer itself), or with a latency cost their milliseconds."""
        if self.own_ms is not None:
            return interpolate([r for r, _ in self.curve], [ms for _, ms in self.curve], rank) if rank else self.own_ms
        return self.base + self.per_rank * rank if rank else self.macs


def candidate(name: str, layer: nn.Module, technique: Technique, shape: tuple[int, ...], layer_macs: int, scale: torch.Tensor | None) -> Candidate:
    one = technique.macs(layer, 1, shape)
    per_rank = technique.macs(layer, 2, shape) - one
    return Candidate(name, technique, technique.limit(layer), layer_macs, one - per_rank, per_rank, technique.energy(layer, scale))


def timed(candidates: list[Candidate], layers: dict[str, nn.Module], shapes: dict[str, tuple[int, ...]], times: LayerTimes, round_to: int) -> list[Candidate]:
    """The candidates with a latency cost: each layer and its factors timed at the smallest rank
    allowed and at :data:`~squeezetune.compression.latency_model.GRID` fractions of its limit (made
    monotone: a higher rank is never predicted faster), interpolated over the rank in between."""
    grids, jobs = [], []
    for c in candidates:
        allowed = c.ranks(round_to)
        ranks = sorted({allowed[0], allowed[-1]} | {min(allowed, key=lambda r: (abs(r - f * c.limit), r)) for f in GRID}) if allowed else []
        grids.append(ranks)
        layer, shape = layers[c.name], shapes[c.name]
        jobs += [(layer, shape)] + [(c.technique.build(layer, r), shape) for r in ranks]
    ms = iter(times.ms(jobs))
    out = []
    for c, ranks in zip(candidates, grids):
        own, curve, top = next(ms), [], 0.0
        for r in ranks:
            top = max(top, next(ms))
            curve.append((r, top))
        out.append(dataclasses.replace(c, own_ms=own, curve=tuple(curve)))
    return out


def _pick(c: Candidate, t: float, allocation: str, round_to: int) -> int:
    """The rank of ``c`` at planner position ``t`` in [0, 1] (0: no saving to keep)."""
    ranks = c.ranks(round_to)
    if not ranks:
        return 0
    if allocation == "energy":
        rank = next((r for r in ranks if float(c.energy[min(r, len(c.energy) - 1)]) >= t), ranks[-1])
    else:
        want = t * c.macs / max(c.per_rank, 1)
        rank = min(ranks, key=lambda r: (abs(r - want), r))
    return rank if c.cost(rank) < c.cost(0) else 0


def plan(candidates: list[Candidate], budget: float, allocation: str, round_to: int) -> tuple[dict[str, int], bool]:
    """Ranks (0: leave the layer) so that the candidates' costs fit ``budget``; and whether they do.

    ``budget`` is what the target leaves for the candidates after every other layer's cost.
    """

    def ranks(t: float) -> dict[str, int]:
        return {c.name: _pick(c, t, allocation, round_to) for c in candidates}

    def total(r: dict[str, int]) -> float:
        return sum(c.cost(r[c.name]) for c in candidates)

    if total({c.name: 0 for c in candidates}) <= budget:
        return {c.name: 0 for c in candidates}, True
    lo, hi = 0.0, 1.0
    if total(ranks(lo)) > budget:
        return ranks(lo), False
    for _ in range(BISECTIONS):
        mid = (lo + hi) / 2
        if total(ranks(mid)) <= budget:
            lo = mid
        else:
            hi = mid
    return ranks(lo), True
