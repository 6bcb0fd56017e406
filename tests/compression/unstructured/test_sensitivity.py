from __future__ import annotations

import torch
from torch import nn

from squeezetune.compression.unstructured.sensitivity import Budget, allocate, prediction_drift, sensitivity_curves


def _model() -> nn.Module:
    # layer 0 is an identity plus faint noise: pruning it to its diagonal changes almost nothing;
    # layer 2 is dense and every weight matters
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 30), nn.ReLU(), nn.Linear(30, 5))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(30) + 1e-3 * torch.randn(30, 30))
        model[0].bias.fill_(1.0)
    return model.eval()


def test_curves_are_monotone_and_start_at_no_drift():
    model = _model()
    drift = prediction_drift(model, torch.randn(200, 30))
    curves = sensitivity_curves(model, ["0", "2"], drift, grid=(1.0, 0.5, 0.1, 0.03))
    for points in curves.values():
        assert points[0] == (1.0, 0.0)
        assert all(a[1] <= b[1] for a, b in zip(points, points[1:]))
    assert curves["0"][2][1] < curves["2"][2][1]  # at 10% the identity layer drifts less
    assert torch.equal(model[0].weight.ne(0).all(), torch.tensor(True))  # the model itself is untouched


def test_sensitivity_gives_the_budget_to_the_layer_that_needs_it():
    model = _model()
    budget = Budget(keep_fraction=0.2)
    counts = allocate(model, budget, ["0", "2"], prediction_drift(model, torch.randn(200, 30)))
    total = 0.2 * (900 + 150)
    assert abs(sum(counts.values()) - total) <= 0.05 * total
    assert counts["2"] / 150 > counts["0"] / 900
    uniform = allocate(model, Budget(keep_fraction=0.2, allocation="uniform"), ["0", "2"])
    assert uniform == {"0": 180, "2": 30}


def test_magnitude_is_one_threshold_over_every_layer():
    model = _model()
    counts = allocate(model, Budget(keep_fraction=0.1, allocation="magnitude"), ["0", "2"])
    pooled = torch.cat([model[0].weight.abs().flatten(), model[2].weight.abs().flatten()])
    threshold = pooled.topk(105).values[-1]
    assert counts == {"0": int((model[0].weight.abs() >= threshold).sum()), "2": int((model[2].weight.abs() >= threshold).sum())}
