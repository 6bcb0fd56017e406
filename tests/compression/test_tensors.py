"""Any model: every layer type's weights are pruned, shared, coded and decoded bit-exactly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from squeezetune.compression import Context, PruneConfig, ShareConfig, apply_stage, compressible
from squeezetune.compression.coding import codec
from squeezetune.compression.tensors import kept_raw
from squeezetune.compression.unstructured.pruning import bake, plain_state_dict
from squeezetune.errors import SqueezeError


class Bare(nn.Module):
    """A module whose weight matrix is a bare Parameter used in forward (the generic path)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(12, 6))
        self.scale = nn.Parameter(torch.ones(6))

    def forward(self, x):
        return (x @ self.table) * self.scale


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.out = nn.Linear(8, 10, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, t):
        return self.out(self.embed(t))


class Recurrent(nn.Module):
    def __init__(self, kind) -> None:
        super().__init__()
        self.rnn = kind(6, 8, num_layers=2, batch_first=True, bidirectional=kind is nn.GRU)

    def forward(self, x):
        return self.rnn(x)[0]


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x, need_weights=False)[0]


def _cases():
    return {
        "Linear": (nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 4)), torch.randn(3, 20), ["0", "2"]),
        "Conv1d": (nn.Sequential(nn.Conv1d(3, 8, 5), nn.ReLU(), nn.Conv1d(8, 4, 3)), torch.randn(2, 3, 30), ["0", "2"]),
        "Conv2d": (nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)), torch.randn(2, 3, 12, 12), ["0", "2"]),
        "Conv3d": (nn.Sequential(nn.Conv3d(2, 6, 3), nn.ReLU(), nn.Conv3d(6, 3, 2)), torch.randn(2, 2, 6, 6, 6), ["0", "2"]),
        "ConvTranspose1d": (nn.Sequential(nn.ConvTranspose1d(4, 6, 3)), torch.randn(2, 4, 10), ["0"]),
        "ConvTranspose2d": (nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=2)), torch.randn(2, 4, 5, 5), ["0"]),
        "Embedding": (nn.Sequential(nn.Embedding(50, 12)), torch.randint(0, 50, (3, 7)), ["0"]),
        "MultiheadAttention": (Attention(), torch.randn(2, 5, 16), ["attn.in_proj_weight", "attn.out_proj"]),
        "LSTM": (Recurrent(nn.LSTM), torch.randn(2, 7, 6), [f"rnn.weight_{k}_l{i}" for i in range(2) for k in ("ih", "hh")]),
        "GRU": (Recurrent(nn.GRU), torch.randn(2, 7, 6), [f"rnn.weight_{k}_l{i}{s}" for i in range(2) for s in ("", "_reverse") for k in ("ih", "hh")]),
        "RNN": (Recurrent(nn.RNN), torch.randn(2, 7, 6), [f"rnn.weight_{k}_l{i}" for i in range(2) for k in ("ih", "hh")]),
        "generic": (Bare(), torch.randn(3, 12), ["table"]),
    }


CASES = _cases()


@pytest.mark.parametrize("kind", list(CASES))
def test_every_layer_type_is_pruned_shared_and_decoded_bit_exactly(kind):
    torch.manual_seed(0)
    model, x, names = CASES[kind]
    model = copy.deepcopy(model).eval()
    assert list(compressible(model)) == names
    ctx = Context(teacher=model, example=x[:1])
    apply_stage(model, PruneConfig.from_dict({"default": {"keep_fraction": 0.4}}), ctx)
    apply_stage(model, ShareConfig.from_dict({"default": {"bits": 3}, "fit": True}), ctx)
    for name, t in compressible(model).items():
        weight = t.tensor.detach()
        assert int((weight != 0).sum()) <= round(0.4 * weight.numel()), name
        assert len(torch.unique(weight[weight != 0])) <= 8, name
    with torch.no_grad():
        expected = model(x)
    encoded = codec.encode_model(model, task="t", index_bits="auto", coder="auto")
    assert {t.name for t in encoded.layers} == set(names)
    fresh = copy.deepcopy(CASES[kind][0])
    decoded = codec.decode_sections(encoded.sections, fresh)
    state = plain_state_dict(model)
    for key, value in decoded.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert not any(parametrize.is_parametrized(m) for m in decoded.modules())  # plain tensors, fast paths intact
    baked = bake(copy.deepcopy(model))
    with torch.no_grad():
        assert torch.equal(decoded(x), baked(x))
        # the masked/shared model computes the same weights through another memory path
        torch.testing.assert_close(decoded(x), expected, rtol=0, atol=1e-6)


