"""Depthwise-separable and asymmetric (k x 1, 1 x k) factorisations of a k x k convolution.

**Depthwise-separable** (MobileNet): a k x k convolution from C_in to C_out becomes a depthwise
k x k convolution (each input channel filtered on its own, ``rank`` filters per channel: the depth
multiplier) and a pointwise 1 x 1 convolution to C_out. Per output position it costs
``rank * C_in * (k^2 + C_out)`` instead of ``C_in * C_out * k^2``. Fitted, without data, by the
rank-``rank`` SVD of each input channel's slice ``W[:, i]`` (C_out x k^2: the depthwise filters
are its right singular vectors, the pointwise weights its left ones); with sampled activations,
by alternating least squares: the pointwise weights given the depthwise outputs, then the
depthwise filters given the pointwise weights (a linear problem whose normal equations are the
elementwise product of the two Gram matrices), twice over.

**Asymmetric** (Inception v3; Jaderberg et al. 2014, scheme 2): a k x k convolution becomes a
k x 1 convolution to ``rank`` channels then a 1 x k convolution to C_out, costing about
``rank * (C_in + C_out) * k`` per position. Fitted by the SVD of the kernel rearranged as a
(C_in k) x (C_out k) matrix, so that each rank component is a vertical filter times a horizontal
one; with sampled activations, the 1 x k convolution is then refit by least squares on the
k x 1 convolution's actual outputs.

>>> from torch import nn
>>> conv = nn.Conv2d(8, 16, 3, padding=1)
>>> [tuple(f.weight.shape) for f in SEPARABLE.fit(conv, 1)]
[(8, 1, 3, 3), (16, 8, 1, 1)]
>>> [tuple(f.weight.shape) for f in ASYMMETRIC.fit(conv, 4)]
[(4, 8, 3, 1), (16, 4, 1, 3)]
"""

from __future__ import annotations

import torch
from torch import nn

from squeezetune.compression._fit import least_squares, plain_conv_refusal, ridge_solve
from squeezetune.compression.architecture import Factors
from squeezetune.compression.decomposition._base import Technique, balance, cumulative_energy, output_scale

ALTERNATIONS = 2
"""Rounds of (pointwise, depthwise) least squares after the SVD start of a separable fit."""


def _refuses_kxk(layer: nn.Module) -> str | None:
    why = plain_conv_refusal(layer, (nn.Conv2d,))
    if why is None and min(layer.kernel_size) < 2:
        return f"a {layer.kernel_size[0]} x {layer.kernel_size[1]} convolution (expected a kernel of at least 2 x 2)"
    return why


