"""What a search does, as data that round-trips through YAML and JSON (and is logged to MLflow).

Every key is optional; ``squeezetune search`` runs on these defaults without a config::

    name: digits-demo              # default: search-<date>-<time>
    task: lenet300-digits
    data_dir: null                 # MNIST folder for *-mnist tasks
    dense: null                    # dense weights (.safetensors); default: trained once and cached
    trials: 24
    time_budget: null              # minutes: no trial starts later than this after the search began
                                   #   (those running finish); null: run until `trials` are done
    sampler: tpe                   # tpe | nsga2 | gp | random
    population: null               # NSGA-II population / TPE and GP start-up trials (default: trials // 4, 4..50)
    seed: 0
    tracking_uri: null             # default: sqlite:///<cwd>/mlflow.db ; or http://host:5000
    experiment: squeezetune
    study_storage: null            # Optuna study (drives --resume); default: optuna.db beside mlflow.db
    ray_address: null              # null: $RAY_ADDRESS if set, else a local Ray; local; auto; host:port; ray://host:port
    resources: {cpus: 1, gpus: 0}  # per trial; gpus may be fractional (0.25)
    max_concurrent: null           # default: as many trials as the local CPUs hold
    max_failures: 2                # Tune retries of a trial whose worker or node died
    constraints: {max_bytes: null, max_drop: null, max_macs: null, max_latency_ms: null}
    objectives: [accuracy, bytes]  # add latency_ms_b1 or latency_ms_b64 for a third (CPU; *_gpu on a GPU)
    validation: 0.125              # share of the training data held out: trials select on it
    fidelity:                      # multi-fidelity: MO-ASHA stops poor trials early; null: every
      epochs: 40                   #   trial trains the epochs its space sets (a knob). epochs: of
                                   #   finetune, or of gradual_prune in a space without finetune
      centroid_epochs: 8
      min_epochs: 2                # the first rung; then x reduction_factor up to epochs
      reduction_factor: 3
      early_stopping: auto         # auto: stop none while every trial's full schedule fits in the time
                                   #   budget (15 min without one); true: always; false: never
    warm_start: [auto]             # recipes run first, projected into the space: built-in names, YAML files,
                                   #   or auto (every built-in recipe whose stages the space searches); [] for none
    warm_start_neighbours: true    # also run each warm start's neighbours: 15% fewer weights, one bit less
                                   #   on the largest tensor, 30% more weights, 50% more of the largest
                                   #   tensor's weights (never stopped either)
    space: null                    # null: DEFAULT_SPACE (max-compression's stages, below); {...}: see
                                   #   squeezetune.spaces.space ({} is the one-shot prune + finetune space)

Relative paths in a config file (``data_dir``, ``dense``, ``warm_start`` YAML files, ``sqlite:///``
URIs) are read against the file's folder, so a config runs the same from any working folder.

>>> SearchConfig.from_dict({"trials": 4, "sampler": "tpe"}).population
4
"""

from __future__ import annotations

import copy
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from squeezetune.errors import SqueezeError
from squeezetune.spaces import Constraints


class SamplerChoice(str, Enum):
    NSGA2 = "nsga2"
    TPE = "tpe"
    GP = "gp"
    RANDOM = "random"


