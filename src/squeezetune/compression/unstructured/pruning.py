"""Magnitude pruning with masks that hold through fine-tuning (Deep Compression, step 1).

Each prunable layer (every ``nn.Linear`` and ``nn.Conv2d``) is pruned by the magnitude of its
weight groups. The amount is a count of weights to keep (what a search samples) or Deep
Compression's threshold ``quality * std(weights)``. The granularity sets the group:

========  ====================================================
weight    one weight
vector    one kernel row, ``w[o, i, r, :]`` (a single weight for ``nn.Linear``)
kernel    one k x k kernel, ``w[o, i]`` (a single weight for ``nn.Linear``)
filter    one output filter, ``w[o]`` (an output row for ``nn.Linear``)
========  ====================================================

A pruned layer carries a :class:`Mask` parametrization (``torch.nn.utils.parametrize``): the
stored original has its pruned entries set to zero, the layer's ``weight`` is ``original * mask``,
so pruned weights are exactly zero, get zero gradient, and no optimizer (momentum, weight decay)
can revive them. :func:`bake` removes the parametrizations and leaves plain tensors.

>>> from torch import nn
>>> layer = nn.Linear(10, 4)
>>> mask = prune_layer(layer, keep=8)
>>> int(mask.sum()), int((layer.weight != 0).sum())
(8, 8)
"""

from __future__ import annotations

import math
from enum import Enum

import torch
from torch import nn
from torch.nn.utils import parametrize

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


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Linear`` and ``nn.Conv2d`` of ``model`` by qualified name, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The prunable layer ``name`` of ``model``; a :class:`SqueezeError` names the choices otherwise."""
    layers = prunable_layers(model)
    if name not in layers:
        raise SqueezeError(f"unknown layer {name!r}: expected one of {list(layers)}")
    return layers[name]


def _as_4d(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], weight.shape[1], *(weight.shape[2:] or (1, 1)))


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


def mask_of(layer: nn.Module) -> torch.Tensor | None:
    """The layer's pruning mask (a 0/1 float tensor), or ``None`` if it is not pruned."""
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    for p in layer.parametrizations.weight:
        if hasattr(p, "mask"):
            return p.mask
    return None


def apply_mask(layer: nn.Module, mask: torch.Tensor) -> None:
    """Hold ``mask`` on ``layer.weight`` from now on (replacing any earlier parametrization)."""
    if mask.shape != layer.weight.shape:
        raise SqueezeError(f"mask shape {tuple(mask.shape)} must equal the weight shape {tuple(layer.weight.shape)}")
    if parametrize.is_parametrized(layer, "weight"):
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    with torch.no_grad():
        layer.weight.mul_(mask.to(layer.weight.dtype))
    parametrize.register_parametrization(layer, "weight", Mask(mask.to(layer.weight.device)))


def prune_layer(
    layer: nn.Module,
    *,
    keep: int | None = None,
    quality: float | None = None,
    granularity: Granularity | str = Granularity.WEIGHT,
    name: str = "layer",
) -> torch.Tensor:
    """Magnitude-prune one layer in place and hold the mask; returns the mask."""
    mask = magnitude_mask(layer.weight, keep=keep, quality=quality, granularity=granularity, name=name)
    apply_mask(layer, mask)
    return mask


def bake(model: nn.Module) -> nn.Module:
    """Replace every weight parametrization (masks, shared weights) by its plain current value."""
    for layer in prunable_layers(model).values():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return model


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with parametrized weights shown as their current plain values."""
    state = {}
    for key, value in model.state_dict().items():
        if ".parametrizations." in key:
            continue
        state[key] = value
    for name, layer in prunable_layers(model).items():
        if parametrize.is_parametrized(layer, "weight"):
            state[f"{name}.weight" if name else "weight"] = layer.weight.detach()
    return state
