"""Latency: how long forward passes take, and how much faster one model runs than another, with an interval.

A single timing on a shared machine says little: other processes come and go, clocks change, the
first passes allocate memory and pick kernels. Every timing here therefore

* runs eval-mode forward passes with autograd off (:func:`torch.inference_mode`);
* uses a fixed number of CPU threads, set for the timing and restored after
  (:attr:`LatencyConfig.threads`; the count is reported);
* warms each model up until its passes stop getting faster, then times blocks of passes of at
  least 2 ms, so the timer and the Python loop cost well under 1% (on CUDA it synchronizes after
  every pass: a pass is timed to its end);
* times the models in rounds, one block of each in turn, the order reversed every other round,
  so load that drifts hits every model alike;
* stops once the interval is narrow enough (:attr:`LatencyConfig.precision`), or the time budget
  is spent (:attr:`LatencyConfig.budget_s`), after at least :attr:`LatencyConfig.min_rounds`.

:func:`speedup` is the figure to quote: the median of the per-round ratios dense / compressed and
a ~95% interval for it from order statistics (:func:`median_interval`: distribution-free, no
assumption about the noise). :func:`compare_latency` gives several models' median milliseconds,
:func:`latency_ms` one model's. With image inputs (4-D batches) each model runs in the faster of
its memory layouts (:attr:`LatencyConfig.layouts`), picked after the warm-up.

>>> from torch import nn
>>> s = speedup(nn.Linear(256, 256), nn.Linear(256, 256), batch=8, example=(1, 256), config=LatencyConfig(budget_s=0.2))
>>> s.low <= s.ratio <= s.high and s.rounds >= 6
True
"""

from __future__ import annotations

import contextlib
import copy
import gc
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from squeezetune.compression.finetune import pick_device
from squeezetune.compression.measure import DEFAULT_INPUT_SHAPE, Example, batch_of
from squeezetune.errors import SqueezeError

CONFIDENCE = 0.95
"""The coverage of every interval reported (at least; order statistics step in whole ranks)."""

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
"""Memory layouts a model can be timed in: ``contiguous`` (NCHW) and ``channels_last`` (NHWC)."""