@dataclass(frozen=True)
class Resources:
    """What one trial asks Ray for."""

    cpus: float = 1.0
    gpus: float = 0.0

    def __post_init__(self) -> None:
        for key in ("cpus", "gpus"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise SqueezeError(f"resources.{key}={v!r} must be a number >= 0")
        if self.cpus == 0 and self.gpus == 0:
            raise SqueezeError("resources: a trial needs some cpus or gpus, got cpus=0 gpus=0")
        if self.gpus > 1 and self.gpus != int(self.gpus):
            raise SqueezeError(f"resources.gpus={self.gpus!r}: a fraction must be below 1, above 1 a whole number")

    def to_ray(self) -> dict[str, float]:
        return {"cpu": self.cpus, "gpu": self.gpus}


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_RAY_ADDRESS = re.compile(r"^(local|auto|ray://[^\s/]+|[A-Za-z0-9_.\-\[\]:]+:[0-9]{1,5})$")
LOCAL_RAY = "local"
"""``ray_address`` that asks for a local Ray even where ``RAY_ADDRESS`` is set (e.g. to resume a
search started on a cluster, on this machine)."""


@dataclass(frozen=True)
class Fidelity:
    """How long trials train, and where MO-ASHA compares them (see :mod:`squeezetune.search.scheduler`).

    Every trial's fidelity stage (``finetune``, or in a space without it the training of
    ``gradual_prune``; :func:`~squeezetune.search.runner.fidelity_stage`) is set to ``epochs`` and its
    ``finetune_centroids`` stage to ``centroid_epochs``. A trial reports at the rungs ``min_epochs * reduction_factor**k`` below
    ``epochs``: the accuracy and bytes of its model as the file would hold it then. With
    ``early_stopping`` MO-ASHA stops the trials that rank poorly at a rung; the others go on to
    the full schedule. ``auto`` stops none while the search's full schedules, timed on the trials
    finished so far, fit in what is left of its ``time_budget`` (or :data:`AUTO_MINUTES` without one).
    """

    epochs: int = 40
    centroid_epochs: int = 8
    min_epochs: int = 2
    reduction_factor: int = 3
    early_stopping: bool | str = "auto"

    def __post_init__(self) -> None:
        for key in ("epochs", "centroid_epochs", "min_epochs", "reduction_factor"):
            v = getattr(self, key)
            low = 0 if key == "centroid_epochs" else 2 if key == "reduction_factor" else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise SqueezeError(f"fidelity.{key}={v!r} must be an integer >= {low}")
        if not isinstance(self.early_stopping, bool) and self.early_stopping != "auto":
            raise SqueezeError(f"fidelity.early_stopping={self.early_stopping!r}: expected auto, true or false")
        if self.min_epochs > self.epochs:
            raise SqueezeError(f"fidelity.min_epochs={self.min_epochs} is above fidelity.epochs={self.epochs}: expected the first rung within the schedule")

    @property
    def rungs(self) -> tuple[int, ...]:
        """The epochs of the fidelity stage at which a trial reports before its final outcome."""
        from squeezetune.search.scheduler import rungs

        return rungs(min_t=self.min_epochs, max_t=self.epochs, eta=self.reduction_factor)


AUTO_MINUTES = 15
"""``fidelity.early_stopping: auto`` without a ``time_budget``: MO-ASHA stops no trial while the
search's full schedules fit in this many minutes (the README command's 32 take 5-6 on LeNet-300-100
on two cores, about 33 on LeNet-5)."""


DEFAULT_SPACE: dict[str, Any] = {
    "prune": False,
    "finetune": False,
    "gradual_prune": {"default": {"keep_fraction": [0.001, 0.6]}, "finetune": {"lr": [0.01, 0.02], "group_lasso": 1e-5}, "ramp": 0.8},
    "neurons": True,
    "finetune_recover": {"epochs": [6, 10], "lr": [0.005, 0.01]},
    "share": {"default": {"bits": [1, 8]}, "init": "linear"},
    "finetune_centroids": {"distill": True},
}
"""The space of a search whose config gives none: the stages of the ``max-compression`` recipe,
whose settings it holds (so the auto warm start is that recipe: its own rates on LeNet-300-100 and
LeNet-5, trained for the fidelity's epochs; on a model without tuned rates, its global budget as the
same fraction of every tensor; then its neighbours, :func:`~squeezetune.search.runner.neighbours`). Each tensor's
final kept fraction (0.1-60%, log-scaled) and shared bits (1-8) are knobs, with the learning rates
and the recovery's length; gradual pruning prunes during the fidelity's epochs with a row/column
group lasso, the neurons no kept weight uses are removed, a distilled fine-tune recovers, then
k-means sharing and the centroid fine-tune. MO-ASHA's rungs fall inside gradual pruning, where a
rung measures each trial pruned at once to its final targets. ``space: {}`` is the one-shot space
instead (``prune`` + ``finetune``; :func:`~squeezetune.spaces.space.derive_space`'s defaults)."""

OBJECTIVES = ("accuracy", "bytes", "latency_ms_b1", "latency_ms_b64", "latency_ms_b1_gpu", "latency_ms_b64_gpu")


def default_name() -> str:
    return time.strftime("search-%Y%m%d-%H%M%S")


@dataclass(frozen=True)
class SearchConfig:
    name: str = field(default_factory=default_name)
    task: str = "lenet300-digits"
    data_dir: str | None = None
    dense: str | None = None
    trials: int = 24
    time_budget: float | None = None
    """Minutes after the search began (this session, for a resumed one) past which no trial starts;
    the trials running then finish. ``None``: the search runs until ``trials`` are done."""
    sampler: SamplerChoice = SamplerChoice.TPE
    population: int | None = None
    seed: int = 0
    tracking_uri: str | None = None
    experiment: str = "squeezetune"
    study_storage: str | None = None
    ray_address: str | None = None
    resources: Resources = field(default_factory=Resources)
    max_concurrent: int | None = None
    max_failures: int = 2
    constraints: Constraints = field(default_factory=Constraints)
    objectives: tuple[str, ...] = ("accuracy", "bytes")
    validation: float = 0.125
    fidelity: Fidelity | None = field(default_factory=Fidelity)
    warm_start: tuple[str, ...] = ("auto",)
    warm_start_neighbours: bool = True
    """Also run each warm start's neighbours (:func:`~squeezetune.search.runner.neighbours`), up to
    four: two steps smaller and two larger; MO-ASHA never stops them, as it never stops a warm start."""
    space: dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEFAULT_SPACE))
    """The knobs (see :mod:`squeezetune.spaces.space`); absent or null: :data:`DEFAULT_SPACE`."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SqueezeError(f"name={self.name!r}: expected letters, digits, '_', '-', '.' (at most 100, not starting with a symbol)")
        for key in ("trials", "max_failures", "seed"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < (1 if key == "trials" else 0):
                raise SqueezeError(f"{key}={v!r} must be an integer >= {1 if key == 'trials' else 0}")
        for key in ("population", "max_concurrent"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < (2 if key == "population" else 1)):
                raise SqueezeError(f"{key}={v!r} must be an integer >= {2 if key == 'population' else 1}")
        tb = self.time_budget
        if tb is not None and (isinstance(tb, bool) or not isinstance(tb, (int, float)) or not math.isfinite(tb) or tb <= 0):
            raise SqueezeError(f"time_budget={tb!r}: expected minutes > 0 (or null for no limit)")
        if self.population is None:
            object.__setattr__(self, "population", min(50, max(4, self.trials // 4)))
        ws = self.warm_start
        if isinstance(ws, str):
            ws = (ws,)
        if not isinstance(ws, (list, tuple)) or not all(isinstance(w, str) and w for w in ws):
            raise SqueezeError(f"warm_start={self.warm_start!r}: expected a list of recipe names or YAML files")
        object.__setattr__(self, "warm_start", tuple(ws))
        if not isinstance(self.warm_start_neighbours, bool):
            raise SqueezeError(f"warm_start_neighbours={self.warm_start_neighbours!r}: expected true or false")
        if not isinstance(self.space, Mapping):
            raise SqueezeError(f"space is {type(self.space).__name__}: expected a mapping")
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not _RAY_ADDRESS.match(self.ray_address)):
            raise SqueezeError(f"ray_address={self.ray_address!r}: expected local, auto, host:port or ray://host:port")
        if not isinstance(self.experiment, str) or not self.experiment.strip():
            raise SqueezeError(f"experiment={self.experiment!r}: expected a non-empty MLflow experiment name")
        objectives = (self.objectives,) if isinstance(self.objectives, str) else self.objectives
        if not isinstance(objectives, (list, tuple)) or list(objectives[:2]) != ["accuracy", "bytes"] or len(objectives) > 3 or (len(objectives) == 3 and objectives[2] not in OBJECTIVES[2:]):
            raise SqueezeError(f"objectives={self.objectives!r}: expected [accuracy, bytes] and optionally a third, one of {list(OBJECTIVES[2:])}")
        object.__setattr__(self, "objectives", tuple(objectives))
        gpu_figures = [f for f in (*objectives[2:], self.constraints.latency if self.constraints.max_latency_ms is not None else "") if f.endswith("_gpu")]
        if gpu_figures and not self.resources.gpus > 0:
            raise SqueezeError(f"{gpu_figures[0]} is timed on a trial's GPU, and resources.gpus={self.resources.gpus:g}: expected resources.gpus > 0 (--gpus-per-trial), or a CPU figure")
        v = self.validation
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 0.5:
            raise SqueezeError(f"validation={v!r}: expected the share of the training data held out for selection, in (0, 0.5)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, base: str | Path | None = None) -> "SearchConfig":
        """Build and validate from plain data; unknown keys are a one-line error.

        Relative paths (``data_dir``, ``dense``, ``warm_start`` files, ``sqlite:///`` URIs) are read
        against ``base`` (default: the working folder) and stored absolute.
        """
        data = dict(data or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise SqueezeError(f"unknown key {unknown[0]!r} in search config: expected one of {known}")
        kw = {k: v for k, v in data.items() if v is not None or k in ("data_dir", "dense", "tracking_uri", "study_storage", "ray_address", "fidelity", "time_budget")}
        if "warm_start" in kw and kw["warm_start"] is None:
            kw["warm_start"] = ()
        if "sampler" in kw:
            try:
                kw["sampler"] = SamplerChoice(kw["sampler"])
            except ValueError:
                raise SqueezeError(f"sampler={kw['sampler']!r} is not known: expected one of {[s.value for s in SamplerChoice]}") from None
        if "resources" in kw:
            r = kw["resources"]
            if not isinstance(r, Mapping) or set(r) - {"cpus", "gpus"}:
                bad = sorted(set(r) - {"cpus", "gpus"})[0] if isinstance(r, Mapping) else r
                raise SqueezeError(f"resources: unknown key {bad!r}: expected cpus, gpus")
            kw["resources"] = Resources(**r)
        if "constraints" in kw:
            if not isinstance(kw["constraints"], Mapping):
                raise SqueezeError(f"constraints={kw['constraints']!r}: expected a mapping with max_bytes, max_drop, max_macs, max_latency_ms")
            kw["constraints"] = Constraints.from_dict(kw["constraints"])
        if "fidelity" in data:
            raw = data["fidelity"]
            if raw is None or raw is False:
                kw["fidelity"] = None
            else:
                from squeezetune.compression.stages import read_dataclass

                kw["fidelity"] = read_dataclass(Fidelity, {} if raw is True else raw, "fidelity")
        folder = Path(base) if base is not None else Path.cwd()
        for key in ("data_dir", "dense"):
            if kw.get(key) is not None:
                if not isinstance(kw[key], (str, Path)):
                    raise SqueezeError(f"{key}={kw[key]!r}: expected a path")
                kw[key] = str((folder / Path(kw[key]).expanduser()).resolve())
        for key in ("tracking_uri", "study_storage"):
            if isinstance(kw.get(key), str):
                kw[key] = _sqlite_against(kw[key], folder)
        if isinstance(kw.get("warm_start"), (list, tuple)):
            kw["warm_start"] = tuple(_file_against(w, folder) for w in kw["warm_start"])
        if "space" in kw and kw["space"] is None:
            del kw["space"]
        return cls(**kw)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "SearchConfig":
        from squeezetune._yaml import load_mapping

        path = Path(path)
        if not path.is_file():
            raise SqueezeError(f"config {str(path)!r} does not exist: expected a YAML file")
        return cls.from_dict(load_mapping(path, "config"), base=path.resolve().parent)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["sampler"] = self.sampler.value
        d["constraints"] = self.constraints.to_dict()
        d["warm_start"] = list(self.warm_start)
        d["objectives"] = list(self.objectives)
        return d

    def replace(self, **changes: Any) -> "SearchConfig":
        data = self.to_dict()
        data.update({k: v for k, v in changes.items() if v is not None})
        return SearchConfig.from_dict(data)


def _sqlite_against(uri: str, folder: Path) -> str:
    """A relative ``sqlite:///path`` made absolute against ``folder``; other URIs unchanged."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri.startswith(prefix + "/") or len(uri) == len(prefix):
        return uri
    return f"{prefix}{(folder / uri[len(prefix) :]).resolve()}"


def _file_against(entry: Any, folder: Path) -> Any:
    """A warm-start entry that names a file relative to ``folder``, made absolute; a recipe name unchanged."""
    if isinstance(entry, str) and entry and not Path(entry).is_absolute() and (folder / entry).is_file():
        return str((folder / entry).resolve())
    return entry


def default_max_concurrent(resources: Resources) -> int:
    """Trials that fit the machine's CPUs at once (at least one)."""
    return max(1, int((os.cpu_count() or 1) // max(resources.cpus, 1e-9))) if resources.cpus else 1
