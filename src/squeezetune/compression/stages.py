"""Stages: one verb, the config picks the technique.

A stage is a frozen config dataclass (a :class:`StageConfig`) and the handler that applies it,
written side by side in the technique's own module and joined by :func:`register_stage`::

    @dataclass(frozen=True)
    class PruneConfig(StageConfig):
        stage: ClassVar[str] = "prune"
        granularity: Granularity = Granularity.WEIGHT
        ...

    @register_stage(PruneConfig)
    def prune(model: nn.Module, config: PruneConfig, ctx: Context) -> nn.Module:
        ...

A handler takes the model and a :class:`Context` (data, teacher, device, example input, progress)
and returns the model it leaves behind (the same object, changed in place, or a new, smaller one).
:func:`apply_stage` runs one config through its handler; a config with no handler is a
``TypeError`` naming the known ones. A recipe (:mod:`squeezetune.compression.recipes`) is an
ordered list of stages.

Configs read plain data (parsed YAML or JSON) with :meth:`StageConfig.from_dict`, which checks
every key and value type against the dataclass fields, so each default is written once (in the
field) and each bad value is a one-line :class:`~squeezetune.errors.SqueezeError`;
:meth:`StageConfig.to_dict` writes the same data back.

>>> from squeezetune.compression.finetune import FinetuneConfig
>>> FinetuneConfig.from_dict({"epochs": 2, "distill": True}).to_dict()["epochs"]
2
>>> sorted(known_stages())
['decompose', 'finetune', 'gradual_prune', 'iterative_prune', 'merge', 'neurons', 'prune', 'share', 'soft_share', 'strided', 'structured']
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, ClassVar, Mapping, Protocol, Sequence, TypeVar, Union

import torch
from torch import nn

from squeezetune.errors import SqueezeError

if typing.TYPE_CHECKING:
    from squeezetune.compression.latency import LatencyConfig
    from squeezetune.tasks.data import Split

Progress = Callable[[str], None]

# Modules that define built-in stages; imported when a stage is first looked up, so that
# ``import squeezetune.compression`` stays light. A new technique adds its module here.
_STAGE_MODULES = (
    "squeezetune.compression.finetune",
    "squeezetune.compression.unstructured.pruning",
    "squeezetune.compression.unstructured.sharing",
    "squeezetune.compression.structured.stage",
    "squeezetune.compression.structured.strided",
    "squeezetune.compression.decomposition.stage",
    "squeezetune.compression.merging",
    "squeezetune.compression.unstructured.gradual",
    "squeezetune.compression.unstructured.soft_sharing",
    "squeezetune.compression.structured.neurons",
)


@dataclass(frozen=True)
class EpochEvent:
    """What a training stage reports at the end of each epoch (see :attr:`Context.on_epoch`)."""

    stage: str
    """The recipe label of the stage that is training (``finetune``, ``finetune_centroids``, ...)."""
    epoch: int
    epochs: int
    loss: float
    model: nn.Module
    """The model being trained, in eval mode for the duration of the callback."""
    snapshot: Callable[[], tuple[nn.Module, int]] | None = None
    """The model as the file would hold it if training ended now, and the file's bytes: a copy with
    the recipe's later stages that do not train applied, coded and decoded (see :mod:`.pipeline`)."""


@dataclass
class Context:
    """What a stage may use besides its config and the model.

    ``train`` is ``None`` for a data-free run (a stage that needs data then raises a one-line
    error); ``eval`` is the split stages may measure on (sensitivity analyses). ``example`` is one
    batch-1 input of the task, the shape and dtype every trace, MACs count and latency uses.
    ``on_epoch`` receives an :class:`EpochEvent` after every training epoch of every stage, so a
    scheduler can read intermediate results (and stop a run by raising).
    """

    teacher: nn.Module
    example: torch.Tensor
    train: Split | None = None
    eval: Split | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    progress: Progress = lambda _: None
    on_epoch: Callable[[EpochEvent], None] | None = None
    label: str = ""
    """The recipe label of the stage now running."""
    snapshot: Callable[[nn.Module], tuple[nn.Module, int]] | None = None
    """Set by the pipeline: the model as decoded from a file if the recipe ended its training now."""
    latency: LatencyConfig | None = None
    """How the report times models (``None``: the defaults); a stage that plans by latency times
    single layers at its CPU thread count."""

    def need_train(self, what: str) -> Split:
        if self.train is None:
            raise SqueezeError(f"stage {self.label or what!r} needs training data: expected a task with a training split (this run is data-free)")
        return self.train

    def epoch_end(self, model: nn.Module, epoch: int, epochs: int, loss: float) -> None:
        """Report the end of an epoch of the running stage to :attr:`on_epoch`."""
        if self.on_epoch is not None:
            was_training = model.training
            model.eval()
            try:
                snapshot = (lambda: self.snapshot(model)) if self.snapshot is not None else None
                self.on_epoch(EpochEvent(self.label, epoch, epochs, loss, model, snapshot))
            finally:
                model.train(was_training)


