"""Data-free neuron merging: exact for equal neurons, chosen by saliency, run without reading any data."""

from __future__ import annotations

import pytest
import torch

from squeezetune.compression import Recipe, compress, decode_file
from squeezetune.compression.merging import MergeConfig, merge_neurons, merge_order, mergeable_layers
from squeezetune.errors import SqueezeError
from squeezetune.tasks import Split, Task
from tests.compression._tiny import MLP_TASK, TinyCNN, TinyMLP, splits, trained


def test_equal_neurons_merge_without_changing_the_outputs():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    with torch.no_grad():  # conv3 filter 5 equals filter 2; fc1 neuron 7 equals neuron 3
        model.conv3.weight[5], model.conv3.bias[5] = model.conv3.weight[2], model.conv3.bias[2]
        model.fc1.weight[7], model.fc1.bias[7] = model.fc1.weight[3], model.fc1.bias[3]
    small = merge_neurons(model, {"conv3": 1, "fc1": 1}, example=torch.zeros(1, 1, 12, 12))
    assert small.conv3.out_channels == 15 and small.fc1.in_features == 15 * 36 and small.fc1.out_features == 31
    x = torch.randn(4, 1, 12, 12)
    with torch.no_grad():
        assert torch.allclose(small(x), model(x), atol=1e-5)


def test_the_most_similar_pair_goes_first_and_its_outgoing_weights_add_up():
    incoming = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.1, 0.0], [5.0, 5.0]])
    outgoing = torch.tensor([[1.0], [1.0], [1.0], [1.0]])
    assert merge_order(incoming, outgoing, 1)[0] in ((1, 2), (2, 1))
    outgoing = torch.tensor([[1.0], [1.0], [9.0], [1.0]])  # removing neuron 2 moves a large outgoing weight
    assert merge_order(incoming, outgoing, 1) == [(2, 1)]
    assert merge_order(incoming, outgoing, 1, "distance")[0] in ((1, 2), (2, 1))
    with pytest.raises(SqueezeError, match=r"expected a count in \[0, 3\]"):
        merge_order(incoming, outgoing, 4)


def test_merging_beats_dropping_the_same_neurons_without_merging():
    torch.manual_seed(0)
    model = trained(TinyMLP)
    held = splits()[1]
    merged = merge_neurons(model, {"fc1": 12}, example=held.x[:1])
    with torch.no_grad():
        target = model(held.x)
        base = merge_neurons(model, {"fc1": 0}, example=held.x[:1])
        assert base(held.x).equal(target)
        merged_error = float(((merged(held.x) - target) ** 2).mean())
    removed = [j for _, j in merge_order(torch.cat([model.fc1.weight, model.fc1.bias[:, None]], 1), model.fc2.weight.T, 12)]
    dropped = trained(TinyMLP)
    with torch.no_grad():
        dropped.fc2.weight[:, removed] = 0
        assert merged_error < float(((dropped(held.x) - target) ** 2).mean())


def test_layers_that_cannot_merge_are_refused():
    assert mergeable_layers(TinyCNN(), (1, 1, 12, 12)) == {"conv3": 16, "fc1": 32}  # conv1, conv2 have norms after them
    with pytest.raises(SqueezeError, match="layer 'conv2' in merge.layers cannot merge neurons: a BatchNorm"):
        MergeConfig.from_dict({"layers": {"conv2": {"remove": 2}}}).validate(TinyCNN(), torch.zeros(1, 1, 12, 12))
    with pytest.raises(SqueezeError, match=r"remove=48 for layer 'fc1' must be in \[0, 47\]"):
        MergeConfig.from_dict({"layers": {"fc1": {"remove": 48}}}).validate(TinyMLP(), torch.zeros(1, 1, 12, 12))


class _Untouchable(Split):
    """A training split that fails the test when any stage reads it."""

    def __getattribute__(self, name):
        if name in ("x", "y"):
            raise AssertionError("a data-free recipe read the training split")
        return super().__getattribute__(name)

    def __len__(self) -> int:
        raise AssertionError("a data-free recipe read the training split")


def _no_training_data(_):
    train, held = splits()
    return _Untouchable(train.x, train.y), held


def test_the_data_free_recipe_reads_no_training_data(tmp_path):
    task = Task(name="tiny-mlp", model="tiny-mlp", build_model=TinyMLP, load_data=_no_training_data)
    recipe = Recipe.from_dict({"stages": [{"merge": {"default": {"remove_fraction": 0.25}}}, {"prune": {"default": {"keep_fraction": 0.5}}}]})
    assert recipe.data_free
    report = compress(task, recipe, out=tmp_path / "m.sqz", dense=trained(TinyMLP), latency=False)
    decoded = decode_file(tmp_path / "m.sqz", task=MLP_TASK)
    assert decoded.fc1.out_features == 36 and decoded.fc2.out_features == 18
    assert [s.stage for s in report.stages] == ["dense", "merge", "prune", "encode"] and all(0 <= s.accuracy <= 1 for s in report.stages)
    assert not Recipe.from_dict({"stages": [{"merge": {"default": {"remove_fraction": 0.25}}}, {"finetune": {"epochs": 1}}]}).data_free


def test_a_model_with_no_mergeable_layer_says_why_nothing_merged():
    from torch import nn

    from squeezetune.compression import Context, apply_stage

    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 10)).eval()
    said: list[str] = []
    out = apply_stage(model, MergeConfig.from_dict({"default": {"remove_fraction": 0.25}}), Context(teacher=model, example=torch.zeros(1, 1, 12, 12), progress=said.append))
    assert out[1].out_features == 16
    assert any(": nothing merged, no layer can merge neurons (" in line and "'2' (LayerNorm)" in line for line in said), said
