"""Knobs of the ``neurons`` stage (removing dead neurons and unread input features): whether linear
layers gather only the input features they use. Opt-in with ``neurons: true`` (or a mapping)."""

from __future__ import annotations

from typing import Any, Mapping

from squeezetune.spaces.knobs import Choice, IntRange, Knob, check_setting_keys


def neuron_knobs(cfg: Mapping[str, Any]) -> list[Knob]:
    """The ``neurons.*`` knobs for the user's ``space.neurons`` entry."""
    from squeezetune.spaces.space import _recipe_knob

    check_setting_keys(cfg, ("inputs", "images"), "space.neurons")
    knobs = [_recipe_knob("neurons.inputs", cfg.get("inputs"), Choice((True,)), ("neurons", "inputs"), (True, False))]
    if "images" in cfg:
        knobs.append(_recipe_knob("neurons.images", cfg["images"], IntRange(256, 256), ("neurons", "images")))
    return knobs
