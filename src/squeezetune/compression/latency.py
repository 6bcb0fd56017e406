"""Latency: how long forward passes take, and how much faster one model runs than another, with an interval.

A single timing on a shared machine says little: other processes come and go, clocks change, the
first passes allocate memory and pick kernels. Every timing here therefore

* runs eval-mode forward passes with autograd off (:func:`torch.inference_mode`);
* uses a fixed number of CPU threads (one unless told otherwise), set for the timing and restored after
  (:attr:`LatencyConfig.threads`; the count is reported);
* warms each model up until its passes stop getting faster, then times blocks of passes, as many
  for every model, the fastest model's block lasting at least 2 ms, so the timer and the Python
  loop cost well under 1% (on CUDA it synchronizes after every pass: a pass is timed to its end);
* times the models in rounds, each round four blocks of each model in an order that puts every
  model in every place (A B B A B A A B, the next round B A A B A B B A): load that drifts hits
  every model alike, and no model gains from where it runs -- first after a pause, right after
  itself with its weights still in cache, or right after another model -- which on a loaded
  machine can change a block's time by half;
* stops once the interval is as narrow as it can usefully be (:attr:`LatencyConfig.resolution`),
  or the time budget is spent (:attr:`LatencyConfig.budget_s`), after at least
  :attr:`LatencyConfig.min_rounds`.

:func:`speedup` is the figure to quote: the median of the per-round ratios dense / compressed and
a ~95% interval for it from order statistics (:func:`rounds_interval`: distribution-free, no
assumption about the noise), never narrower than ``resolution`` either side: two copies of one
model, timed again and again in one process, differ by up to ~1.5% from one measurement to the
next on a loaded CPU, a spread no repetition within one measurement samples. :func:`compare_latency` gives several models' median milliseconds,
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
_WARMUP_MAX = 20  # passes of one model, at most, for warming up
_SETTLED = 0.05  # warm once the last two passes are not 5% faster than the best before them
_CHECK_EVERY = 5  # rounds between two checks of the interval: a check delays the next round's first block
_BATCHES = 20  # intervals from at most this many medians of consecutive rounds


@dataclass(frozen=True)
class LatencyConfig:
    """How latency is measured (see the module doc)."""

    budget_s: float | None = 4.0
    """Wall-time cap of one measurement in seconds, warm-up included; ``min_rounds`` are timed
    even past it. ``None``: no cap, exactly ``max_rounds`` rounds. The compress report spreads it
    over its batch sizes and devices."""
    threads: int | None = 1
    """CPU threads while timing (``torch.set_num_threads``), restored after; ``None``: the current
    count. One by default, as :class:`torch.utils.benchmark.Timer`: the same figure on any machine,
    and no thread waiting for a sibling that another process holds off its core."""
    min_rounds: int = 6
    """Rounds at least: 6 is the fewest whose extremes make a 95% interval for a median."""
    max_rounds: int = 200
    resolution: float = 0.02
    """The narrowest interval reported, as a fraction of the estimate either side (``ratio / 1.02``
    to ``ratio * 1.02``); the rounds stop early once the measured interval is within half of it
    (0: no floor, never stop early)."""
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
        if not self.resolution >= 0 or self.warmup < 0:
            raise SqueezeError(f"latency resolution={self.resolution!r} and warmup={self.warmup!r} must be >= 0")
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


def rounds_interval(values: Sequence[float], batches: int = _BATCHES, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """``(median, low, high)`` of per-round figures, robust to noise that lasts several rounds:
    with at least ``2 * batches`` rounds, the :func:`median_interval` of the medians of ``batches``
    runs of consecutive rounds (the earliest left-over rounds dropped), else of the rounds themselves.

    Load on a shared machine comes and goes over many rounds, so neighbouring rounds err alike and
    an interval that takes them as independent is too narrow; medians of runs of rounds are close
    to independent (the method of batch means).

    >>> rounds_interval([1.0] * 20 + [2.0] * 40, batches=3)
    (2.0, 1.0, 2.0)
    """
    n = len(values)
    size = n // batches if n >= 2 * batches else 1
    first = n - n // size * size
    medians = [statistics.median(values[i : i + size]) for i in range(first, n, size)]
    return median_interval(medians, confidence)


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
    passes: int
    """Passes per timed block (of every model)."""
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

    ``stop`` sees the figures so far after every fifth round past ``min_rounds`` and ends the rounds
    by returning true; by default they end once every model's median is known to ``resolution``. The
    models are moved to ``device`` for the timing and back after, their training mode restored; a
    layout other than ``contiguous`` runs on a copy. A layout a model cannot run in (a ``view``
    that needs NCHW memory) is skipped for that model.
    """
    if batch < 1:
        raise SqueezeError(f"batch={batch!r} must be >= 1")
    device = pick_device(device)
    stop = stop or (lambda ms: all(_resolved(v, config.resolution) for v in ms.values()))
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
                fastest = min(min(warm[id(r)][1:]) for r in chosen)
                passes = max(1, min(10_000, math.ceil(_BLOCK_S * 1000.0 / fastest)))  # the same for every model: its first pass weighs alike
                ms: dict[str, list[float]] = {r.name: [] for r in chosen}
                deadline = math.inf if config.budget_s is None else start + config.budget_s
                while len(ms[chosen[0].name]) < config.max_rounds:
                    block: dict[str, float] = {r.name: 0.0 for r in chosen}
                    lead = chosen if len(ms[chosen[0].name]) % 2 == 0 else chosen[::-1]
                    order = lead + lead[::-1] + lead[::-1] + lead if len(chosen) > 1 else lead  # A B B A B A A B: every model in every place
                    for r in order:
                        block[r.name] += _block(r, passes, sync) * len(chosen) / len(order)
                    for name, t in block.items():
                        ms[name].append(t)
                    done = len(ms[name])
                    if done >= config.min_rounds and (time.perf_counter() >= deadline or (done % _CHECK_EVERY == 0 and stop(ms))):
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
    :func:`rounds_interval`, widened to ``resolution`` either side where narrower. The rounds end
    once the measured interval is within half of that."""

    def resolved(ms: dict[str, list[float]]) -> bool:
        return _resolved(_ratios(ms), config.resolution)

    t = time_in_rounds({"dense": dense, "compressed": compressed}, batch=batch, device=device, example=example, config=config, stop=resolved)
    ratio, low, high = rounds_interval(_ratios(t.ms))
    low, high = min(low, ratio / (1.0 + config.resolution)), max(high, ratio * (1.0 + config.resolution))
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
    (:func:`time_in_rounds`, no time cap), each model in the faster of its ``layouts``, with
    ``threads`` CPU threads (``None``: as many as now)."""
    if repeats < 1:
        raise SqueezeError(f"batch={batch!r} and repeats={repeats!r} must be >= 1")
    config = LatencyConfig(budget_s=None, threads=threads, min_rounds=repeats, max_rounds=repeats, resolution=0.0, warmup=warmup, layouts=tuple(layouts))
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


def _resolved(values: list[float], resolution: float) -> bool:
    """Whether the interval of ``values`` lies within half of ``resolution`` of its median either
    side (the other half left for what one measurement cannot see)."""
    if resolution <= 0:
        return False
    mid, low, high = rounds_interval(values)
    return mid / (1.0 + resolution / 2) <= low and high <= mid * (1.0 + resolution / 2)


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
    """Each model's run in its faster layout, in model order: the one with the fastest warm-up pass
    after the first (load only ever adds time, so the fastest pass is the steadiest measure)."""
    best: dict[str, _Run] = {}
    for r in runs:
        if r.name not in best or min(warm[id(r)][1:]) < min(warm[id(best[r.name])][1:]):
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
