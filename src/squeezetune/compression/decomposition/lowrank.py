"""Low-rank decomposition: a ``Linear`` W ~ U V of rank r; a convolution split along its channels.

A ``Linear(in, out)`` becomes ``Linear(in, r, bias=False)`` then ``Linear(r, out)``; a k x k
convolution from C_in to C_out channels becomes a k x k convolution to r channels (same stride,
padding, dilation) then a 1 x 1 convolution to C_out. Both cost ``r * (in + out)`` per output
position instead of ``in * out`` (``in`` = C_in k^2 for a convolution), so a rank saves work below
``in * out / (in + out)``.

Fitting, without data: the truncated SVD of the weight matrix (C_out x C_in k^2), each output
row weighted by the scale of the BatchNorm that follows the layer. With sampled activations:
reduced-rank regression, the rank-r map from the new layer's inputs (taken from the network
rebuilt so far) to the dense layer's outputs with the least (weighted) squared error -- the
unconstrained least-squares map projected onto the top r principal directions of its fitted
outputs (Zhang et al. 2016, "Accelerating very deep convolutional networks").

>>> import torch
>>> from torch import nn
>>> layer = nn.Linear(20, 12)
>>> factors = LOWRANK.fit(layer, 4)
>>> [tuple(f.weight.shape) for f in factors]
[(4, 20), (12, 4)]
"""

from __future__ import annotations

import torch
from torch import nn

from squeezetune.compression._fit import least_squares, plain_conv_refusal
from squeezetune.compression.architecture import Factors
from squeezetune.compression.decomposition._base import Technique, balance, cumulative_energy, output_scale


def _matrix(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().double().reshape(layer.weight.shape[0], -1)


def _gathered(layer: nn.Module) -> str | None:
    """Why a layer that reads only some of its inputs (the neurons stage's) cannot be factored, or ``None``."""
    from squeezetune.compression.structured.gather import GatheredLinear

    if isinstance(layer, GatheredLinear):
        return "a GatheredLinear that reads some of its input's features (expected decompose before the neurons stage)"
    return None


class LowRank(Technique):
    name = "lowrank"

    def refuses(self, layer: nn.Module) -> str | None:
        if _gathered(layer):
            return _gathered(layer)
        return None if isinstance(layer, nn.Linear) else plain_conv_refusal(layer, (nn.Conv1d, nn.Conv2d))

    def build(self, layer: nn.Module, rank: int) -> Factors:
        bias = layer.bias is not None
        if isinstance(layer, nn.Linear):
            return Factors(nn.Linear(layer.in_features, rank, bias=False), nn.Linear(rank, layer.out_features, bias=bias))
        conv = type(layer)
        first = conv(layer.in_channels, rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation, bias=False)
        return Factors(first, conv(rank, layer.out_channels, 1, bias=bias))

    @torch.no_grad()
    def _write(self, factors: Factors, first: torch.Tensor, second: torch.Tensor, bias: torch.Tensor | None) -> Factors:
        first, second = balance(first, second)
        a, b = factors[0], factors[1]
        a.weight.copy_(first.reshape(a.weight.shape).to(a.weight.dtype))
        b.weight.copy_(second.reshape(b.weight.shape).to(b.weight.dtype))
        if bias is not None and b.bias is not None:
            b.bias.copy_(bias.to(b.bias.dtype))
        return factors

    def _svd(self, layer: nn.Module, scale: torch.Tensor | None):
        W = _matrix(layer)
        s = output_scale(scale, W.shape[0], W)
        U, S, Vh = torch.linalg.svd(W * s[:, None], full_matrices=False)
        return U, S, Vh, s

    def energy(self, layer: nn.Module, scale: torch.Tensor | None = None) -> torch.Tensor:
        return cumulative_energy(self._svd(layer, scale)[1])

    def fit(self, layer: nn.Module, rank: int, scale: torch.Tensor | None = None) -> Factors:
        U, S, Vh, s = self._svd(layer, scale)
        first = Vh[:rank] * S[:rank, None]
        second = U[:, :rank] / s[:, None]
        bias = layer.bias.detach() if layer.bias is not None else None
        return self._write(self.build(layer, rank).to(layer.weight.device), first, second, bias)

    def refit(self, factors: Factors, layer: nn.Module, inp: torch.Tensor, target: torch.Tensor, rows, scale: torch.Tensor | None = None) -> None:
        X, T = rows(layer, inp, target)
        intercept = layer.bias is not None
        x_mean, t_mean = (X.mean(0), T.mean(0)) if intercept else (0.0, 0.0)
        Xc, Tc = X - x_mean, T - t_mean
        B, _ = least_squares(Xc, Tc, intercept=False)  # out x in
        s = output_scale(scale, T.shape[1], T)
        fitted = (Xc @ B.T) * s
        _, V = torch.linalg.eigh(fitted.T @ fitted)
        V = V[:, -factors[0].weight.shape[0] :]  # top-r principal directions of the weighted fit
        first = V.T @ (B * s[:, None])
        second = V / s[:, None]
        bias = (t_mean - (second @ first) @ x_mean) if intercept else None
        self._write(factors, first, second, bias)


LOWRANK = LowRank()
