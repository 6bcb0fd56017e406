from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from squeezetune.compression.unstructured.sensitivity import Budget, allocate, budget_counts, prediction_drift, recalibrated, sensitivity_curves
from squeezetune.errors import SqueezeError


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
    curves = sensitivity_curves(model, drift, ["0", "2"], fractions=(0.5, 0.1, 0.03))
    for points in curves.values():
        assert [f for f, _ in points] == [1.0, 0.5, 0.1, 0.03]
        assert points[0] == (1.0, 0.0)
        assert all(a[1] <= b[1] for a, b in zip(points, points[1:]))
    assert curves["0"][2][1] < curves["2"][2][1]  # at 10% the identity layer drifts less
    assert torch.equal(model[0].weight.ne(0).all(), torch.tensor(True))  # the model itself is untouched


def test_any_loss_makes_a_curve_and_every_tensor_is_measured_by_default():
    """The search's loss: the share of predictions that change (an accuracy drop), not a drift."""
    model = _model()
    x = torch.randn(200, 30)
    reference = model(x).argmax(1)
    curves = sensitivity_curves(model, lambda m: float((m(x).argmax(1) != reference).float().mean()), fractions=(0.1, 0.01))
    assert set(curves) == {"0", "2"}
    assert all(points[0] == (1.0, 0.0) and 0 <= points[1][1] <= points[2][1] <= 1 for points in curves.values())
    assert json.loads(json.dumps(curves)) == {n: [list(p) for p in points] for n, points in curves.items()}


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: sensitivity_curves(m, lambda _: 0.0, ["0", "9"]), r"no compressible tensor '9'"),
        (lambda m: sensitivity_curves(m, lambda _: 0.0, fractions=(1.0, 0.1)), r"expected kept fractions in \(0, 1\)"),
    ],
)
def test_bad_measurements_are_refused(call, message):
    with pytest.raises(SqueezeError, match=message):
        call(_model())


CURVES = {
    "tolerant": [(1.0, 0.0), (0.5, 0.0), (0.1, 0.01), (0.01, 0.3)],
    "sensitive": [(1.0, 0.0), (0.5, 0.05), (0.1, 0.4), (0.01, 0.9)],
}
SIZES = {"tolerant": 9000, "sensitive": 1000}


@pytest.mark.parametrize("keep_fraction", [0.001, 0.01, 0.05, 0.2, 0.9])
def test_allocate_keeps_exactly_the_budget_and_spares_the_sensitive_tensor(keep_fraction):
    fractions = allocate(CURVES, SIZES, keep_fraction)
    assert sum(f * SIZES[n] for n, f in fractions.items()) == pytest.approx(keep_fraction * 10000, rel=1e-9)
    assert all(1 / SIZES[n] <= f <= 1 for n, f in fractions.items())
    assert fractions["sensitive"] >= fractions["tolerant"]


def test_allocate_reads_json_curves_and_holds_the_floor():
    """Curves reach a trial as JSON lists; a floor keeps every tensor above it, the budget still met."""
    as_json = json.loads(json.dumps(CURVES))
    assert allocate(as_json, SIZES, 0.05) == allocate(CURVES, SIZES, 0.05)
    fractions = allocate(CURVES, SIZES, 0.02, floor=0.015)
    assert min(fractions.values()) >= 0.015
    assert sum(f * SIZES[n] for n, f in fractions.items()) == pytest.approx(200, rel=1e-9)


def test_allocate_past_the_measured_curves_scales_every_tensor():
    """Below the smallest measured fractions every tensor shrinks by one factor; above what loses
    nothing, every tensor grows by one factor (up to the whole tensor)."""
    low = allocate(CURVES, SIZES, 0.001)
    assert low["tolerant"] / low["sensitive"] == pytest.approx(1.0)
    high = allocate(CURVES, SIZES, 0.9)
    assert high["sensitive"] == 1.0 and high["tolerant"] == pytest.approx((9000 - 1000) / 9000)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"keep_fraction": 0.0}, r"keep_fraction=0.0: expected the fraction of all weights to keep, in \(0, 1\]"),
        ({"keep_fraction": 0.1, "floor": 0.2}, r"floor=0.2 must be in \[0, keep_fraction=0.1\]"),
        ({"keep_fraction": 0.1, "sizes": {"other": 10}}, r"no sensitivity curve for tensor 'other'"),
    ],
)
def test_bad_allocations_are_refused(kwargs, message):
    kwargs = {"curves": CURVES, "sizes": SIZES, **kwargs}
    with pytest.raises(SqueezeError, match=message):
        allocate(**kwargs)


def test_sensitivity_gives_the_budget_to_the_layer_that_needs_it():
    model = _model()
    budget = Budget(keep_fraction=0.2)
    counts = budget_counts(model, budget, ["0", "2"], prediction_drift(model, torch.randn(200, 30)))
    assert abs(sum(counts.values()) - 0.2 * (900 + 150)) <= 1
    assert counts["2"] / 150 > counts["0"] / 900
    uniform = budget_counts(model, Budget(keep_fraction=0.2, allocation="uniform"), ["0", "2"])
    assert uniform == {"0": 180, "2": 30}
    with pytest.raises(SqueezeError, match=r"budget.allocation='sensitivity' needs training data"):
        budget_counts(model, budget, ["0", "2"])


def test_magnitude_is_one_threshold_over_every_layer():
    model = _model()
    counts = budget_counts(model, Budget(keep_fraction=0.1, allocation="magnitude"), ["0", "2"])
    pooled = torch.cat([model[0].weight.abs().flatten(), model[2].weight.abs().flatten()])
    threshold = pooled.topk(105).values[-1]
    assert counts == {"0": int((model[0].weight.abs() >= threshold).sum()), "2": int((model[2].weight.abs() >= threshold).sum())}


def _bn_net() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 8, 5, padding=2, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 4))
    x = torch.randn(256, 1, 16)
    model[1].momentum = None  # running statistics: the average over the data
    model.train()
    with torch.no_grad():
        model(x)
    model[1].momentum = 0.1
    return model.eval(), x


def test_recalibration_reestimates_batchnorm_statistics_and_restores_them():
    model, x = _bn_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model[0].weight.mul_(0.1)  # a pruned convolution's outputs shrink
    with recalibrated(model, x):
        assert not model[1].training
        out = model[0](x)
        torch.testing.assert_close(model[1].running_mean, out.mean((0, 2)), atol=1e-5, rtol=1e-4)
        assert float(model[1].running_var.max()) < 0.05 * float(before["1.running_var"].min())
    for k in ("1.running_mean", "1.running_var", "1.num_batches_tracked"):
        torch.testing.assert_close(model.state_dict()[k], before[k])


def test_calibration_keeps_a_batchnorm_layer_from_looking_oversensitive():
    """Pruned by magnitude, a convolution's outputs shrink; with the dense statistics its
    BatchNorm then mis-scales them and the curve blames the convolution."""
    model, x = _bn_net()
    drift = prediction_drift(model, x)
    plain = sensitivity_curves(model, drift, ["0"], fractions=(0.5, 0.3))["0"]
    calibrated = sensitivity_curves(model, drift, ["0"], fractions=(0.5, 0.3), calibration=x)["0"]
    assert calibrated[0][1] < 1e-3  # the unpruned model, recalibrated on its own data, barely moves
    assert calibrated[-1][1] < plain[-1][1]
    torch.testing.assert_close(model.state_dict()["1.running_var"], _bn_net()[0].state_dict()["1.running_var"])
