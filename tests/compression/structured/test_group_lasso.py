from __future__ import annotations

import pytest
import torch
from torch import nn

from squeezetune.compression.finetune import FinetuneConfig, train
from squeezetune.compression.structured.group_lasso import GroupLasso
from squeezetune.compression.unstructured.pruning import mask_of, prune_layer
from squeezetune.compression.unstructured.sharing import share_layer
from squeezetune.errors import SqueezeError
from squeezetune.tasks import Split


def _toy() -> tuple[nn.Module, Split]:
    # 12 input features, of which only the first 2 decide the label
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 1, 1, 12, generator=g)
    y = (x[:, 0, 0, 0] + x[:, 0, 0, 1] > 0).long()
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 2)), Split(x, y)


def test_group_lasso_drives_unneeded_columns_and_rows_to_exactly_zero():
    model, data = _toy()
    train(model, data, FinetuneConfig(epochs=20, lr=0.05, batch_size=64, group_lasso=0.008))
    w = model[1].weight.detach()
    dead_inputs = int((w.abs().sum(0) == 0).sum())
    dead_units = int((w.abs().sum(1) == 0).sum())
    assert dead_inputs >= 6  # most of the 10 irrelevant inputs are gone, exactly
    assert w[:, :2].abs().sum() > 0  # the two that matter are kept
    assert dead_units >= 4
    with torch.no_grad():
        accuracy = float((model(data.x).argmax(1) == data.y).float().mean())
    assert accuracy > 0.95


def test_without_the_penalty_nothing_is_exactly_zero():
    model, data = _toy()
    train(model, data, FinetuneConfig(epochs=3, lr=0.05, batch_size=64))
    assert int((model[1].weight.detach().abs().sum(0) == 0).sum()) == 0


def test_pruned_weights_stay_zero_and_shared_tensors_are_left_alone():
    model, data = _toy()
    mask = prune_layer(model[1], keep=100)
    share_layer(model[3], k=4)
    lasso = GroupLasso(model, strength=0.01)
    assert len(lasso.tensors) == 1  # the shared tensor is not penalised
    before = lasso.penalty()
    lasso.step(lr=0.5)
    assert lasso.penalty() < before
    w = model[1].weight.detach()
    assert torch.equal(w[mask == 0], torch.zeros_like(w[mask == 0]))
    assert torch.equal(mask_of(model[1]), mask)


def test_columns_only_leaves_rows_alone():
    layer = nn.Linear(4, 3)
    GroupLasso(layer, strength=100.0, groups="columns").step(lr=1.0)
    assert torch.equal(layer.weight.detach(), torch.zeros(3, 4))
    conv = nn.Conv2d(3, 5, 3)
    with torch.no_grad():
        conv.weight[:, 1] *= 1e-4
    GroupLasso(conv, strength=1e-3, groups="columns").step(lr=1.0)
    assert torch.equal(conv.weight[:, 1], torch.zeros(5, 3, 3)) and conv.weight[:, 0].abs().sum() > 0


def test_a_negative_strength_is_refused():
    with pytest.raises(SqueezeError, match=r"group_lasso=-0.1 must be >= 0"):
        FinetuneConfig(group_lasso=-0.1)
