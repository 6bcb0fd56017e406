"""One global pruning budget split into per-layer counts (Han et al. 2015, sensitivity analysis).

A :class:`Budget` keeps a fraction of all the weights it covers and decides how much of each
tensor that is:

============  ===========================================================================
sensitivity   one sensitivity curve per tensor: the model's output drift (KL divergence from
              the unpruned model's predictions, on training images) when that tensor alone is
              magnitude-pruned to each fraction of a grid. Every tensor then keeps the least
              it can for one shared tolerance of drift, and the tolerance is bisected until
              the kept weights add up to the budget: tensors that barely matter give up most.
magnitude     one magnitude threshold over all covered weights (global magnitude pruning).
uniform       every tensor keeps the same fraction.
============  ===========================================================================

The stages that prune toward a target (:mod:`.gradual`: ``gradual_prune`` and ``iterative_prune``)
take a ``budget``; the counts come from :func:`allocate`.

>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(100, 50), nn.Linear(50, 10))
>>> allocate(model, Budget(keep_fraction=0.1, allocation="uniform"), ["0", "1"])
{'0': 500, '1': 50}
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from squeezetune.compression.tensors import compressible
from squeezetune.compression.unstructured.pruning import magnitude_mask
from squeezetune.errors import SqueezeError


class Allocation(str, Enum):
    SENSITIVITY = "sensitivity"
    MAGNITUDE = "magnitude"
    UNIFORM = "uniform"


GRID = (1.0, 0.5, 0.3, 0.2, 0.14, 0.1, 0.07, 0.05, 0.035, 0.025, 0.018, 0.012, 0.008, 0.005, 0.003, 0.002, 0.001)
"""The kept fractions each sensitivity curve is measured at."""


@dataclass(frozen=True)
class Budget:
    """Keep ``keep_fraction`` of every weight the budget covers, split by ``allocation``.

    ``min_keep_fraction`` is the least any tensor keeps (so that no layer is cut off);
    ``images`` is how many training images the sensitivity curves are measured on.
    """

    keep_fraction: float
    allocation: Allocation = Allocation.SENSITIVITY
    min_keep_fraction: float = 0.001
    images: int = 1000

    def __post_init__(self) -> None:
        if not 0 < self.keep_fraction <= 1:
            raise SqueezeError(f"budget.keep_fraction={self.keep_fraction!r} must be in (0, 1]")
        if not 0 < self.min_keep_fraction <= self.keep_fraction:
            raise SqueezeError(f"budget.min_keep_fraction={self.min_keep_fraction!r} must be in (0, keep_fraction={self.keep_fraction}]")
        if self.images < 1:
            raise SqueezeError(f"budget.images={self.images!r} must be an integer >= 1")


Drift = Callable[[nn.Module], float]
"""How far a model's predictions moved from the unpruned model's (lower is closer)."""


def prediction_drift(reference: nn.Module, x: torch.Tensor, *, device: torch.device | None = None, batch_size: int = 500) -> Drift:
    """A :data:`Drift`: mean KL divergence from ``reference``'s softmax on inputs ``x``."""
    device = device or torch.device("cpu")

    @torch.no_grad()
    def logits(model: nn.Module) -> torch.Tensor:
        model.eval()
        return torch.cat([model(x[i : i + batch_size].to(device)).float() for i in range(0, len(x), batch_size)])

    target = F.log_softmax(logits(reference), 1)

    def drift(model: nn.Module) -> float:
        return float(F.kl_div(F.log_softmax(logits(model), 1), target, reduction="batchmean", log_target=True))

    return drift


@torch.no_grad()
def sensitivity_curves(model: nn.Module, names: Sequence[str], drift: Drift, grid: Sequence[float] = GRID) -> dict[str, list[tuple[float, float]]]:
    """Each tensor's curve ``[(kept fraction, drift), ...]`` with that tensor alone magnitude-pruned.

    The curves are made monotone (a smaller fraction never drifts less than a larger one), so
    :func:`_fraction_for` can read them by bisection.
    """
    curves: dict[str, list[tuple[float, float]]] = {}
    work = copy.deepcopy(model)
    targets = compressible(work)
    for name in names:
        t = targets[name]
        original = t.tensor.detach().clone()
        points, worst = [], 0.0
        for f in sorted(grid, reverse=True):
            keep = max(1, round(f * original.numel()))
            _set(t, original * magnitude_mask(original, keep=keep, name=name))
            worst = max(worst, drift(work))
            points.append((f, worst))
        _set(t, original)
        curves[name] = points
    return curves


def _set(target, value: torch.Tensor) -> None:
    tensor = target.tensor
    if not isinstance(tensor, nn.Parameter) and hasattr(target.module, "parametrizations"):
        target.module.parametrizations[target.attr].original.copy_(value)
    else:
        tensor.copy_(value)


def _fraction_for(curve: list[tuple[float, float]], tolerance: float, floor: float) -> float:
    """The smallest fraction whose drift is within ``tolerance``, interpolated (log scale) between grid points."""
    best = curve[0][0]
    for (f_hi, d_hi), (f_lo, d_lo) in zip(curve, curve[1:]):
        if d_lo <= tolerance:
            best = f_lo
            continue
        if d_hi <= tolerance and d_lo > d_hi:
            share = (tolerance - d_hi) / (d_lo - d_hi)
            best = math.exp(math.log(f_hi) + share * (math.log(f_lo) - math.log(f_hi)))
        break
    return max(best, floor)


def allocate(model: nn.Module, budget: Budget, names: Sequence[str], drift: Drift | None = None) -> dict[str, int]:
    """Weights to keep per tensor (``names``) so that together they keep ``budget.keep_fraction``.

    ``drift`` is needed for ``allocation: sensitivity`` (see :func:`prediction_drift`).
    """
    targets = compressible(model)
    sizes = {n: targets[n].numel for n in names}
    total = sum(sizes.values())
    want = budget.keep_fraction * total
    floor = budget.min_keep_fraction
    allocation = Allocation(budget.allocation)
    if allocation is Allocation.UNIFORM or not names:
        return {n: max(1, round(budget.keep_fraction * s)) for n, s in sizes.items()}
    if allocation is Allocation.MAGNITUDE:
        pooled = torch.cat([targets[n].tensor.detach().abs().flatten().float().cpu() for n in names])
        threshold = torch.topk(pooled, max(1, round(want)), sorted=True).values[-1]
        counts = {n: int((targets[n].tensor.detach().abs() >= threshold).sum()) for n in names}
        return {n: min(sizes[n], max(c, math.ceil(floor * sizes[n]), 1)) for n, c in counts.items()}
    if drift is None:
        raise SqueezeError("budget.allocation='sensitivity' needs training data to measure the curves: expected a task with a training split")
    curves = sensitivity_curves(model, names, drift)

    def kept(tolerance: float) -> float:
        return sum(_fraction_for(curves[n], tolerance, floor) * sizes[n] for n in names)

    lo, hi = 1e-9, max(d for c in curves.values() for _, d in c) + 1e-9
    if kept(hi) > want:  # even the most pruned grid point of every tensor keeps more than the budget
        tolerance = hi
    else:
        for _ in range(60):
            mid = math.sqrt(lo * hi)
            lo, hi = (lo, mid) if kept(mid) <= want else (mid, hi)
        tolerance = hi
    return {n: min(sizes[n], max(1, round(_fraction_for(curves[n], tolerance, floor) * sizes[n]))) for n in names}
