"""The outcome of a compression, typed, and the one place each figure gets its name.

:class:`Report` is what :func:`~squeezetune.compression.pipeline.compress` returns and writes as
``<out>.report.json``. Its figures leave it through exactly one door each:

* :meth:`Report.to_dict` / :meth:`Report.from_dict` -- the JSON report;
* :meth:`Report.outcome` -- the headline figures a search reports per trial (Ray Tune, Optuna
  user attributes, the Pareto point), named by :data:`OUTCOME`;
* :meth:`Report.metrics` -- every figure as MLflow metrics (outcome, per stage, per tensor);
* :func:`format_stages`, :func:`format_tensors`, :func:`format_summary` (:func:`format_latency`) -- the CLI tables.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

OUTCOME = (
    "accuracy",
    "dense_accuracy",
    "val_accuracy",
    "dense_val_accuracy",
    "bytes",
    "dense_bytes",
    "ratio",
    "macs",
    "dense_macs",
    "params",
    "dense_params",
    "latency_ms_b1",
    "latency_ms_b64",
    "dense_latency_ms_b1",
    "dense_latency_ms_b64",
    "speedup_b1",
    "speedup_b1_low",
    "speedup_b1_high",
    "speedup_b64",
    "speedup_b64_low",
    "speedup_b64_high",
    "latency_ms_b1_gpu",
    "latency_ms_b64_gpu",
    "dense_latency_ms_b1_gpu",
    "dense_latency_ms_b64_gpu",
    "speedup_b1_gpu",
    "speedup_b64_gpu",
    "latency_threads",
)
"""The headline figures of a compressed model, as a search records them."""


@dataclass
class StageRecord:
    """The model after one stage: decoded-equivalent accuracy and the bytes its container would take."""

    stage: str
    accuracy: float
    bytes: int
    seconds: float


@dataclass
class TensorRecord:
    """What happened to one parameter tensor, and what it costs in the file."""

    name: str
    """Its state-dict key."""
    kind: str
    """The holding module's class (``Linear``, ``Conv1d``, ``MultiheadAttention``, ``LSTM``, ...)."""
    shape: list[int]
    action: str
    """``pruned+shared``, ``pruned``, ``shared`` (coded as indices into a codebook), or ``raw``."""
    why: str = ""
    """For a raw tensor: why it was not pruned or shared."""
    weights: int = 0
    kept: int = 0
    clusters: int = 0
    index_bits: int = 0
    fillers: int = 0
    order: str = ""
    coded_bytes: int | None = None
    """Bytes of its own sections; ``None`` for raw tensors, which share one coded section."""
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Report:
    task: str
    recipe: dict[str, Any]
    dense_accuracy: float
    accuracy: float
    dense_bytes: int
    compressed_bytes: int
    stages: list[StageRecord]
    tensors: list[TensorRecord]
    dense_macs: int
    macs: int
    dense_params: int
    params: int
    latency: dict[str, float] = field(default_factory=dict)
    """``dense_latency_ms_b1``, ``latency_ms_b1`` (median ms per pass), ``speedup_b1`` with its ~95%
    interval ``speedup_b1_low`` .. ``speedup_b1_high``, the same for ``b64`` (CPU), ``..._gpu``
    figures when run on a GPU, and ``latency_threads`` (see
    :func:`~squeezetune.compression.pipeline.compare_latency_report`)."""
    raw_bytes: int = 0
    meta_bytes: int = 0
    device: str = "cpu"
    seconds: float = 0.0
    container: str = ""
    val_accuracy: float | None = None
    """Accuracy on a validation split carved from the training data (what a search selects on)."""
    dense_val_accuracy: float | None = None

    @property
    def ratio(self) -> float:
        return self.dense_bytes / self.compressed_bytes

    @property
    def layers(self) -> list[TensorRecord]:
        """The coded (pruned or shared) tensors."""
        return [t for t in self.tensors if t.action != "raw"]

    # -- the doors ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("stages", "tensors", "latency")}
        out["ratio"] = self.ratio
        out["stages"] = [asdict(s) for s in self.stages]
        out["tensors"] = [asdict(t) for t in self.tensors]
        out.update(self.latency)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Report":
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in data.items() if k in names and k not in ("stages", "tensors", "latency")}
        kw["stages"] = [StageRecord(**s) for s in data.get("stages", [])]
        kw["tensors"] = [TensorRecord(**t) for t in data.get("tensors", [])]
        kw["latency"] = {k: v for k, v in data.items() if is_latency_key(k)}
        return cls(**kw)

    def outcome(self) -> dict[str, float]:
        """The :data:`OUTCOME` figures that are known (finite), as floats."""
        values = {
            "accuracy": self.accuracy,
            "dense_accuracy": self.dense_accuracy,
            "val_accuracy": self.val_accuracy,
            "dense_val_accuracy": self.dense_val_accuracy,
            "bytes": self.compressed_bytes,
            "dense_bytes": self.dense_bytes,
            "ratio": self.ratio,
            "macs": self.macs,
            "dense_macs": self.dense_macs,
            "params": self.params,
            "dense_params": self.dense_params,
            **self.latency,
        }
        return {k: float(values[k]) for k in OUTCOME if isinstance(values.get(k), (int, float)) and math.isfinite(values[k])}

    def metrics(self) -> dict[str, float]:
        """Every figure as MLflow metric names: the outcome, ``stage.<label>.*`` and ``layer.<tensor>.*``."""
        m = self.outcome()
        m["accuracy_drop_points"] = 100.0 * (self.dense_accuracy - self.accuracy)
        m["pipeline_seconds"] = self.seconds
        m.update({k: float(v) for k, v in self.latency.items()})
        for s in self.stages:
            for key in ("accuracy", "bytes", "seconds"):
                m[f"stage.{s.stage}.{key}"] = float(getattr(s, key))
        for t in self.layers:
            m[f"layer.{t.name}.kept"] = float(t.kept)
            if t.coded_bytes is not None:
                m[f"layer.{t.name}.coded_bytes"] = float(t.coded_bytes)
        return {k: v for k, v in m.items() if math.isfinite(v)}


