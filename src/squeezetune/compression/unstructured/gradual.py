"""Pruning in steps while training: gradual (Zhu & Gupta 2017) and iterative (Han et al. 2015).

Both stages prune every tensor they cover toward a final count of kept weights, given per tensor
(``layers``, ``default``: :class:`~squeezetune.compression.unstructured.pruning.LayerPrune`) or as
one global ``budget`` split by sensitivity (:mod:`.sensitivity`), and rank weights by magnitude.

``gradual_prune`` trains once (its ``finetune`` settings) while the kept fraction of each tensor
falls along Zhu & Gupta's cubic curve, from what the tensor keeps now to its target::

    keep(t) = final + (initial - final) * (1 - (t - t0) / n)^3

with the masks recomputed every ``every`` optimizer steps over the ``ramp`` share of the training
that starts at ``begin``; the rest of the training recovers at the final sparsity. The model a
snapshot shows mid-training (what a search's rung reports, :class:`~.stages.EpochEvent`) is pruned
to the final targets at once, by magnitude, with its BatchNorm statistics re-estimated on a few
training batches (:func:`~.sensitivity.recalibrate`), so a rung measures the trial's final size and
how well its weights take that sparsity so far, not a model that is still larger. With
``regrow: true`` the masks can be revised as in Dynamic Network Surgery (Guo et al. 2016): pruned
weights keep receiving their gradient (straight through the mask) and come back when their
magnitude ranks among the kept again. A pruned weight also decays by :data:`REGROW_DECAY` per step,
so what it holds is a running sum of its recent gradients: it returns when they keep pointing the
same way, and returns at about the size of the weights it joins (unbounded, pruned weights drift
far and break the network when they are spliced back).

``iterative_prune`` is the loop of the Deep Compression seeds: prune a step, fine-tune, check the
accuracy, repeat; the kept fraction falls geometrically over ``steps`` steps. It stops early when
the accuracy (on the task's evaluation split, as every stage that measures does; the training
split for a task without one) falls below ``floor`` or more than ``max_drop`` points below the
dense teacher's, and then keeps the last step that met it.

Both leave plain :class:`~squeezetune.compression.unstructured.pruning.Mask` parametrizations, as
the ``prune`` stage does.

>>> [round(cubic_keep(p, final=0.1), 3) for p in (0.0, 0.5, 1.0)]
[1.0, 0.213, 0.1]
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from squeezetune.compression.finetune import FinetuneConfig, evaluate, train_in
from squeezetune.compression.stages import Context, StageConfig, register_stage
from squeezetune.compression.tensors import Target, compressible, copy_model, setting_key
from squeezetune.compression.unstructured.pruning import Granularity, LayerPrune, Mask, apply_mask, check_layers, magnitude_mask, mask_of
from squeezetune.compression.unstructured.sensitivity import CALIBRATION_INPUTS, Allocation, Budget, budget_counts, prediction_drift, recalibrate
from squeezetune.compression.unstructured.sharing import shared_of
from squeezetune.errors import SqueezeError

REGROW_DECAY = 0.01
"""With regrowth: the share of its value a pruned weight loses at every optimizer step."""


def cubic_keep(progress: float, final: float, initial: float = 1.0) -> float:
    """The kept fraction (or count) at ``progress`` in [0, 1] of Zhu & Gupta's cubic schedule."""
    p = min(max(progress, 0.0), 1.0)
    return final + (initial - final) * (1.0 - p) ** 3


class SurgeryMask(Mask):
    """``weight = original * mask`` whose gradient reaches every original weight, pruned or not
    (straight through the mask), so that pruned weights can grow back (Dynamic Network Surgery)."""

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original + (original * self.mask - original).detach()


