from __future__ import annotations

import pytest
import torch
from torch import nn

from squeezetune.compression.finetune import FinetuneConfig, train
from squeezetune.compression.unstructured.pruning import prune_layer
from squeezetune.compression.unstructured.sharing import share_layer, shared_of
from squeezetune.errors import SqueezeError
from squeezetune.tasks import Split


def test_shared_layer_holds_k_values_and_pruned_zeros():
    layer = nn.Linear(40, 30)
    mask = prune_layer(layer, keep=300)
    share_layer(layer, k=16, init="density")
    w = layer.weight.detach()
    assert torch.equal(w[mask == 0], torch.zeros_like(w[mask == 0]))
    assert len(torch.unique(w[mask == 1])) <= 16


def test_centroid_gradient_is_the_sum_of_member_gradients():
    torch.manual_seed(0)
    layer = nn.Linear(12, 6)
    prune_layer(layer, keep=50)
    shared = share_layer(layer, k=4, init="linear")
    x = torch.randn(5, 12)
    layer(x).pow(2).sum().backward()
    # gradient of the loss w.r.t. the effective weight, computed independently
    w = layer.weight.detach().clone().requires_grad_(True)
    torch.nn.functional.linear(x, w, layer.bias.detach()).pow(2).sum().backward()
    alive = shared.mask.bool()
    expected = torch.zeros(4).index_add_(0, shared.labels[alive], w.grad[alive])
    torch.testing.assert_close(shared.codebook.grad, expected)


def test_centroid_finetuning_keeps_labels_and_zeros():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))
    mask = prune_layer(model[1], keep=200)
    shared = share_layer(model[1], k=8)
    labels, codebook = shared.labels.clone(), shared.codebook.detach().clone()
    train(model, Split(torch.randn(128, 1, 4, 4), torch.randint(0, 3, (128,))), FinetuneConfig(epochs=2, lr=0.05))
    assert torch.equal(shared_of(model[1]).labels, labels)
    assert not torch.equal(shared.codebook.detach(), codebook)
    w = model[1].weight.detach()
    assert torch.equal(w[mask == 0], torch.zeros_like(w[mask == 0]))
    assert torch.equal(w[mask == 1], shared.codebook.detach()[labels[mask == 1]])


@pytest.mark.parametrize("k", [1, 51, 0])
def test_bad_k_names_the_value_and_surviving_count(k):
    layer = nn.Linear(10, 10)
    prune_layer(layer, keep=50)
    with pytest.raises(SqueezeError, match=rf"k={k} clusters for layer 'fc' must be an integer in \[2, 50\]"):
        share_layer(layer, k=k, name="fc")


@pytest.mark.parametrize("setting,values", [({"clusters": 3}, 3), ({"bits": 1}, 2), ({"clusters": 2}, 2)])
def test_ternary_and_binary_sharing_code_and_decode_exactly(setting, values):
    from squeezetune.compression.coding import codec
    from squeezetune.compression.coding.container import pack_sections, unpack_sections
    from squeezetune.compression.stages import Context, apply_stage
    from squeezetune.compression.unstructured.sharing import ShareConfig

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 4))
    prune_layer(model[0], keep=150)
    apply_stage(model, ShareConfig.from_dict({"default": setting}), Context(teacher=model, example=torch.zeros(1, 30)))
    w = model[0].weight.detach()
    assert len(torch.unique(w[w != 0])) <= values  # 1 bit on a pruned layer: ternary weights {a, 0, b}
    assert len(torch.unique(model[2].weight.detach())) == values  # unpruned: exactly `values` levels
    sections = unpack_sections(pack_sections(codec.encode_model(model, task="toy", coder="auto", index_bits="auto").sections))
    fresh = nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 4))
    decoded = codec.decode_sections(sections, fresh)
    for i in (0, 2):
        assert torch.equal(decoded[i].weight, model[i].weight.detach())
