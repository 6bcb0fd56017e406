"""One global pruning budget spread over the tensors by their sensitivity (Han et al. 2015).

Three steps, each one function:

* :func:`sensitivity_curves` prunes each tensor alone, by magnitude, to each kept fraction of a
  grid and records a loss (lower is better, 0 for the unpruned model): one monotone curve of
  ``(kept fraction, loss)`` points per tensor, plain lists of floats that travel as JSON.
  The ``gradual_prune`` and ``iterative_prune`` stages (:mod:`.gradual`) measure the drift of the
  model's predictions (:func:`prediction_drift`); the search measures, once on its driver, the
  accuracy lost on its validation split, and spreads its ``prune.budget`` knob per trial.
* :func:`_kept_within` reads a curve: the smallest kept fraction whose loss stays within a
  tolerance, interpolated on a log scale between the measured points.
* :func:`allocate` gives every tensor the least it can keep for one shared tolerance, the
  tolerance bisected until the kept weights fit the budget, and then scales the fractions (never
  below a floor, never above 1) so that they keep exactly the budget: tensors that barely matter
  give up most.

>>> curves = {"a": [(1.0, 0.0), (0.1, 0.0), (0.01, 0.4)], "b": [(1.0, 0.0), (0.1, 0.5), (0.01, 0.8)]}
>>> kept = allocate(curves, {"a": 900, "b": 100}, keep_fraction=0.1)
>>> kept["a"] < kept["b"], round(900 * kept["a"] + 100 * kept["b"])
(True, 100)

A stage's :class:`Budget` keeps a fraction of all the weights it covers and decides how much of
each tensor that is (:func:`budget_counts`):

============  ===========================================================================
sensitivity   by :func:`allocate`, on curves of the model's output drift (KL divergence from
              the unpruned model's predictions, on training images).
magnitude     one magnitude threshold over all covered weights (global magnitude pruning).
uniform       every tensor keeps the same fraction.
============  ===========================================================================

>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(100, 50), nn.Linear(50, 10))
>>> budget_counts(model, Budget(keep_fraction=0.1, allocation="uniform"), ["0", "1"])
{'0': 500, '1': 50}
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from squeezetune.compression.tensors import Target, compressible
from squeezetune.compression.unstructured.pruning import magnitude_mask
from squeezetune.errors import SqueezeError

FRACTIONS = (0.5, 0.3, 0.2, 0.14, 0.1, 0.07, 0.05, 0.035, 0.025, 0.018, 0.012, 0.008, 0.005, 0.003, 0.002, 0.001)
"""The kept fractions each tensor's sensitivity is measured at (below the unpruned 1.0)."""

CALIBRATION_INPUTS = 256
"""How many inputs the sensitivity curves re-estimate BatchNorm statistics on (a few training batches)."""

Loss = Callable[[nn.Module], float]
"""How much worse a model is than the unpruned one (lower is better)."""

Curve = Sequence[Sequence[float]]
"""``(kept fraction, loss)`` points, from 1.0 (unpruned) downwards, the loss never falling."""


# -- measuring ------------------------------------------------------------------------------------


@torch.no_grad()
def sensitivity_curves(
    model: nn.Module,
    loss: Loss,
    names: Sequence[str] | None = None,
    fractions: Sequence[float] = FRACTIONS,
    *,
    calibration: torch.Tensor | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, list[tuple[float, float]]]:
    """Each tensor's curve ``[(1.0, loss(model)), (kept fraction, loss), ...]`` with that tensor
    alone magnitude-pruned (``names``: every compressible tensor when not given).

    With ``calibration`` inputs, every BatchNorm's statistics are re-estimated on (the first
    :data:`CALIBRATION_INPUTS` of) them before each loss, as the first steps of any fine-tune
    re-estimate them: a pruned convolution's outputs shrink, and the dense statistics would make
    a BatchNorm-followed layer look far more sensitive than it is. The curves are made monotone (a
    smaller fraction never loses less than a larger one). The model itself is left as it is; a copy
    is pruned and restored tensor by tensor.
    """
    grid = sorted({float(f) for f in fractions}, reverse=True)
    if not grid or not 0 < grid[-1] <= grid[0] < 1:
        raise SqueezeError(f"fractions={tuple(fractions)!r}: expected kept fractions in (0, 1)")
    work = copy.deepcopy(model)
    targets = compressible(work)
    names = list(targets) if names is None else list(names)
    unknown = sorted(set(names) - set(targets))
    if unknown:
        raise SqueezeError(f"no compressible tensor {unknown[0]!r}: expected one of {sorted(targets)}")

    def measure() -> float:
        if calibration is None:
            return float(loss(work))
        with recalibrated(work, calibration[:CALIBRATION_INPUTS]):
            return float(loss(work))

    base = measure()
    curves: dict[str, list[tuple[float, float]]] = {}
    for i, name in enumerate(names, 1):
        t = targets[name]
        original = t.tensor.detach().clone()
        points, worst = [(1.0, base)], base
        for f in grid:
            keep = max(1, round(f * original.numel()))
            _set(t, original * magnitude_mask(original, keep=keep, name=name))
            worst = max(worst, measure())
            points.append((f, worst))
        _set(t, original)
        curves[name] = points
        if progress is not None:
            progress(f"sensitivity of {name} ({i}/{len(names)}): " + ", ".join(f"{100 * f:g}% -> {d:.4g}" for f, d in points[1:]))
    return curves


