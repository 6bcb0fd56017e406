"""Knobs of the stages that prune while training, remove neurons and share softly."""

from __future__ import annotations

import optuna
import pytest
import torch

from squeezetune.compression import Recipe
from squeezetune.errors import SqueezeError
from squeezetune.spaces import Choice, Fixed, FloatRange, IntRange, derive_space
from squeezetune.tasks.models import LeNet5, LeNet300

EXAMPLE = torch.zeros(1, 1, 28, 28)


def test_gradual_prune_gives_each_tensor_a_final_fraction_and_its_training_knobs():
    space = derive_space(LeNet300(), {"prune": False, "finetune": False, "gradual_prune": {"finetune": {"group_lasso": [1e-6, 1e-3]}, "regrow": [False, True]}, "neurons": True})
    for name in ("fc1", "fc2", "fc3"):
        assert space.knob(f"gradual_prune.{name}.keep_fraction").domain == FloatRange(0.005, 0.3, log=True)
    assert space.knob("gradual_prune.finetune.epochs").domain == IntRange(10, 30)
    assert space.knob("gradual_prune.finetune.group_lasso").domain == FloatRange(1e-6, 1e-3)
    assert space.knob("gradual_prune.regrow").domain == Choice((False, True))
    assert space.knob("neurons.inputs").domain == Choice((True,))
    assert space.stages == ("gradual_prune", "neurons", "share", "finetune_centroids")


@pytest.mark.parametrize("model", [LeNet300(), LeNet5()], ids=["lenet300", "lenet5"])
def test_sampled_recipes_are_valid_and_project_back(model):
    config = {
        "prune": False,
        "finetune": False,
        "gradual_prune": {"budget": {"keep_fraction": [0.01, 0.1], "allocation": ["sensitivity", "magnitude"]}, "finetune": {"group_lasso_groups": ["rows", "both"]}},
        "neurons": {"inputs": [True, False]},
        "share": {"default": {"bits": [1, 4]}},
    }
    space = derive_space(model, config)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        params = space.suggest(study.ask())
        recipe = space.recipe(params)
        assert Recipe.from_dict(recipe.to_dict()) == recipe
        assert [s.label for s in recipe.steps] == ["gradual_prune", "neurons", "share", "finetune_centroids"]
        recipe.validate(model, EXAMPLE)
        assert space.project(recipe) == params


def test_share_bits_reach_down_to_one():
    space = derive_space(LeNet300())
    assert space.knob("share.fc1.bits").domain == IntRange(1, 8)
    recipe = space.recipe(space.corner())
    assert recipe.first("share").layers["fc1"].k == 2  # a pruned tensor at one bit: ternary weights


def test_soft_share_knobs():
    space = derive_space(LeNet300(), {"share": False, "finetune_centroids": False, "soft_share": {"components": [4, 16], "tau": [1e-3, 1e-1]}})
    assert space.knob("soft_share.components").domain == IntRange(4, 16)
    assert space.knob("soft_share.finetune.epochs").domain == Fixed(20) or space.knob("soft_share.finetune.epochs").domain == IntRange(20, 20)
    recipe = space.recipe(space.corner())
    assert recipe.first("soft_share").components == 4


@pytest.mark.parametrize(
    "config, message",
    [
        ({"gradual_prune": {"budget": {"keep_fraction": 0.1}, "default": {"keep_fraction": 0.1}}}, "gives both default and budget"),
        ({"gradual_prune": {"budget": {"share": 0.1}}}, "unknown knob 'share' in space.gradual_prune.budget"),
        ({"gradual_prune": {"finetune": {"epoch": 3}}}, "unknown knob 'epoch' in space.gradual_prune.finetune"),
        ({"gradual_prune": {"rampp": 0.5}}, "unknown knob 'rampp' in space.gradual_prune"),
        ({"gradual_prune": {"layers": {"fc9": {"keep_fraction": 0.1}}}}, "unknown layer 'fc9' in space.gradual_prune.layers"),
        ({"gradual_prune": {"default": {"keep_fraction": [0.5, 1.5]}}}, "space.gradual_prune.default.keep_fraction=1.5 must be in (0, 1]"),
        ({"gradual_prune": {"finetune": {"group_lasso_groups": "diagonal"}}}, "'diagonal' is not known"),
        ({"neurons": {"input": True}}, "unknown knob 'input' in space.neurons"),
    ],
)
def test_bad_settings_are_one_line_errors(config, message):
    with pytest.raises(SqueezeError) as err:
        derive_space(LeNet300(), config)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_recovery_finetune_after_neurons_lets_max_compression_warm_start_the_search():
    from squeezetune.search.runner import warm_start_params
    from squeezetune.tasks import get_task

    task = get_task("lenet300-mnist")
    config = {"prune": False, "finetune": False, "gradual_prune": {}, "neurons": True, "finetune_recover": True}
    space = derive_space(task.build_model(), config)
    assert space.stages == ("gradual_prune", "neurons", "finetune_recover", "share", "finetune_centroids")
    assert space.knob("finetune_recover.epochs").domain == IntRange(2, 10)
    starts = warm_start_params(space, task, ("auto",))
    assert [s["gradual_prune.fc1.keep_fraction"] for s in starts] == [0.016]  # max-compression's tuned rate, and no other recipe fits
    recipe = space.recipe({**space.corner(), **starts[0]})
    assert [s.label for s in recipe.steps] == ["gradual_prune", "neurons", "finetune_recover", "share", "finetune_centroids"]
    assert recipe.step("finetune_recover").config.epochs == 10 and recipe.encode.float_bits == 16
