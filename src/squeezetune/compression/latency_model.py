"""Predicted latency: single layers timed on this machine, cached, and interpolated.

Planning channel counts or ranks by latency (``cost: latency`` on the ``structured`` and
``decompose`` stages) needs the time of each conv and linear layer at many sizes. MACs do not give
it: a layer's time falls less than its MACs when it is cut (memory traffic, kernel blocks, the
per-call overhead), and by different amounts in different layers. So each layer is timed alone,
on its real input shape, at a small grid of sizes, and the planner interpolates between them
(:func:`interpolate`, :class:`Table`).

:class:`LayerTimes` times single modules at batch ``batch`` on ``device`` with ``threads`` CPU
threads, with the machinery of :mod:`squeezetune.compression.latency` (eval mode, autograd off,
warm-up, the median of rounds of blocks), but briefly: a few milliseconds and a short warm-up per
size, a few seconds for all of ResNet-20. Every figure is cached in a JSON file under the cache
folder (``~/.cache/squeezetune/latency`` or ``$SQUEEZETUNE_CACHE/latency``), one file per model
architecture (its layers' types and shapes, not weights), device name, thread count, batch size
and torch version, so a second plan of the same model on the same machine times nothing.

>>> from torch import nn
>>> times = LayerTimes.open(nn.Sequential(nn.Linear(8, 8)), (1, 8), batch=4, cache_dir=None)
>>> ms = times.ms([(nn.Linear(8, 4), (1, 8)), (nn.Linear(8, 8), (1, 8))])
>>> len(ms) == 2 and min(ms) > 0 and times.timed == 2
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
from enum import Enum
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from squeezetune.compression.finetune import pick_device
from squeezetune.compression.latency import LatencyConfig, time_in_rounds
from squeezetune.compression.measure import Example, input_shapes
from squeezetune.errors import SqueezeError

FORMAT = "squeezetune.layer-latency/1"

GRID = (0.25, 0.5, 0.75, 1.0)
"""Fractions of a layer's channels (or of its rank limit) timed; the smallest size allowed is timed too."""

POINT = LatencyConfig(budget_s=0.03, threads=1, min_rounds=3, max_rounds=50, resolution=0.05, warmup=1, layouts=("contiguous",))
"""How one size of one layer is timed: ~30 ms, warm-up included, at least 3 blocks of >= 2 ms."""


class Cost(str, Enum):
    """What a stage's ``macs_target`` is a fraction of: the dense ``macs``, or the dense model's
    predicted ``latency`` (its conv and linear layers' times, summed)."""

    MACS = "macs"
    LATENCY = "latency"

    @classmethod
    def read(cls, value: object, where: str = "cost") -> "Cost":
        """``value`` as a :class:`Cost`, or a one-line error naming it and the known ones."""
        try:
            return cls(value)
        except ValueError:
            raise SqueezeError(f"{where}={value!r} is not known: expected one of {[c.value for c in cls]}") from None


Shape = tuple[int, ...]


def signature(module: nn.Module, input_shape: Sequence[int]) -> str:
    """What a module's time depends on: its type and sizes, the dtype of its weights, and its
    batch-1 input shape (weights play no part).

    >>> signature(nn.Linear(4, 2), (1, 4))
    'Linear(in_features=4, out_features=2, bias=True) float32 <- 4'
    """
    p = next(module.parameters(), None)
    dtype = str(p.dtype).removeprefix("torch.") if p is not None else "float32"
    return f"{' '.join(repr(module).split())} {dtype} <- {'x'.join(str(int(d)) for d in tuple(input_shape)[1:])}"


