from __future__ import annotations

import pytest

from squeezetune.errors import SqueezeError
from squeezetune.search.config import SearchConfig


def test_defaults_need_no_config():
    c = SearchConfig()
    assert c.task == "lenet300-digits" and c.sampler.value == "tpe" and c.trials >= 1 and c.population >= 2


def test_round_trip_through_dict(tmp_path):
    import yaml

    data = {
        "name": "x1",
        "trials": 5,
        "sampler": "tpe",
        "resources": {"cpus": 1, "gpus": 0.25},
        "constraints": {"max_bytes": 20000, "max_drop": 0.5},
        "space": {"finetune": {"epochs": 1}},
        "max_concurrent": 3,
    }
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    c = SearchConfig.from_yaml(path)
    assert SearchConfig.from_dict(c.to_dict()) == c
    assert c.resources.gpus == 0.25 and c.constraints.max_bytes == 20000
    assert c.replace(trials=9).trials == 9 and c.replace(trials=None).trials == 5


@pytest.mark.parametrize(
    "data, message",
    [
        ({"trails": 3}, "unknown key 'trails'"),
        ({"sampler": "cmaes"}, "sampler='cmaes'"),
        ({"trials": 0}, "trials=0"),
        ({"resources": {"cpu": 1}}, "unknown key 'cpu'"),
        ({"resources": {"gpus": 1.5}}, "fraction"),
        ({"constraints": {"max_bytes": -3}}, "max_bytes"),
        ({"name": "a b"}, "name="),
        ({"time_budget": 0}, "time_budget=0: expected minutes > 0"),
        ({"time_budget": -5}, "time_budget=-5"),
        ({"time_budget": "ten"}, "time_budget='ten'"),
        ({"time_budget": True}, "time_budget=True"),
        ({"fidelity": {"early_stopping": "sometimes"}}, "fidelity.early_stopping='sometimes': expected auto, true or false"),
        ({"fidelity": {"early_stopping": 1}}, "fidelity.early_stopping=1"),
        ({"objectives": ["accuracy", "bytes", "latency_ms_b1_gpu"]}, "latency_ms_b1_gpu is timed on a trial's GPU, and resources.gpus=0: expected resources.gpus > 0"),
        ({"constraints": {"max_latency_ms": 5, "latency": "latency_ms_b64_gpu"}}, "latency_ms_b64_gpu is timed on a trial's GPU"),
    ],
)
def test_bad_config(data, message):
    with pytest.raises(SqueezeError, match=message.replace("(", r"\(").replace("[", r"\[")):
        SearchConfig.from_dict(data)


def test_missing_and_broken_yaml(tmp_path):
    with pytest.raises(SqueezeError, match="does not exist"):
        SearchConfig.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(SqueezeError, match="not valid YAML"):
        SearchConfig.from_yaml(bad)


def test_relative_paths_in_a_config_file_are_read_against_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    (folder / "data").mkdir(parents=True)
    (folder / "mine.yaml").write_text("name: mine\n")
    (folder / "s.yaml").write_text(
        "data_dir: data\ndense: dense.safetensors\nwarm_start: [deep-compression, mine.yaml]\ntracking_uri: sqlite:///runs/mlflow.db\nstudy_storage: sqlite:///runs/optuna.db\n"
    )
    monkeypatch.chdir(tmp_path)  # another folder than the config's
    c = SearchConfig.from_yaml("configs/s.yaml")
    assert c.data_dir == str((folder / "data").resolve()) and c.dense == str((folder / "dense.safetensors").resolve())
    assert c.warm_start == ("deep-compression", str((folder / "mine.yaml").resolve()))
    assert c.tracking_uri == f"sqlite:///{(folder / 'runs' / 'mlflow.db').resolve()}"
    assert c.study_storage == f"sqlite:///{(folder / 'runs' / 'optuna.db').resolve()}"
    assert SearchConfig.from_dict({"data_dir": "data"}).data_dir == str((tmp_path / "data").resolve())  # flags: the working folder


