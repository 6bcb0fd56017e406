"""Spreading one global pruning budget over the tensors by their sensitivity.

:func:`weight_sensitivity` prunes each compressible tensor alone, by magnitude, to a ladder of kept
fractions and measures the accuracy each time (no fine-tuning): one curve per tensor.
:func:`allocate` then turns a global budget (the fraction of all compressible weights to keep) into
per-tensor kept fractions: every tensor is pruned as far as its curve allows within one common
accuracy tolerance, the smallest tolerance whose kept weights fit the budget. Tensors that lose
little (LeNet-300's ``fc1``) give up more than sensitive ones (its classifier).

>>> curves = {"a": [(1.0, 0.9), (0.1, 0.9), (0.01, 0.5)], "b": [(1.0, 0.9), (0.1, 0.4), (0.01, 0.1)]}
>>> alloc = allocate(curves, {"a": 900, "b": 100}, budget=0.1)
>>> alloc["a"] < alloc["b"], round(900 * alloc["a"] + 100 * alloc["b"])
(True, 100)
"""

from __future__ import annotations

import copy
import math
from typing import Callable, Mapping, Sequence

from torch import nn

from squeezetune.compression.tensors import compressible
from squeezetune.compression.unstructured.pruning import prune_layer
from squeezetune.errors import SqueezeError

FRACTIONS = (0.5, 0.25, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001)
"""The kept fractions each tensor's sensitivity is measured at."""

Curve = Sequence[tuple[float, float]]
"""``(kept fraction, accuracy)`` points, from 1.0 (dense) downwards."""


def weight_sensitivity(
    model: nn.Module, evaluate: Callable[[nn.Module], float], fractions: Sequence[float] = FRACTIONS, *, progress: Callable[[str], None] | None = None
) -> dict[str, list[tuple[float, float]]]:
    """Per compressible tensor, the accuracy after magnitude-pruning it alone to each kept fraction."""
    base = evaluate(model)
    curves: dict[str, list[tuple[float, float]]] = {}
    for name, t in compressible(model).items():
        curve = [(1.0, base)]
        for f in fractions:
            work = copy.deepcopy(model)
            target = compressible(work)[name]
            prune_layer(target.module, keep=max(1, round(f * t.numel)), attr=target.attr, name=name)
            curve.append((float(f), float(evaluate(work))))
        curves[name] = curve
        if progress is not None:
            progress(f"sensitivity of {name}: " + ", ".join(f"{100 * f:g}% -> {a:.3f}" for f, a in curve[1:]))
    return curves


def _kept_within(curve: Curve, tolerance: float) -> float:
    """The smallest kept fraction whose accuracy (log-linear between measured points) stays within
    ``tolerance`` of the dense accuracy."""
    base = curve[0][1]
    floor = base - tolerance
    (f0, a0), best = curve[0], curve[0][0]
    for f1, a1 in curve[1:]:
        if a1 >= floor:
            best = f1
        else:
            if a0 > a1 and a0 >= floor:  # cross the floor between f0 and f1, on a log scale
                w = (a0 - floor) / (a0 - a1)
                best = math.exp(math.log(f0) + w * (math.log(f1) - math.log(f0)))
            break
        f0, a0 = f1, a1
    return best


def allocate(curves: Mapping[str, Curve], sizes: Mapping[str, int], budget: float) -> dict[str, float]:
    """Per-tensor kept fractions that keep ``budget`` of all the weights of ``sizes``' tensors in total.

    The tolerance is bisected until the weights kept match the budget; a budget below what the
    measured curves reach keeps every tensor at the smallest measured fraction, scaled down to fit.
    """
    if not 0 < budget <= 1:
        raise SqueezeError(f"budget={budget!r}: expected the fraction of all weights to keep, in (0, 1]")
    missing = sorted(set(sizes) - set(curves))
    if missing:
        raise SqueezeError(f"no sensitivity curve for tensor {missing[0]!r}: expected one per tensor of {sorted(sizes)}")
    total = sum(sizes.values())

    def kept(tolerance: float) -> dict[str, float]:
        return {n: _kept_within(curves[n], tolerance) for n in sizes}

    def weights(fracs: Mapping[str, float]) -> float:
        return sum(fracs[n] * sizes[n] for n in sizes)

    low, high = 0.0, 1.0
    if weights(kept(high)) > budget * total:  # even losing everything measured does not reach it
        fracs = kept(high)
        scale = budget * total / weights(fracs)
        return {n: f * scale for n, f in fracs.items()}
    if weights(kept(low)) <= budget * total:
        fracs = kept(low)
        scale = budget * total / weights(fracs)
        return {n: min(1.0, f * scale) for n, f in fracs.items()}
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (low, mid) if weights(kept(mid)) <= budget * total else (mid, high)
    fracs = kept(high)
    scale = budget * total / weights(fracs)  # exact budget: the rest of the rounding spread evenly
    return {n: min(1.0, f * scale) for n, f in fracs.items()}
