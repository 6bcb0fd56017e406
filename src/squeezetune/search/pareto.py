"""The Pareto front of (accuracy up, bytes down, and an optional third figure such as a latency
down), and the hypervolume of accuracy and bytes -- pure computation.

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
from typing import Any, Iterable, Mapping, Sequence

from squeezetune.spaces.constraints import drop_points


@dataclass(frozen=True)
class Point:
    """One finished trial's outcome: the decoded model's accuracy and the container's bytes.

    ``accuracy`` is the accuracy the search selects on (the validation split's); the accuracy on the
    evaluation images, which no selection has seen, is ``extra["eval_accuracy"]`` (see :func:`point`).
    """

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


@dataclass(frozen=True)
class Baseline:
    """The dense model's figures that points are compared with."""

    accuracy: float
    """On the evaluation images (what the front reports)."""
    bytes: int
    val_accuracy: float | None = None
    """On the validation split the search selects on (``max_drop`` is measured there)."""
    also_minimised: tuple[str, ...] = ()
    """The search's objectives beyond accuracy and bytes (a latency figure such as
    ``latency_ms_b1``): its front is taken over them too (``pareto_front(..., minimise=)``), and its
    tables show them."""

    @property
    def selected(self) -> float:
        """The dense accuracy on the split points are selected on."""
        return self.val_accuracy if self.val_accuracy is not None else self.accuracy


def point(trial: int, outcome: Mapping[str, Any], *, run_id: str | None = None, feasible: bool = True) -> Point:
    """The Pareto point of a trial's outcome figures (its Optuna user attributes or MLflow metrics).

    The one place a trial's figures become a point: its accuracy is ``val_accuracy`` when the search
    selected on a validation split (else ``accuracy``), and every other figure goes into ``extra``,
    the evaluation accuracy as ``eval_accuracy``.
    """
    selected = outcome.get("val_accuracy", outcome["accuracy"])
    extra = {k: v for k, v in outcome.items() if k not in ("accuracy", "val_accuracy", "bytes")}
    if "val_accuracy" in outcome:
        extra["eval_accuracy"] = outcome["accuracy"]
    return Point(trial, float(selected), int(outcome["bytes"]), run_id, feasible, extra)


def dominates(a: Point, b: Point, minimise: Sequence[str] = ()) -> bool:
    """``a`` is at least as good as ``b`` in every objective and better in one: accuracy up, bytes
    down, and each figure named in ``minimise`` (a third objective such as ``latency_ms_b1``, read
    from ``extra``; a point without it counts as infinitely slow) down."""
    return _dominates_min(_vector(a, minimise), _vector(b, minimise))


def _vector(p: Point, minimise: Sequence[str]) -> tuple[float, ...]:
    return (-p.accuracy, float(p.bytes), *(_slowest(p.extra.get(k)) for k in minimise))


def _slowest(v: Any) -> float:
    """A minimised figure as a float; missing or not finite (a failed timing): infinitely slow."""
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else math.inf


def pareto_front(points: Iterable[Point], *, feasible_only: bool = True, minimise: Sequence[str] = ()) -> list[Point]:
    """The non-dominated points, smallest file first; ties (same figures in every objective) keep the earliest trial.

    The objectives are accuracy (up) and bytes (down), and each figure named in ``minimise`` (down):
    a search with latency as a third objective passes its name, and a point that is dominated in
    accuracy and bytes but faster than every point that dominates it stays on the front.
    Points with a non-finite accuracy never enter; with ``feasible_only`` neither do infeasible ones.

    >>> slow, fast = Point(0, 0.97, 4000, extra={"latency_ms_b1": 2.0}), Point(1, 0.96, 5000, extra={"latency_ms_b1": 1.0})
    >>> [p.trial for p in pareto_front([slow, fast])], [p.trial for p in pareto_front([slow, fast], minimise=["latency_ms_b1"])]
    ([0], [0, 1])
    """
    pool = [p for p in points if math.isfinite(p.accuracy) and (p.feasible or not feasible_only)]
    if minimise:
        # in this order a point's dominators, and its equals, come before it; and whatever dominates
        # it, a front point dominates or equals too: checking the front built so far is enough
        keyed = sorted(((_vector(p, minimise), p.trial, p) for p in pool), key=lambda t: (t[0], t[1]))
        kept: list[tuple[tuple[float, ...], Point]] = []
        for v, _, p in keyed:
            if not any(w == v or _dominates_min(w, v) for w, _ in kept):
                kept.append((v, p))
        return sorted((p for _, p in kept), key=lambda p: (p.bytes, -p.accuracy, p.trial))
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
    ok = [p for p in points if math.isfinite(p.accuracy) and drop_points(dense_accuracy, p.accuracy) <= max_drop]
    return min(ok, key=lambda p: (p.bytes, -p.accuracy, p.trial)) if ok else None


# -- ranking for successive halving (minimisation vectors) --------------------------------------


def nondominated_ranks(vectors: Sequence[Sequence[float]]) -> list[int]:
    """Each vector's non-domination rank, all objectives minimised: 0 for the front, 1 for the
    front of what is left, and so on (NSGA-II's fast non-dominated sort).

    >>> nondominated_ranks([(1, 5), (2, 2), (3, 3), (5, 1)])
    [0, 0, 1, 0]
    """
    n = len(vectors)
    dominated_by: list[list[int]] = [[] for _ in range(n)]
    count = [0] * n
    for i in range(n):
        for j in range(n):
            if i != j and _dominates_min(vectors[i], vectors[j]):
                dominated_by[i].append(j)
                count[j] += 1
    ranks = [0] * n
    current = [i for i in range(n) if count[i] == 0]
    rank = 0
    while current:
        nxt = []
        for i in current:
            ranks[i] = rank
            for j in dominated_by[i]:
                count[j] -= 1
                if count[j] == 0:
                    nxt.append(j)
        current, rank = nxt, rank + 1
    return ranks


def _dominates_min(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b)) and any(x < y for x, y in zip(a, b))


