"""Decomposition knobs: per layer, which factorisation (or none) and its rank.

Used by :func:`~squeezetune.spaces.space.derive_space` when the user's space has a ``decompose:``
entry (opt-in: it replaces layers)::

    space:
      decompose:
        method: [none, lowrank, separable, asymmetric]   # per-layer choice (a list), or one method for all
        default: {rank_fraction: [0.1, 0.7]}             # of each layer's rank limit (where the factors
                                                         # would hold as many weights as the layer)
        layers:
          conv1: false                                   # left whole
          fc: {method: lowrank, rank: [2, 6]}            # a rank range of its own
        macs_target: [0.3, 0.7]                          # instead of per-layer ranks: planned ranks

A layer gets knobs when one of the methods can replace it with a saving. The values land in the
recipe's ``decompose`` stage as ``{method, macs_target, layers: {name: {method, rank_fraction | rank}}}``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from squeezetune.errors import SqueezeError
from squeezetune.spaces.knobs import Choice, Fixed, FloatRange, IntRange, Knob, check_setting_keys, parse_domain, per_layer

RANK_FRACTION = (0.1, 0.7)
"""Default range of the fraction of each layer's rank limit a trial keeps."""
METHODS = ("none", "lowrank", "separable", "asymmetric")
"""The per-layer choices of a default space (``pool`` only when asked for)."""


def decompose_knobs(model: nn.Module, cfg: Any, example: Any) -> list[Knob]:
    """The ``decompose.*`` knobs of ``model`` for the user's ``space.decompose`` entry."""
    from squeezetune.compression.decomposition.stage import Method, technique_for

    cfg = dict(cfg or {})
    check_setting_keys(cfg, ("method", "default", "layers", "macs_target", "allocation"), "space.decompose")
    all_methods = tuple(m.value for m in Method)
    method = parse_domain(cfg.get("method", list(METHODS)), Choice(METHODS), "space.decompose.method", all_methods)
    methods = method.choices if isinstance(method, Choice) else (method.value,)
    knobs: list[Knob] = []
    if isinstance(method, Fixed):
        if method.value == "none":
            raise SqueezeError("space.decompose.method='none' decomposes nothing: expected a method or a list with one")
        knobs.append(Knob("decompose.method", method, ("decompose", "method")))
    planned = "macs_target" in cfg
    if planned:
        knobs.append(Knob("decompose.macs_target", parse_domain(cfg["macs_target"], FloatRange(0.2, 0.8), "space.decompose.macs_target"), ("decompose", "macs_target")))
        allocation = parse_domain(cfg.get("allocation", "energy"), Choice(("energy", "uniform")), "space.decompose.allocation")
        knobs.append(Knob("decompose.allocation", allocation, ("decompose", "allocation")))
    limits: dict[str, dict[str, int]] = {}
    for name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            continue
        fits = {}
        for value in methods:
            if value == "none":
                continue
            technique = technique_for(Method(value), model, name, example)
            if technique.refuses(m) is None and (not technique.ranked or technique.limit(m) >= 1):
                fits[value] = technique.limit(m) if technique.ranked else 0
        if fits:
            limits[name] = fits
    if not limits:
        raise SqueezeError(f"space.decompose: no layer of this model can be replaced by {list(methods)}")
    for name, setting, where in per_layer(cfg, "decompose", list(limits), {}):
        check_setting_keys(setting, ("method", "rank", "rank_fraction"), where)
        choices = tuple(v for v in methods if v == "none" or v in limits[name])
        if "method" in setting:
            layer_method = parse_domain(setting["method"], Choice(choices), f"{where}.method", choices)
            layer_choices = layer_method.choices if isinstance(layer_method, Choice) else (layer_method.value,)
        else:
            layer_method, layer_choices = (Choice(choices) if len(choices) > 1 else Fixed(choices[0])), choices
        if isinstance(method, Choice) or "method" in setting:
            knobs.append(Knob(f"decompose.{name}.method", layer_method, ("decompose", "layers", name, "method")))
        ranked = [v for v in layer_choices if v not in ("none", "pool")]
        if not ranked or (planned and "rank" not in setting and "rank_fraction" not in setting):
            continue
        if "rank" in setting:
            limit = min(limits[name][v] for v in ranked)
            domain = parse_domain(setting["rank"], IntRange(1, limit), f"{where}.rank")
            lo, hi = Knob("_", domain).corners()
            if not 1 <= lo <= hi <= limit:
                raise SqueezeError(f"{where}.rank=[{lo}, {hi}] for layer {name!r} must lie in [1, {limit}]: above it the factors hold more weights than the layer")
            knobs.append(Knob(f"decompose.{name}.rank", domain, ("decompose", "layers", name, "rank")))
            continue
        frac = parse_domain(setting.get("rank_fraction", list(RANK_FRACTION)), FloatRange(*RANK_FRACTION), f"{where}.rank_fraction")
        lo, hi = Knob("_", frac).corners()
        if not 0 < lo <= hi <= 1:
            raise SqueezeError(f"{where}.rank_fraction=[{lo}, {hi}] must lie in (0, 1]")
        knobs.append(Knob(f"decompose.{name}.rank_fraction", frac, ("decompose", "layers", name, "rank_fraction")))
    return knobs
