"""Ranks per layer to reach a fraction of the dense model's MACs.

Every layer to plan has a rank limit (above it the factors hold more weights than the layer) and
a cost that grows linearly with the rank. ``uniform`` gives each layer the same fraction of its
own MACs; ``energy`` keeps the same fraction of each layer's (BatchNorm-weighted) singular-value
energy, so a layer whose spectrum falls fast gets a low rank and one that needs its rank keeps
it. Either way one number (the fraction) is bisected until the whole model meets the target.
Ranks are multiples of ``round_to`` where the limit allows (CPU and GPU kernels work on blocks of
channels), and a layer is replaced only where its factors cost fewer MACs than it does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from squeezetune.compression.decomposition._base import Technique
from squeezetune.compression.measure import Example, as_example

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

    def ranks(self, round_to: int) -> list[int]:
        """The ranks the planner may give: multiples of ``round_to`` up to the limit, or every rank below it."""
        step = round_to if self.limit >= round_to else 1
        return list(range(step, self.limit + 1, step))

    def cost(self, rank: int) -> int:
        return self.base + self.per_rank * rank if rank else self.macs


def input_shapes(model: nn.Module, names: list[str], example: Example) -> dict[str, tuple[int, ...]]:
    """The batch-1 input shape of each named layer on ``example``."""
    shapes: dict[str, tuple[int, ...]] = {}

    def keep(name: str):
        def hook(module: nn.Module, args: tuple, output) -> None:
            shapes.setdefault(name, tuple(args[0].shape))

        return hook

    hooks = [model.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters(), None)
            model(as_example(example, p.device if p is not None else None))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def candidate(name: str, layer: nn.Module, technique: Technique, shape: tuple[int, ...], layer_macs: int, scale: torch.Tensor | None) -> Candidate:
    one = technique.macs(layer, 1, shape)
    per_rank = technique.macs(layer, 2, shape) - one
    return Candidate(name, technique, technique.limit(layer), layer_macs, one - per_rank, per_rank, technique.energy(layer, scale))


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
    return rank if c.cost(rank) < c.macs else 0


def plan(candidates: list[Candidate], budget: int, allocation: str, round_to: int) -> tuple[dict[str, int], bool]:
    """Ranks (0: leave the layer) so that the candidates' MACs fit ``budget``; and whether they do.

    ``budget`` is what the target leaves for the candidates after every other layer's MACs.
    """

    def ranks(t: float) -> dict[str, int]:
        return {c.name: _pick(c, t, allocation, round_to) for c in candidates}

    def total(r: dict[str, int]) -> int:
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
