from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from squeezetune.compression.coding import codec
from squeezetune.compression.coding.container import pack_sections, unpack_sections
from squeezetune.compression.unstructured.pruning import plain_state_dict, prune_layer
from squeezetune.compression.unstructured.sharing import share_layer


class Net(nn.Module):
    def __init__(self, c_out: int, k_size: int, hidden: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, c_out, k_size)
        self.fc = nn.Linear(hidden, 7)
        self.head = nn.Linear(7, 2)


def _roundtrip(model: nn.Module, **kw) -> nn.Module:
    encoded = codec.encode_model(model, task="test", **kw)
    sections = unpack_sections(pack_sections(encoded.sections))
    fresh = type(model)(*model.args)
    return codec.decode_sections(sections, fresh)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    c_out=st.integers(1, 6),
    k_size=st.integers(1, 3),
    hidden=st.integers(1, 80),
    density=st.floats(0.01, 1.0),
    k=st.integers(2, 40),
    share=st.booleans(),
    coder=st.sampled_from(["huffman", "ans", "raw", "auto"]),
    bits=st.one_of(st.integers(1, 8), st.just("auto")),
    granularity=st.sampled_from(["weight", "vector", "kernel", "filter"]),
    seed=st.integers(0, 1000),
    float_bits=st.sampled_from([16, 32]),
)
def test_encode_decode_is_bit_exact(c_out, k_size, hidden, density, k, share, coder, bits, granularity, seed, float_bits):
    torch.manual_seed(seed)
    model = Net(c_out, k_size, hidden)
    model.args = (c_out, k_size, hidden)
    for layer in (model.conv, model.fc):
        n = layer.weight.numel()
        prune_layer(layer, keep=max(1, int(density * n)), granularity=granularity)
        alive = int((layer.weight != 0).sum())
        if share and alive >= 2:
            share_layer(layer, k=min(k, alive))
    codec.round_floats(model, float_bits)
    decoded = _roundtrip(model, index_bits=bits, coder=coder, float_bits=float_bits)
    expected = plain_state_dict(model)
    got = decoded.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key


def test_auto_index_bits_codes_each_layer_at_its_smallest_width():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 10))
    prune_layer(model[0], keep=600)  # sparse: long gaps favour wide indices
    prune_layer(model[2], keep=1500)  # dense-ish: short gaps favour narrow ones
    share_layer(model[0], k=16)
    fixed = {bits: codec.encode_model(model, task="t", index_bits=bits, coder="ans", positions="relative").layers for bits in codec.AUTO_INDEX_BITS}
    auto = codec.encode_model(model, task="t", index_bits="auto", coder="ans", positions="relative")
    for i, layer in enumerate(auto.layers):
        sizes = {bits: layers[i].coded_bytes for bits, layers in fixed.items()}
        assert layer.coded_bytes == min(sizes.values())
        assert sizes[layer.index_bits] == layer.coded_bytes  # the report names the width it chose
    decoded = codec.decode_sections(unpack_sections(pack_sections(auto.sections)), nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 10)))
    for key, value in plain_state_dict(model).items():
        assert torch.equal(decoded.state_dict()[key], value), key


def test_unpruned_layers_and_buffers_travel_raw():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    model[1].running_mean.uniform_()
    prune_layer(model[3], keep=50)
    share_layer(model[3], k=4)
    encoded = codec.encode_model(model, task="t")
    fresh = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    decoded = codec.decode_sections(unpack_sections(pack_sections(encoded.sections)), fresh)
    for key, value in plain_state_dict(model).items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(decoded.state_dict()[key], value), key
    assert [layer.name for layer in encoded.layers] == ["3"]


def test_report_gives_entropy_beside_coded_size():
    torch.manual_seed(0)
    layer_model = nn.Sequential(nn.Linear(300, 200))
    prune_layer(layer_model[0], keep=6000)
    share_layer(layer_model[0], k=32)
    encoded = codec.encode_model(layer_model, task="t", coder="ans")
    (report,) = encoded.layers
    for stream in report.streams.values():
        assert stream["entropy_bits"] > 0
        assert 8 * stream["payload_bytes"] <= 1.01 * stream["entropy_bits"] + 64
    distinct = len(torch.unique(layer_model[0].weight.detach())) - 1  # the pruned zeros
    assert report.kept == 6000 and report.clusters == distinct <= 32  # only used centroids are stored


def test_model_mismatch_is_a_one_line_error():
    from squeezetune.errors import SqueezeError

    model = nn.Sequential(nn.Linear(10, 5))
    prune_layer(model[0], keep=10)
    sections = codec.encode_model(model, task="t").sections
    with pytest.raises(SqueezeError, match=r"shape \(5, 10\), the task's model expects \(6, 10\)"):
        codec.decode_sections(sections, nn.Sequential(nn.Linear(10, 6)))