def test_tied_and_one_dimensional_parameters_are_kept_raw_with_the_reason():
    model = Tied()
    assert list(compressible(model)) == []
    assert kept_raw(model) == {"embed.weight": "tied to another module's parameter", "out.weight": "tied to another module's parameter"}
    reasons = kept_raw(Bare())
    assert reasons == {"scale": "1-D (bias or norm): kept raw"}


def test_tiny_tensors_are_capped_not_refused():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    ctx = Context(teacher=model, example=torch.zeros(1, 3))
    apply_stage(model, PruneConfig.from_dict({"default": {"keep_fraction": 0.2}}), ctx)  # keeps 1 of 6 and 1 of 4
    apply_stage(model, ShareConfig.from_dict({"default": {"bits": 8}, "fit": True}), ctx)
    encoded = codec.encode_model(model, task="t")
    assert [(t.name, t.kept, t.clusters) for t in encoded.layers] == [("0", 1, 0), ("1", 1, 0)]  # a single weight stays unshared


def test_a_copy_can_be_pruned_and_shared_again_without_touching_the_original():
    from squeezetune.compression.tensors import copy_model
    from squeezetune.compression.unstructured.pruning import prune_layer
    from squeezetune.compression.unstructured.sharing import share_layer

    model = nn.Sequential(nn.Linear(20, 10), nn.LSTM(10, 4))
    prune_layer(model[0], keep=50)
    prune_layer(model[1], keep=30, attr="weight_hh_l0")
    x = torch.randn(3, 20)
    before = model[0](x).detach()
    work = copy_model(model)
    share_layer(work[0], k=4)  # removes the copy's mask parametrization, registers a codebook
    prune_layer(work[1], keep=10, attr="weight_hh_l0")
    assert torch.equal(model[0](x), before)  # the original still computes with its own mask
    assert int((model[1].weight_hh_l0 != 0).sum()) == 30 and int((work[1].weight_hh_l0 != 0).sum()) == 10
    assert len(torch.unique(work[0].weight)) <= 5


def test_a_pruned_recurrent_layer_copies_after_a_training_pass():
    from squeezetune.compression.tensors import copy_model
    from squeezetune.compression.unstructured.pruning import prune_layer

    model = nn.GRU(8, 6, batch_first=True)
    for name, t in compressible(model).items():
        prune_layer(t.module, keep=10, attr=t.attr, name=name)
    x = torch.randn(2, 3, 8)
    model(x)  # with autograd on, the cached weights are computed tensors
    copied = copy_model(model)
    assert torch.equal(copied(x)[0], model(x)[0])


def test_a_tied_tensor_is_stored_once_and_decodes_tied():
    torch.manual_seed(0)
    model = Tied()
    untied = copy.deepcopy(model)
    untied.out.weight = nn.Parameter(untied.embed.weight.detach().clone())  # the same values, two tensors
    encoded, apart = codec.encode_model(model, task="t", coder="raw"), codec.encode_model(untied, task="t", coder="raw")
    assert codec.read_meta(encoded.sections)["tie"] == {"out.weight": "embed.weight"} and "tie" not in codec.read_meta(apart.sections)
    assert 10 * 8 * 4 <= apart.raw_bytes - encoded.raw_bytes <= 10 * 8 * 4 + 16  # the matrix once, not twice (and its planes' length fields)
    listed = {t.key: t.tied_to for t in codec.describe(encoded.sections).tensors}
    assert listed == {"embed.weight": "", "out.weight": "embed.weight"}
    # into a model whose two keys are two tensors, both get the stored values
    two = copy.deepcopy(untied)
    with torch.no_grad():
        two.embed.weight.zero_(), two.out.weight.zero_()
    codec.decode_sections(encoded.sections, two)
    assert torch.equal(two.embed.weight, model.embed.weight) and torch.equal(two.out.weight, model.embed.weight)
    # a file that stores both keys (as files written before ties were kept once) decodes as before
    fresh = codec.decode_sections(apart.sections, Tied())
    assert fresh.out.weight is fresh.embed.weight and torch.equal(fresh.embed.weight, model.embed.weight)


