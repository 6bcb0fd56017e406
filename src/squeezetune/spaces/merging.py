"""Neuron-merging knobs: per mergeable layer, the fraction of its neurons merged away.

Used by :func:`~squeezetune.spaces.space.derive_space` when the user's space has a ``merge:``
entry (opt-in: it removes neurons)::

    space:
      merge:
        score: [saliency, distance]          # or one of them (default saliency)
        default: {remove_fraction: [0.0, 0.5]}
        layers:
          fc2: false                         # left whole
          fc1: {remove_fraction: [0.1, 0.3]}

Mergeable layers come from :func:`squeezetune.compression.merging.mergeable_layers`. The values land
in the recipe's ``merge`` stage as ``{score, layers: {name: {remove_fraction}}}``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from squeezetune.compression.measure import DEFAULT_INPUT_SHAPE
from squeezetune.errors import SqueezeError
from squeezetune.spaces.knobs import Choice, Fixed, FloatRange, Knob, check_setting_keys, parse_domain, per_layer

REMOVE_FRACTION = (0.0, 0.5)
"""Default range of the fraction of each layer's neurons a trial merges away."""


def merge_knobs(model: nn.Module, cfg: Any, example: Any = None) -> list[Knob]:
    """The ``merge.*`` knobs of ``model`` for the user's ``space.merge`` entry."""
    from squeezetune.compression.merging import Score, mergeable_layers

    cfg = dict(cfg or {})
    check_setting_keys(cfg, ("score", "default", "layers"), "space.merge")
    layers = mergeable_layers(model, example if example is not None else DEFAULT_INPUT_SHAPE)
    if not layers:
        raise SqueezeError("space.merge: this model has no layer whose neurons can merge (a Linear or Conv2d with no BatchNorm or residual add after it)")
    scores = tuple(s.value for s in Score)
    score = parse_domain(cfg["score"], Choice(scores), "space.merge.score", scores) if "score" in cfg else Fixed(Score.SALIENCY.value)
    knobs = [Knob("merge.score", score, ("merge", "score"))]
    for name, setting, where in per_layer(cfg, "merge", list(layers), {}):
        check_setting_keys(setting, ("remove_fraction",), where)
        frac = parse_domain(setting.get("remove_fraction", list(REMOVE_FRACTION)), FloatRange(*REMOVE_FRACTION), f"{where}.remove_fraction")
        lo, hi = Knob("_", frac).corners()
        if not 0 <= lo <= hi < 1:
            raise SqueezeError(f"{where}.remove_fraction=[{lo}, {hi}] must lie in [0, 1): a layer keeps at least one neuron")
        knobs.append(Knob(f"merge.{name}.remove_fraction", frac, ("merge", "layers", name, "remove_fraction")))
    return knobs
