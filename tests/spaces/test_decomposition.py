"""Decomposition knobs: which factorisation per layer and its rank, in recipes that validate."""

from __future__ import annotations

import optuna
import pytest
import torch

from squeezetune.errors import SqueezeError
from squeezetune.spaces import derive_space
from squeezetune.tasks.models import LeNet5
from tests.compression._tiny import TinyCNN

EXAMPLE = torch.zeros(1, 1, 12, 12)


def _sampled_recipes(space, model, example, n: int = 4):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(n):
        params = space.suggest(study.ask())
        recipe = space.recipe(params)
        recipe.validate(model, example)
        assert space.project(recipe) == params
        yield recipe


def test_each_layer_gets_a_method_and_a_rank_and_every_sample_validates():
    model = TinyCNN()
    space = derive_space(model, {"decompose": {}, "prune": {"default": {"keep_fraction": [0.3, 0.9]}}}, EXAMPLE)
    assert space.stages[0] == "decompose"
    names = [k.name for k in space.knobs if k.name.startswith("decompose.")]
    assert "decompose.conv2.method" in names and "decompose.conv2.rank_fraction" in names and "decompose.fc2.rank_fraction" in names
    assert space.knob("decompose.conv2.method").domain.choices == ("none", "lowrank", "separable", "asymmetric")
    assert space.knob("decompose.fc2.method").domain.choices == ("none", "lowrank")
    for recipe in _sampled_recipes(space, model, EXAMPLE):
        assert recipe.steps[0].stage == "decompose"


def test_one_method_with_a_macs_target_plans_the_ranks():
    space = derive_space(LeNet5(), {"decompose": {"method": "pool", "layers": {}}}, (1, 1, 28, 28))
    assert [k.name for k in space.knobs if k.name.startswith("decompose")] == ["decompose.method"]
    space = derive_space(TinyCNN(), {"decompose": {"method": "lowrank", "macs_target": [0.4, 0.8]}}, EXAMPLE)
    assert {k.name for k in space.knobs if k.name.startswith("decompose")} == {"decompose.method", "decompose.macs_target", "decompose.allocation"}
    list(_sampled_recipes(space, TinyCNN(), EXAMPLE, 2))


@pytest.mark.parametrize(
    "cfg,message",
    [
        ({"method": "none"}, "decomposes nothing"),
        ({"method": "svd"}, r"space.decompose.method='svd' is not known"),
        ({"layers": {"conv9": {}}}, r"unknown layer 'conv9' in space.decompose.layers"),
        ({"layers": {"conv2": {"rank": [1, 99]}}, "method": "lowrank"}, r"rank=\[1, 99\] for layer 'conv2' must lie in \[1, 13\]"),
        ({"default": {"rank_fraction": [0.5, 1.5]}}, r"rank_fraction=\[0.5, 1.5\] must lie in \(0, 1\]"),
        ({"colour": 1}, "unknown knob 'colour' in space.decompose"),
    ],
)
def test_bad_settings_are_one_line_errors(cfg, message):
    with pytest.raises(SqueezeError, match=message):
        derive_space(TinyCNN(), {"decompose": cfg}, EXAMPLE)