# -- what to prune to ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetConfig(StageConfig):
    """The final kept weights of the tensors a pruning stage covers (shared by the stages here).

    Named tensors (``layers``) take their own setting; every other one the ``default``, or a share
    of the global ``budget`` (not both). A tensor that already carries a pruning mask counts from
    what it keeps.
    """

    granularity: Granularity = Granularity.WEIGHT
    default: LayerPrune | None = None
    layers: dict[str, LayerPrune] = field(default_factory=dict)
    budget: Budget | None = None

    def __post_init__(self) -> None:
        where = self.stage
        if self.default is not None and self.budget is not None:
            raise SqueezeError(f"{where} gives both default and budget: expected one rule for the layers not named")
        if self.default is None and self.budget is None and not self.layers:
            raise SqueezeError(f"{where} needs a target: expected default, budget or layers")
        if self.default is not None and self.default.keep is not None:
            raise SqueezeError(f"{where}.default.keep={self.default.keep!r}: a default for every layer takes keep_fraction or quality, not a count of weights")

    def validate(self, model: nn.Module, example: torch.Tensor, *, exact: bool = True) -> None:
        check_layers(self.stage, self.layers, model, exact=exact)

    def covered(self, model: nn.Module) -> dict[str, Target]:
        """The tensors the stage prunes (shared ones are left alone: their labels are fixed)."""
        out = {}
        for name, t in compressible(model).items():
            if setting_key(self.layers, name, t.replaced) is not None or self.default is not None or self.budget is not None:
                if shared_of(t.module, t.attr) is None:
                    out[name] = t
        return out

    def final_counts(self, model: nn.Module, ctx: Context) -> dict[str, int]:
        """Weights each covered tensor keeps at the end, never more than it keeps now."""
        targets = self.covered(model)
        counts: dict[str, int] = {}
        for name, t in targets.items():
            key = setting_key(self.layers, name, t.replaced)
            setting = self.layers[key] if key is not None else self.default
            if setting is None:
                continue
            resolved = setting.resolve(t.numel)
            keep = resolved.get("keep")
            if keep is None:  # a quality threshold on the weights as they are now
                keep = int(magnitude_mask(t.tensor, quality=resolved["quality"], name=name).sum())
            counts[name] = keep
        rest = [n for n in targets if n not in counts]
        if self.budget is not None and rest:
            drift, x = None, None
            if Allocation(self.budget.allocation) is Allocation.SENSITIVITY and ctx.train is not None:
                x = ctx.train.x[: self.budget.images]
                drift = prediction_drift(model, x, device=ctx.device)
                ctx.progress(f"{ctx.label}: sensitivity of {len(rest)} tensors on {len(x)} training images")
            progress = (lambda m: ctx.progress(f"{ctx.label}: {m}")) if drift is not None else None
            counts.update(budget_counts(model, self.budget, rest, drift, calibration=x, progress=progress))
        alive = {n: _alive(t) for n, t in targets.items()}
        return {n: max(1, min(k, alive[n])) for n, k in counts.items()}


def _alive(t: Target) -> int:
    mask = mask_of(t.module, t.attr)
    return int(mask.sum()) if mask is not None else t.numel


def _hold_masks(targets: dict[str, Target], surgery: bool) -> dict[str, Mask]:
    """A mask parametrization (all ones where not pruned yet) on each tensor, updated in place later."""
    held = {}
    for name, t in targets.items():
        mask = mask_of(t.module, t.attr)
        mask = mask.clone() if mask is not None else torch.ones_like(t.tensor.detach())
        apply_mask(t.module, mask, t.attr)
        if surgery:
            parametrize.remove_parametrizations(t.module, t.attr, leave_parametrized=True)
            parametrize.register_parametrization(t.module, t.attr, SurgeryMask(mask))
        held[name] = _holder(t)
    return held


def _holder(t: Target) -> Mask:
    """The :class:`Mask` parametrization on ``t``'s tensor."""
    return next(p for p in t.module.parametrizations[t.attr] if isinstance(p, Mask))


def _original(t: Target) -> torch.Tensor:
    return t.module.parametrizations[t.attr].original