@pytest.mark.parametrize("address", ["local", "auto", "10.0.0.5:6379", "head-node:6379", "ray://head:10001"])
def test_ray_addresses(address):
    assert SearchConfig.from_dict({"ray_address": address}).ray_address == address


@pytest.mark.parametrize("address", ["my cluster", "http://head:8265", "head", 6379])
def test_bad_ray_addresses(address):
    with pytest.raises(SqueezeError, match="expected local, auto, host:port or ray://host:port"):
        SearchConfig.from_dict({"ray_address": address})


@pytest.mark.parametrize("setting", [None, {}, True])
def test_the_fidelity_sets_fine_tune_epochs_however_the_stage_is_turned_on(setting):
    from squeezetune.search.runner import space_config

    config = SearchConfig.from_dict({"task": "lenet300-digits", "space": {"finetune": setting, "finetune_centroids": setting}})
    space = space_config(config)
    assert space["finetune"]["epochs"] == config.fidelity.epochs and space["finetune_centroids"]["epochs"] == config.fidelity.centroid_epochs


def test_with_no_space_a_search_gets_max_compressions_stages_and_its_recipe_as_warm_start():
    from squeezetune.search.config import DEFAULT_SPACE
    from squeezetune.search.runner import fidelity_stage, space_config, warm_start_params
    from squeezetune.spaces import derive_space
    from squeezetune.tasks import get_task

    for data in ({}, {"space": None}):
        assert SearchConfig.from_dict(data).space == DEFAULT_SPACE
    assert SearchConfig.from_dict({"space": {}}).space == {}  # the one-shot space, as derive_space's defaults
    config = SearchConfig.from_dict({"task": "lenet5-mnist"})
    assert fidelity_stage(config.space) == "gradual_prune"
    space = derive_space(get_task("lenet5-mnist").build_model(), space_config(config), sensitivity={})
    assert space.stages == ("gradual_prune", "neurons", "finetune_recover", "share", "finetune_centroids")
    [params] = warm_start_params(space, get_task("lenet5-mnist"), ("auto",))  # max-compression only: the space has no prune stage
    recipe = space.recipe({**space.corner(), **params}, name="warm").to_dict()
    stages = {next(iter(s)) if "label" not in s else s["label"]: s for s in recipe["stages"]}
    gradual = stages["gradual_prune"]["gradual_prune"]
    assert {n: v["keep_fraction"] for n, v in gradual["layers"].items()} == {"conv1": 0.5, "conv2": 0.04, "fc1": 0.004, "fc2": 0.08}  # max-compression's own
    assert gradual["finetune"]["epochs"] == config.fidelity.epochs and gradual["finetune"]["group_lasso"] == 1e-5 and gradual["ramp"] == 0.8


