"""Low-rank factors: exact at full rank, SVD-optimal in weight space, better still on sampled activations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from squeezetune.compression._fit import Samples, channel_rows, relative_error
from squeezetune.compression.decomposition.lowrank import LOWRANK
from tests.compression._tiny import images


def _params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_a_linear_becomes_two_and_full_rank_is_exact():
    layer = nn.Linear(20, 12)
    factors = LOWRANK.fit(layer, 12)
    assert [type(f).__name__ for f in factors] == ["Linear", "Linear"] and factors[0].bias is None
    x = torch.randn(7, 20)
    assert torch.allclose(factors(x), layer(x), atol=1e-5)


@pytest.mark.parametrize("stride,padding,dilation", [(1, 1, 1), (2, 0, 1), (1, 2, 2)])
def test_a_convolution_splits_along_its_channels_keeping_its_geometry(stride, padding, dilation):
    conv = nn.Conv2d(6, 10, 3, stride, padding, dilation)
    factors = LOWRANK.fit(conv, 4)
    assert factors[0].weight.shape == (4, 6, 3, 3) and factors[1].weight.shape == (10, 4, 1, 1)
    x = torch.randn(2, 6, 11, 11)
    assert factors(x).shape == conv(x).shape


def test_the_svd_fit_beats_random_factors_and_improves_with_rank():
    torch.manual_seed(0)
    layer = nn.Linear(30, 20)
    x = torch.randn(256, 30)
    errors = [relative_error(LOWRANK.fit(layer, r)(x).detach().double(), layer(x).detach().double()) for r in (2, 5, 10)]
    random = relative_error(LOWRANK.build(layer, 5)(x).detach().double(), layer(x).detach().double())
    assert errors[0] > errors[1] > errors[2] and errors[1] < 0.8 < random


def test_least_squares_on_sampled_activations_beats_the_svd_on_correlated_inputs():
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 12, 3, padding=1)
    conv2 = nn.Conv2d(12, 16, 3, padding=1)
    x, _ = images(128)
    with torch.no_grad():
        inp = torch.relu(conv(x))
        target = conv2(inp)
    factors = LOWRANK.fit(conv2, 4)
    with torch.no_grad():
        before = relative_error(channel_rows(factors(inp)), channel_rows(target))
    samples = Samples(nn.Sequential(conv2), inp, images=128, points=10, seed=0, device=torch.device("cpu"))
    LOWRANK.refit(factors, conv2, inp, target, samples.rows)
    with torch.no_grad():
        after = relative_error(channel_rows(factors(inp)), channel_rows(target))
    assert after < 0.7 * before


def test_norm_weighting_favours_the_channels_the_norm_amplifies():
    torch.manual_seed(0)
    layer = nn.Linear(16, 8)
    scale = torch.tensor([10.0] + [0.1] * 7)
    x = torch.randn(200, 16)

    def weighted(factors) -> float:
        return float((((factors(x) - layer(x)) * scale) ** 2).sum().detach())

    assert weighted(LOWRANK.fit(layer, 2, scale)) < weighted(LOWRANK.fit(layer, 2))


def test_the_rank_limit_is_where_the_factors_outgrow_the_layer():
    conv = nn.Conv2d(16, 32, 3)
    limit = LOWRANK.limit(conv)
    assert limit == 16 * 9 * 32 // (16 * 9 + 32)
    assert _params(LOWRANK.build(conv, limit)) <= _params(conv) < _params(LOWRANK.build(conv, limit + 1))
