"""What every decomposition does: build factors of a given rank, fit them to the dense weights,
refit them on sampled activations, and say how MACs and parameters grow with the rank."""

from __future__ import annotations

import abc

import torch
from torch import nn

from squeezetune.compression.architecture import Factors
from squeezetune.compression.measure import layer_macs


class Technique(abc.ABC):
    """One way of replacing a layer by :class:`Factors` of a chosen rank.

    ``scale`` (where given) weighs each output channel's error, e.g. by the BatchNorm that follows:
    an error in a channel the norm multiplies by 3 costs 9 times as much.
    """

    name: str = ""
    ranked: bool = True
    """False for a replacement with no rank to choose (global pooling)."""

    @abc.abstractmethod
    def refuses(self, layer: nn.Module) -> str | None:
        """Why this technique cannot replace ``layer`` (one phrase), or ``None`` if it can."""

    @abc.abstractmethod
    def build(self, layer: nn.Module, rank: int) -> Factors:
        """Factors of ``rank`` shaped to replace ``layer`` (weights not yet fitted)."""

    @abc.abstractmethod
    def fit(self, layer: nn.Module, rank: int, scale: torch.Tensor | None = None) -> Factors:
        """Factors of ``rank`` fitted to ``layer``'s weights alone (no data)."""

    @abc.abstractmethod
    def energy(self, layer: nn.Module, scale: torch.Tensor | None = None) -> torch.Tensor:
        """Fraction of the (scaled) weights' energy each rank keeps: ``e[r]`` for ``r`` in ``0..limit``."""

    @abc.abstractmethod
    def refit(self, factors: Factors, layer: nn.Module, inp: torch.Tensor, target: torch.Tensor, rows, scale: torch.Tensor | None = None) -> None:
        """Refit ``factors`` in place by least squares so that, on input maps ``inp``, they give
        ``target`` (``layer``'s reference output); ``rows(module, inp, out)`` samples regression rows."""

    def limit(self, layer: nn.Module) -> int:
        """The largest rank whose factors hold no more parameters than ``layer``."""
        with torch.device("meta"):  # shapes only: nothing allocated or initialised
            one, two = _params(self.build(layer, 1)), _params(self.build(layer, 2))
        per_rank, dense = two - one, _params(layer)
        return max(0, (dense - (one - per_rank)) // per_rank)

    def macs(self, layer: nn.Module, rank: int, input_shape: tuple[int, ...]) -> int:
        """Multiply-accumulates of the factors at ``rank`` on one input of ``input_shape``."""
        return sum(layer_macs(self.build(layer, rank), tuple(input_shape)).values())


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def output_scale(scale: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    """``scale`` as float64 on ``like``'s device, ones when there is none; zeros are lifted to a small floor."""
    if scale is None:
        return torch.ones(n, dtype=torch.float64, device=like.device)
    s = scale.detach().abs().double().to(like.device)
    return s.clamp_min(1e-3 * float(s.max()) if len(s) and float(s.max()) > 0 else 1.0)


def cumulative_energy(S: torch.Tensor) -> torch.Tensor:
    """``e[r]``: the fraction of squared singular values ``S`` (descending) that the first ``r`` keep."""
    e = torch.cumsum(S**2, 0) / (S**2).sum().clamp_min(1e-30)
    return torch.cat([torch.zeros(1, dtype=e.dtype), e.cpu()])


def balance(first: torch.Tensor, second: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rescale each rank component so that its slice of ``first`` (axis 0) and of ``second`` (axis 1) have equal norms."""
    a = first.flatten(1).norm(dim=1).clamp_min(1e-30)
    b = second.transpose(0, 1).flatten(1).norm(dim=1).clamp_min(1e-30)
    c = (b / a).sqrt()
    return first * c.reshape(-1, *([1] * (first.dim() - 1))), second / c.reshape(1, -1, *([1] * (second.dim() - 2)))
