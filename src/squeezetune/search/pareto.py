"""The Pareto front of (accuracy up, bytes down), and its hypervolume -- pure computation.

Plotting and MLflow logging take the result of :func:`pareto_front`; nothing here draws or writes.

>>> pts = [Point(0, 0.97, 9000), Point(1, 0.95, 4000), Point(2, 0.94, 5000), Point(3, 0.98, 20000)]
>>> [p.trial for p in pareto_front(pts)]
[1, 0, 3]
>>> round(hypervolume(pareto_front(pts), ref=(0.90, 30000)), 1)
1820.0
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence


@dataclass(frozen=True)
class Point:
    """One finished trial's outcome: the decoded model's accuracy and the container's bytes."""

    trial: int
    accuracy: float
    bytes: int
    run_id: str | None = None
    feasible: bool = True
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return {**d, **extra}


def dominates(a: Point, b: Point) -> bool:
    """``a`` is at least as good as ``b`` in both objectives and better in one."""
    return a.accuracy >= b.accuracy and a.bytes <= b.bytes and (a.accuracy > b.accuracy or a.bytes < b.bytes)


def pareto_front(points: Iterable[Point], *, feasible_only: bool = True) -> list[Point]:
    """The non-dominated points, smallest file first; ties (same accuracy and bytes) keep the earliest trial.

    Points with a non-finite accuracy never enter; with ``feasible_only`` neither do infeasible ones.
    """
    pool = [p for p in points if math.isfinite(p.accuracy) and (p.feasible or not feasible_only)]
    pool.sort(key=lambda p: (p.bytes, -p.accuracy, p.trial))
    front: list[Point] = []
    best = -math.inf
    for p in pool:
        if p.accuracy > best:
            front.append(p)
            best = p.accuracy
    return front


def hypervolume(front: Sequence[Point], ref: tuple[float, float]) -> float:
    """Area dominated by ``front`` and bounded by ``ref = (accuracy, bytes)`` (worse than every point counted).

    Points not better than ``ref`` in both objectives add nothing. Units: accuracy fraction x bytes.
    """
    ref_acc, ref_bytes = ref
    pts = sorted(
        ((p.bytes, p.accuracy) for p in front if p.accuracy > ref_acc and p.bytes < ref_bytes),
        key=lambda t: (t[0], -t[1]),
    )
    return _hv2d(pts, ref_acc, ref_bytes)


def _hv2d(pts: list[tuple[int, float]], ref_acc: float, ref_bytes: float) -> float:
    # pts sorted by bytes ascending: each front point adds the band between its accuracy and the
    # previous (smaller, less accurate) front point's, reaching from its bytes to the reference.
    front: list[tuple[float, float]] = []
    best = ref_acc
    for b, acc in pts:
        if acc > best:
            front.append((b, acc))
            best = acc
    area = 0.0
    for i, (b, acc) in enumerate(front):
        lower = front[i - 1][1] if i else ref_acc
        area += (ref_bytes - b) * (acc - lower)
    return area


def best_ratio(points: Iterable[Point], *, dense_bytes: int, dense_accuracy: float, max_drop: float) -> Point | None:
    """The smallest file among points losing at most ``max_drop`` accuracy points; ``None`` if none qualifies."""
    ok = [p for p in points if math.isfinite(p.accuracy) and 100.0 * (dense_accuracy - p.accuracy) <= max_drop + 1e-9]
    return min(ok, key=lambda p: (p.bytes, -p.accuracy, p.trial)) if ok else None
