from __future__ import annotations

import pytest

from squeezetune.compression.unstructured.pruning import prunable_layers
from squeezetune.compression.recipes import Recipe, deep_compression, load_recipe
from squeezetune.errors import SqueezeError
from squeezetune.tasks import get_task


@pytest.mark.parametrize("task", ["lenet300-mnist", "lenet5-mnist"])
def test_deep_compression_round_trips_through_json(task):
    t = get_task(task)
    recipe = deep_compression(t.model, prunable_layers(t.build_model()))
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_paper_rates_for_lenet5():
    t = get_task("lenet5-mnist")
    r = deep_compression(t.model, prunable_layers(t.build_model()))
    assert {n: p.keep_fraction for n, p in r.prune.layers.items()} == {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19}
    assert {n: s.k for n, s in r.share.layers.items()} == {"conv1": 256, "conv2": 256, "fc1": 32, "fc2": 32}
    assert r.encode.index_bits == 5


def test_generic_rule_covers_every_layer_of_another_model():
    from torch import nn

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 32), nn.Linear(32, 10))
    r = deep_compression("other", prunable_layers(model))
    assert set(r.prune.layers) == {"0", "2", "3"}
    assert r.prune.layers["0"].keep_fraction == 0.5 and r.share.layers["0"].bits == 8
    assert r.prune.layers["3"].keep_fraction == 0.25


def test_yaml_recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("prune:\n  default: {keep_fraction: 0.2}\nshare:\n  init: forgy\n  default: {clusters: 8}\nencode: {coder: ans}\n")
    r = load_recipe(path, "lenet300", {})
    assert r.prune.for_layer("fc9").keep_fraction == 0.2
    assert r.share.for_layer("fc1").k == 8 and r.share.init.value == "forgy"
    assert r.encode.coder.value == "ans"


@pytest.mark.parametrize(
    "data,message",
    [
        ({"prune": {"granularity": "row"}}, r"prune.granularity='row' is not known"),
        ({"prune": {"layers": {"fc1": {"keep": 3, "quality": 1.0}}}}, r"exactly one of keep, keep_fraction, quality"),
        ({"share": {"default": {"bitz": 4}}}, r"unknown key 'bitz' in share.default"),
        ({"encode": {"index_bits": 0}}, r"index_bits=0 must be an integer in \[1, 16\] or 'auto'"),
        ({"encode": {"index_bits": "best"}}, r"index_bits='best' must be an integer in \[1, 16\] or 'auto'"),
        ({"finetune": {"lr": -1}}, r"lr=-1 must be > 0"),
        ({"stages": []}, r"unknown key 'stages' in recipe"),
    ],
)
def test_bad_recipes_say_what_is_wrong(data, message):
    with pytest.raises(SqueezeError, match=message):
        Recipe.from_dict(data)


def test_unknown_recipe_name():
    with pytest.raises(SqueezeError, match=r"recipe 'nope' is neither a built-in"):
        load_recipe("nope", "lenet300", {})


@pytest.mark.parametrize("name,method", [("filter-pruning", "l1"), ("channel-pruning", "lasso")])
def test_structured_builtins_take_a_macs_target(name, method):
    r = load_recipe(name, "resnet20", {})
    assert r.name == name and r.structured.method.value == method
    assert r.structured.macs_target == 0.5 and r.structured.allocation.value == "uniform"
    assert r.prune is None and r.share is None and r.structured.finetune.distill
    r = load_recipe(name, "resnet20", {}, macs_target=0.25, allocation="sensitivity")
    assert r.structured.macs_target == 0.25 and r.structured.allocation.value == "sensitivity"
    assert Recipe.from_dict(r.to_dict()) == r


def test_macs_target_needs_a_structured_stage():
    with pytest.raises(SqueezeError, match=r"recipe 'deep-compression' has no structured stage"):
        load_recipe("deep-compression", "lenet300", {}, macs_target=0.5)
    with pytest.raises(SqueezeError, match=r"macs_target=1.5 must be in \(0, 1\]"):
        load_recipe("channel-pruning", "resnet20", {}, macs_target=1.5)


def test_a_yaml_list_is_not_a_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("- prune\n")
    with pytest.raises(SqueezeError, match=r"holds a list: expected a mapping"):
        load_recipe(path, "lenet300", {})


def test_structured_round_to_is_checked_and_kept():
    r = Recipe.from_dict({"structured": {"macs_target": 0.5, "round_to": 4}})
    assert r.structured.round_to == 4 and Recipe.from_dict(r.to_dict()) == r
    assert Recipe.from_dict({"structured": {"macs_target": 0.5}}).structured.round_to == 8
    with pytest.raises(SqueezeError, match=r"structured.round_to=0 must be an integer >= 1"):
        Recipe.from_dict({"structured": {"macs_target": 0.5, "round_to": 0}})


def test_allocation_needs_a_macs_target(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("structured: {method: l1, layers: {conv1: {keep: 8}}}\n")
    with pytest.raises(SqueezeError, match=r"--allocation 'sensitivity' needs a macs_target"):
        load_recipe(path, "resnet20", {}, allocation="sensitivity")


def test_a_binary_file_is_not_a_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"\x89SQZ\xff\xfe\x00")
    with pytest.raises(SqueezeError, match=r"is not UTF-8 text: expected a YAML file"):
        load_recipe(path, "lenet300", {})


def test_auto_index_bits_round_trips():
    r = Recipe.from_dict({"encode": {"index_bits": "auto"}})
    assert r.encode.index_bits == "auto" and Recipe.from_dict(r.to_dict()) == r


def test_position_coding_round_trips_and_defaults_to_the_smallest_per_layer():
    assert Recipe.from_dict({}).encode.positions.value == "auto"
    r = Recipe.from_dict({"encode": {"positions": "relative"}})
    assert r.encode.positions.value == "relative" and Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(SqueezeError, match="encode.positions"):
        Recipe.from_dict({"encode": {"positions": "zigzag"}})