def test_a_warm_starts_neighbours_keep_its_allocation_one_step_smaller_and_larger():
    from squeezetune.search.runner import neighbours, space_config, warm_start_params
    from squeezetune.spaces import derive_space
    from squeezetune.tasks import get_task

    task = get_task("lenet300-mnist")
    space = derive_space(task.build_model(), space_config(SearchConfig()), sensitivity={})
    [recipe] = warm_start_params(space, task, ("auto",))
    smaller, fewer_bits, larger, heavier = neighbours(space, recipe)
    keep = {k.name for k in space.searched if k.name.endswith(".keep_fraction")}
    assert keep == {"gradual_prune.fc1.keep_fraction", "gradual_prune.fc2.keep_fraction", "gradual_prune.fc3.keep_fraction"}
    for step, factor in ((smaller, 0.85), (larger, 1.3)):
        assert all(step[k] == pytest.approx(recipe[k] * factor) for k in keep)
        assert {k: v for k, v in step.items() if k not in keep} == {k: v for k, v in recipe.items() if k not in keep}
    # one bit less on fc1, the largest tensor (235,200 weights), and nothing else
    assert {k for k in recipe if fewer_bits[k] != recipe[k]} == {"share.fc1.bits"} and fewer_bits["share.fc1.bits"] == recipe["share.fc1.bits"] - 1
    # half as many weights again on fc1 alone
    fc1 = "gradual_prune.fc1.keep_fraction"
    assert {k for k in recipe if heavier[k] != recipe[k]} == {fc1} and heavier[fc1] == pytest.approx(1.5 * recipe[fc1])
    # a step the space cannot take is left out: at the ends of its ranges only the inward steps remain
    ends = {**recipe, **{k: 0.001 for k in keep}, "share.fc1.bits": 1}
    assert [sorted(k for k in keep if s[k] > 0.001) for s in neighbours(space, ends)] == [sorted(keep), ["gradual_prune.fc1.keep_fraction"]]
    narrow = derive_space(task.build_model(), space_config(SearchConfig.from_dict({"space": {**SearchConfig().space, "share": {"default": {"bits": 4}}}})), sensitivity={})
    assert len(neighbours(narrow, {k: v for k, v in recipe.items() if narrow.knob(k).searched})) == 3  # fixed bits: no bit step
    # a grouped knob is as large as its tensors together: LeNet-5's Linear layers outweigh its convolutions
    five = get_task("lenet5-mnist")
    grouped = derive_space(five.build_model(), space_config(SearchConfig.from_dict({"space": {**SearchConfig().space, "group": "kind"}})), sensitivity={})
    [start] = warm_start_params(grouped, five, ("auto",))
    _, bit_step, *_ = neighbours(grouped, start)
    assert {k for k in start if bit_step[k] != start[k]} == {"share.@Linear.bits"}
    # ... but only with the tensors that have no knob of their own: fc1 (235,200) outweighs fc2 + fc3
    own = {**SearchConfig().space, "group": "kind", "share": {**SearchConfig().space["share"], "layers": {"fc1": {"bits": [1, 8]}}}}
    apart = derive_space(task.build_model(), space_config(SearchConfig.from_dict({"space": own})), sensitivity={})
    [start] = warm_start_params(apart, task, ("auto",))
    _, bit_step, *_ = neighbours(apart, start)
    assert {k for k in start if bit_step[k] != start[k]} == {"share.fc1.bits"}
    # a fixed largest tensor takes no bit step, and the step goes to no other tensor
    fixed = {**SearchConfig().space, "share": {**SearchConfig().space["share"], "layers": {"fc1": {"bits": 4}}}}
    held = derive_space(task.build_model(), space_config(SearchConfig.from_dict({"space": fixed})), sensitivity={})
    [start] = warm_start_params(held, task, ("auto",))
    assert [{k for k in start if s[k] != start[k]} <= keep for s in neighbours(held, start)] == [True, True, True]


def test_the_step_on_the_largest_keep_knob_alone_goes_to_the_largest_searched_tensor_or_group():
    from squeezetune.search.runner import neighbours, space_config, warm_start_params
    from squeezetune.spaces import derive_space
    from squeezetune.tasks import get_task

    def changed(task, space_config_dict, sensitivity=None):
        space = derive_space(task.build_model(), space_config(SearchConfig.from_dict({"space": space_config_dict})), sensitivity=sensitivity)
        [start] = warm_start_params(space, task, ("auto",))
        return [sorted(k for k in start if n[k] != start[k]) for n in neighbours(space, start)]

    base, three, five = SearchConfig().space, get_task("lenet300-mnist"), get_task("lenet5-mnist")
    # grouped by kind: LeNet-5's Linear layers (405,000 weights) outweigh its convolutions
    assert changed(five, {**base, "group": "kind"})[-1] == ["gradual_prune.@Linear.keep_fraction"]
    # a fixed largest tensor takes no step, and the step goes to no other tensor
    fixed = {**base, "gradual_prune": {**base["gradual_prune"], "layers": {"fc1": {"keep_fraction": 0.02}}}}
    assert ["gradual_prune.fc2.keep_fraction"] not in changed(three, fixed) and len(changed(three, fixed)) == 3
    # a global budget spans fc1 and fc2, outweighing fc3's own knob: no step on fc3 alone
    pruning = {k: v for k, v in base["gradual_prune"].items() if k != "default"}
    budget = {**base, "gradual_prune": {**pruning, "budget": {"keep_fraction": [0.005, 0.3]}, "layers": {"fc3": {"keep_fraction": [0.05, 0.5]}}}}
    steps = changed(three, budget, sensitivity={n: [[0.0, 0.0]] for n in ("fc1", "fc2", "fc3")})
    assert steps[1:] == [["share.fc1.bits"], ["gradual_prune.budget.keep_fraction", "gradual_prune.fc3.keep_fraction"]]  # no fourth step


