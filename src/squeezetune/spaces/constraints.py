"""Constraints on a trial's outcome, kept apart from the two objectives.

A search maximises accuracy and minimises container bytes; limits such as "at most 20 kB" or
"lose at most half a point" are constraints, not extra objectives. :meth:`Constraints.violations`
gives one number per limit, ``<= 0`` when it is met -- the form Optuna's constrained samplers
expect (NSGA-II, TPE and GP rank feasible trials first; the search records each value on its trial
with ``Trial.set_constraint``) -- and :meth:`Constraints.feasible` filters the Pareto front.

>>> c = Constraints(max_bytes=20_000, max_drop=0.5)
>>> c.violations(accuracy=0.97, bytes=18_000, dense_accuracy=0.98)
[-0.1, 0.5]
>>> c.feasible(accuracy=0.97, bytes=18_000, dense_accuracy=0.98)
False
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from squeezetune.errors import SqueezeError

LATENCIES = ("latency_ms_b1", "latency_ms_b64", "latency_ms_b1_gpu", "latency_ms_b64_gpu")
"""The latency figures a report can carry (CPU at batch 1 and 64; the same on a GPU)."""


def drop_points(dense_accuracy: float, accuracy: float) -> float:
    """Accuracy points lost against the dense model, rounded to 1e-4 points.

    Accuracies arrive as float32 fractions (0.982 is 0.9819999933...), so an exact difference of
    four of 2,000 images reads 0.2000034 points and would miss a 0.2 limit; a real evaluation set's
    resolution (one image) is far above the rounding.

    >>> drop_points(0.984000027179718, 0.9819999933242798)
    0.2
    """
    return round(100.0 * (dense_accuracy - accuracy), 4)


@dataclass(frozen=True)
class Constraints:
    """Limits a trial must meet to count.

    ``max_bytes``: container file size; ``max_drop``: accuracy loss against the dense model in
    percentage points (``0.2`` = 0.2 points, i.e. 0.002 as a fraction); ``max_macs``:
    multiply-accumulates of one forward pass (needs a report with ``macs``); ``max_latency_ms``:
    milliseconds per forward pass of the decoded model, as ``latency`` names it (``latency_ms_b1``,
    batch 1 on the CPU, by default; ``latency_ms_b64``, or the ``_gpu`` figures on a GPU).
    """

    max_bytes: int | None = None
    max_drop: float | None = None
    max_macs: int | None = None
    max_latency_ms: float | None = None
    latency: str = "latency_ms_b1"

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_macs"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise SqueezeError(f"constraints.{name}={v!r} must be a positive integer")
        lat = self.max_latency_ms
        if lat is not None and (isinstance(lat, bool) or not isinstance(lat, (int, float)) or not math.isfinite(lat) or lat <= 0):
            raise SqueezeError(f"constraints.max_latency_ms={lat!r} must be a number of milliseconds > 0")
        if self.latency not in LATENCIES:
            raise SqueezeError(f"constraints.latency={self.latency!r} is not known: expected one of {list(LATENCIES)}")
        d = self.max_drop
        if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or not 0 <= d <= 100):
            raise SqueezeError(f"constraints.max_drop={d!r} must be a number of accuracy points in [0, 100]")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Constraints":
        data = dict(data or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SqueezeError(f"unknown constraint {unknown[0]!r}: expected one of {known}")
        return cls(**{k: v for k, v in data.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if v is not None}
        if self.max_latency_ms is None or self.latency == "latency_ms_b1":
            out.pop("latency")
        return out

    def __bool__(self) -> bool:
        return bool(self.to_dict())

    def violations(self, *, accuracy: float, bytes: int, dense_accuracy: float, macs: int | None = None, latency: float | None = None) -> list[float]:
        """One value per limit that is set, ``<= 0`` when met (bytes, MACs and latency relative to the limit)."""
        return list(self.named_violations(accuracy=accuracy, bytes=bytes, dense_accuracy=dense_accuracy, macs=macs, latency=latency).values())

    def named_violations(self, *, accuracy: float, bytes: int, dense_accuracy: float, macs: int | None = None, latency: float | None = None) -> dict[str, float]:
        """:meth:`violations` by limit name (``max_bytes``, ``max_drop``, ``max_macs``,
        ``max_latency_ms``): what ``optuna.trial.Trial.set_constraint`` takes."""
        out = {}
        if self.max_bytes is not None:
            out["max_bytes"] = round(bytes / self.max_bytes - 1.0, 12)
        if self.max_drop is not None:
            acc = accuracy if math.isfinite(accuracy) else 0.0
            out["max_drop"] = round(drop_points(dense_accuracy, acc) - self.max_drop, 12)
        if self.max_macs is not None:
            out["max_macs"] = 0.0 if macs is None else round(macs / self.max_macs - 1.0, 12)
        if self.max_latency_ms is not None:
            out["max_latency_ms"] = 0.0 if latency is None else round(latency / self.max_latency_ms - 1.0, 12)
        return out

    def of(self, outcome: Mapping[str, Any], *, dense_accuracy: float, accuracy_key: str = "accuracy") -> dict[str, float]:
        """:meth:`named_violations` of an outcome mapping (a report's :meth:`outcome`, a trial's result)."""
        return self.named_violations(accuracy=float(outcome[accuracy_key]), bytes=int(outcome["bytes"]), dense_accuracy=dense_accuracy, macs=outcome.get("macs"), latency=outcome.get(self.latency))

    def feasible(self, **outcome: Any) -> bool:
        return all(v <= 0 for v in self.violations(**outcome))
