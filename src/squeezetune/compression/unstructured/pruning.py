"""Magnitude pruning with masks that hold through fine-tuning (Deep Compression, step 1).

Every compressible tensor (:mod:`squeezetune.compression.tensors`: the weights of linear,
convolutional, embedding, attention and recurrent layers, and any other weight matrix) is pruned by
the magnitude of its weight groups. The amount is a count of weights to keep, a fraction, or Deep
Compression's threshold ``quality * std(weights)``. The granularity sets the group, read on the
tensor's first two axes (outputs, inputs) and its kernel:

========  ====================================================
weight    one weight
vector    one kernel row, ``w[o, i, ..., :]`` (a single weight for a matrix)
kernel    one whole kernel, ``w[o, i]`` (a single weight for a matrix)
filter    one output filter, ``w[o]`` (an output row for a matrix)
========  ====================================================

A pruned tensor carries a :class:`Mask` parametrization (``torch.nn.utils.parametrize``): the
stored original has its pruned entries set to zero, the tensor is ``original * mask``, so pruned
weights are exactly zero, get zero gradient, and no optimizer (momentum, weight decay) can
revive them. :func:`bake` removes the parametrizations and leaves plain tensors.

The ``prune`` stage (:class:`PruneConfig`) prunes each tensor a recipe names, or every tensor with
its ``default``.

>>> from torch import nn
>>> layer = nn.Linear(10, 4)
>>> mask = prune_layer(layer, keep=8)
>>> int(mask.sum()), int((layer.weight != 0).sum())
(8, 8)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from squeezetune.compression.stages import Context, StageConfig, register_stage
from squeezetune.compression.tensors import compressible, layer_names, setting_key
from squeezetune.errors import SqueezeError


class Granularity(str, Enum):
    WEIGHT = "weight"
    VECTOR = "vector"
    KERNEL = "kernel"
    FILTER = "filter"


class Mask(nn.Module):
    """Parametrization ``weight = original * mask`` with a fixed 0/1 mask buffer."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return original * self.mask


def _as_4d(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as (outputs, inputs, kernel rows, kernel row length); a matrix as (o, i, 1, 1)."""
    shape = weight.shape
    if weight.dim() <= 2:
        return weight.reshape(shape[0], shape[1] if weight.dim() == 2 else 1, 1, 1)
    return weight.reshape(shape[0], shape[1], -1, shape[-1])


def _group_scores(weight: torch.Tensor, granularity: Granularity) -> tuple[torch.Tensor, int]:
    """Mean absolute weight of each group, shaped to broadcast over ``weight``; and the group size."""
    w = _as_4d(weight.detach().abs())
    dims = {Granularity.WEIGHT: (), Granularity.VECTOR: (3,), Granularity.KERNEL: (2, 3), Granularity.FILTER: (1, 2, 3)}
    reduce = dims[Granularity(granularity)]
    scores = w.mean(dim=reduce, keepdim=True) if reduce else w
    return scores, w.numel() // scores.numel()


def magnitude_mask(
    weight: torch.Tensor,
    *,
    keep: int | None = None,
    quality: float | None = None,
    granularity: Granularity | str = Granularity.WEIGHT,
    name: str = "layer",
) -> torch.Tensor:
    """A 0/1 mask of ``weight``'s shape keeping its largest-magnitude groups.

    Give exactly one of ``keep`` (weights to keep; coarser granularities keep
    ``ceil(keep / group size)`` whole groups) or ``quality`` (keep groups whose mean magnitude
    exceeds ``quality * std(weight)``). Ties are broken by position, so the count is exact.
    """
    granularity = Granularity(granularity)
    if (keep is None) == (quality is None):
        raise SqueezeError(f"layer {name!r}: give exactly one of keep or quality, got keep={keep!r} quality={quality!r}")
    scores, group = _group_scores(weight, granularity)
    n = weight.numel()
    if keep is not None:
        if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= n:
            raise SqueezeError(f"keep={keep!r} for layer {name!r} must be an integer in [1, {n}]")
        n_groups = min(math.ceil(keep / group), scores.numel())
        flat = torch.zeros(scores.numel(), dtype=torch.float32, device=weight.device)
        flat[torch.argsort(scores.flatten(), descending=True, stable=True)[:n_groups]] = 1.0
        group_mask = flat.reshape(scores.shape)
    else:
        if not (isinstance(quality, (int, float)) and math.isfinite(quality) and quality >= 0):
            raise SqueezeError(f"quality={quality!r} for layer {name!r} must be a finite number >= 0")
        group_mask = (scores > quality * weight.detach().float().std()).float()
        if group_mask.sum() == 0:
            raise SqueezeError(f"quality={quality!r} for layer {name!r} prunes every weight: expected a smaller quality")
    return group_mask.expand(_as_4d(weight).shape).reshape(weight.shape).contiguous()


def mask_of(module: nn.Module, attr: str = "weight") -> torch.Tensor | None:
    """The pruning mask (a 0/1 float tensor) on ``module.<attr>``, or ``None`` if it is not pruned."""
    if not parametrize.is_parametrized(module, attr):
        return None
    for p in module.parametrizations[attr]:
        if hasattr(p, "mask"):
            return p.mask
    return None


def apply_mask(module: nn.Module, mask: torch.Tensor, attr: str = "weight") -> None:
    """Hold ``mask`` on ``module.<attr>`` from now on (replacing any earlier parametrization)."""
    weight = getattr(module, attr)
    if mask.shape != weight.shape:
        raise SqueezeError(f"mask shape {tuple(mask.shape)} must equal the weight shape {tuple(weight.shape)}")
    if parametrize.is_parametrized(module, attr):
        parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    with torch.no_grad():
        getattr(module, attr).mul_(mask.to(weight.dtype))
    parametrize.register_parametrization(module, attr, Mask(mask.to(weight.device)))


def prune_layer(
    module: nn.Module,
    *,
    keep: int | None = None,
    quality: float | None = None,
    granularity: Granularity | str = Granularity.WEIGHT,
    name: str = "layer",
    attr: str = "weight",
) -> torch.Tensor:
    """Magnitude-prune ``module.<attr>`` in place and hold the mask; returns the mask."""
    mask = magnitude_mask(getattr(module, attr), keep=keep, quality=quality, granularity=granularity, name=name)
    apply_mask(module, mask, attr)
    return mask


def bake(model: nn.Module) -> nn.Module:
    """Replace every parametrization (masks, shared weights) by its plain current value."""
    for t in compressible(model).values():
        if parametrize.is_parametrized(t.module, t.attr):
            parametrize.remove_parametrizations(t.module, t.attr, leave_parametrized=True)
    return model


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with parametrized tensors shown as their current plain values."""
    state = {key: value for key, value in model.state_dict().items() if "parametrizations" not in key.split(".")}
    for t in compressible(model).values():
        if parametrize.is_parametrized(t.module, t.attr):
            state[t.key] = t.tensor.detach()
    return state


# -- the prune stage -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerPrune:
    """How much of one tensor to keep: exactly one of a weight count, a fraction or a quality."""

    keep: int | None = None
    keep_fraction: float | None = None
    quality: float | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("keep", "keep_fraction", "quality") if getattr(self, k) is not None]
        if len(given) != 1:
            raise SqueezeError(f"a layer's prune setting needs exactly one of keep, keep_fraction, quality; got {given or 'none'}")
        if self.keep is not None and self.keep < 1:
            raise SqueezeError(f"keep={self.keep!r} weights must be an integer >= 1")
        if self.keep_fraction is not None and not 0 < self.keep_fraction <= 1:
            raise SqueezeError(f"keep_fraction={self.keep_fraction!r} must be in (0, 1]")
        if self.quality is not None and self.quality < 0:
            raise SqueezeError(f"quality={self.quality!r} must be >= 0 (a multiple of the weights' std)")

    def resolve(self, n: int) -> dict[str, Any]:
        """Arguments for :func:`prune_layer` on a tensor of ``n`` weights."""
        if self.keep_fraction is not None:
            return {"keep": max(1, round(self.keep_fraction * n))}
        return {"keep": self.keep} if self.keep is not None else {"quality": self.quality}


