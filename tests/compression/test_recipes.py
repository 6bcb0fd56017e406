from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from squeezetune.compression import FinetuneConfig, PruneConfig, ShareConfig, StructuredConfig, known_stages
from squeezetune.compression.recipes import Recipe, deep_compression, dense_keep, load_recipe
from squeezetune.compression.structured.neurons import NeuronsConfig
from squeezetune.compression.unstructured.gradual import GradualPruneConfig, IterativePruneConfig
from squeezetune.compression.unstructured.soft_sharing import SoftShareConfig
from squeezetune.errors import SqueezeError
from squeezetune.tasks import get_task


@pytest.mark.parametrize("task", ["lenet300-mnist", "lenet5-mnist", "resnet20-mnist"])
def test_deep_compression_round_trips_through_json(task):
    t = get_task(task)
    recipe = deep_compression(t.model, t.build_model())
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe


def test_paper_rates_for_lenet5():
    t = get_task("lenet5-mnist")
    r = deep_compression(t.model, t.build_model())
    prune, share = r.first("prune"), r.first("share")
    assert {n: p.keep_fraction for n, p in prune.layers.items()} == {"conv1": 0.66, "conv2": 0.12, "fc1": 0.08, "fc2": 0.19}
    assert {n: s.k for n, s in share.layers.items()} == {"conv1": 256, "conv2": 256, "fc1": 32, "fc2": 32}
    assert r.encode.index_bits == 5
    assert [s.label for s in r.steps] == ["prune", "finetune", "share", "finetune_centroids"]


def test_generic_rule_covers_every_layer_of_another_model():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 26 * 26, 32), nn.Linear(32, 10))
    r = deep_compression("other", model)
    prune, share = r.first("prune"), r.first("share")
    assert set(prune.layers) == {"0", "2", "3"}
    assert prune.layers["0"].keep_fraction == 0.5 and share.layers["0"].bits == 8
    assert prune.layers["3"].keep_fraction == 0.25
    assert share.fit  # cluster counts fit what each tensor keeps
    r.validate(model, torch.zeros(1, 1, 28, 28))  # conv 0 keeps 18 weights: 256 clusters is capped, not an error


def test_generic_rule_covers_attention_recurrent_and_embedding_tensors():
    model = nn.ModuleDict({"emb": nn.Embedding(100, 16), "attn": nn.MultiheadAttention(16, 2), "rnn": nn.GRU(16, 8), "head": nn.Linear(8, 3)})
    prune = deep_compression("other", model).first("prune")
    assert set(prune.layers) == {"emb", "attn.in_proj_weight", "attn.out_proj", "rnn.weight_ih_l0", "rnn.weight_hh_l0", "head"}
    # smaller tensors keep more: 10% only from 100,000 weights up
    kept = {n: prune.layers[n].keep_fraction for n in ("emb", "rnn.weight_hh_l0")}
    assert kept == {"emb": dense_keep(1_600), "rnn.weight_hh_l0": dense_keep(192)}
    assert dense_keep(1_000_000) == 0.1 and dense_keep(12_500) > 0.1 and dense_keep(1) == 0.5