_BLOCK_S = 0.002  # a timed block lasts at least this long
_WARMUP_SHARE = 0.3  # of the budget, at most, for warming up
_WARMUP_MAX = 50  # passes of one model, at most, for warming up
_SETTLED = 0.05  # warm once the last two passes are not 5% faster than the best before them


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured (see the module doc)."""

    budget_s: float | None = 6.0
    """Wall-time cap of one measurement in seconds, warm-up included; ``min_rounds`` are timed
    even past it. ``None``: no cap, exactly ``max_rounds`` rounds. The compress report spreads it
    over its batch sizes and devices."""
    threads: int | None = None
    """CPU threads while timing (``torch.set_num_threads``), restored after; ``None``: the current count."""
    min_rounds: int = 6
    """Rounds at least: 6 is the fewest whose extremes make a 95% interval for a median."""
    max_rounds: int = 200
    precision: float = 0.02
    """Stop early once the interval is narrower than this fraction of its estimate (0: never)."""
    warmup: int = 3
    """Untimed passes of each model at least; more until its passes stop getting faster."""
    layouts: tuple[str, ...] = ("contiguous", "channels_last")

    def __post_init__(self) -> None:
        object.__setattr__(self, "layouts", tuple(self.layouts))
        if self.budget_s is not None and not self.budget_s >= 0:
            raise SqueezeError(f"latency budget_s={self.budget_s!r} must be a number of seconds >= 0 (or None: no cap)")
        if self.threads is not None and self.threads < 1:
            raise SqueezeError(f"latency threads={self.threads!r} must be an integer >= 1 (or None: the current count)")
        if not 1 <= self.min_rounds <= self.max_rounds:
            raise SqueezeError(f"latency min_rounds={self.min_rounds!r} and max_rounds={self.max_rounds!r}: expected 1 <= min_rounds <= max_rounds")
        if not self.precision >= 0 or self.warmup < 0:
            raise SqueezeError(f"latency precision={self.precision!r} and warmup={self.warmup!r} must be >= 0")
        unknown = [layout for layout in self.layouts if layout not in LAYOUTS]
        if unknown or not self.layouts:
            raise SqueezeError(f"layouts={list(self.layouts)!r}: expected some of {list(LAYOUTS)}")


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(median, low, high)``: the median of ``values`` and a distribution-free interval for the
    true median, covering it with probability at least ``confidence`` (order statistics: ranks
    from the binomial(n, 1/2) tails). Fewer than 6 values give their extremes, covering less than 95%.

    >>> median_interval([3.0, 1.0, 2.0, 5.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0])
    (5.5, 2.0, 9.0)
    """
    xs = sorted(float(v) for v in values)
    n = len(xs)
    if n == 0:
        raise SqueezeError("median_interval of no values: expected at least one")
    tail, k = 0.0, 0  # the interval is [xs[k-1], xs[n-k]], k the largest with P(B <= k-1) <= (1-confidence)/2
    while k < n // 2:
        p = math.comb(n, k) / 2**n
        if tail + p > (1.0 - confidence) / 2:
            break
        tail += p
        k += 1
    k = max(k, 1)
    return statistics.median(xs), xs[k - 1], xs[n - k]


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[int]:
    """Run the block with ``threads`` CPU threads (``None``: as they are); yields the count in force
    and restores the previous one after."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class Timings:
    """What :func:`time_in_rounds` measured: milliseconds per pass of each model, one figure per round."""

    ms: dict[str, list[float]]
    layouts: dict[str, str]
    """The memory layout each model ran in (its faster one)."""
    passes: dict[str, int]
    """Passes per timed block."""
    threads: int
    seconds: float
    """Wall time of the whole measurement, warm-up included."""

    @property
    def rounds(self) -> int:
        return min(len(v) for v in self.ms.values())

    def median(self, name: str) -> float:
        return statistics.median(self.ms[name])


@dataclass(frozen=True)
class Speedup:
    """How much faster ``compressed`` ran than ``dense``: the median per-round ratio and its interval."""

    ratio: float
    low: float
    high: float
    dense_ms: float
    """Median milliseconds per pass."""
    compressed_ms: float
    rounds: int
    threads: int
    layouts: tuple[str, str]
    """The memory layout of the dense and of the compressed model."""
    seconds: float


@dataclass
class _Run:
    name: str
    layout: str
    module: nn.Module
    x: torch.Tensor


def time_in_rounds(
    models: Mapping[str, nn.Module],
    *,
    batch: int = 64,
    device: str | torch.device | None = None,
    example: Example = DEFAULT_INPUT_SHAPE,
    config: LatencyConfig = LatencyConfig(),
    stop: Callable[[dict[str, list[float]]], bool] | None = None,
) -> Timings:
    """Time eval-mode forward passes of ``models`` over ``batch`` inputs like ``example``, in rounds
    (see the module doc), on ``device`` (CUDA when present unless told otherwise).

    ``stop`` sees the figures so far after each round past ``min_rounds`` and ends the rounds by
    returning true; by default they end once every model's median is known to ``precision``. The
    models are moved to ``device`` for the timing and back after, their training mode restored; a
    layout other than ``contiguous`` runs on a copy. A layout a model cannot run in (a ``view``
    that needs NCHW memory) is skipped for that model.
    """
    if batch < 1:
        raise SqueezeError(f"batch={batch!r} must be >= 1")
    device = pick_device(device)
    stop = stop or (lambda ms: all(_precise(v, config.precision) for v in ms.values()))
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    start = time.perf_counter()
    x = batch_of(example, batch, device)
    restore = [(m, _device_of(m), m.training) for m in dict((id(m), m) for m in models.values()).values()]
    try:
        with cpu_threads(config.threads) as threads, _gc_off():
            runs = _runs(models, x, device, config.layouts)
            with torch.inference_mode():
                warm = _warm_up(runs, sync, config, start)
                chosen = _fastest(runs, warm)
                passes = {r.name: max(1, min(10_000, math.ceil(_BLOCK_S * 1000.0 / statistics.median(warm[id(r)][-3:])))) for r in chosen}
                ms: dict[str, list[float]] = {r.name: [] for r in chosen}
                deadline = math.inf if config.budget_s is None else start + config.budget_s
                rounds = 0
                while rounds < config.max_rounds:
                    for r in chosen if rounds % 2 == 0 else chosen[::-1]:
                        ms[r.name].append(_block(r, passes[r.name], sync))
                    rounds += 1
                    if rounds >= config.min_rounds and (time.perf_counter() >= deadline or stop(ms)):
                        break
    finally:
        for m, dev, training in restore:
            m.to(dev).train(training)
    return Timings(ms, {r.name: r.layout for r in chosen}, passes, threads, time.perf_counter() - start)


def speedup(
    dense: nn.Module,
    compressed: nn.Module,
    *,
    batch: int = 64,
    device: str | torch.device | None = None,
    example: Example = DEFAULT_INPUT_SHAPE,
    config: LatencyConfig = LatencyConfig(),
) -> Speedup:
    """How much faster ``compressed`` runs than ``dense`` at ``batch``: the two timed in rounds
    (:func:`time_in_rounds`), one ratio dense / compressed per round, their median and its
    :func:`median_interval`. The rounds end once that interval is known to ``precision``."""

    def known(ms: dict[str, list[float]]) -> bool:
        return _precise(_ratios(ms), config.precision)

    t = time_in_rounds({"dense": dense, "compressed": compressed}, batch=batch, device=device, example=example, config=config, stop=known)
    ratio, low, high = median_interval(_ratios(t.ms))
    return Speedup(ratio, low, high, t.median("dense"), t.median("compressed"), t.rounds, t.threads, (t.layouts["dense"], t.layouts["compressed"]), t.seconds)


def compare_latency(
    models: Mapping[str, nn.Module],
    batch: int = 64,
    device: str | torch.device | None = None,
    repeats: int = 50,
    *,
    example: Example = DEFAULT_INPUT_SHAPE,
    warmup: int = 3,
    layouts: Sequence[str] = ("contiguous", "channels_last"),
    threads: int | None = None,
) -> dict[str, float]:
    """Median milliseconds per forward pass of several models, timed in ``repeats`` rounds
    (:func:`time_in_rounds`, no time cap), each model in the faster of its ``layouts``."""
    if repeats < 1:
        raise SqueezeError(f"batch={batch!r} and repeats={repeats!r} must be >= 1")
    config = LatencyConfig(budget_s=None, threads=threads, min_rounds=repeats, max_rounds=repeats, precision=0.0, warmup=warmup, layouts=tuple(layouts))
    t = time_in_rounds(models, batch=batch, device=device, example=example, config=config)
    return {name: t.median(name) for name in t.ms}


def latency_ms(
    model: nn.Module,
    batch: int = 64,
    device: str | torch.device | None = None,
    repeats: int = 30,
    *,
    example: Example = DEFAULT_INPUT_SHAPE,
    warmup: int = 3,
    threads: int | None = None,
) -> float:
    """Median milliseconds of one eval-mode forward pass over ``batch`` inputs like ``example``
    (contiguous memory; :func:`compare_latency` of one model)."""
    if batch < 1 or repeats < 1:
        raise SqueezeError(f"batch={batch!r} and repeats={repeats!r} must be >= 1")
    return compare_latency({"model": model}, batch, device, repeats, example=example, warmup=warmup, layouts=("contiguous",), threads=threads)["model"]


# -- the parts -----------------------------------------------------------------------------------


def _ratios(ms: dict[str, list[float]]) -> list[float]:
    return [d / c for d, c in zip(ms["dense"], ms["compressed"])]


def _precise(values: list[float], precision: float) -> bool:
    if precision <= 0:
        return False
    mid, low, high = median_interval(values)
    return high - low <= precision * mid


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def _gc_off() -> Iterator[None]:
    """No garbage collection pauses inside a timed block (as :mod:`timeit` does)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _runs(models: Mapping[str, nn.Module], x: torch.Tensor, device: torch.device, layouts: Sequence[str]) -> list[_Run]:
    """One run per model and layout: the model itself (moved to ``device``) in ``contiguous``, a copy otherwise."""
    runs = []
    for name, model in models.items():
        model = model.to(device).eval()
        for layout in layouts if x.dim() == 4 else ("contiguous",):
            fmt = LAYOUTS[layout]
            module = model if fmt is torch.contiguous_format else copy.deepcopy(model).to(memory_format=fmt)
            runs.append(_Run(name, layout, module, x.contiguous(memory_format=fmt)))
    return runs


