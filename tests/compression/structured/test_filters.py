from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from squeezetune.compression.structured.filters import (
    Sensitivity,
    filter_prune,
    filter_scores,
    l1_removals,
    plot_sensitivity,
    sensitivity_analysis,
    sensitivity_table,
)
from squeezetune.errors import SqueezeError
from squeezetune.tasks.cnn import ResNet20, VGGNet


def test_filter_prune_keeps_the_filters_of_largest_l1_norm():
    model = VGGNet().eval()
    w = model.features[7].weight.detach()
    norms = w.abs().flatten(1).sum(1)
    top = torch.sort(torch.argsort(norms, descending=True)[:20]).values
    small = filter_prune(model, {"features.7": 20})
    assert small.features[7].weight.shape == (20, 32, 3, 3)
    assert torch.equal(small.features[7].weight, w[top])
    assert torch.equal(small.features[10].weight, model.features[10].weight[:, top])
    assert torch.equal(small.features[8].running_mean, model.features[8].running_mean[top])


def test_coupled_filters_are_scored_together():
    model = ResNet20()
    scores = filter_scores(model, "layer1.1.conv2")  # an alias of the stage-1 stream group
    members = [model.conv1, model.layer1[0].conv2, model.layer1[1].conv2, model.layer1[2].conv2]
    expected = sum(m.weight.detach().abs().flatten(1).sum(1).double() for m in members)
    torch.testing.assert_close(scores, expected)
    removed = l1_removals(model, {"layer1.0.conv2": 12})
    assert list(removed) == ["conv1"]
    assert sorted(removed["conv1"]) == sorted(torch.argsort(expected)[:4].tolist())


def test_filter_prune_rejects_counts_that_empty_a_layer():
    with pytest.raises(SqueezeError, match="keep=0 for layer 'features.0' would remove every channel"):
        filter_prune(VGGNet(), {"features.0": 0})
    with pytest.raises(SqueezeError, match="keep=40 for layer 'features.0' must be in \\[1, 32\\]"):
        filter_prune(VGGNet(), {"features.0": 40})
    with pytest.raises(SqueezeError, match="layer 'classifier.2' cannot be pruned structurally"):
        filter_prune(VGGNet(), {"classifier.2": 5})


def test_sensitivity_analysis_table_plot_and_json(tmp_path):
    model = VGGNet().eval()
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        labels = model(x).argmax(1)

    def agreement(m: nn.Module) -> float:
        with torch.no_grad():
            return float((m.eval()(x).argmax(1) == labels).float().mean())

    result = sensitivity_analysis(model, agreement, fractions=(0.5, 0.9), layers=["features.0", "classifier.0"])
    assert result.base == 1.0
    assert list(result.accuracy) == ["features.0", "classifier.0"]
    assert all(len(row) == 2 and all(0.0 <= a <= 1.0 for a in row) for row in result.accuracy.values())
    assert result.channels == {"features.0": 32, "classifier.0": 64}
    table = sensitivity_table(result)
    assert "| features.0 | 32 |" in table and "90% pruned" in table
    path = plot_sensitivity(result, tmp_path / "sens.png")
    assert path.stat().st_size > 1000
    assert Sensitivity.from_dict(json.loads(json.dumps(result.to_dict()))) == result


def test_sensitivity_rejects_bad_fractions():
    with pytest.raises(SqueezeError, match=r"fractions=\[0.5, 1.0\]"):
        sensitivity_analysis(VGGNet(), lambda m: 1.0, fractions=(0.5, 1.0))
    with pytest.raises(SqueezeError, match="sensitivity data is invalid"):
        Sensitivity.from_dict({"base": 1.0})