@dataclass(frozen=True)
class PruneConfig(StageConfig):
    """Magnitude pruning of the named tensors (``layers``), and of every other one by ``default``.

    ``default`` takes ``keep_fraction`` or ``quality`` (a count would mean the same number of
    weights in tensors of any size); ``layers`` may also give ``keep``, a count of weights.
    """

    stage: ClassVar[str] = "prune"
    granularity: Granularity = Granularity.WEIGHT
    default: LayerPrune | None = None
    layers: dict[str, LayerPrune] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.default is not None and self.default.keep is not None:
            raise SqueezeError(f"prune.default.keep={self.default.keep!r}: a default for every layer takes keep_fraction or quality, not a count of weights")

    def for_layer(self, name: str, replaced: str = "") -> LayerPrune | None:
        """The setting of tensor ``name`` (a factor of layer ``replaced``, if a decomposition made it)."""
        key = setting_key(self.layers, name, replaced)
        return self.layers[key] if key is not None else self.default

    def validate(self, model: nn.Module, example: torch.Tensor, *, exact: bool = True) -> None:
        check_layers(self.stage, self.layers, model, exact=exact)

    def preview(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        import copy

        from squeezetune.compression.stages import Context

        return prune(copy.deepcopy(model), self, Context(teacher=model, example=example))

    def needs_data(self) -> bool:
        return False


def check_layers(stage: str, layers: dict[str, LayerPrune], model: nn.Module, *, exact: bool = True) -> None:
    """Every tensor ``layers`` names exists in ``model`` (a replaced layer's name covers its factors)
    and (``exact``) can keep its count; one-line errors."""
    targets = compressible(model)
    known = layer_names(targets)
    for name in layers:
        if name not in known:
            raise SqueezeError(f"unknown layer {name!r} in {stage}.layers: expected one of {known}")
    if not exact:
        return
    for t in targets.values():
        key = setting_key(layers, t.name, t.replaced)
        keep = layers[key].keep if key is not None else None
        if keep is not None and not 1 <= keep <= t.numel:
            raise SqueezeError(f"keep={keep!r} for layer {t.name!r} must be an integer in [1, {t.numel}]")


@register_stage(PruneConfig)
def prune(model: nn.Module, config: PruneConfig, ctx: Context) -> nn.Module:
    """Prune every tensor the config covers by magnitude, holding the masks."""
    for name, t in compressible(model).items():
        setting = config.for_layer(name, t.replaced)
        if setting is not None:
            prune_layer(t.module, granularity=config.granularity, name=name, attr=t.attr, **setting.resolve(t.numel))
    return model
