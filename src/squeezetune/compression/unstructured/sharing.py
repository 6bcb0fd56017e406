"""Weight sharing by per-layer 1-D k-means (Deep Compression, step 2).

The surviving weights of a layer are clustered into ``k`` centroids; pruned weights take no part
and stay exactly zero. The layer then carries a :class:`SharedWeight` parametrization:
``weight = codebook[labels] * mask``. Because ``weight`` is computed by indexing the codebook,
autograd gives each centroid the *sum* of its members' gradients, which is Deep Compression's
centroid fine-tuning update; the labels never change.

>>> from torch import nn
>>> layer = nn.Linear(20, 10)
>>> shared = share_layer(layer, k=4)
>>> len(torch.unique(layer.weight))
4
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

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


def shared_of(layer: nn.Module) -> SharedWeight | None:
    """The layer's :class:`SharedWeight` parametrization, or ``None``."""
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    return next((p for p in layer.parametrizations.weight if isinstance(p, SharedWeight)), None)


def share_layer(
    layer: nn.Module,
    *,
    k: int,
    init: Init | str = Init.LINEAR,
    max_iter: int = 20,
    seed: int = 0,
    name: str = "layer",
) -> SharedWeight:
    """Cluster the layer's surviving weights into ``k`` shared values, in place.

    ``k`` must be in ``[2, surviving weights]``. Returns the parametrization that now holds the
    codebook, labels and mask.
    """
    weight = layer.weight.detach()
    mask = mask_of(layer)
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
    if parametrize.is_parametrized(layer, "weight"):
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    parametrize.register_parametrization(layer, "weight", shared)
    return shared
