"""Knobs: one searchable setting each, with its domain, as plain frozen dataclasses.

A knob is named by a dotted path that is also its MLflow param and Optuna parameter name
(``prune.fc1.keep``, ``share.init``, ...). Its domain is one of

* :class:`IntRange` / :class:`FloatRange` -- ``low..high`` inclusive, optionally log-scaled;
* :class:`Choice` -- a tuple of plain values (strings, booleans, numbers);
* :class:`Fixed` -- one value, never sampled.

In YAML a user writes a domain as a scalar (fixed), ``[low, high]`` (a numeric range),
``{low: .., high: .., log: ..}`` (a range), a list (choices for a categorical knob) or
``{choices: [...]}``. :func:`parse_domain` reads those forms against the knob's default domain
so the kind (int, float, categorical) cannot be changed by accident.

>>> import optuna
>>> knob = Knob("share.fc1.bits", IntRange(2, 8))
>>> study = optuna.create_study()
>>> 2 <= knob.suggest(study.ask()) <= 8
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Protocol, Sequence, Union

from squeezetune.errors import SqueezeError


class TrialLike(Protocol):
    """The part of ``optuna.Trial`` a knob uses (so this module needs no Optuna import)."""

    def suggest_int(self, name: str, low: int, high: int, *, log: bool = False) -> int: ...

    def suggest_float(self, name: str, low: float, high: float, *, log: bool = False) -> float: ...

    def suggest_categorical(self, name: str, choices: Any) -> Any: ...


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise SqueezeError(f"empty range [{self.low}, {self.high}]: expected low <= high")
        if self.log and self.low < 1:
            raise SqueezeError(f"log range [{self.low}, {self.high}] must start at >= 1")

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and self.low <= value <= self.high


@dataclass(frozen=True)
class FloatRange:
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise SqueezeError(f"empty range [{self.low}, {self.high}]: expected finite low <= high")
        if self.log and self.low <= 0:
            raise SqueezeError(f"log range [{self.low}, {self.high}] must start above 0")

    def contains(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


@dataclass(frozen=True)
class Choice:
    choices: tuple

    def __post_init__(self) -> None:
        if not self.choices:
            raise SqueezeError("empty choice list: expected at least one value")
        if len(set(map(repr, self.choices))) != len(self.choices):
            raise SqueezeError(f"choices {list(self.choices)} repeat a value")

    def contains(self, value: Any) -> bool:
        return any(type(value) is type(c) and value == c for c in self.choices)


@dataclass(frozen=True)
class Fixed:
    value: Any

    def contains(self, value: Any) -> bool:
        return value == self.value


Domain = Union[IntRange, FloatRange, Choice, Fixed]


@dataclass(frozen=True)
class Knob:
    """A named setting and the values a search may give it."""

    name: str
    domain: Domain
    target: tuple[str, ...] = ()
    """Where the value goes in a recipe dict, e.g. ``("prune", "layers", "fc1", "keep")``."""

    @property
    def searched(self) -> bool:
        d = self.domain
        if isinstance(d, Fixed):
            return False
        if isinstance(d, Choice):
            return len(d.choices) > 1
        return d.low != d.high

    def suggest(self, trial: TrialLike) -> Any:
        """This knob's value for one trial (a fixed or one-valued knob is not sampled)."""
        d = self.domain
        if not self.searched:
            return d.value if isinstance(d, Fixed) else d.choices[0] if isinstance(d, Choice) else d.low
        if isinstance(d, IntRange):
            return trial.suggest_int(self.name, d.low, d.high, log=d.log)
        if isinstance(d, FloatRange):
            return trial.suggest_float(self.name, d.low, d.high, log=d.log)
        return trial.suggest_categorical(self.name, list(d.choices))

    def corners(self) -> tuple[Any, Any]:
        """The smallest and largest value (for a categorical knob: its first and last choice)."""
        d = self.domain
        if isinstance(d, Fixed):
            return d.value, d.value
        if isinstance(d, Choice):
            return d.choices[0], d.choices[-1]
        return d.low, d.high

    def describe(self) -> str:
        d = self.domain
        if isinstance(d, Fixed):
            return f"{d.value!r}"
        if isinstance(d, Choice):
            return "{" + ", ".join(map(str, d.choices)) + "}"
        if d.low == d.high:
            return f"{d.low!r}"
        return f"[{d.low}, {d.high}]{' log' if d.log else ''}"


