"""Depthwise-separable and asymmetric factorisations of a k x k convolution."""

from __future__ import annotations

import torch
from torch import nn

from squeezetune.compression._fit import Samples, channel_rows, relative_error
from squeezetune.compression.decomposition.separable import ASYMMETRIC, SEPARABLE
from tests.compression._tiny import images


def _error(factors, conv, x) -> float:
    with torch.no_grad():
        return relative_error(channel_rows(factors(x)), channel_rows(conv(x)))


def test_a_separable_convolution_is_recovered_exactly_at_depth_multiplier_1():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    depthwise, pointwise = torch.randn(4, 3, 3), torch.randn(6, 4)
    with torch.no_grad():
        conv.weight.copy_(pointwise[:, :, None, None] * depthwise[None])
    factors = SEPARABLE.fit(conv, 1)
    assert factors[0].groups == 4 and factors[0].weight.shape == (4, 1, 3, 3) and factors[1].weight.shape == (6, 4, 1, 1)
    assert _error(factors, conv, torch.randn(2, 4, 9, 9)) < 1e-10


def test_an_asymmetric_kernel_is_recovered_exactly_at_its_rank():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1)
    vertical, horizontal = torch.randn(2, 4, 3), torch.randn(6, 2, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.einsum("riy,orx->oiyx", vertical, horizontal))
    factors = ASYMMETRIC.fit(conv, 2)
    assert factors[0].kernel_size == (3, 1) and factors[1].kernel_size == (1, 3)
    x = torch.randn(2, 4, 9, 10)
    assert factors(x).shape == conv(x).shape and _error(factors, conv, x) < 1e-10


def test_both_beat_random_factors_and_least_squares_beats_the_svd():
    torch.manual_seed(0)
    first = nn.Conv2d(1, 8, 3, padding=1)
    conv = nn.Conv2d(8, 12, 3, padding=1)
    x, _ = images(128)
    with torch.no_grad():
        inp = torch.relu(first(x))
        target = conv(inp)
    for technique, rank in ((SEPARABLE, 1), (ASYMMETRIC, 4)):
        factors = technique.fit(conv, rank)
        svd = _error(factors, conv, inp)
        assert svd < _error(technique.build(conv, rank), conv, inp)
        samples = Samples(nn.Sequential(conv), inp, images=128, points=10, seed=0, device=torch.device("cpu"))
        technique.refit(factors, conv, inp, target, samples.rows)
        assert _error(factors, conv, inp) < 0.8 * svd, technique.name


def test_only_ungrouped_convolutions_larger_than_1x1_qualify():
    assert "2 x 2" in SEPARABLE.refuses(nn.Conv2d(4, 4, 1))
    assert "groups=4" in ASYMMETRIC.refuses(nn.Conv2d(4, 4, 3, groups=4))
    assert "Conv2d" in SEPARABLE.refuses(nn.Linear(3, 3))
    assert SEPARABLE.refuses(nn.Conv2d(4, 4, 3)) is None
