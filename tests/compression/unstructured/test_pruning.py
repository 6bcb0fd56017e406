from __future__ import annotations

import pytest
import torch
from torch import nn

from squeezetune.compression.finetune import FinetuneConfig, train
from squeezetune.compression.unstructured.pruning import Granularity, bake, magnitude_mask, mask_of, plain_state_dict, prune_layer
from squeezetune.errors import SqueezeError
from squeezetune.tasks import Split


def test_keep_count_is_exact_and_keeps_the_largest():
    layer = nn.Linear(30, 20)
    w = layer.weight.detach().abs().flatten().clone()
    mask = prune_layer(layer, keep=57)
    assert int(mask.sum()) == 57
    assert int((layer.weight != 0).sum()) == 57
    kept = layer.weight.detach().abs().flatten()[mask.flatten().bool()]
    assert kept.min() >= w[~mask.flatten().bool()].max()


@pytest.mark.parametrize("granularity,group", [("weight", 1), ("vector", 3), ("kernel", 9), ("filter", 36)])
def test_granularity_keeps_whole_groups(granularity, group):
    conv = nn.Conv2d(4, 6, 3)
    mask = prune_layer(conv, keep=40, granularity=granularity)
    assert int(mask.sum()) == -(-40 // group) * group
    m = mask.reshape(6, 4, 3, 3)
    if granularity == "vector":
        assert ((m.sum(3) == 0) | (m.sum(3) == 3)).all()
    if granularity == "kernel":
        assert ((m.sum((2, 3)) == 0) | (m.sum((2, 3)) == 9)).all()
    if granularity == "filter":
        assert ((m.sum((1, 2, 3)) == 0) | (m.sum((1, 2, 3)) == 36)).all()


def test_quality_threshold_is_quality_times_std():
    w = torch.randn(50, 40)
    mask = magnitude_mask(w, quality=1.0)
    assert torch.equal(mask.bool(), w.abs() > w.std())


@pytest.mark.parametrize("keep", [0, 2001, 3.5, True])
def test_bad_keep_names_the_value_and_range(keep):
    with pytest.raises(SqueezeError, match=rf"keep={keep!r} for layer 'fc' must be an integer in \[1, 2000\]"):
        magnitude_mask(torch.randn(40, 50), keep=keep, name="fc")


def test_pruned_weights_stay_exactly_zero_through_finetuning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    masks = {i: prune_layer(model[i], keep=100) for i in (1, 3) if model[i].weight.numel() > 100}
    data = Split(torch.randn(256, 1, 4, 4), torch.randint(0, 3, (256,)))
    before = model[1].weight.detach().clone()
    train(model, data, FinetuneConfig(epochs=3, lr=0.1, momentum=0.9, weight_decay=1e-3))
    for i, mask in masks.items():
        w = model[i].weight.detach()
        assert torch.equal(w[mask == 0], torch.zeros_like(w[mask == 0]))
        assert torch.equal(mask_of(model[i]), mask)
    assert not torch.equal(model[1].weight.detach(), before)  # the kept weights did train


def test_bake_leaves_plain_tensors():
    layer = nn.Linear(8, 8)
    prune_layer(layer, keep=10)
    expected = layer.weight.detach().clone()
    model = nn.Sequential(layer)
    assert set(plain_state_dict(model)) == {"0.weight", "0.bias"}
    bake(model)
    assert mask_of(layer) is None and isinstance(layer.weight, nn.Parameter)
    assert torch.equal(layer.weight.detach(), expected)


def test_granularity_strings_are_plain_values():
    assert Granularity("kernel") is Granularity.KERNEL and Granularity.KERNEL.value == "kernel"