@torch.no_grad()
def _set_keep(t: Target, holder: Mask, keep: int, granularity: Granularity, surgery: bool) -> None:
    """Recompute ``t``'s mask to keep its ``keep`` largest weights (all of them, pruned or not, with surgery)."""
    original = _original(t)
    scores = original if surgery else original * holder.mask
    holder.mask.copy_(magnitude_mask(scores, keep=keep, granularity=granularity, name=t.name))
    if not surgery:
        original.mul_(holder.mask)


@torch.no_grad()
def _decay_pruned(targets: dict[str, Target], held: dict[str, Mask]) -> None:
    for name, t in targets.items():
        mask = held[name].mask
        _original(t).mul_(mask + (1.0 - mask) * (1.0 - REGROW_DECAY))


def _release(targets: dict[str, Target], held: dict[str, Mask]) -> None:
    """Leave plain :class:`Mask` parametrizations with the pruned originals at zero."""
    for name, t in targets.items():
        apply_mask(t.module, held[name].mask.detach().clone(), t.attr)


# -- gradual pruning -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GradualPruneConfig(TargetConfig):
    """Pruning along a cubic schedule while training (see the module doc)."""

    stage: ClassVar[str] = "gradual_prune"
    trains: ClassVar[bool] = True
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(epochs=20, distill=True))
    begin: float = 0.0
    """Share of the training before the first pruning step."""
    ramp: float = 0.75
    """Share of the training over which the kept fraction falls to the target."""
    every: int = 50
    """Optimizer steps between mask updates."""
    regrow: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.begin < 1:
            raise SqueezeError(f"gradual_prune.begin={self.begin!r} must be in [0, 1)")
        if not 0 < self.ramp <= 1 - self.begin:
            raise SqueezeError(f"gradual_prune.ramp={self.ramp!r} must be in (0, {1 - self.begin}] (1 - begin)")
        if self.every < 1:
            raise SqueezeError(f"gradual_prune.every={self.every!r} must be an integer >= 1 (optimizer steps)")


@dataclass
class _Schedule:
    """Which optimizer steps update the masks, and the progress along the curve at each."""

    start: int
    end: int
    every: int

    def progress(self, step: int) -> float | None:
        if step < self.start or step > self.end:
            return None
        if step == self.end or (step - self.start) % self.every == 0:
            return (step - self.start) / max(self.end - self.start, 1)
        return None


def schedule_for(config: GradualPruneConfig, steps_per_epoch: int) -> _Schedule:
    total = config.finetune.epochs * steps_per_epoch
    start = round(config.begin * total)
    return _Schedule(start, max(start, round((config.begin + config.ramp) * total)), config.every)


@register_stage(GradualPruneConfig)
def gradual_prune(model: nn.Module, config: GradualPruneConfig, ctx: Context) -> nn.Module:
    """Prune toward the targets along the cubic schedule while fine-tuning."""
    data = ctx.need_train("gradual_prune")
    finals = config.final_counts(model, ctx)
    targets = {n: t for n, t in config.covered(model).items() if n in finals}
    initial = {n: _alive(t) for n, t in targets.items()}
    held = _hold_masks(targets, config.regrow)

    def update(progress: float) -> None:
        for name, t in targets.items():
            keep = round(cubic_keep(progress, finals[name], initial[name]))
            _set_keep(t, held[name], keep, config.granularity, config.regrow)

    ft = config.finetune
    if ctx.snapshot is not None:
        snapshot = ctx.snapshot
        calibration = data.x[:CALIBRATION_INPUTS]
        ctx = dataclasses.replace(ctx, snapshot=lambda m: snapshot(recalibrate(_at_targets(m, targets, finals, config.granularity, config.regrow), calibration)))
    schedule = schedule_for(config, math.ceil(len(data) / ft.batch_size))
    step = [0]

    def after_step() -> None:
        step[0] += 1
        if config.regrow:
            _decay_pruned(targets, held)
        p = schedule.progress(step[0])
        if p is not None:
            update(p)

    ctx.progress(f"{ctx.label}: {len(targets)} tensors to {sum(finals.values()):,} of {sum(t.numel for t in targets.values()):,} weights over steps {schedule.start}-{schedule.end}")
    update(0.0 if ft.epochs else 1.0)
    train_in(ctx, model, ft, after_step=after_step, note=lambda: f" kept {sum(int(h.mask.sum()) for h in held.values()):,}")
    update(1.0)
    _release(targets, held)
    return model