def is_latency_key(key: str) -> bool:
    """Whether a report figure belongs to :attr:`Report.latency`."""
    return key.startswith("speedup_") or "latency_" in key


# -- the CLI tables ------------------------------------------------------------------------------


def format_stages(report: Report) -> str:
    rows = [f"{'stage':<20} {'accuracy':>9} {'bytes':>11} {'ratio':>7} {'seconds':>8}"]
    for s in report.stages:
        rows.append(f"{s.stage:<20} {s.accuracy:>9.4f} {s.bytes:>11,} {report.dense_bytes / s.bytes:>6.1f}x {s.seconds:>8.1f}")
    return "\n".join(rows)


def format_tensors(tensors: list[TensorRecord]) -> str:
    """One row per parameter tensor: what was done to it and what it costs (raw tensors: why)."""
    width = max([len(t.name) for t in tensors] + [6])
    rows = [f"{'tensor':<{width}} {'kind':<18} {'weights':>9} {'kept':>8} {'kept%':>6} {'clusters':>8} {'idx bits':>8} {'bytes':>8}  action / streams (coded/entropy bytes)"]
    for t in tensors:
        if t.action == "raw":
            rows.append(f"{t.name:<{width}} {t.kind:<18} {t.weights:>9,} {'-':>8} {'-':>6} {'-':>8} {'-':>8} {'-':>8}  raw: {t.why}")
            continue
        streams = ", ".join(f"{k}: {v['coding'] + '/' if 'coding' in v else ''}{v['coder']} {v['total_bytes']}/{v['entropy_bits'] / 8:.0f}" for k, v in t.streams.items())
        rows.append(
            f"{t.name:<{width}} {t.kind:<18} {t.weights:>9,} {t.kept:>8,} {100 * t.kept / max(t.weights, 1):>5.1f}% "
            f"{t.clusters or '-':>8} {t.index_bits or '-':>8} {t.coded_bytes or 0:>8,}  {t.action}; {streams}"
        )
    return "\n".join(rows)


def format_summary(report: Report, out: str) -> str:
    lat = report.latency
    line = (
        f"{report.task}: accuracy {report.dense_accuracy:.4f} -> {report.accuracy:.4f}, "
        f"{report.dense_bytes:,} -> {report.compressed_bytes:,} bytes ({report.ratio:.1f}x)\n"
        f"params {report.dense_params:,} -> {report.params:,}, MACs {report.dense_macs:,} -> {report.macs:,}"
    )
    for where, suffix in (("CPU", ""), ("GPU", "_gpu")):
        if f"dense_latency_ms_b1{suffix}" in lat:
            line += "\n" + format_latency(lat, where, suffix)
    return line + f"\nwrote {out}"


def format_latency(lat: dict[str, float], where: str = "CPU", suffix: str = "") -> str:
    """One line of a report's latency figures: per batch size, dense -> compressed milliseconds and
    the speed-up with its ~95% interval; the CPU thread count.

    >>> lat = {"dense_latency_ms_b1": 2.0, "latency_ms_b1": 1.0, "speedup_b1": 2.0, "speedup_b1_low": 1.9, "speedup_b1_high": 2.1, "latency_threads": 2}
    >>> format_latency(lat)
    'CPU latency, 2 threads: b1 2.00 -> 1.00 ms, speed-up 2.00x (95% interval 1.90-2.10)'
    """
    parts = []
    for batch in (1, 64):
        key = f"b{batch}{suffix}"
        if f"latency_ms_{key}" not in lat or f"dense_latency_ms_{key}" not in lat:
            continue
        part = f"b{batch} {lat[f'dense_latency_ms_{key}']:.2f} -> {lat[f'latency_ms_{key}']:.2f} ms"
        if f"speedup_{key}" in lat:
            part += f", speed-up {lat[f'speedup_{key}']:.2f}x"
            if f"speedup_{key}_low" in lat:
                part += f" (95% interval {lat[f'speedup_{key}_low']:.2f}-{lat[f'speedup_{key}_high']:.2f})"
        parts.append(part)
    n = int(lat.get("latency_threads", 0))
    threads = f", {n} thread{'s' if n != 1 else ''}" if where == "CPU" and n else ""
    return f"{where} latency{threads}: " + "; ".join(parts)