class Handler(Protocol):
    def __call__(self, model: nn.Module, config: Any, ctx: Context) -> nn.Module: ...


C = TypeVar("C", bound="StageConfig")


class StageConfig:
    """Base of every stage config: plain-data reading and writing, and model checks.

    Subclasses are frozen dataclasses with a ``stage: ClassVar[str]`` name. Field types drive
    :meth:`from_dict`: ``bool``, ``int``, ``float``, ``str``, string enums, nested configs (any
    dataclass with ``from_dict``), ``dict[str, X]`` of those, and ``X | None``.
    """

    stage: ClassVar[str] = ""
    changes_architecture: ClassVar[bool] = False
    """True for stages that replace or resize modules (the container then stores the new architecture)."""
    trains: ClassVar[bool] = False
    """True for stages that train the model (a snapshot mid-recipe skips them)."""

    @classmethod
    def from_dict(cls: type[C], data: Any, where: str | None = None) -> C:
        return read_dataclass(cls, data, where or cls.stage)

    def to_dict(self) -> dict[str, Any]:
        return write_dataclass(self)

    def validate(self, model: nn.Module, example: torch.Tensor, *, exact: bool = True) -> None:
        """Fail before any work if this config cannot apply to ``model``.

        ``exact=False`` when an earlier stage will change the architecture first: then only what
        survives that (layer names) can be checked, not sizes.
        """

    def preview(self, model: nn.Module, example: torch.Tensor) -> nn.Module | None:
        """The model as this stage would leave it, in its layers and sizes (weights need not be
        fitted), when that is cheap to know without data; ``None`` otherwise.

        A recipe checks each later stage against the preview (exact sizes and the new layer
        names), and only names after a stage that changes the architecture and has no preview.
        """
        return None

    def needs_data(self) -> bool:
        """False when the stage reads no training data (a recipe of such stages runs data-free)."""
        return True

    def layer_names(self) -> set[str]:
        """Every layer (or tensor) the config names explicitly."""
        return set(getattr(self, "layers", {}) or {})

    def is_noop(self) -> bool:
        """True when the stage would leave the model as it is (the pipeline then skips it)."""
        return False


@dataclass(frozen=True)
class _Entry:
    config: type[StageConfig]
    handler: Handler


_REGISTRY: dict[str, _Entry] = {}
_loaded = False


def register_stage(config: type[StageConfig]) -> Callable[[Handler], Handler]:
    """Decorator: ``handler`` applies configs of type ``config`` (registered under ``config.stage``)."""
    if not config.stage:
        raise TypeError(f"{config.__name__} has no stage name: expected a ClassVar 'stage'")

    def wrap(handler: Handler) -> Handler:
        known = _REGISTRY.get(config.stage)
        if known is not None and known.config is not config:
            raise TypeError(f"stage {config.stage!r} is registered twice ({known.config.__name__}, {config.__name__})")
        _REGISTRY[config.stage] = _Entry(config, handler)
        return handler

    return wrap


def _load() -> None:
    global _loaded
    if not _loaded:
        for module in _STAGE_MODULES:
            importlib.import_module(module)
        _loaded = True


def known_stages() -> dict[str, type[StageConfig]]:
    """Every registered stage name and its config class."""
    _load()
    return {name: e.config for name, e in _REGISTRY.items()}


def stage_config(name: str) -> type[StageConfig]:
    """The config class of stage ``name``; a one-line error lists the known ones."""
    stages = known_stages()
    if name not in stages:
        raise SqueezeError(f"unknown stage {name!r}: expected one of {sorted(stages)}")
    return stages[name]


