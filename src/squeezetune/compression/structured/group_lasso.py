"""Group lasso on rows and columns during training, so that surviving weights cluster into few
neurons and input features (Wen et al. 2016; Scardapane et al. 2017).

The penalty is ``strength * sum_g sqrt(|g|) * ||w_g||_2`` over the groups of every compressible
tensor: its *rows* (one output unit: a linear layer's row, a convolution's filter ``w[o]``) and its
*columns* (one input unit: a linear layer's column, a convolution's input channel ``w[:, i]``). It
is applied as the proximal step of that penalty after every optimizer step, which sets a group to
exactly zero once its norm falls below ``lr * strength * sqrt(|g|)``; whole rows and columns then
disappear, and :mod:`.neurons` removes them from the architecture. Pruned weights stay zero (the
step scales the stored originals, whose pruned entries are zero); shared tensors are left alone.

The ``finetune`` stage takes it as ``group_lasso`` (the strength) and ``group_lasso_groups``.

>>> from torch import nn
>>> layer = nn.Linear(8, 4)
>>> GroupLasso(layer, strength=10.0, groups="rows").step(lr=1.0)
>>> int((layer.weight.abs().sum(1) == 0).sum())
4
"""

from __future__ import annotations

import math
from enum import Enum

import torch
from torch import nn
from torch.nn.utils import parametrize

from squeezetune.compression.tensors import compressible


class LassoGroups(str, Enum):
    ROWS = "rows"
    COLUMNS = "columns"
    BOTH = "both"


def _stored(module: nn.Module, attr: str) -> torch.Tensor | None:
    """The tensor training updates for ``module.<attr>``: the original under a mask, else the
    parameter itself; ``None`` for a shared (codebook) tensor."""
    if not parametrize.is_parametrized(module, attr):
        return getattr(module, attr)
    if any(hasattr(p, "codebook") for p in module.parametrizations[attr]):
        return None
    return module.parametrizations[attr].original


class GroupLasso:
    """The proximal step of the row/column group lasso on every compressible tensor of ``model``."""

    def __init__(self, model: nn.Module, strength: float, groups: LassoGroups | str = LassoGroups.BOTH) -> None:
        self.strength = float(strength)
        self.groups = LassoGroups(groups)
        self.tensors = [w for t in compressible(model).values() if (w := _stored(t.module, t.attr)) is not None]

    @staticmethod
    def _shrink(w: torch.Tensor, dims: tuple[int, ...], amount: float) -> None:
        norms = w.norm(dim=dims, keepdim=True)
        size = math.prod(w.shape[d] for d in dims)
        w.mul_(torch.clamp(1.0 - amount * math.sqrt(size) / norms.clamp_min(1e-30), min=0.0))

    @torch.no_grad()
    def step(self, lr: float) -> None:
        """Shrink every row and/or column group toward zero by ``lr * strength * sqrt(size)``."""
        amount = lr * self.strength
        for w in self.tensors:
            v = w.reshape(w.shape[0], w.shape[1] if w.dim() > 1 else 1, -1)
            if self.groups in (LassoGroups.ROWS, LassoGroups.BOTH):
                self._shrink(v, (1, 2), amount)
            if self.groups in (LassoGroups.COLUMNS, LassoGroups.BOTH) and w.dim() > 1:
                self._shrink(v, (0, 2), amount)

    @torch.no_grad()
    def penalty(self) -> float:
        """The penalty's current value."""
        total = 0.0
        for w in self.tensors:
            v = w.reshape(w.shape[0], w.shape[1] if w.dim() > 1 else 1, -1)
            if self.groups in (LassoGroups.ROWS, LassoGroups.BOTH):
                total += math.sqrt(v.shape[1] * v.shape[2]) * float(v.norm(dim=(1, 2)).sum())
            if self.groups in (LassoGroups.COLUMNS, LassoGroups.BOTH) and w.dim() > 1:
                total += math.sqrt(v.shape[0] * v.shape[2]) * float(v.norm(dim=(0, 2)).sum())
        return self.strength * total