def test_yaml_recipe_file_classic_form(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("prune:\n  default: {keep_fraction: 0.2}\nshare:\n  init: forgy\n  default: {clusters: 8}\nencode: {coder: ans}\nfinetune: {lr: 1e-3}\n")
    r = load_recipe(path, "lenet300", nn.Linear(2, 2))
    assert r.first("prune").for_layer("fc9").keep_fraction == 0.2
    assert r.first("share").for_layer("fc1").k == 8 and r.first("share").init.value == "forgy"
    assert r.first("finetune").lr == 1e-3
    assert r.encode.coder.value == "ans"
    assert [s.label for s in r.steps] == ["prune", "finetune", "share"]


def test_list_form_runs_stages_in_the_given_order_with_labels():
    r = Recipe.from_dict(
        {
            "name": "twice",
            "stages": [
                {"prune": {"default": {"keep_fraction": 0.5}}},
                {"finetune": {"epochs": 1}},
                {"prune": {"default": {"keep_fraction": 0.2}}},
                {"finetune": {"epochs": 2}, "label": "recover"},
            ],
        }
    )
    assert [(s.label, s.stage) for s in r.steps] == [("prune", "prune"), ("finetune", "finetune"), ("prune_2", "prune"), ("recover", "finetune")]
    assert Recipe.from_dict(r.to_dict()) == r
    assert "label" not in r.to_dict()["stages"][2] and r.to_dict()["stages"][3]["label"] == "recover"


def test_list_form_takes_a_structured_finetune_as_the_classic_form_does():
    settings = {"macs_target": 0.5, "finetune": {"epochs": 3, "distill": True}}
    listed = Recipe.from_dict({"stages": [{"structured": settings, "label": "shrink"}, {"share": {}}]})
    assert [(s.label, s.stage) for s in listed.steps] == [("shrink", "structured"), ("shrink_finetune", "finetune"), ("share", "share")]
    assert listed.steps[1].config == Recipe.from_dict({"structured": settings}).step("structured_finetune").config
    classic = Recipe.from_dict({"structured": settings, "finetune": {"epochs": 1}})
    listed = Recipe.from_dict({"stages": [{"structured": settings}, {"finetune": {"epochs": 1}}]})
    assert [s.label for s in listed.steps] == [s.label for s in classic.steps] == ["structured", "structured_finetune", "finetune"]


def test_classic_form_and_list_form_mean_the_same_recipe():
    classic = Recipe.from_dict({"prune": {"default": {"keep_fraction": 0.1}}, "finetune": {"epochs": 2}, "share": {"default": {"bits": 4}}, "finetune_centroids": {"epochs": 1}})
    assert Recipe.from_dict(classic.to_dict()) == classic
    assert classic.to_dict()["stages"][3] == {"finetune": FinetuneConfig(epochs=1).to_dict(), "label": "finetune_centroids"}


@pytest.mark.parametrize(
    "data,message",
    [
        ({"prune": {"granularity": "row"}}, r"prune.granularity='row' is not known"),
        ({"prune": {"layers": {"fc1": {"keep": 3, "quality": 1.0}}}}, r"exactly one of keep, keep_fraction, quality"),
        ({"prune": {"default": {"keep": 100}}}, r"prune.default.keep=100: a default for every layer takes keep_fraction or quality"),
        ({"share": {"default": {"bitz": 4}}}, r"unknown key 'bitz' in share.default"),
        ({"encode": {"index_bits": 0}}, r"index_bits=0 must be an integer in \[1, 16\] or 'auto'"),
        ({"encode": {"index_bits": "best"}}, r"index_bits='best' must be an integer in \[1, 16\] or 'auto'"),
        ({"finetune": {"lr": -1}}, r"^finetune.lr=-1.0 must be > 0"),
        ({"share": {"default": {"bits": 0}}}, r"^share.default.bits=0 must be an integer in \[1, 16\]"),
        ({"prune": {"layers": {"fc1": {"keep_fraction": 1.5}}}}, r"^prune.layers.fc1.keep_fraction=1.5 must be in \(0, 1\]"),
        ({"stages": [{"share": {"default": {"bits": 17}}}]}, r"^stages\[0\].share.default.bits=17 must be"),
        ({"share": {"layers": {"fc1": {"bits": 3, "clusters": 4}}}}, r"^share.layers.fc1: a layer's share setting needs exactly one of bits, clusters"),
        ({"structured": {"layers": {"conv1": {"keep": 0}}}}, r"^structured.layers.conv1.keep=0 channels must be an integer >= 1"),
        ({"stages": [{"structured": {"layers": {"conv1": {"lambda": -1}}}}]}, r"^stages\[0\].structured.layers.conv1.lambda=-1.0 must be"),
        ({"finetune": {"lr": "fast"}}, r"finetune.lr='fast': expected a finite number"),
        ({"finetune": {"distill": "maybe"}}, r"finetune.distill='maybe': expected true or false"),
        ({"finetune": {"epochs": 2.5}}, r"finetune.epochs=2.5: expected an integer"),
        (
            {"stages": [{"prnue": {}}]},
            r"unknown stage 'prnue': expected one of \['decompose', 'finetune', 'gradual_prune', 'iterative_prune', 'merge', 'neurons', 'prune', 'share', 'soft_share', 'strided', 'structured'",
        ),
        ({"stages": [{"prune": {}, "share": {}}]}, r"stages\[0\] names 2 stages"),
        ({"stages": [{"encode": {}}]}, r"put encode at the recipe's top level"),
        ({"stages": [{"finetune": {}}, {"finetune": {}, "label": "finetune"}]}, r"two stages labelled 'finetune'"),
        ({"stages": [], "prune": {}}, r"unknown key 'prune' in recipe: a recipe with a stages list takes only"),
        ({"prnue": {}}, r"unknown key 'prnue' in recipe"),
    ],
)
def test_bad_recipes_say_what_is_wrong(data, message):
    with pytest.raises(SqueezeError, match=message):
        Recipe.from_dict(data)


def test_unknown_recipe_name():
    with pytest.raises(SqueezeError, match=r"recipe 'nope' is neither a built-in"):
        load_recipe("nope", "lenet300", nn.Linear(2, 2))


@pytest.mark.parametrize("name,method", [("filter-pruning", "l1"), ("channel-pruning", "lasso")])
def test_structured_builtins_take_a_macs_target(name, method):
    model = get_task("resnet20-mnist").build_model()
    r = load_recipe(name, "resnet20", model)
    s = r.first("structured")
    assert r.name == name and s.method.value == method
    assert s.macs_target == 0.5 and s.allocation.value == "uniform"
    assert r.first("prune") is None and r.first("share") is None and r.step("structured_finetune").config.distill
    r = load_recipe(name, "resnet20", model, macs_target=0.25, allocation="sensitivity")
    assert r.first("structured").macs_target == 0.25 and r.first("structured").allocation.value == "sensitivity"
    assert Recipe.from_dict(r.to_dict()) == r


def test_macs_target_needs_a_structured_stage():
    model = get_task("resnet20-mnist").build_model()
    with pytest.raises(SqueezeError, match=r"recipe 'deep-compression' has no structured stage"):
        load_recipe("deep-compression", "lenet300", model, macs_target=0.5)
    with pytest.raises(SqueezeError, match=r"macs_target=1.5 must be in \(0, 1\]"):
        load_recipe("channel-pruning", "resnet20", model, macs_target=1.5)


def test_a_yaml_list_is_not_a_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("- prune\n")
    with pytest.raises(SqueezeError, match=r"holds a list: expected a mapping"):
        load_recipe(path, "lenet300", nn.Linear(2, 2))


def test_structured_round_to_is_checked_and_kept():
    r = Recipe.from_dict({"structured": {"macs_target": 0.5, "round_to": 4}})
    assert r.first("structured").round_to == 4 and Recipe.from_dict(r.to_dict()) == r
    assert Recipe.from_dict({"structured": {"macs_target": 0.5}}).first("structured").round_to == 8
    with pytest.raises(SqueezeError, match=r"structured.round_to=0 must be an integer >= 1"):
        Recipe.from_dict({"structured": {"macs_target": 0.5, "round_to": 0}})


def test_allocation_needs_a_macs_target(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("structured: {method: l1, layers: {conv1: {keep: 8}}}\n")
    with pytest.raises(SqueezeError, match=r"--allocation 'sensitivity' needs a macs_target"):
        load_recipe(path, "resnet20", nn.Linear(2, 2), allocation="sensitivity")


def test_a_binary_file_is_not_a_recipe(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"\x89SQZ\xff\xfe\x00")
    with pytest.raises(SqueezeError, match=r"is not UTF-8 text: expected a YAML file"):
        load_recipe(path, "lenet300", nn.Linear(2, 2))


def test_auto_index_bits_round_trips():
    r = Recipe.from_dict({"encode": {"index_bits": "auto"}})
    assert r.encode.index_bits == "auto" and Recipe.from_dict(r.to_dict()) == r


@pytest.mark.parametrize(
    "config",
    [
        PruneConfig(),
        ShareConfig(fit=True),
        FinetuneConfig(epochs=3, distill=True, group_lasso=1e-4, group_lasso_groups="rows"),
        StructuredConfig(macs_target=0.5),
        StructuredConfig(macs_target=0.5, cost="latency", latency_batch=16),
        GradualPruneConfig.from_dict({"layers": {"fc1": {"keep": 100}}, "budget": {"keep_fraction": 0.05}, "finetune": {"epochs": 4}, "regrow": True}),
        IterativePruneConfig.from_dict({"default": {"keep_fraction": 0.1}, "steps": 3, "max_drop": 0.2}),
        NeuronsConfig(inputs=False),
        SoftShareConfig(components=8),
    ],
)
def test_every_stage_config_round_trips_through_json(config):
    assert type(config).from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_every_registered_stage_reads_its_own_defaults():
    for name, config in known_stages().items():
        if name in ("structured", "decompose", "strided", "merge", "gradual_prune", "iterative_prune"):
            continue  # each needs a target or per-layer settings: checked above and in their own tests
        assert config.from_dict({}) == config()


def test_validation_names_the_layer_and_its_limit_before_any_work():
    model = get_task("lenet300-mnist").build_model()
    recipe = Recipe.from_dict({"prune": {"layers": {"fc3": {"keep": 100}}}, "share": {"layers": {"fc3": {"bits": 8}}}})
    with pytest.raises(SqueezeError, match=r"k=256 clusters for layer 'fc3' must be an integer in \[2, 100\]"):
        recipe.validate(model, torch.zeros(1, 1, 28, 28))
    with pytest.raises(SqueezeError, match=r"unknown layer 'fc9' in prune.layers: expected one of \['fc1', 'fc2', 'fc3'\]"):
        Recipe.from_dict({"prune": {"layers": {"fc9": {"keep": 1}}}}).validate(model, torch.zeros(1, 1, 28, 28))
    with pytest.raises(SqueezeError, match=r"keep=5000 for layer 'fc3' must be an integer in \[1, 1000\]"):
        Recipe.from_dict({"prune": {"layers": {"fc3": {"keep": 5000}}}}).validate(model, torch.zeros(1, 1, 28, 28))


def test_the_decomposition_builtin_takes_the_macs_target_and_its_own_allocation():
    model = get_task("resnet20-mnist").build_model()
    r = load_recipe("decomposition", "resnet20", model, macs_target=0.3, allocation="uniform")
    d = r.first("decompose")
    assert d.macs_target == 0.3 and d.allocation.value == "uniform" and d.method.value == "lowrank"
    assert r.step("finetune").config.distill and Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(SqueezeError, match=r"--allocation='sensitivity' is not known: expected one of \['uniform', 'energy'\]"):
        load_recipe("decomposition", "resnet20", model, allocation="sensitivity")


def test_cost_goes_to_the_last_stage_that_plans_to_a_target_and_defaults_to_macs(tmp_path):
    model = get_task("resnet20-mnist").build_model()
    assert load_recipe("filter-pruning", "resnet20", model).first("structured").cost.value == "macs"
    r = load_recipe("filter-pruning", "resnet20", model, cost="latency")
    assert r.first("structured").cost.value == "latency" and Recipe.from_dict(r.to_dict()) == r
    assert load_recipe("decomposition", "resnet20", model, cost="latency").first("decompose").cost.value == "latency"
    with pytest.raises(SqueezeError, match=r"--cost='speed' is not known: expected one of \['macs', 'latency'\]"):
        load_recipe("filter-pruning", "resnet20", model, cost="speed")
    path = tmp_path / "r.yaml"
    path.write_text("structured: {layers: {layer1.0.conv1: {keep: 8}}}")
    with pytest.raises(SqueezeError, match=r"--cost 'latency' needs a macs_target"):
        load_recipe(path, "resnet20", model, cost="latency")


def test_macs_target_goes_to_the_last_stage_that_plans_to_one():
    r = Recipe.from_dict({"stages": [{"structured": {"method": "l1", "macs_target": 0.7}}, {"decompose": {"macs_target": 0.5}}]})
    r = load_recipe(r, "resnet20", nn.Linear(2, 2), macs_target=0.35)
    assert r.first("structured").macs_target == 0.7 and r.first("decompose").macs_target == 0.35


def test_data_free_merge_reads_no_data():
    r = load_recipe("data-free-merge", "lenet300", get_task("lenet300-mnist").build_model())
    assert r.data_free and r.first("merge").default.remove_fraction == 0.25
    assert not load_recipe("decomposition", "lenet300", nn.Linear(2, 2)).data_free
    assert Recipe.from_dict({"stages": [{"structured": {"method": "l1", "macs_target": 0.5}}, {"prune": {"default": {"keep_fraction": 0.5}}}]}).data_free


def test_later_stages_are_checked_against_the_decomposed_model():
    model = get_task("lenet300-mnist").build_model()
    recipe = Recipe.from_dict({"stages": [{"decompose": {"layers": {"fc1": {"rank": 16}}}}, {"prune": {"layers": {"fc1": {"keep_fraction": 0.5}, "fc1.1": {"keep": 5000}}}}]})
    with pytest.raises(SqueezeError, match=r"keep=5000 for layer 'fc1.1' must be an integer in \[1, 4800\]"):
        recipe.validate(model, torch.zeros(1, 1, 28, 28))
    Recipe.from_dict({"stages": [{"decompose": {"layers": {"fc1": {"rank": 16}}}}, {"prune": {"layers": {"fc1": {"keep_fraction": 0.5}}}}]}).validate(model, torch.zeros(1, 1, 28, 28))


def _one_epoch(recipe: Recipe) -> Recipe:
    """``recipe`` with every fine-tune shortened to one epoch (for a fast test)."""

    def shorten(node):
        if isinstance(node, dict):
            return {k: (1 if k == "epochs" else shorten(v)) for k, v in node.items()}
        return [shorten(v) for v in node] if isinstance(node, list) else node

    return Recipe.from_dict(shorten(recipe.to_dict()))


class _TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3)
        self.pool = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(8 * 3 * 3, 32)
        self.fc2 = nn.Linear(32, 3)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


def test_max_compression_runs_on_a_tiny_model(tmp_path):
    from squeezetune.compression import compress, decode_file
    from squeezetune.compression.recipes import generic_budget, max_compression
    from squeezetune.compression.tensors import compressible
    from squeezetune.tasks import Split, Task

    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 1, 8, 8, generator=g)
    y = x.flatten(1)[:, :3].argmax(1)
    splits = (Split(x[:128], y[:128]), Split(x[128:], y[128:]))
    task = Task("tiny", "tiny", _TinyNet, lambda _: splits)
    torch.manual_seed(0)
    dense = _TinyNet().eval()
    recipe = max_compression("tiny", dense)  # no tuned rates: the generic rule
    assert recipe.first("gradual_prune").budget.keep_fraction == generic_budget(sum(t.numel for t in compressible(dense).values()))
    assert [s.label for s in recipe.steps] == ["gradual_prune", "neurons", "finetune_recover", "share", "finetune_centroids"]
    report = compress(task, _one_epoch(recipe), out=tmp_path / "m.sqz", dense=dense, latency=False)
    assert report.compressed_bytes < report.dense_bytes / 5
    decoded = decode_file(tmp_path / "m.sqz", task=task)
    assert sum(p.numel() for p in decoded.parameters()) < sum(p.numel() for p in dense.parameters())
    assert [s.stage for s in report.stages] == ["dense", "gradual_prune", "neurons", "finetune_recover", "share", "finetune_centroids", "encode"]


