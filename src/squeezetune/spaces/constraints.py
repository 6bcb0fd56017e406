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


@dataclass(frozen=True)
class Constraints:
    """Limits a trial must meet to count.

    ``max_bytes``: container file size; ``max_drop``: accuracy loss against the dense model in
    percentage points (``0.2`` = 0.2 points, i.e. 0.002 as a fraction); ``max_macs``:
    multiply-accumulates of one forward pass (needs a report with ``macs``).
    """

    max_bytes: int | None = None
    max_drop: float | None = None
    max_macs: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_macs"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise SqueezeError(f"constraints.{name}={v!r} must be a positive integer")
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
        return {k: v for k, v in asdict(self).items() if v is not None}

    def __bool__(self) -> bool:
        return bool(self.to_dict())

    def violations(self, *, accuracy: float, bytes: int, dense_accuracy: float, macs: int | None = None) -> list[float]:
        """One value per limit that is set, ``<= 0`` when met (bytes and MACs relative to the limit)."""
        return list(self.named_violations(accuracy=accuracy, bytes=bytes, dense_accuracy=dense_accuracy, macs=macs).values())

    def named_violations(self, *, accuracy: float, bytes: int, dense_accuracy: float, macs: int | None = None) -> dict[str, float]:
        """:meth:`violations` by limit name (``max_bytes``, ``max_drop``, ``max_macs``): what
        ``optuna.trial.Trial.set_constraint`` takes."""
        out = {}
        if self.max_bytes is not None:
            out["max_bytes"] = round(bytes / self.max_bytes - 1.0, 12)
        if self.max_drop is not None:
            acc = accuracy if math.isfinite(accuracy) else 0.0
            out["max_drop"] = round(100.0 * (dense_accuracy - acc) - self.max_drop, 12)
        if self.max_macs is not None:
            out["max_macs"] = 0.0 if macs is None else round(macs / self.max_macs - 1.0, 12)
        return out

    def feasible(self, **outcome: Any) -> bool:
        return all(v <= 0 for v in self.violations(**outcome))
