"""The one YAML loader: numbers as YAML 1.2 reads them, for recipes and search configs alike."""

from __future__ import annotations

import pytest

from squeezetune._yaml import load_mapping, loads
from squeezetune.errors import SqueezeError


@pytest.mark.parametrize(
    "text, value",
    [("1e-3", 0.001), ("1e-5", 1e-5), ("5e-4", 5e-4), ("1E5", 1e5), ("-2.5e+3", -2500.0), ("+1e3", 1000.0), (".5e-2", 0.005), ("1.0e-3", 0.001)],
)
def test_exponent_numbers_are_floats(text, value):
    parsed = loads(f"x: {text}")["x"]
    assert type(parsed) is float and parsed == value


@pytest.mark.parametrize("text, value", [("12", 12), ("1.5", 1.5), ("'1e-3'", "1e-3"), ("1e", "1e"), ("e5", "e5"), ("1e-3x", "1e-3x"), ("true", True), ("fc1", "fc1")])
def test_everything_else_reads_as_before(text, value):
    parsed = loads(f"x: {text}")["x"]
    assert type(parsed) is type(value) and parsed == value


def test_a_recipe_with_exponent_numbers_loads(tmp_path):
    from squeezetune.compression.recipes import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text("name: r\nprune: {default: {keep_fraction: 0.1}}\nfinetune: {epochs: 1, lr: 1e-3, weight_decay: 1e-5}\nfinetune_centroids: {epochs: 1, lr: 5e-4}\n")
    from squeezetune.tasks import get_task

    recipe = load_recipe(str(path), "lenet300", get_task("lenet300-mnist").build_model())
    finetune, centroids = recipe.step("finetune").config, recipe.step("finetune_centroids").config
    assert finetune.lr == 0.001 and finetune.weight_decay == 1e-5 and centroids.lr == 5e-4


def test_a_search_config_with_exponent_numbers_loads(tmp_path):
    from squeezetune.search.config import SearchConfig
    from squeezetune.spaces import derive_space
    from squeezetune.tasks import get_task

    path = tmp_path / "s.yaml"
    path.write_text("space: {finetune: {lr: [1e-3, 1e-1]}}\n")
    space = derive_space(get_task("lenet300-digits").build_model(), SearchConfig.from_yaml(path).space)
    assert space.knob("finetune.lr").domain.low == 0.001


def test_bad_files_are_one_line_errors(tmp_path):
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SqueezeError, match="holds a list: expected a mapping"):
        load_mapping(tmp_path / "list.yaml", "recipe file")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SqueezeError, match="not UTF-8"):
        load_mapping(tmp_path / "bin.yaml", "recipe file")
    assert load_mapping(_empty(tmp_path), "config") == {}


def _empty(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    return path