def _warm_up(runs: list[_Run], sync: Callable[[], None], config: LatencyConfig, start: float) -> dict[int, list[float]]:
    """Untimed-for-the-result passes of every run in turn until each has settled; its pass times by ``id``.

    A run that fails its first pass in a layout other than ``contiguous`` is dropped (when its
    model has another layout to run in)."""
    deadline = math.inf if config.budget_s is None else start + _WARMUP_SHARE * config.budget_s
    times: dict[int, list[float]] = {}
    for r in list(runs):
        try:
            times[id(r)] = [_block(r, 1, sync)]
        except RuntimeError:
            if r.layout == "contiguous" or len(config.layouts) == 1:
                raise
            runs.remove(r)
    least = max(config.warmup, 3)
    while True:
        done = min(len(t) for t in times.values())
        if all(_settled(t, least) for t in times.values()) or (time.perf_counter() >= deadline and done >= least) or done >= _WARMUP_MAX:
            return times
        for r in runs:
            times[id(r)].append(_block(r, 1, sync))


def _settled(times: list[float], least: int) -> bool:
    return len(times) >= least and min(times[-2:]) >= (1.0 - _SETTLED) * min(times[:-2])


def _fastest(runs: list[_Run], warm: dict[int, list[float]]) -> list[_Run]:
    """Each model's run in its faster layout (the lower median of its last warm-up passes), in model order."""
    best: dict[str, _Run] = {}
    for r in runs:
        if r.name not in best or statistics.median(warm[id(r)][-3:]) < statistics.median(warm[id(best[r.name])][-3:]):
            best[r.name] = r
    return list(best.values())


def _block(run: _Run, passes: int, sync: Callable[[], None]) -> float:
    """Milliseconds per pass of a block of ``passes`` passes, each run to its end."""
    sync()
    t0 = time.perf_counter()
    for _ in range(passes):
        run.module(run.x)
        sync()
    return (time.perf_counter() - t0) * 1000.0 / passes
