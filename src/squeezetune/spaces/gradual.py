"""Knobs of the ``gradual_prune`` stage: each tensor's final kept fraction (or one global budget),
the training it prunes during, and the schedule.

Used by :func:`~squeezetune.spaces.space.derive_space` when the user's space has a
``gradual_prune:`` entry (it is opt-in: it replaces ``prune`` + ``finetune``)::

    space:
      prune: false
      finetune: false
      gradual_prune:
        default: {keep_fraction: [0.005, 0.3]}     # per tensor, log-scaled (the default)
        budget: {keep_fraction: [0.005, 0.1], allocation: [sensitivity, magnitude]}   # or one global budget
        finetune: {epochs: [10, 40], group_lasso: [1.0e-6, 1.0e-3]}
        ramp: [0.4, 0.8]
        regrow: [false, true]

The fine-tuning knobs are those of ``finetune`` (any :class:`~squeezetune.compression.finetune.FinetuneConfig`
field), landing under ``gradual_prune.finetune``; its epochs default to ``[10, 30]``, distillation on.
In a search with a fidelity (the default) and no ``finetune`` stage, the epochs are the fidelity's
(``fidelity.epochs``, set by :func:`~squeezetune.search.runner.space_config`), so a space names them
only with ``fidelity: null``, as in the example above.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Mapping

from squeezetune.compression.finetune import FinetuneConfig
from squeezetune.compression.unstructured.pruning import Granularity
from squeezetune.compression.unstructured.sensitivity import Allocation
from squeezetune.errors import SqueezeError
from squeezetune.spaces.knobs import Choice, Fixed, FloatRange, IntRange, Knob, check_setting_keys

KEEP_FRACTION = (0.005, 0.3)
"""Default range of each tensor's final kept fraction (log-scaled): gradual pruning goes further than one shot."""
BUDGET = (0.005, 0.2)
"""Default range of a global budget's kept fraction (log-scaled)."""
FINETUNE = {"epochs": IntRange(10, 30), "distill": Choice((True,)), "lr": FloatRange(0.02, 0.02, log=True)}
KEYS = ("granularity", "default", "layers", "budget", "finetune", "begin", "ramp", "every", "regrow")
_SCHEDULE = {"begin": FloatRange(0.0, 0.0), "ramp": FloatRange(0.75, 0.75), "every": IntRange(50, 50), "regrow": Choice((False,))}


def gradual_knobs(scope: Any, cfg: Mapping[str, Any]) -> list[Knob]:
    """The ``gradual_prune.*`` knobs for the user's ``space.gradual_prune`` entry."""
    from squeezetune.spaces.space import _keep_domain, _layer_knobs, _recipe_knob, finetune_knobs

    check_setting_keys(cfg, KEYS, "space.gradual_prune")
    granularities = tuple(g.value for g in Granularity)
    knobs = [_recipe_knob("gradual_prune.granularity", cfg.get("granularity"), Fixed(Granularity.WEIGHT.value), ("gradual_prune", "granularity"), granularities)]
    keep = partial(_keep_domain, stage="gradual_prune", default=KEEP_FRACTION)
    budget = cfg.get("budget")
    if budget is not None and budget is not False:
        if cfg.get("default") is not None:
            raise SqueezeError("space.gradual_prune gives both default and budget: expected one rule for the layers not named")
        if not isinstance(budget, Mapping):
            raise SqueezeError(f"space.gradual_prune.budget={budget!r}: expected a mapping with keep_fraction and allocation")
        check_setting_keys(budget, ("keep_fraction", "allocation"), "space.gradual_prune.budget")
        allocations = tuple(a.value for a in Allocation)
        knobs.append(_recipe_knob("gradual_prune.budget.keep_fraction", budget.get("keep_fraction"), FloatRange(*BUDGET, log=True), ("gradual_prune", "budget", "keep_fraction")))
        knobs.append(_recipe_knob("gradual_prune.budget.allocation", budget.get("allocation"), Fixed(Allocation.SENSITIVITY.value), ("gradual_prune", "budget", "allocation"), allocations))
        knobs += _layer_knobs("gradual_prune", {"layers": cfg.get("layers") or {}, "default": False}, scope.layers, keep, {})
    else:
        knobs += _layer_knobs("gradual_prune", cfg, scope.layers, keep, scope.groups)
    ft = cfg.get("finetune") or {}
    if not isinstance(ft, Mapping):
        raise SqueezeError(f"space.gradual_prune.finetune={ft!r}: expected a mapping of fine-tuning knobs")
    check_setting_keys(ft, tuple(f for f in FinetuneConfig.__dataclass_fields__), "space.gradual_prune.finetune")
    knobs += finetune_knobs(("gradual_prune", "finetune"), ft, FINETUNE)
    for name, base in _SCHEDULE.items():
        if name in cfg:
            allowed = (False, True) if name == "regrow" else ()
            knobs.append(_recipe_knob(f"gradual_prune.{name}", cfg[name], base, ("gradual_prune", name), allowed))
    return knobs