def device_name(device: torch.device) -> str:
    """The device by its hardware name: the GPU's, or the CPU model's."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return f"cpu: {line.split(':', 1)[1].strip()}"
        except OSError:
            pass
        return f"cpu: {platform.processor() or platform.machine()}"
    return device.type


def timed_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers a latency cost counts: every conv and linear layer, by name, in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (_ConvNd, nn.Linear))}


class LayerTimes:
    """Milliseconds per pass of single modules, timed on this machine and cached (see the module doc).

    :meth:`open` reads the cache of a model; :meth:`ms` times what the cache lacks and writes it
    back. ``timed`` counts the sizes timed by this object (0 when the cache had every one).
    """

    def __init__(self, key: dict, *, batch: int, device: torch.device, threads: int, path: Path | None, progress=None) -> None:
        self.key, self.batch, self.device, self.threads, self.path = key, batch, device, threads, path
        self.progress = progress or (lambda _: None)
        self.timed = 0
        self._ms: dict[str, float] = _read(path, key) if path is not None else {}

    @classmethod
    def open(
        cls,
        model: nn.Module,
        example: Example,
        *,
        batch: int = 64,
        device: str | torch.device | None = None,
        threads: int | None = 1,
        cache_dir: str | Path | None = "default",
        progress=None,
    ) -> "LayerTimes":
        """The timings of ``model``'s layers on ``device`` (CUDA when present unless told otherwise)
        at ``batch`` with ``threads`` CPU threads (``None``: the current count), read from the cache
        in ``cache_dir`` (``"default"``: the project's cache folder; ``None``: no cache)."""
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise SqueezeError(f"latency batch={batch!r} must be an integer >= 1")
        if threads is not None and threads < 1:
            raise SqueezeError(f"latency threads={threads!r} must be an integer >= 1 (or None: the current count)")
        device = pick_device(device)
        threads = threads if threads is not None else torch.get_num_threads()
        layers = timed_layers(model)
        shapes = input_shapes(model, list(layers), example)
        key = {
            "architecture": [signature(m, shapes[n]) for n, m in layers.items() if n in shapes],
            "device": device_name(device),
            "threads": threads,
            "batch": batch,
            "torch": torch.__version__,
        }
        path = None
        if cache_dir is not None:
            from squeezetune.compression.baseline import default_cache_dir

            folder = (default_cache_dir() if cache_dir == "default" else Path(cache_dir)) / "latency"
            digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
            path = folder / f"{digest}.json"
        return cls(key, batch=batch, device=device, threads=threads, path=path, progress=progress)

    def ms(self, items: Sequence[tuple[nn.Module, Sequence[int]]]) -> list[float]:
        """Milliseconds per pass of each ``(module, batch-1 input shape)`` at this object's batch,
        timed where the cache has no figure (each distinct signature once), the cache then written."""
        sigs = [signature(m, s) for m, s in items]
        todo = {sig: item for sig, item in zip(sigs, items) if sig not in self._ms}
        if todo:
            start = time.perf_counter()
            self.progress(f"latency model: timing {len(todo)} layer sizes at batch {self.batch}, {self.threads} thread{'s' if self.threads != 1 else ''}, on {self.key['device']}")
            for sig, (module, shape) in todo.items():
                self._ms[sig] = time_layer(module, shape, batch=self.batch, device=self.device, threads=self.threads)
                self.timed += 1
            where = f", cached in {self.path}" if self.path is not None else ""
            self.progress(f"latency model: {len(todo)} layer sizes timed in {time.perf_counter() - start:.1f} s{where}")
            if self.path is not None:
                try:
                    _write(self.path, self.key, self._ms)
                except (OSError, SqueezeError) as exc:  # the figures are still used; only the cache is lost
                    self.progress(f"latency model: cannot cache the timings in {self.path} ({exc}); the next plan times them again")
        return [self._ms[sig] for sig in sigs]

    def total(self, model: nn.Module, example: Example) -> float:
        """Milliseconds of ``model``'s conv and linear layers (:func:`timed_layers`), summed: the
        latency a plan's ``macs_target`` is a fraction of."""
        layers = timed_layers(model)
        shapes = input_shapes(model, list(layers), example)
        return sum(self.ms([(m, shapes[n]) for n, m in layers.items() if n in shapes]))


def time_layer(module: nn.Module, input_shape: Sequence[int], *, batch: int, device: torch.device, threads: int) -> float:
    """Median milliseconds per pass of ``module`` alone over ``batch`` random inputs of
    ``input_shape`` (batch 1), timed briefly (:data:`POINT`)."""
    p = next(module.parameters(), None)
    example = torch.randn(tuple(input_shape), dtype=p.dtype if p is not None else torch.float32)
    config = dataclasses.replace(POINT, threads=threads)
    return time_in_rounds({"layer": module}, batch=batch, device=device, example=example, config=config).median("layer")


def _read(path: Path, key: dict) -> dict[str, float]:
    """The cached figures, or none when the file is absent, unreadable or for another key."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("key") != key or not isinstance(data.get("ms"), dict):
        return {}
    return {str(k): float(v) for k, v in data["ms"].items() if isinstance(v, (int, float))}


def _write(path: Path, key: dict, ms: dict[str, float]) -> None:
    from squeezetune._io import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"format": FORMAT, "key": key, "ms": dict(sorted(ms.items()))}, indent=1))


# -- interpolation -------------------------------------------------------------------------------


def grid(n: int, round_to: int, fractions: Sequence[float] = GRID, multiple: int = 1) -> list[int]:
    """Sizes to time of an axis of ``n`` channels: each fraction of ``n`` rounded to a multiple of
    ``round_to`` (as the planner rounds), the smallest such size, and ``n``; all multiples of
    ``multiple`` (a grouped convolution's group count).

    >>> grid(64, 8)
    [8, 16, 32, 48, 64]
    """
    sizes = {min(n, round_to), n}
    for f in fractions:
        sizes.add(int(min(n, max(round_to, round(f * n / round_to) * round_to, 1))))
    return sorted({min(n, -(-s // multiple) * multiple) for s in sizes})


def interpolate(xs: Sequence[float], ys: Sequence[float], x: float) -> float:
    """Piecewise-linear ``y`` at ``x`` through the points ``(xs, ys)`` (``xs`` ascending), constant
    past either end.

    >>> interpolate([8, 16], [1.0, 3.0], 12)
    2.0
    """
    return float(np.interp(x, xs, ys))


class Table:
    """A layer's milliseconds on a grid of kept input (``ins``) and output (``outs``) channels,
    interpolated bilinearly, and made monotone: a larger layer is never predicted faster (the noise
    of a few-millisecond timing is larger than any real dip between grid points)."""

    def __init__(self, ins: Sequence[int], outs: Sequence[int], ms: Sequence[Sequence[float]]) -> None:
        self.ins, self.outs = list(ins), list(outs)
        rows = [list(r) for r in ms]  # rows[i][j]: ins[i] inputs, outs[j] outputs
        for i in range(len(rows)):
            for j in range(len(rows[i])):
                rows[i][j] = max([rows[i][j]] + ([rows[i - 1][j]] if i else []) + ([rows[i][j - 1]] if j else []))
        self.ms = rows

    def __call__(self, inp: float, out: float) -> float:
        along_in = [interpolate(self.ins, [r[j] for r in self.ms], inp) for j in range(len(self.outs))]
        return interpolate(self.outs, along_in, out)
