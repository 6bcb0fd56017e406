"""Weight sharing by per-tensor 1-D k-means (Deep Compression, step 2).

The surviving weights of a tensor are clustered into ``k`` centroids; pruned weights take no part
and stay exactly zero. The tensor then carries a :class:`SharedWeight` parametrization:
``weight = codebook[labels] * mask``. Because the weight is computed by indexing the codebook,
autograd gives each centroid the *sum* of its members' gradients, which is Deep Compression's
centroid fine-tuning update; the labels never change.

The ``share`` stage (:class:`ShareConfig`) shares each tensor a recipe names, or every tensor with
its ``default``. A ``default`` cluster count is capped at each tensor's surviving weights (and a
tensor left with a single weight keeps it unshared), so one setting fits tensors of every size;
a count given for a named layer must fit that layer, unless ``fit: true`` caps those too.

>>> from torch import nn
>>> layer = nn.Linear(20, 10)
>>> shared = share_layer(layer, k=4)
>>> len(torch.unique(layer.weight))
4
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from squeezetune.compression.stages import Context, StageConfig, register_stage
from squeezetune.compression.tensors import compressible, layer_names, setting_key
from squeezetune.compression.unstructured.kmeans import Init, kmeans_1d
from squeezetune.compression.unstructured.pruning import mask_of
from squeezetune.errors import SqueezeError


class SharedWeight(nn.Module):
    """Parametrization ``weight = codebook[labels] * mask`` with a trainable codebook."""

    def __init__(self, codebook: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> None:
        super().__init__()
        self.codebook = nn.Parameter(codebook.to(torch.float32))
        self.register_buffer("labels", labels.to(torch.int64))
        self.register_buffer("mask", mask.to(torch.float32))

    def forward(self, original: torch.Tensor) -> torch.Tensor:
        return self.codebook[self.labels] * self.mask


def shared_of(module: nn.Module, attr: str = "weight") -> SharedWeight | None:
    """The :class:`SharedWeight` parametrization on ``module.<attr>``, or ``None``."""
    if not parametrize.is_parametrized(module, attr):
        return None
    return next((p for p in module.parametrizations[attr] if isinstance(p, SharedWeight)), None)


def surviving(module: nn.Module, attr: str = "weight") -> int:
    """How many weights of ``module.<attr>`` are not pruned."""
    mask = mask_of(module, attr)
    return int(mask.sum()) if mask is not None else getattr(module, attr).numel()


def share_layer(
    module: nn.Module,
    *,
    k: int,
    init: Init | str = Init.LINEAR,
    max_iter: int = 20,
    seed: int = 0,
    name: str = "layer",
    attr: str = "weight",
) -> SharedWeight:
    """Cluster the surviving weights of ``module.<attr>`` into ``k`` shared values, in place.

    ``k`` must be in ``[2, surviving weights]``. Returns the parametrization that now holds the
    codebook, labels and mask.
    """
    weight = getattr(module, attr).detach()
    mask = mask_of(module, attr)
    if mask is None:
        mask = torch.ones_like(weight)
    alive = mask.bool()
    n_alive = int(alive.sum())
    if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= n_alive:
        raise SqueezeError(f"k={k!r} clusters for layer {name!r} must be an integer in [2, {n_alive}] (its surviving weights)")
    values = weight[alive].float().cpu().numpy()
    centroids, member = kmeans_1d(values, k, init=init, max_iter=max_iter, seed=seed)
    labels = torch.zeros(weight.shape, dtype=torch.int64)
    labels[alive.cpu()] = torch.from_numpy(np.asarray(member, dtype=np.int64))
    shared = SharedWeight(torch.from_numpy(np.asarray(centroids, dtype=np.float32)), labels, mask.cpu()).to(weight.device)
    if parametrize.is_parametrized(module, attr):
        parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    parametrize.register_parametrization(module, attr, shared)
    return shared


# -- the share stage -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerShare:
    """The number of shared values of one tensor: ``bits`` (2**bits clusters) or ``clusters``."""

    bits: int | None = None
    clusters: int | None = None

    def __post_init__(self) -> None:
        if (self.bits is None) == (self.clusters is None):
            raise SqueezeError(f"a layer's share setting needs exactly one of bits, clusters; got bits={self.bits!r} clusters={self.clusters!r}")
        if self.bits is not None and not 1 <= self.bits <= 16:
            raise SqueezeError(f"bits={self.bits!r} must be an integer in [1, 16]")
        if self.clusters is not None and not 2 <= self.clusters <= 1 << 16:
            raise SqueezeError(f"clusters={self.clusters!r} must be an integer in [2, 65536]")

    @property
    def k(self) -> int:
        return 2**self.bits if self.bits is not None else self.clusters


@dataclass(frozen=True)
class ShareConfig(StageConfig):
    """k-means weight sharing of the named tensors (``layers``), and of every other one by ``default``."""

    stage: ClassVar[str] = "share"
    init: Init = Init.LINEAR
    default: LayerShare | None = None
    layers: dict[str, LayerShare] = field(default_factory=dict)
    max_iter: int = 20
    fit: bool = False
    """Cap the clusters of named layers at their surviving weights too, instead of failing."""

    def __post_init__(self) -> None:
        if self.max_iter < 1:
            raise SqueezeError(f"share.max_iter={self.max_iter!r} must be an integer >= 1")

    def for_layer(self, name: str, replaced: str = "") -> LayerShare | None:
        """The setting of tensor ``name`` (a factor of layer ``replaced``, if a decomposition made it)."""
        key = setting_key(self.layers, name, replaced)
        return self.layers[key] if key is not None else self.default

    def clusters(self, name: str, alive: int, replaced: str = "") -> int | None:
        """The cluster count for tensor ``name`` with ``alive`` surviving weights (``None``: leave it unshared)."""
        setting = self.for_layer(name, replaced)
        if setting is None:
            return None
        fit = self.fit or setting_key(self.layers, name, replaced) is None
        k = min(setting.k, alive) if fit else setting.k
        if fit and k < 2:
            return None
        if not 2 <= k <= alive:
            raise SqueezeError(f"k={k!r} clusters for layer {name!r} must be an integer in [2, {alive}] (its surviving weights)")
        return k

    def validate(self, model: nn.Module, example: torch.Tensor, *, exact: bool = True) -> None:
        targets = compressible(model)
        known = layer_names(targets)
        for name in self.layers:
            if name not in known:
                raise SqueezeError(f"unknown layer {name!r} in share.layers: expected one of {known}")
        if exact:
            for name, t in targets.items():
                self.clusters(name, surviving(t.module, t.attr), t.replaced)

    def needs_data(self) -> bool:
        return False


@register_stage(ShareConfig)
def share(model: nn.Module, config: ShareConfig, ctx: Context) -> nn.Module:
    """Replace each covered tensor's surviving weights by their nearest of k shared values."""
    for name, t in compressible(model).items():
        k = config.clusters(name, surviving(t.module, t.attr), t.replaced)
        if k is not None:
            share_layer(t.module, k=k, init=config.init, max_iter=config.max_iter, seed=ctx.seed, name=name, attr=t.attr)
    return model
