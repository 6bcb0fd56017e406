"""Knobs of the ``soft_share`` stage (soft weight-sharing: a Gaussian-mixture prior with a fixed zero
component): the number of components, the zero component's share, the prior's weight and the
training. Opt-in: ``soft_share: {components: [4, 16], tau: [1.0e-3, 1.0e-1]}``."""

from __future__ import annotations

from typing import Any, Mapping

from squeezetune.compression.finetune import FinetuneConfig
from squeezetune.errors import SqueezeError
from squeezetune.spaces.knobs import Choice, FloatRange, IntRange, Knob, check_setting_keys

FINETUNE = {"epochs": IntRange(20, 20), "distill": Choice((True,)), "lr": FloatRange(0.01, 0.01, log=True)}
_KNOBS = {"components": IntRange(16, 16), "pi_zero": FloatRange(0.99, 0.99), "tau": FloatRange(0.005, 0.005, log=True), "prior_lr": FloatRange(3e-3, 3e-3, log=True)}


def soft_share_knobs(cfg: Mapping[str, Any]) -> list[Knob]:
    """The ``soft_share.*`` knobs for the user's ``space.soft_share`` entry."""
    from squeezetune.spaces.space import _recipe_knob, finetune_knobs

    check_setting_keys(cfg, (*_KNOBS, "finetune"), "space.soft_share")
    knobs = [_recipe_knob(f"soft_share.{name}", cfg.get(name), base, ("soft_share", name)) for name, base in _KNOBS.items()]
    ft = cfg.get("finetune") or {}
    if not isinstance(ft, Mapping):
        raise SqueezeError(f"space.soft_share.finetune={ft!r}: expected a mapping of fine-tuning knobs")
    check_setting_keys(ft, tuple(FinetuneConfig.__dataclass_fields__), "space.soft_share.finetune")
    return knobs + finetune_knobs(("soft_share", "finetune"), ft, FINETUNE)