def test_a_view_of_another_shape_is_not_a_tie():
    class Viewed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 3)
            self.register_buffer("flat", self.lin.weight.detach().view(-1))  # the same memory, another shape

    model = Viewed()
    meta = codec.read_meta(codec.encode_model(model, task="t").sections)
    assert "tie" not in meta and {key for key, _, _ in meta["rest"]} == {"lin.weight", "lin.bias", "flat"}


@pytest.mark.parametrize(
    "tie, message",
    [
        ([["out.weight", "embed.weight"]], r"^container meta key 'tie' is list: expected a mapping of tensor keys"),
        (None, r"^container meta key 'tie' is NoneType: expected a mapping"),
        ({"out.weight": "nowhere.weight"}, r"^container ties tensor 'out.weight' to 'nowhere.weight', which is not a raw tensor of the file: expected one of \['embed.weight'\]"),
        ({"out.weight": ["embed.weight"]}, r"which is not a raw tensor of the file"),
        ({"embed.weight": "embed.weight"}, r"^container ties tensor 'embed.weight' to 'embed.weight', but also stores 'embed.weight' itself"),
        ({"out.weight": "embed.weight", "x.weight": "out.weight"}, r"^container ties tensor 'x.weight' to 'out.weight', which is not a raw tensor"),  # a chain
    ],
)
def test_a_malformed_tie_is_refused(tie, message):
    import json
    import zlib

    sections = dict(codec.encode_model(Tied(), task="t").sections)
    meta = codec.read_meta(sections)
    meta["tie"] = tie
    sections["m"] = zlib.compress(json.dumps(meta).encode())
    with pytest.raises(SqueezeError, match=message):
        codec.decode_sections(sections, Tied())
    with pytest.raises(SqueezeError, match=message):
        codec.describe(sections)


def test_a_tie_onto_a_coded_layer_is_refused():
    import json
    import zlib

    class TiedAndCoded(Tied):
        def __init__(self) -> None:
            super().__init__()
            self.mix = nn.Linear(8, 8)

    model = TiedAndCoded()
    apply_stage(model, PruneConfig.from_dict({"layers": {"mix": {"keep_fraction": 0.5}}}), Context(teacher=model, example=torch.zeros(1, 3, dtype=torch.long)))
    sections = dict(codec.encode_model(model, task="t").sections)
    meta = codec.read_meta(sections)
    assert [codec.tensor_key(m) for m in meta["layers"]] == ["mix.weight"]
    meta["tie"] = {**meta["tie"], "mix.weight": "embed.weight"}
    sections["m"] = zlib.compress(json.dumps(meta).encode())
    with pytest.raises(SqueezeError, match=r"^container ties tensor 'mix.weight' to 'embed.weight', but also stores 'mix.weight' itself"):
        codec.decode_sections(sections, TiedAndCoded())


def test_inspect_names_both_keys_of_a_tie(tmp_path, capsys):
    from squeezetune.cli import main
    from squeezetune.compression.coding.container import write_container

    write_container(tmp_path / "tied.sqz", codec.encode_model(Tied(), task="tied-model").sections)
    assert main(["inspect", str(tmp_path / "tied.sqz")]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert lines["embed.weight"].endswith("raw f32: tied to out.weight, stored once")
    assert lines["out.weight"].endswith("tied: stored once, as embed.weight")
