from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from squeezetune.compression.structured import _lasso
from squeezetune.compression.structured.channel import ChannelPruneConfig, channel_prune
from squeezetune.compression.structured.filters import filter_prune
from squeezetune.errors import SqueezeError
from squeezetune.tasks.cnn import ResNet20, VGGNet
from tests.compression._models import randomise_norms


def _problem(p: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(400, p)) @ (np.eye(p) + 0.3 * rng.normal(size=(p, p)) / np.sqrt(p))
    y = z @ rng.normal(size=p) + 0.5 * rng.normal(size=400)
    return z.T @ z / (y @ y), z.T @ y / (y @ y)


def test_lasso_solution_meets_the_optimality_conditions():
    gram, xty = _problem(20)
    lam = 0.2 * np.abs(xty).max()
    beta = _lasso.lasso(gram, xty, lam)
    grad = gram @ beta - xty
    nz = beta != 0
    assert 0 < nz.sum() < 20
    np.testing.assert_allclose(grad[nz], -lam * np.sign(beta[nz]), atol=1e-6)
    assert np.all(np.abs(grad[~nz]) <= lam + 1e-6)


@pytest.mark.parametrize("keep", [1, 5, 12, 19])
def test_lambda_search_hits_the_requested_count(keep):
    gram, xty = _problem(20, seed=keep)
    mask, lam = _lasso.search(gram, xty, keep)
    assert mask.sum() == keep
    assert lam > 0


def test_channel_prune_hits_counts_and_reconstruction_reduces_the_error():
    model = randomise_norms(VGGNet())
    x = torch.randn(24, 1, 28, 28)
    keep = {"features.3": 12, "features.10": 30}
    small, report = channel_prune(model, x, ChannelPruneConfig(keep=keep, images=24, points=20))
    assert small.features[3].out_channels == 12 and small.features[7].in_channels == 12
    assert small.features[10].out_channels == 30 and small.features[14].in_channels == 30
    assert [(r.layer, r.kept, r.channels) for r in report] == [("features.3", 12, 32), ("features.10", 30, 64)]
    for r in report:
        assert r.error_after < r.error_before
        assert r.lam is not None and r.lam > 0
    plain, plain_report = channel_prune(model, x, ChannelPruneConfig(keep=keep, images=24, points=20, reconstruct=False))
    assert all(r.error_after == r.error_before for r in plain_report)
    with torch.no_grad():
        ref = model(x)
        assert ((small(x) - ref) ** 2).sum() < ((plain(x) - ref) ** 2).sum()


def test_l1_selection_without_reconstruction_is_filter_pruning():
    model = randomise_norms(VGGNet())
    x = torch.randn(8, 1, 28, 28)
    keep = {"features.0": 20, "features.14": 50}
    via_channel, _ = channel_prune(model, x, ChannelPruneConfig(keep=keep, select="l1", reconstruct=False, images=8))
    via_filters = filter_prune(model, keep)
    for a, b in zip(via_channel.state_dict().values(), via_filters.state_dict().values()):
        assert torch.equal(a, b)


def test_residual_branches_reconstruct_towards_the_shortcut_loss_and_stay_consistent():
    model = randomise_norms(ResNet20())
    x = torch.randn(12, 1, 28, 28)
    keep = {"conv1": 12, "layer1.0.conv1": 8, "layer2.0.conv2": 24}
    small, report = channel_prune(model, x, ChannelPruneConfig(keep=keep, images=12, points=16))
    by_layer = {r.layer: r for r in report}
    assert by_layer["layer1.0.conv1"].residual == ("layer1.0.conv2",)  # its output meets the shortcut
    assert "layer2.0.shortcut.0" in by_layer["conv1"].residual  # the projection meets the branch
    for block in small.layer1:
        assert block.conv2.out_channels == block.bn2.num_features == 12
    assert small.layer2[0].shortcut[0].in_channels == small.layer2[0].conv1.in_channels == 12
    assert all(b.conv2.out_channels == 24 for b in small.layer2) and small.layer3[0].conv1.in_channels == 24
    assert all(r.error_after < r.error_before for r in report)
    assert small(x).shape == (12, 10)


def test_fixed_lambda_keeps_its_lasso_support():
    model = randomise_norms(VGGNet())
    x = torch.randn(8, 1, 28, 28)
    _, report = channel_prune(model, x, ChannelPruneConfig(lam={"features.3": 0.001}, images=8))
    assert report[0].lam == 0.001 and 1 <= report[0].kept <= 32
    with pytest.raises(SqueezeError, match="lam=1000.0 for layer 'features.3' keeps no channel"):
        channel_prune(model, x, ChannelPruneConfig(lam={"features.3": 1000.0}, images=8))


def test_config_round_trips_through_json():
    config = ChannelPruneConfig(keep={"features.3": 12}, select="l1", images=64, points=5, seed=3)
    again = ChannelPruneConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"lam": {"features.3": -0.5}}, "lam=-0.5 for layer 'features.3' must be a finite number >= 0"),
        ({"keep": {"features.3": 4}, "lam": {"features.3": 0.1}}, "both a keep count and a lam"),
        ({"select": "random"}, "select='random'"),
        ({"lam": {"features.3": 0.1}, "select": "l1"}, "expected select='lasso'"),
        ({"images": 0}, "images=0"),
    ],
)
def test_bad_configs_are_rejected(kwargs, message):
    with pytest.raises(SqueezeError, match=message):
        ChannelPruneConfig(**kwargs)


@pytest.mark.parametrize(
    "keep,message",
    [
        ({"features.3": 0}, "keep=0 for layer 'features.3' would remove every channel"),
        ({"features.99": 3}, "no layer 'features.99'"),
        ({"classifier.2": 3}, "layer 'classifier.2' cannot be pruned structurally"),
    ],
)
def test_bad_layers_and_counts_name_the_value(keep, message):
    with pytest.raises(SqueezeError, match=message):
        channel_prune(VGGNet(), torch.randn(4, 1, 28, 28), ChannelPruneConfig(keep=keep, images=4))


@pytest.mark.parametrize("conv", [nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, (3, 1), padding=(1, 0), dilation=2)])
def test_sampled_patches_match_unfold(conv):
    from squeezetune.compression.structured._sampling import patches, sample_rows

    x = torch.randn(2, 3, 9, 9)
    out = conv(x)
    pos = torch.randint(out.shape[2] * out.shape[3], (2, 5))
    full = torch.nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    assert torch.equal(patches(x, conv, out.shape[2:], pos), sample_rows(full, pos))


class Reused(nn.Module):
    """``mix`` runs twice a forward pass: the samples hold its first call only."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(12, 16)
        self.mix = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        return self.head(torch.relu(self.mix(h)) + torch.relu(self.mix(2 * h)))


def test_a_consumer_run_twice_a_forward_pass_keeps_its_weights_and_is_named():
    torch.manual_seed(0)
    model, x = Reused().eval(), torch.randn(64, 12)
    said = []
    small, report = channel_prune(model, x, ChannelPruneConfig(keep={"fc1": 8}, images=64), example=torch.zeros(1, 12), progress=said.append)
    assert report[0].kept_as_is == ("mix",) and report[0].error_after == report[0].error_before
    kept = [i for i in range(16) if any(torch.equal(model.fc1.weight[i], w) for w in small.fc1.weight)]
    assert len(kept) == 8 and torch.equal(small.mix.weight, model.mix.weight[:, kept])  # sliced, not refitted
    assert "mix not reconstructed: run more than once a forward pass" in said[0]