@pytest.mark.parametrize("task", ["lenet300-mnist", "lenet5-mnist"])
def test_max_compression_has_tuned_rates_for_the_mnist_nets(task):
    from squeezetune.compression.recipes import MAX_RATES

    t = get_task(task)
    recipe = load_recipe("max-compression", t.model, t.build_model())
    gradual = recipe.first("gradual_prune")
    assert {n: p.keep_fraction for n, p in gradual.layers.items()} == MAX_RATES[t.model]["keep"]
    assert gradual.finetune.distill and recipe.encode.index_bits == "auto"
    assert Recipe.from_dict(json.loads(json.dumps(recipe.to_dict()))) == recipe
    recipe.validate(t.build_model(), torch.zeros(1, 1, 28, 28))


def test_position_coding_round_trips_and_defaults_to_the_smallest_per_layer():
    assert Recipe.from_dict({}).encode.positions.value == "auto"
    r = Recipe.from_dict({"encode": {"positions": "relative"}})
    assert r.encode.positions.value == "relative" and Recipe.from_dict(r.to_dict()) == r
    with pytest.raises(SqueezeError, match="encode.positions"):
        Recipe.from_dict({"encode": {"positions": "zigzag"}})


def test_compress_refuses_an_output_folder_that_does_not_exist_before_training(tmp_path):
    from squeezetune.compression import compress
    from squeezetune.tasks import Task

    def no_data(_):
        raise AssertionError("data was loaded before the output path was checked")

    task = Task("tiny", "tiny", _TinyNet, no_data)
    out = tmp_path / "missing" / "m.sqz"
    with pytest.raises(SqueezeError, match="does not exist") as err:
        compress(task, "deep-compression", out=out, latency=False)
    assert "\n" not in str(err.value) and "missing" in str(err.value)
    assert not out.parent.exists()
