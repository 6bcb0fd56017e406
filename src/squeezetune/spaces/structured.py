"""Channel-pruning knobs: per channel group, the channels to keep or the LASSO lambda.

Used by :func:`~squeezetune.spaces.space.derive_space` when the user's space has a ``structured:``
entry (channel pruning is opt-in: it changes the architecture, so a search should ask for it)::

    space:
      structured:
        method: lasso                          # lasso | l1 (filter norm); or a list to search both
        default: {keep_fraction: [0.3, 1.0]}   # channels kept per group, or {lambda: [0.01, 1.0]}
        layers:
          conv2: {keep_channels: [10, 50]}
          fc1: {lambda: [0.05, 0.5]}           # a fixed-lambda LASSO instead of a count
          conv1: false                         # left whole

The groups come from :class:`squeezetune.compression.structured._graph.StructureGraph` (DepGraph), so
coupled layers share one knob. The values land in the recipe's reserved ``structured`` entry as
``{method, layers: {name: {keep_channels | lambda}}}``.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

from torch import nn

from squeezetune.compression.structured.stage import StructuredMethod
from squeezetune.errors import SqueezeError
from squeezetune.spaces.knobs import Choice, Fixed, FloatRange, IntRange, Knob, check_setting_keys, named_layers, parse_domain

KEEP_CHANNELS = (0.25, 1.0)
"""Default range of the fraction of each group's channels a trial keeps."""
LAMBDA = (0.01, 1.0)
"""Default LASSO lambda range (dimensionless, log-scaled) when a group is given ``lambda``."""


def structured_knobs(model: nn.Module, cfg: Any, example: Any = None) -> list[Knob]:
    """The ``structured.*`` knobs of ``model`` for the user's ``space.structured`` entry."""
    from squeezetune.compression.structured._graph import StructureGraph

    if cfg is True or cfg is None:
        cfg = {}
    if not isinstance(cfg, Mapping):
        raise SqueezeError(f"space.structured={cfg!r}: expected a mapping with keys method, default, layers")
    unknown = sorted(set(cfg) - {"method", "default", "layers", "macs_target"})
    if unknown:
        raise SqueezeError(f"unknown knob {unknown[0]!r} in space.structured: expected one of ['default', 'layers', 'macs_target', 'method']")
    graph = StructureGraph(copy.deepcopy(model), example) if example is not None else StructureGraph(copy.deepcopy(model))
    groups = {name: g.channels for name, g in graph.groups.items()}
    if not groups:
        raise graph.no_groups("space.structured")
    methods = tuple(m.value for m in StructuredMethod)
    method = parse_domain(cfg["method"], Choice(methods), "space.structured.method", methods) if "method" in cfg else Fixed("lasso")
    knobs = [Knob("structured.method", method, ("structured", "method"))]
    if "macs_target" in cfg:
        knobs.append(Knob("structured.macs_target", parse_domain(cfg["macs_target"], FloatRange(0.1, 1.0), "space.structured.macs_target"), ("structured", "macs_target")))
    named = named_layers(cfg, "structured", list(groups), " (channel groups)")
    default = cfg.get("default", {"keep_fraction": list(KEEP_CHANNELS)})
    for name, channels in groups.items():
        setting = named.get(name, default)
        if setting is False:
            continue
        knobs.append(_group_knob(name, channels, dict(setting or {}), name not in named))
    return knobs


def _group_knob(name: str, channels: int, setting: dict, from_default: bool) -> Knob:
    where = f"space.structured.{'default' if from_default else 'layers.' + name}"
    check_setting_keys(setting, ("keep_channels", "keep_fraction", "lambda"), where)
    if len(setting) != 1:
        raise SqueezeError(f"{where} needs exactly one of keep_channels, keep_fraction, lambda; got {sorted(setting) or 'none'}")
    if from_default and "keep_channels" in setting:
        raise SqueezeError(f"{where}.keep_channels: a default for every group takes keep_fraction or lambda, not a count")
    if "lambda" in setting:
        domain = parse_domain(setting["lambda"], FloatRange(*LAMBDA, log=True), f"{where}.lambda")
        if Knob("_", domain).corners()[0] < 0:
            raise SqueezeError(f"{where}.lambda must be >= 0")
        return Knob(f"structured.{name}.lambda", domain, ("structured", "layers", name, "lambda"))
    if "keep_fraction" in setting:
        frac = parse_domain(setting["keep_fraction"], FloatRange(*KEEP_CHANNELS), f"{where}.keep_fraction")
        lo, hi = Knob("_", frac).corners()
        if not 0 < lo <= hi <= 1:
            raise SqueezeError(f"{where}.keep_fraction=[{lo}, {hi}] must lie in (0, 1]")
        domain = IntRange(max(1, round(lo * channels)), max(1, round(hi * channels)))
    else:
        domain = parse_domain(setting["keep_channels"], IntRange(1, channels), f"{where}.keep_channels")
    lo, hi = Knob("_", domain).corners()
    if not 1 <= lo <= hi <= channels:
        raise SqueezeError(f"{where}.keep_channels=[{lo}, {hi}] for group {name!r} must lie in [1, {channels}]")
    return Knob(f"structured.{name}.keep_channels", domain, ("structured", "layers", name, "keep_channels"))