@torch.no_grad()
def _set(module: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
    module.weight.copy_(weight.reshape(module.weight.shape).to(module.weight.dtype))
    if bias is not None and module.bias is not None:
        module.bias.copy_(bias.to(module.bias.dtype))


class Separable(Technique):
    name = "separable"

    def refuses(self, layer: nn.Module) -> str | None:
        return _refuses_kxk(layer)

    def build(self, layer: nn.Module, rank: int) -> Factors:
        c_in = layer.in_channels
        depthwise = nn.Conv2d(c_in, c_in * rank, layer.kernel_size, layer.stride, layer.padding, layer.dilation, groups=c_in, bias=False)
        return Factors(depthwise, nn.Conv2d(c_in * rank, layer.out_channels, 1, bias=layer.bias is not None))

    def _svd(self, layer: nn.Module, scale: torch.Tensor | None):
        W = layer.weight.detach().double()
        c_out, c_in = W.shape[:2]
        s = output_scale(scale, c_out, W)
        slices = (W * s[:, None, None, None]).reshape(c_out, c_in, -1).permute(1, 0, 2)  # C_in x C_out x k^2
        U, S, Vh = torch.linalg.svd(slices, full_matrices=False)
        return U, S, Vh, s

    def energy(self, layer: nn.Module, scale: torch.Tensor | None = None) -> torch.Tensor:
        return cumulative_energy((self._svd(layer, scale)[1] ** 2).sum(0).sqrt())  # each rank: one filter per input channel

    def fit(self, layer: nn.Module, rank: int, scale: torch.Tensor | None = None) -> Factors:
        U, S, Vh, s = self._svd(layer, scale)
        c_in = U.shape[0]
        depthwise = Vh[:, :rank] * S[:, :rank, None].sqrt()  # C_in x rank x k^2
        pointwise = (U[:, :, :rank] * S[:, None, :rank].sqrt()).permute(1, 0, 2).reshape(-1, c_in * rank) / s[:, None]
        factors = self.build(layer, rank).to(layer.weight.device)
        _set(factors[0], depthwise)
        _set(factors[1], pointwise, layer.bias.detach() if layer.bias is not None else None)
        return factors

    def refit(self, factors: Factors, layer: nn.Module, inp: torch.Tensor, target: torch.Tensor, rows, scale: torch.Tensor | None = None) -> None:
        depthwise, pointwise = factors[0], factors[1]
        Xp, T = rows(layer, inp, target)  # patches: channel-major, then kernel position
        kk = Xp.shape[1] // layer.in_channels
        rank = depthwise.out_channels // layer.in_channels
        cols = (torch.arange(layer.in_channels * rank, device=Xp.device) // rank)[:, None] * kk + torch.arange(kk, device=Xp.device)
        Xd = Xp[:, cols.reshape(-1)]  # one k^2 patch per depthwise output channel
        intercept = pointwise.bias is not None
        gram = None
        for _ in range(ALTERNATIONS):
            D = depthwise.weight.detach().double().reshape(-1, kk)
            Z = (Xd.reshape(len(Xd), -1, kk) * D).sum(-1)
            P, b = least_squares(Z, T, intercept=intercept)
            _set(pointwise, P, b)
            # depthwise filters given the pointwise weights: normal equations (P^T P) o (X^T X), expanded
            if gram is None:
                gram = Xd.T @ Xd
            PP = (P.T @ P).repeat_interleave(kk, 0).repeat_interleave(kk, 1)
            R = (T - (b if b is not None else 0.0)) @ P
            AtT = (Xd * R.repeat_interleave(kk, 1)).sum(0)
            _set(depthwise, ridge_solve(gram * PP, AtT[:, None])[:, 0])
        D = depthwise.weight.detach().double().reshape(-1, kk)
        P, b = least_squares((Xd.reshape(len(Xd), -1, kk) * D).sum(-1), T, intercept=intercept)
        _set(pointwise, P, b)


class Asymmetric(Technique):
    name = "asymmetric"

    def refuses(self, layer: nn.Module) -> str | None:
        return _refuses_kxk(layer)

    def build(self, layer: nn.Module, rank: int) -> Factors:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = layer.kernel_size, layer.stride, layer.padding, layer.dilation
        vertical = nn.Conv2d(layer.in_channels, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), bias=False)
        horizontal = nn.Conv2d(rank, layer.out_channels, (1, kw), (1, sw), (0, pw), (1, dw), bias=layer.bias is not None)
        return Factors(vertical, horizontal)

    def _svd(self, layer: nn.Module, scale: torch.Tensor | None):
        W = layer.weight.detach().double()
        c_out, c_in, kh, kw = W.shape
        s = output_scale(scale, c_out, W)
        M = (W * s[:, None, None, None]).permute(1, 2, 0, 3).reshape(c_in * kh, c_out * kw)  # rows (i, y), columns (o, x)
        U, S, Vh = torch.linalg.svd(M, full_matrices=False)
        return U, S, Vh, s

    def energy(self, layer: nn.Module, scale: torch.Tensor | None = None) -> torch.Tensor:
        return cumulative_energy(self._svd(layer, scale)[1])

    def fit(self, layer: nn.Module, rank: int, scale: torch.Tensor | None = None) -> Factors:
        U, S, Vh, s = self._svd(layer, scale)
        c_out, c_in, kh, kw = layer.weight.shape
        vertical = (U[:, :rank] * S[:rank]).T.reshape(rank, c_in, kh, 1)
        horizontal = Vh[:rank].reshape(rank, c_out, kw).permute(1, 0, 2) / s[:, None, None]  # C_out x rank x k
        vertical, horizontal = balance(vertical, horizontal)
        factors = self.build(layer, rank).to(layer.weight.device)
        _set(factors[0], vertical)
        _set(factors[1], horizontal, layer.bias.detach() if layer.bias is not None else None)
        return factors

    def refit(self, factors: Factors, layer: nn.Module, inp: torch.Tensor, target: torch.Tensor, rows, scale: torch.Tensor | None = None) -> None:
        with torch.no_grad():
            mid = factors[0](inp)
        horizontal = factors[1]
        X, T = rows(horizontal, mid, target)
        W, b = least_squares(X, T, intercept=horizontal.bias is not None)
        _set(horizontal, W, b)


SEPARABLE = Separable()
ASYMMETRIC = Asymmetric()
