"""The space is derived from the model; the YAML fixes, narrows or excludes knobs; bad input is one line."""

from __future__ import annotations

import optuna
import pytest
from torch import nn

from squeezetune.compression import Recipe, compressible
from squeezetune.compression.recipes import deep_compression
from squeezetune.compression.structured.stage import LayerChannels
from squeezetune.errors import SqueezeError
from squeezetune.spaces import Choice, Fixed, FloatRange, IntRange, derive_space
from squeezetune.spaces.space import needs_sensitivity
from squeezetune.tasks.models import LeNet5, LeNet300


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 6)
        self.block = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Linear(4, 2))


@pytest.mark.parametrize("model", [LeNet300(), LeNet5(), Tiny()], ids=["lenet300", "lenet5", "tiny"])
def test_every_compressible_tensor_gets_keep_and_cluster_knobs(model):
    space = derive_space(model)
    layers = compressible(model)
    for name in layers:
        keep = space.knob(f"prune.{name}.keep_fraction")
        assert keep.domain == FloatRange(0.001, 0.5, log=True)
        assert isinstance(space.knob(f"share.{name}.bits").domain, IntRange)
    for name in ("share.init", "finetune.epochs", "finetune.distill"):
        assert space.knob(name).searched
    for name in ("encode.coder", "encode.index_bits"):  # "auto" already keeps the smallest of every choice
        assert space.knob(name).domain == Fixed("auto")
    assert space.layers == {n: t.numel for n, t in layers.items()}


@pytest.mark.parametrize("model", [LeNet300(), LeNet5(), Tiny()], ids=["lenet300", "lenet5", "tiny"])
def test_define_by_run_suggestions_stay_in_domain_and_make_valid_recipes(model):
    space = derive_space(model)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(20):
        trial = study.ask()
        params = space.suggest(trial)
        assert space.contains(params)
        assert set(trial.params) == {k.name for k in space.searched}
        recipe = space.recipe(params)
        assert Recipe.from_dict(recipe.to_dict()) == recipe
        assert recipe.first("share").fit  # clusters capped at kept weights
        recipe.validate(model, (1, 1, 28, 28))
        study.tell(trial, [0.5, 1000.0])


def test_fix_narrow_exclude():
    space = derive_space(
        LeNet300(),
        {
            "prune": {"layers": {"fc1": {"keep": [1000, 2000]}, "fc2": {"keep_fraction": 0.1}, "fc3": False}},
            "share": {"init": "density", "default": {"bits": [3, 5]}, "layers": {"fc2": {"clusters": [4, 40]}}},
            "finetune": {"epochs": 1, "distill": [True]},
            "finetune_centroids": False,
            "encode": {"coder": ["huffman", "ans"], "index_bits": 5},
        },
    )
    assert space.knob("prune.fc1.keep").domain == IntRange(1000, 2000, log=True)
    assert space.knob("prune.fc2.keep_fraction").domain == Fixed(0.1)
    assert "prune.fc3.keep_fraction" not in {k.name for k in space.knobs}
    assert space.knob("share.init").domain == Fixed("density")
    assert space.knob("share.fc1.bits").domain == IntRange(3, 5)
    assert space.knob("share.fc2.clusters").domain == IntRange(4, 40, log=True)
    assert space.knob("finetune.epochs").domain == Fixed(1)
    assert space.knob("finetune.distill").domain == Fixed(True)
    assert space.knob("encode.coder").domain == Choice(("huffman", "ans"))
    assert space.knob("encode.index_bits").domain == Fixed(5)
    assert derive_space(LeNet300(), {"encode": {"index_bits": [3, 8]}}).knob("encode.index_bits").domain == IntRange(3, 8)
    assert derive_space(LeNet300(), {"encode": {"index_bits": "auto"}}).knob("encode.index_bits").domain == Fixed("auto")
    assert derive_space(LeNet300(), {"encode": {"float_bits": [16, 32]}}).knob("encode.float_bits").domain == Choice((16, 32))
    with pytest.raises(SqueezeError, match="float_bits=8 is not known"):
        derive_space(LeNet300(), {"encode": {"float_bits": 8}})
    assert "finetune_centroids" not in space.stages
    recipe = space.recipe(space.corner())
    assert recipe.step("finetune_centroids") is None and "fc3" not in recipe.first("prune").layers
    assert recipe.first("share").layers["fc2"].clusters == 4


def test_share_and_prune_off():
    space = derive_space(LeNet300(), {"share": False, "prune": False, "finetune": False, "finetune_centroids": False})
    assert {k.name for k in space.knobs} == {"encode.coder", "encode.index_bits", "encode.float_bits"}
    recipe = space.recipe(space.corner())
    assert recipe.encode.float_bits == 16  # as the built-in recipes store codebooks and biases
    assert recipe.first("prune") is None and recipe.first("share") is None