def crowding_distances(vectors: Sequence[Sequence[float]]) -> list[float]:
    """NSGA-II's crowding distance of each vector within its set: the ends of each objective get
    infinity, the rest the normalised gap between their neighbours, summed over objectives."""
    n = len(vectors)
    if n <= 2:
        return [math.inf] * n
    out = [0.0] * n
    for k in range(len(vectors[0])):
        order = sorted(range(n), key=lambda i: vectors[i][k])
        low, high = vectors[order[0]][k], vectors[order[-1]][k]
        out[order[0]] = out[order[-1]] = math.inf
        if high == low:
            continue
        for a, i, b in zip(order, order[1:], order[2:]):
            out[i] += (vectors[b][k] - vectors[a][k]) / (high - low)
    return out


def priority(vectors: Sequence[Sequence[float]], violations: Sequence[float] | None = None) -> list[int]:
    """Indices of ``vectors`` (minimised) from best to worst, as NSGA-II ranks a population.

    Feasible points (violation <= 0) come first, by non-domination rank, then by crowding distance
    within a rank (spread-out points first: the diversity rule). Infeasible ones follow, ranked the
    same way with their violation as one more objective to minimise: a point that misses its
    constraint by little but is small is kept beside one that misses it less but is large, so
    that early on, when no trial meets a constraint yet, the ranking still weighs every objective.
    No weighted sum of objectives is ever formed.

    >>> priority([(1, 5), (2, 2), (3, 3), (5, 1)], [0, 0, 0, 1])
    [0, 1, 2, 3]
    """
    violations = list(violations) if violations is not None else [0.0] * len(vectors)
    feasible = [i for i in range(len(vectors)) if violations[i] <= 0]
    infeasible = [i for i in range(len(vectors)) if violations[i] > 0]
    return _ranked(feasible, [tuple(vectors[i]) for i in feasible]) + _ranked(infeasible, [(violations[i], *vectors[i]) for i in infeasible])


def _ranked(indices: list[int], vectors: list[tuple[float, ...]]) -> list[int]:
    ranks = nondominated_ranks(vectors)
    order: list[int] = []
    for r in sorted(set(ranks)):
        members = [j for j, rank in enumerate(ranks) if rank == r]
        crowd = crowding_distances([vectors[j] for j in members])
        order += [indices[j] for _, j in sorted(zip(crowd, members), key=lambda t: (-t[0], indices[t[1]]))]
    return order
