"""Strided kernel sparsity knobs: a kernel-position stride per convolution."""

from __future__ import annotations

import optuna
import pytest
import torch

from squeezetune.errors import SqueezeError
from squeezetune.spaces import derive_space
from tests.compression._tiny import TinyCNN

EXAMPLE = torch.zeros(1, 1, 12, 12)


def test_every_kxk_convolution_gets_a_stride_and_samples_validate():
    space = derive_space(TinyCNN(), {"strided": {"layers": {"conv1": False, "conv3": {"stride": [2, 4], "offset": [0, 8]}}, "refit": False}}, EXAMPLE)
    names = [k.name for k in space.knobs if k.name.startswith("strided")]
    assert names == ["strided.refit", "strided.conv2.stride", "strided.conv3.stride", "strided.conv3.offset"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(4):
        params = space.suggest(study.ask())
        space.recipe(params).validate(TinyCNN(), EXAMPLE)


def test_a_stride_above_the_kernel_is_refused():
    with pytest.raises(SqueezeError, match=r"space.strided.layers.conv2.stride=\[1, 10\] for layer 'conv2' must lie in \[1, 9\]"):
        derive_space(TinyCNN(), {"strided": {"layers": {"conv2": {"stride": [1, 10]}}}}, EXAMPLE)


def test_strided_after_a_decomposition_thins_the_factors_it_can():
    space = derive_space(TinyCNN(), {"decompose": {"method": "lowrank"}, "strided": {"default": {"stride": 3}}}, EXAMPLE)
    assert space.stages[:2] == ("decompose", "strided")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    params = space.suggest(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask())
    work = TinyCNN()
    recipe = space.recipe(params)
    recipe.validate(work, EXAMPLE)
    for step in recipe.steps[:2]:
        work = step.config.preview(work, EXAMPLE)
    assert type(work.conv2[0]).__name__ == "StridedConv2d"  # the k x k factor of the low-rank pair
