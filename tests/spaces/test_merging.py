"""Neuron-merging knobs: a fraction of neurons merged away per mergeable layer."""

from __future__ import annotations

import optuna
import pytest
import torch

from squeezetune.errors import SqueezeError
from squeezetune.spaces import derive_space
from tests.compression._tiny import TinyCNN, TinyMLP

EXAMPLE = torch.zeros(1, 1, 12, 12)


def test_every_mergeable_layer_gets_a_fraction_and_samples_validate():
    space = derive_space(TinyMLP(), {"merge": {"score": ["saliency", "distance"]}, "decompose": {"method": "lowrank"}}, EXAMPLE)
    assert space.stages[:2] == ("merge", "decompose")
    assert [k.name for k in space.knobs if k.name.startswith("merge")] == ["merge.score", "merge.fc1.remove_fraction", "merge.fc2.remove_fraction"]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(3):
        space.recipe(space.suggest(study.ask())).validate(TinyMLP(), EXAMPLE)


def test_layers_that_cannot_merge_have_no_knob():
    space = derive_space(TinyCNN(), {"merge": {}}, EXAMPLE)
    assert [k.name for k in space.knobs if k.name.endswith("remove_fraction")] == ["merge.conv3.remove_fraction", "merge.fc1.remove_fraction"]
    with pytest.raises(SqueezeError, match=r"unknown layer 'conv2' in space.merge.layers"):
        derive_space(TinyCNN(), {"merge": {"layers": {"conv2": {}}}}, EXAMPLE)
    with pytest.raises(SqueezeError, match=r"remove_fraction=\[0.5, 1.0\] must lie in \[0, 1\)"):
        derive_space(TinyCNN(), {"merge": {"default": {"remove_fraction": [0.5, 1.0]}}}, EXAMPLE)