def test_the_search_runs_the_neighbours_only_when_asked():
    assert SearchConfig().warm_start_neighbours is True and SearchConfig.from_dict({"warm_start_neighbours": False}).warm_start_neighbours is False
    with pytest.raises(SqueezeError, match=r"warm_start_neighbours='yes': expected true or false"):
        SearchConfig.from_dict({"warm_start_neighbours": "yes"})


def test_the_fidelity_sets_gradual_prunings_epochs_in_a_space_without_finetune():
    from squeezetune.search.runner import fidelity_stage, space_config

    space = {"finetune": False, "gradual_prune": {"default": {"keep_fraction": [0.01, 0.1]}}}
    config = SearchConfig.from_dict({"space": space, "fidelity": {"epochs": 12}})
    assert space_config(config)["gradual_prune"]["finetune"]["epochs"] == 12 and "finetune" not in config.space["gradual_prune"]
    assert fidelity_stage({**space, "finetune": {}}) == "finetune" and fidelity_stage({"finetune": False}) is None
    bad = SearchConfig.from_dict({"space": {**space, "gradual_prune": {**space["gradual_prune"], "finetune": {"epochs": 30}}}})
    with pytest.raises(SqueezeError, match=r"space.gradual_prune.finetune.epochs is set by the fidelity.*fidelity.epochs"):
        space_config(bad)


def test_a_recipes_global_budget_warm_starts_a_per_tensor_space_at_that_fraction():
    """max-compression on a model without tuned rates keeps one share of all weights, split as it
    runs; projected into the default space's per-tensor knobs it is that share of each, not the
    range's low end."""
    from squeezetune.compression.recipes import generic_budget
    from squeezetune.compression.tensors import compressible
    from squeezetune.search.runner import space_config, warm_start_params
    from squeezetune.spaces import derive_space
    from squeezetune.tasks import get_task

    task = get_task("cnn32-digits")
    space = derive_space(task.build_model(), space_config(SearchConfig.from_dict({"task": task.name})), sensitivity={})
    [params] = warm_start_params(space, task, ("auto",))
    keeps = {k: v for k, v in params.items() if k.endswith(".keep_fraction")}
    budget = generic_budget(sum(t.numel for t in compressible(task.build_model()).values()))
    assert len(keeps) == len(space.layers) and set(keeps.values()) == {budget}


@pytest.mark.parametrize(
    ("space", "stage", "epochs"),
    [
        ({"finetune": False, "gradual_prune": None}, None, None),  # null is off, as derive_space reads it
        ({"finetune": False, "gradual_prune": False}, None, None),
        ({"finetune": False, "gradual_prune": True}, "gradual_prune", 7),
        ({"finetune": False, "gradual_prune": {"finetune": False}}, "gradual_prune", 7),  # false: the stage's defaults
        ({"finetune": False, "gradual_prune": {"finetune": None}}, "gradual_prune", 7),
    ],
)
def test_the_fidelity_stage_reads_a_space_as_derive_space_does(space, stage, epochs):
    from squeezetune.search.runner import fidelity_stage, space_config

    config = SearchConfig.from_dict({"space": space, "fidelity": {"epochs": 7}})
    assert fidelity_stage(config.space) == stage
    gradual = space_config(config).get("gradual_prune")
    assert (gradual["finetune"]["epochs"] if isinstance(gradual, dict) else None) == epochs