@pytest.mark.parametrize(
    "config, message",
    [
        ({"prune": {"layers": {"fc9": {"keep": 10}}}}, "unknown layer 'fc9'"),
        ({"share": {"layers": {"conv1": {"bits": 3}}}}, "unknown layer 'conv1'"),
        ({"prune": {"kep": 1}}, "unknown knob 'kep'"),
        ({"prune": {"layers": {"fc1": {"keep_frac": 0.1}}}}, "unknown knob 'keep_frac'"),
        ({"finetune": {"epoch": 2}}, "unknown knob 'epoch'"),
        ({"pruning": {}}, "unknown key 'pruning'"),
        ({"prune": {"layers": {"fc1": {"keep": [500, 100]}}}}, "empty range"),
        ({"share": {"default": {"bits": {"low": 6, "high": 3}}}}, "empty range"),
        ({"encode": {"coder": []}}, "empty choice list"),
        ({"encode": {"coder": "zip"}}, "'zip' is not known"),
        ({"prune": {"layers": {"fc3": {"keep": [1, 5000]}}}}, "must be in [1, 1000]"),
        ({"prune": {"default": {"keep": [1, 5]}}}, "takes keep_fraction"),
        ({"share": {"default": {"bits": [0, 20]}}}, "must lie in [1, 16]"),
        ({"finetune": {"epochs": [1.5, 3]}}, "expected an integer"),
        ({"prune": {"layers": {"fc1": {"keep": 10, "keep_fraction": 0.1}}}}, "both keep and keep_fraction"),
    ],
)
def test_bad_space_is_one_line_error(config, message):
    with pytest.raises(SqueezeError) as err:
        derive_space(LeNet300(), config)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_structured_knobs_follow_the_channel_groups():
    space = derive_space(LeNet5(), {"structured": {"method": ["lasso", "l1"], "layers": {"conv2": {"keep_channels": [10, 40]}, "fc1": {"lambda": [0.05, 0.5]}, "conv1": False}}})
    assert space.knob("structured.method").domain == Choice(("lasso", "l1"))
    assert space.knob("structured.conv2.keep_channels").domain == IntRange(10, 40)
    assert space.knob("structured.fc1.lambda").domain.low == 0.05
    assert "structured.conv1.keep_channels" not in {k.name for k in space.knobs}
    recipe = space.recipe(space.corner())
    assert recipe.first("structured").method.value == "lasso"
    assert recipe.first("structured").layers == {"conv2": LayerChannels(keep=10), "fc1": LayerChannels(lam=0.05)}
    default = derive_space(LeNet300(), {"structured": {}})
    assert {k.name for k in default.knobs if k.name.startswith("structured.")} == {"structured.method", "structured.fc1.keep_channels", "structured.fc2.keep_channels"}
    with pytest.raises(SqueezeError, match="unknown layer 'conv9'"):
        derive_space(LeNet5(), {"structured": {"layers": {"conv9": {"keep_channels": 3}}}})
    with pytest.raises(SqueezeError, match=r"must lie in \[1, 20\]"):
        derive_space(LeNet5(), {"structured": {"layers": {"conv1": {"keep_channels": [1, 30]}}}})


@pytest.mark.parametrize("model, name", [(LeNet300(), "lenet300"), (LeNet5(), "lenet5"), (Tiny(), "tiny")], ids=["lenet300", "lenet5", "tiny"])
def test_project_puts_a_hand_recipe_inside_the_space(model, name):
    space = derive_space(model, {"finetune": {"epochs": [1, 2]}, "share": {"default": {"bits": [3, 5]}}})
    hand = deep_compression(name, model)
    params = space.project(hand)
    assert space.contains(params)
    for layer, setting in hand.first("prune").layers.items():
        knob = space.knob(f"prune.{layer}.keep_fraction").domain
        assert params[f"prune.{layer}.keep_fraction"] == min(max(setting.keep_fraction, knob.low), knob.high)
    for layer, setting in hand.first("share").layers.items():
        assert params[f"share.{layer}.bits"] == min(max(setting.bits, 3), 5)
    assert params["finetune.epochs"] == min(hand.first("finetune").epochs, 2)


def test_project_keeps_every_channel_a_recipe_does_not_prune():
    space = derive_space(LeNet5(), {"structured": {"layers": {"conv2": {"keep_channels": [10, 40]}}}})
    params = space.project(deep_compression("lenet5", LeNet5()))
    assert params["structured.conv2.keep_channels"] == 40
    assert space.project(Recipe.from_dict({"structured": {"layers": {"conv2": {"keep": 12}}}}))["structured.conv2.keep_channels"] == 12


