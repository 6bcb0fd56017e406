from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from squeezetune.compression.coding import codec
from squeezetune.compression.coding.container import pack_sections, unpack_sections
from squeezetune.compression.finetune import FinetuneConfig
from squeezetune.compression.stages import Context, apply_stage
from squeezetune.compression.unstructured.pruning import mask_of, prune_layer
from squeezetune.compression.unstructured.sharing import shared_of
from squeezetune.compression.unstructured.soft_sharing import MixturePrior, SoftShareConfig
from squeezetune.errors import SqueezeError
from squeezetune.tasks import Split


def _toy() -> tuple[nn.Module, Split]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 12, generator=g)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3)), Split(x, x[:, :3].argmax(1))


def test_soft_sharing_prunes_and_shares_in_one_objective():
    model, data = _toy()
    mask = prune_layer(model[0], keep=120)
    config = SoftShareConfig(components=4, tau=0.5, finetune=FinetuneConfig(epochs=4, lr=0.02, batch_size=32))
    apply_stage(model, config, Context(teacher=copy.deepcopy(model), example=data.x[:1], train=data))
    for i in (0, 2):
        shared = shared_of(model[i])
        assert shared is not None and mask_of(model[i]) is not None
        w = model[i].weight.detach()
        assert len(torch.unique(w[w != 0])) <= 4  # every kept weight sits on one of the 4 means
    w0 = model[0].weight.detach()
    assert torch.equal(w0[mask == 0], torch.zeros_like(w0[mask == 0]))  # pruned weights stay pruned
    fresh = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
    decoded = codec.decode_sections(unpack_sections(pack_sections(codec.encode_model(model, task="toy").sections)), fresh)
    assert torch.equal(decoded[0].weight, w0)


def test_the_zero_component_is_fixed():
    prior = MixturePrior(span=1.0, components=4, pi_zero=0.9)
    means, _, log_pi = prior.mixture()
    assert means[0] == 0 and torch.isclose(log_pi.exp()[0], torch.tensor(0.9))
    assert torch.isclose(log_pi.exp().sum(), torch.tensor(1.0))
    assert prior.assign(torch.tensor([0.0, 1.0, -1.0])).tolist() == [0, 4, 1]


@pytest.mark.parametrize("data,message", [({"pi_zero": 1.0}, r"soft_share.pi_zero=1.0 must be in \(0, 1\)"), ({"components": 0}, r"soft_share.components=0 must be an integer in \[1, 255\]")])
def test_bad_settings_say_what_is_wrong(data, message):
    with pytest.raises(SqueezeError, match=message):
        SoftShareConfig.from_dict(data)