def recalibrate(model: nn.Module, x: torch.Tensor, *, batch_size: int = 500) -> nn.Module:
    """Re-estimate ``model``'s BatchNorm statistics on inputs ``x`` in place (a cumulative average
    over batches of ``batch_size``) and leave the model in eval mode. A model without BatchNorm is
    left as it is."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        return model
    model.eval()
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the batches
        m.train()
    device = norms[0].running_mean.device
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size].to(device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.eval()
    return model


@contextmanager
def recalibrated(model: nn.Module, x: torch.Tensor, *, batch_size: int = 500) -> Iterator[nn.Module]:
    """``model`` with its BatchNorm statistics re-estimated on inputs ``x`` (:func:`recalibrate`,
    the rest in eval mode), restored on exit."""
    norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    try:
        yield recalibrate(model, x, batch_size=batch_size)
    finally:
        for m, (mean, var, count) in zip(norms, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)


def _set(target: Target, value: torch.Tensor) -> None:
    tensor = target.tensor
    if not isinstance(tensor, nn.Parameter) and hasattr(target.module, "parametrizations"):
        target.module.parametrizations[target.attr].original.copy_(value)
    else:
        tensor.copy_(value)


def prediction_drift(reference: nn.Module, x: torch.Tensor, *, device: torch.device | None = None, batch_size: int = 500) -> Loss:
    """A :data:`Loss`: mean KL divergence from ``reference``'s softmax on inputs ``x``."""
    device = device or torch.device("cpu")

    @torch.no_grad()
    def logits(model: nn.Module) -> torch.Tensor:
        model.eval()
        return torch.cat([model(x[i : i + batch_size].to(device)).float() for i in range(0, len(x), batch_size)])

    target = F.log_softmax(logits(reference), 1)

    def drift(model: nn.Module) -> float:
        return float(F.kl_div(F.log_softmax(logits(model), 1), target, reduction="batchmean", log_target=True))

    return drift


# -- reading and spreading ------------------------------------------------------------------------


def _kept_within(curve: Curve, tolerance: float) -> float:
    """The smallest kept fraction whose loss stays within ``tolerance`` of the unpruned loss,
    interpolated (log scale) between measured points."""
    limit = curve[0][1] + tolerance
    best = curve[0][0]
    for (f_hi, d_hi), (f_lo, d_lo) in zip(curve, curve[1:]):
        if d_lo <= limit:
            best = f_lo
            continue
        if d_hi <= limit and d_lo > d_hi:
            share = (limit - d_hi) / (d_lo - d_hi)
            best = math.exp(math.log(f_hi) + share * (math.log(f_lo) - math.log(f_hi)))
        break
    return best


