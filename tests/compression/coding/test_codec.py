from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from squeezetune.compression.coding import codec, sparse
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
    positions=st.sampled_from(["auto", "relative", "runs", "bitmask"]),
    granularity=st.sampled_from(["weight", "vector", "kernel", "filter"]),
    seed=st.integers(0, 1000),
    float_bits=st.sampled_from([16, 32]),
)
def test_encode_decode_is_bit_exact(c_out, k_size, hidden, density, k, share, coder, bits, positions, granularity, seed, float_bits):
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
    decoded = _roundtrip(model, index_bits=bits, coder=coder, float_bits=float_bits, positions=positions)
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
    fixed = {bits: codec.encode_model(model, task="t", index_bits=bits, coder="ans", positions="relative").layers for bits in sparse.AUTO_INDEX_BITS}
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


def test_each_layer_keeps_its_smallest_position_coding_and_reports_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 10))
    with torch.no_grad():
        model[0].weight[:, ::3] *= 0.01  # a third of the inputs pruned away entirely
        model[0].weight[::4] *= 0.01  # a quarter of the outputs too
    prune_layer(model[0], keep=9000)
    prune_layer(model[2], keep=200)
    share_layer(model[0], k=16)
    forced = {c: codec.encode_model(model, task="t", index_bits="auto", positions=c).layers for c in ("relative", "runs", "bitmask")}
    auto = codec.encode_model(model, task="t", index_bits="auto")
    meta = codec.read_meta(auto.sections)
    for i, layer in enumerate(auto.layers):
        sizes = {c: layers[i].coded_bytes for c, layers in forced.items()}
        assert layer.coded_bytes == min(sizes.values())
        report = layer.streams["positions"]
        assert report["coding"] == meta["layers"][i].get("pc", "relative")
        assert report["total_bytes"] == len(auto.sections[f"{meta['layers'][i]['i']}p"]) == min(report["tried"].values())
        assert report["entropy_bits"] > 0
    assert auto.layers[0].streams["positions"]["coding"] == "bitmask"  # the removed rows and columns show
    decoded = codec.decode_sections(unpack_sections(pack_sections(auto.sections)), nn.Sequential(nn.Linear(300, 200), nn.ReLU(), nn.Linear(200, 10)))
    for key, value in plain_state_dict(model).items():
        assert torch.equal(decoded.state_dict()[key], value), key


# Written by squeezetune before position codings other than relative indices existed.
LEGACY_CONTAINER = bytes.fromhex(
    "8953515a013f4dde0d07016d940186070d5e023070140cccb22002307707ca47d2a5023063051b2d3237023170074d95ce1a"
    "0231771878c6da8001722408088b4578da5d8e410ac3201045eff2d743193564e155c4850906424b5b54082578f78e3104da"
    "cd80cfffdfcc8e12f21d16058447f8c49461dd8ea72016d45e8a490f9ef082558409762044586308f35b72296c92148916b0"
    "5d6085e54a5da54f9521c5ddc487497513ff9bf8a8ab2ad9147391a603dfa63564f95fd40892abbc2707fd4b8df7ad334be3"
    "b4b5296869dbc6fa05c5de3daf1010216135e8baa142b74d00f2f92508144f14d010021e4c2e6fb40ef74da40e10021ee6eb"
    "87707134ddb45832e934d3b4c0b2bdb496349fb344b431323232111080020d1a596109544782eef8eb9721bb111080020dab"
    "acb0b1a931aeb1a9313034b2"
)


def _legacy_model() -> nn.Module:
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(24, 10), nn.ReLU(), nn.Linear(10, 3))
    prune_layer(model[0], keep=30)
    share_layer(model[0], k=4)
    prune_layer(model[2], keep=12)
    return codec.round_floats(model, 16)


def test_files_written_before_position_codings_decode_and_relative_indices_rewrite_them_byte_for_byte():
    model = _legacy_model()
    decoded = codec.decode_sections(unpack_sections(LEGACY_CONTAINER), nn.Sequential(nn.Linear(24, 10), nn.ReLU(), nn.Linear(10, 3)))
    for key, value in plain_state_dict(model).items():
        assert torch.equal(decoded.state_dict()[key], value), key
    relative = codec.encode_model(model, task="t", index_bits="auto", float_bits=16, positions="relative")
    assert pack_sections(relative.sections) == LEGACY_CONTAINER
    assert all("pc" not in m for m in codec.read_meta(relative.sections)["layers"])
    auto = codec.encode_model(model, task="t", index_bits="auto", float_bits=16)
    assert len(pack_sections(auto.sections)) <= len(LEGACY_CONTAINER)


def test_an_unknown_position_coding_is_a_one_line_error():
    from squeezetune.errors import SqueezeError

    model = nn.Sequential(nn.Linear(10, 5))
    prune_layer(model[0], keep=10)
    with pytest.raises(SqueezeError, match="positions='zigzag' must be 'auto' or one of"):
        codec.encode_model(model, task="t", positions="zigzag")


@pytest.mark.parametrize("positions", ["relative", "runs", "bitmask"])
def test_transcoding_keeps_the_model_and_the_position_coding(positions):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(60, 40), nn.ReLU(), nn.Linear(40, 5))
    prune_layer(model[0], keep=300)
    share_layer(model[0], k=8)
    prune_layer(model[2], keep=40)
    sections = codec.encode_model(model, task="t", index_bits="auto", positions=positions).sections
    for coder in ("huffman", "ans", "raw"):
        out = codec.transcode(sections, coder)
        assert [m.get("pc", "relative") for m in codec.read_meta(out)["layers"]] == [positions, positions]
        decoded = codec.decode_sections(unpack_sections(pack_sections(out)), nn.Sequential(nn.Linear(60, 40), nn.ReLU(), nn.Linear(40, 5)))
        for key, value in plain_state_dict(model).items():
            assert torch.equal(decoded.state_dict()[key], value), key