def apply_stage(model: nn.Module, config: StageConfig, ctx: Context) -> nn.Module:
    """Run ``config``'s handler on ``model``; returns the model the stage leaves behind."""
    _load()
    entry = _REGISTRY.get(getattr(type(config), "stage", ""))
    if entry is None or not isinstance(config, entry.config):
        raise TypeError(f"no handler for {type(config).__name__}; known: {sorted(e.config.__name__ for e in _REGISTRY.values())}")
    out = entry.handler(model, config, ctx)
    if not isinstance(out, nn.Module):
        raise TypeError(f"stage {config.stage!r} returned {type(out).__name__}: expected the model")
    return out


# -- plain data <-> dataclasses ------------------------------------------------------------------


def read_dataclass(cls: type[C], data: Any, where: str) -> C:
    """Build dataclass ``cls`` from a mapping, checking every key and value against its fields."""
    if isinstance(data, cls):
        return data
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise SqueezeError(f"{where} is {type(data).__name__}: expected a mapping with keys {names}")
    unknown = sorted(set(map(str, data)) - set(names))
    if unknown:
        raise SqueezeError(f"unknown key {unknown[0]!r} in {where}: expected one of {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kw = {key: read_value(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    try:
        return cls(**kw)
    except SqueezeError as exc:  # a range check of the config itself: name where it sits in the recipe
        raise placed(exc, where, names) from None


def placed(exc: SqueezeError, where: str, fields: Sequence[str]) -> SqueezeError:
    """``exc``, a config's own range check, with ``where`` the config sits in the recipe:
    ``where.field=...`` for a message about one of ``fields``, ``where: ...`` for any other
    that does not name ``where`` already."""
    message = str(exc)
    if any(message.startswith(f"{name}=") for name in fields):
        return SqueezeError(f"{where}.{message}")
    return SqueezeError(message if message.startswith(where) else f"{where}: {message}")


def read_value(tp: Any, value: Any, where: str) -> Any:
    """``value`` read as type ``tp`` (see :class:`StageConfig`), or a one-line error naming ``where``."""
    origin = typing.get_origin(tp)
    if origin is Union or origin is types.UnionType:
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            if type(None) in typing.get_args(tp):
                return None
            raise SqueezeError(f"{where} is empty: expected {_describe(tp)}")
        errors = []
        for option in options:
            try:
                return read_value(option, value, where)
            except SqueezeError as exc:
                errors.append(str(exc))
        if len(errors) == 1:
            raise SqueezeError(errors[0])
        raise SqueezeError(f"{where}={value!r}: expected {_describe(tp)}")
    if tp is Any:
        return value
    if origin in (dict, Mapping):
        _, vt = typing.get_args(tp)
        if not isinstance(value, Mapping):
            raise SqueezeError(f"{where} is {type(value).__name__}: expected a mapping of name to settings")
        return {str(k): read_value(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise SqueezeError(f"{where}={value!r}: expected a list")
        return tuple(read_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(tp, type) and issubclass(tp, Enum):
        if isinstance(value, tp):
            return value
        try:
            return tp(value)
        except ValueError:
            raise SqueezeError(f"{where}={value!r} is not known: expected one of {[m.value for m in tp]}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise SqueezeError(f"{where}={value!r}: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
            raise SqueezeError(f"{where}={value!r}: expected an integer")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise SqueezeError(f"{where}={value!r}: expected a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SqueezeError(f"{where}={value!r}: expected a string")
        return value
    if dataclasses.is_dataclass(tp):
        reader = getattr(tp, "from_dict", None)
        return reader(value, where) if reader is not None and _takes_where(reader) else read_dataclass(tp, value, where)
    raise TypeError(f"cannot read a value of type {tp!r} for {where}")


def _takes_where(fn: Callable) -> bool:
    import inspect

    try:
        return "where" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _describe(tp: Any) -> str:
    names = []
    for a in typing.get_args(tp) or (tp,):
        if a is type(None):
            continue
        if isinstance(a, type) and issubclass(a, Enum):
            names.append(f"one of {[m.value for m in a]}")
        else:
            names.append({bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(a, getattr(a, "__name__", str(a))))
    return " or ".join(names)


def write_dataclass(obj: Any) -> dict[str, Any]:
    """Plain JSON-able data of a config dataclass; ``None`` fields are left out."""
    out = {}
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = plain(getattr(obj, f.name))
        if value is not None:
            out[f.name] = value
    return out


def plain(value: Any) -> Any:
    """JSON-able form of a config value (enums by value, dataclasses by :func:`write_dataclass`)."""
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        writer = getattr(value, "to_dict", None)
        return writer() if writer is not None else write_dataclass(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value