def parse_domain(raw: Any, default: Domain, where: str, allowed: tuple = ()) -> Domain:
    """Read a user's YAML value for a knob whose default domain is ``default``.

    The result keeps the default's kind: a numeric knob takes a number (fixed), ``[low, high]``
    or ``{low, high, log}``; a categorical knob takes one of its values (fixed) or a list of them,
    drawn from ``allowed`` (default: the default's own choices).
    Values outside the default's kind raise a one-line :class:`SqueezeError` naming ``where``.
    """
    if isinstance(default, (IntRange, FloatRange)):
        number = _int if isinstance(default, IntRange) else _float
        if isinstance(raw, (list, tuple)):
            if len(raw) != 2:
                raise SqueezeError(f"{where}={list(raw)!r}: expected [low, high] or a single number")
            low, high = number(raw[0], where), number(raw[1], where)
            if low > high:
                raise SqueezeError(f"{where}={list(raw)!r} is an empty range: expected low <= high")
            return type(default)(low, high, default.log)
        if isinstance(raw, dict):
            unknown = sorted(set(raw) - {"low", "high", "log"})
            if unknown:
                raise SqueezeError(f"unknown key {unknown[0]!r} in {where}: expected low, high, log")
            low = number(raw.get("low", default.low), where)
            high = number(raw.get("high", default.high), where)
            if low > high:
                raise SqueezeError(f"{where} low={low} > high={high} is an empty range: expected low <= high")
            log = raw.get("log", default.log)
            if not isinstance(log, bool):
                raise SqueezeError(f"{where}.log={log!r}: expected true or false")
            try:
                return type(default)(low, high, log)
            except SqueezeError as exc:
                raise SqueezeError(f"{where}: {exc}") from None
        return Fixed(number(raw, where))
    choices = allowed or (default.choices if isinstance(default, Choice) else (default.value,))
    values = raw.get("choices") if isinstance(raw, dict) and set(raw) == {"choices"} else raw
    if isinstance(values, (list, tuple)):
        if not values:
            raise SqueezeError(f"{where}=[] is an empty choice list: expected some of {list(choices)}")
        picked = tuple(_one_of(v, choices, where) for v in values)
        if len(set(map(repr, picked))) != len(picked):
            raise SqueezeError(f"{where}={list(values)!r} repeats a value")
        return Choice(picked) if len(picked) > 1 else Fixed(picked[0])
    if isinstance(values, dict):
        raise SqueezeError(f"{where}={values!r}: expected one of {list(choices)} or a list of them")
    return Fixed(_one_of(values, choices, where))


def _one_of(value: Any, choices: tuple, where: str) -> Any:
    for c in choices:
        if type(value) is type(c) and value == c:
            return c
    raise SqueezeError(f"{where}={value!r} is not known: expected one of {list(choices)}")


def _int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise SqueezeError(f"{where}={value!r}: expected an integer")
    return int(value)


def _float(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SqueezeError(f"{where}={value!r}: expected a finite number")
    return float(value)


def check_setting_keys(setting: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    """A layer's space setting may only name the knobs in ``allowed``."""
    unknown = sorted(set(setting) - set(allowed))
    if unknown:
        expected = f"{', '.join(allowed[:-1])} or {allowed[-1]}" if len(allowed) > 1 else allowed[0]
        raise SqueezeError(f"unknown knob {unknown[0]!r} in {where}: expected {expected}")


def named_layers(cfg: Mapping[str, Any], stage: str, layers: Sequence[str], what: str = "") -> Mapping[str, Any]:
    """The ``layers:`` mapping of a stage's ``space:`` entry; a layer not among ``layers`` is an error."""
    named = cfg.get("layers") or {}
    if not isinstance(named, Mapping):
        raise SqueezeError(f"space.{stage}.layers is {type(named).__name__}: expected a mapping of layer name to settings")
    for name in named:
        if name not in layers:
            raise SqueezeError(f"unknown layer {name!r} in space.{stage}.layers: expected one of {list(layers)}{what}")
    return named


def per_layer(cfg: Mapping[str, Any], stage: str, layers: Sequence[str], default: Any) -> list[tuple[str, dict[str, Any], str]]:
    """Each layer's setting in a stage's ``space:`` entry: ``(layer, setting, where)`` in ``layers`` order.

    A layer named in ``cfg["layers"]`` takes its own setting, every other one ``cfg["default"]``
    (else ``default``); ``false`` leaves the layer out. A named layer not in ``layers`` is an error.
    """
    named = named_layers(cfg, stage, layers)
    fallback = cfg.get("default", default)
    out = []
    for name in layers:
        setting = named.get(name, fallback)
        if setting is False:
            continue
        if setting is None or setting is True:
            setting = {}
        where = f"space.{stage}.{'layers.' + name if name in named else 'default'}"
        if not isinstance(setting, Mapping):
            raise SqueezeError(f"{where}={setting!r}: expected a mapping or false")
        out.append((name, dict(setting), where))
    return out
