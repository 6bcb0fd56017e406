"""Global average pooling in place of a Linear that reads a flattened feature map."""

from __future__ import annotations

import torch
from torch import nn

from squeezetune.compression._fit import Samples, relative_error
from squeezetune.compression.decomposition.pooling import GlobalPool, map_shape
from squeezetune.tasks.models import LeNet5
from tests.compression._tiny import TinyCNN, images


def test_the_map_a_linear_reads_is_found_by_tracing():
    assert map_shape(LeNet5(), "fc1", (1, 1, 28, 28)) == (50, 4, 4)
    assert "whose input is not a flattened feature map" in map_shape(LeNet5(), "fc2", (1, 1, 28, 28))
    assert GlobalPool(map_shape(LeNet5(), "fc2", (1, 1, 28, 28))).refuses(LeNet5().fc2) is not None


def test_the_data_free_fit_is_exact_on_maps_constant_per_channel():
    model = LeNet5()
    pool = GlobalPool((50, 4, 4))
    factors = pool.fit(model.fc1)
    assert factors[3].weight.shape == (500, 50)
    x = torch.randn(3, 50, 1, 1).expand(3, 50, 4, 4).flatten(1)
    assert torch.allclose(factors(x), model.fc1(x), atol=1e-4)


def test_least_squares_on_pooled_features_beats_the_data_free_fit():
    torch.manual_seed(0)
    model = TinyCNN().eval()
    x, _ = images(128)
    pool = GlobalPool(map_shape(model, "fc1", (1, 1, 12, 12)))  # traced first: its one-image pass would feed the hook
    store = {}
    model.fc1.register_forward_hook(lambda m, a, out: store.update(inp=a[0].detach(), out=out.detach()))
    with torch.no_grad():
        model(x)
    assert store["inp"].shape == (128, 16 * 6 * 6)
    factors = pool.fit(model.fc1)
    with torch.no_grad():
        before = relative_error(factors(store["inp"]).double(), store["out"].double())
    pool.refit(factors, model.fc1, store["inp"], store["out"], Samples(nn.Sequential(), x, images=1, points=1, seed=0, device=torch.device("cpu")).rows)
    with torch.no_grad():
        after = relative_error(factors(store["inp"]).double(), store["out"].double())
    assert after < before