def test_prune_knobs_are_fractions_of_the_layer_structured_pruning_leaves():
    """Structured pruning shrinks the layers first, so kept amounts are fractions of what is left:
    every sampled recipe is valid on the shrunk model, and a count of dense weights is refused."""
    from squeezetune.compression.structured.shrink import shrink

    space = derive_space(LeNet5(), {"structured": {}})
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=3))
    for _ in range(10):
        trial = study.ask()
        recipe = space.recipe(space.suggest(trial))
        structured = recipe.first("structured")
        small = shrink(LeNet5(), {n: range(c.keep, space.knob(f"structured.{n}.keep_channels").corners()[1]) for n, c in structured.layers.items()})
        for step in recipe.steps:  # every later stage fits the shrunk model
            if step.stage != "structured":
                step.config.validate(small, (1, 1, 28, 28))
        study.tell(trial, [0.5, 1000.0])
    with pytest.raises(SqueezeError, match=r"space knob 'prune.conv2.keep' counts weights of the dense layer, but structured pruning runs first"):
        derive_space(LeNet5(), {"structured": {}, "prune": {"layers": {"conv2": {"keep": [100, 1000]}}}})


@pytest.mark.parametrize(
    "by, expected",
    [("kind", {"@Conv2d", "@Linear"}), ("block", {"@conv1", "@layer1.0", "@layer1.1", "@layer1.2", "@layer2.0", "@layer2.1", "@layer2.2", "@layer3.0", "@layer3.1", "@layer3.2", "@fc"})],
)
def test_a_deep_model_can_ask_for_a_compact_space(by, expected):
    """ResNet-20 has 22 compressible tensors: grouped, a handful of knobs cover all of them."""
    from squeezetune.tasks.cnn import ResNet20

    model = ResNet20()
    space = derive_space(model, {"group": by, "prune": {"layers": {"fc": {"keep_fraction": 0.5}}}})
    assert set(space.groups) == expected
    prune_knobs = {k.name for k in space.knobs if k.name.startswith("prune.") and k.name != "prune.granularity"}
    shared = {g for g, members in space.groups.items() if set(members) - {"fc"}}
    assert prune_knobs == {f"prune.{g}.keep_fraction" for g in shared} | {"prune.fc.keep_fraction"}
    params = space.suggest(optuna.create_study(directions=["maximize", "minimize"]).ask())
    recipe = space.recipe(params)
    prune = recipe.first("prune")
    assert set(prune.layers) == set(compressible(model))  # every tensor is covered
    assert prune.layers["fc"].keep_fraction == 0.5
    for group in shared:
        assert {prune.layers[m].keep_fraction for m in space.groups[group] if m != "fc"} == {params[f"prune.{group}.keep_fraction"]}
    hand = deep_compression("resnet20", model)
    assert space.contains(space.project(hand))
    with pytest.raises(SqueezeError, match=r"space.group='layer' is not known: expected one of \['tensor', 'kind', 'block'\]"):
        derive_space(model, {"group": "layer"})


def test_a_global_budget_is_spread_over_the_tensors_by_the_driver_s_curves():
    """``prune.budget`` is one knob; each trial turns it into per-tensor kept fractions that keep the
    budget, the tensors that lose little giving up most. The curves arrive as JSON (from the driver)."""
    curves = {
        "fc1": [[1.0, 0.0], [0.1, 0.0], [0.01, 0.02], [0.001, 0.5]],
        "fc2": [[1.0, 0.0], [0.1, 0.01], [0.01, 0.2], [0.001, 0.6]],
        "fc3": [[1.0, 0.0], [0.1, 0.3], [0.01, 0.7], [0.001, 0.8]],
    }
    config = {"prune": {"budget": {"keep_fraction": [0.01, 0.1]}}}
    assert needs_sensitivity(config) and not needs_sensitivity({"prune": {"budget": {"keep_fraction": 0.1}, "allocation": "uniform"}})
    space = derive_space(LeNet300(), config, sensitivity=curves)
    assert space.knob("prune.budget.keep_fraction").domain == FloatRange(0.01, 0.1, log=True)
    params = space.suggest(optuna.create_study(directions=["maximize", "minimize"]).ask())
    prune = space.recipe(params).first("prune")
    kept = {n: prune.layers[n].keep_fraction for n in space.layers}
    assert sum(kept[n] * size for n, size in space.layers.items()) == pytest.approx(params["prune.budget.keep_fraction"] * sum(space.layers.values()))
    assert kept["fc1"] < kept["fc2"] < kept["fc3"]
    uniform = derive_space(LeNet300(), {"prune": {**config["prune"], "allocation": "uniform"}})
    spread = uniform.recipe({**params, "prune.allocation": "uniform"}).first("prune").layers
    assert {layer.keep_fraction for layer in spread.values()} == {params["prune.budget.keep_fraction"]}
    with pytest.raises(SqueezeError, match=r"space.prune.budget with allocation 'sensitivity' needs the model's sensitivity curves"):
        derive_space(LeNet300(), config).recipe(params)