@torch.no_grad()
def _at_targets(model: nn.Module, targets: dict[str, Target], finals: dict[str, int], granularity: Granularity, surgery: bool) -> nn.Module:
    """A copy of ``model`` with every covered tensor pruned to its final count now, ranked as the
    stage's last mask update ranks them."""
    work = copy_model(model)
    for name, t in targets.items():
        there = dataclasses.replace(t, module=work.get_submodule(t.module_name))
        _set_keep(there, _holder(there), finals[name], granularity, surgery)
    return work


# -- iterative pruning ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IterativePruneConfig(TargetConfig):
    """Prune a step, fine-tune, check; repeat until the target or the accuracy floor (module doc)."""

    stage: ClassVar[str] = "iterative_prune"
    trains: ClassVar[bool] = True
    steps: int = 5
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(epochs=2, distill=True))
    """The fine-tuning after each step."""
    floor: float | None = None
    """Stop when the accuracy falls below this fraction."""
    max_drop: float | None = None
    """Stop when the accuracy falls more than this many points below the dense teacher's."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 1:
            raise SqueezeError(f"iterative_prune.steps={self.steps!r} must be an integer >= 1")
        if self.floor is not None and not 0 <= self.floor <= 1:
            raise SqueezeError(f"iterative_prune.floor={self.floor!r} must be an accuracy in [0, 1]")
        if self.max_drop is not None and not self.max_drop >= 0:
            raise SqueezeError(f"iterative_prune.max_drop={self.max_drop!r} must be >= 0 (accuracy points)")


@register_stage(IterativePruneConfig)
def iterative_prune(model: nn.Module, config: IterativePruneConfig, ctx: Context) -> nn.Module:
    """Prune, fine-tune and check in steps; keeps the last step that met the floor."""
    data = ctx.need_train("iterative_prune")
    check = ctx.eval if ctx.eval is not None else data
    finals = config.final_counts(model, ctx)
    targets = {n: t for n, t in config.covered(model).items() if n in finals}
    initial = {n: _alive(t) for n, t in targets.items()}
    held = _hold_masks(targets, surgery=False)
    floor = config.floor
    if config.max_drop is not None:
        dense = evaluate(ctx.teacher, check, device=ctx.device)
        floor = max(floor or 0.0, dense - config.max_drop / 100)
    ft = config.finetune
    last_good = copy.deepcopy(model.state_dict())
    for i in range(1, config.steps + 1):
        for name, t in targets.items():  # geometric steps from what each tensor keeps to its target
            keep = round(initial[name] * (finals[name] / initial[name]) ** (i / config.steps))
            _set_keep(t, held[name], keep, config.granularity, surgery=False)
        train_in(ctx, model, ft, epoch_offset=(i - 1) * ft.epochs, epochs=config.steps * ft.epochs, note=lambda: f" (step {i}/{config.steps})")
        kept = sum(int(h.mask.sum()) for h in held.values())
        if floor is None:
            ctx.progress(f"{ctx.label} step {i}/{config.steps}: {kept:,} weights kept")
            continue
        accuracy = evaluate(model, check, device=ctx.device)
        ctx.progress(f"{ctx.label} step {i}/{config.steps}: {kept:,} weights kept, accuracy {accuracy:.4f} (floor {floor:.4f})")
        if accuracy < floor:
            model.load_state_dict(last_good)
            ctx.progress(f"{ctx.label}: accuracy fell below the floor at step {i}; keeping step {i - 1}")
            break
        last_good = copy.deepcopy(model.state_dict())
    _release(targets, held)
    return model