def allocate(curves: Mapping[str, Curve], sizes: Mapping[str, int], keep_fraction: float, *, floor: float = 0.0) -> dict[str, float]:
    """Per-tensor kept fractions that keep ``keep_fraction`` of all the weights of ``sizes``' tensors.

    Every tensor keeps at least ``floor`` of its weights, and at least one weight. A budget below
    what the measured curves reach keeps every tensor at its smallest measured fraction, scaled
    down to fit; one above what they need, at the fractions that lose nothing, scaled up.
    """
    if not 0 < keep_fraction <= 1:
        raise SqueezeError(f"keep_fraction={keep_fraction!r}: expected the fraction of all weights to keep, in (0, 1]")
    if not 0 <= floor <= keep_fraction:
        raise SqueezeError(f"floor={floor!r} must be in [0, keep_fraction={keep_fraction}]")
    missing = sorted(set(sizes) - set(curves))
    if missing:
        raise SqueezeError(f"no sensitivity curve for tensor {missing[0]!r}: expected one per tensor of {sorted(sizes)}")
    if not sizes:
        return {}
    want = keep_fraction * sum(sizes.values())
    least = {n: max(floor, 1.0 / s) for n, s in sizes.items()}

    def weights(fracs: Mapping[str, float]) -> float:
        return sum(fracs[n] * sizes[n] for n in sizes)

    def kept(tolerance: float) -> dict[str, float]:
        return {n: max(least[n], _kept_within(curves[n], tolerance)) for n in sizes}

    low, high = 0.0, max(d - curves[n][0][1] for n in sizes for _, d in curves[n])
    if weights(kept(low)) <= want:  # nothing lost within the budget: the spare weights spread
        return _rescaled(kept(low), sizes, least, want)
    if weights(kept(high)) > want:  # every measured point of every tensor keeps more than the budget
        return _rescaled(kept(high), sizes, least, want)
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (low, mid) if weights(kept(mid)) <= want else (mid, high)
    return _rescaled(kept(high), sizes, least, want)  # exact budget: the rest of the bisection spread evenly


def _rescaled(fracs: Mapping[str, float], sizes: Mapping[str, int], least: Mapping[str, float], want: float) -> dict[str, float]:
    """``fracs`` times the one scale (each result held within [``least``, 1]) that keeps ``want`` weights."""

    def at(scale: float) -> dict[str, float]:
        return {n: min(1.0, max(least[n], f * scale)) for n, f in fracs.items()}

    def weights(scale: float) -> float:
        return sum(f * sizes[n] for n, f in at(scale).items())

    low, high = 0.0, 1.0 / min(fracs.values())  # every tensor at its least, every tensor whole
    if weights(low) >= want:
        return at(low)
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if weights(mid) <= want else (low, mid)
    return at(low)


# -- a stage's budget -----------------------------------------------------------------------------


class Allocation(str, Enum):
    SENSITIVITY = "sensitivity"
    MAGNITUDE = "magnitude"
    UNIFORM = "uniform"


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


def budget_counts(
    model: nn.Module,
    budget: Budget,
    names: Sequence[str],
    loss: Loss | None = None,
    *,
    calibration: torch.Tensor | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, int]:
    """Weights to keep per tensor (``names``) so that together they keep ``budget.keep_fraction``.

    ``loss`` is needed for ``allocation: sensitivity`` (see :func:`prediction_drift`), and
    ``calibration`` inputs re-estimate BatchNorm statistics there, and ``progress`` hears of each
    tensor's curve as it is measured (:func:`sensitivity_curves`).
    """
    targets = compressible(model)
    sizes = {n: targets[n].numel for n in names}
    floor = budget.min_keep_fraction
    allocation = Allocation(budget.allocation)
    if allocation is Allocation.UNIFORM or not names:
        return {n: max(1, round(budget.keep_fraction * s)) for n, s in sizes.items()}
    if allocation is Allocation.MAGNITUDE:
        pooled = torch.cat([targets[n].tensor.detach().abs().flatten().float().cpu() for n in names])
        threshold = torch.topk(pooled, max(1, round(budget.keep_fraction * pooled.numel())), sorted=True).values[-1]
        counts = {n: int((targets[n].tensor.detach().abs() >= threshold).sum()) for n in names}
        return {n: min(sizes[n], max(c, math.ceil(floor * sizes[n]), 1)) for n, c in counts.items()}
    if loss is None:
        raise SqueezeError("budget.allocation='sensitivity' needs training data to measure the curves: expected a task with a training split")
    fractions = allocate(sensitivity_curves(model, loss, names, calibration=calibration, progress=progress), sizes, budget.keep_fraction, floor=floor)
    return {n: min(sizes[n], max(1, round(f * sizes[n]))) for n, f in fractions.items()}
