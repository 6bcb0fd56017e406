"""Damaged payloads behind valid checksums must still end in SqueezeError, never another exception.

The container's CRCs catch every damaged byte of a file, so these tests reseal each mutated
section with fresh checksums to reach the model decoder itself (meta, streams, codebooks).
"""

from __future__ import annotations

import json
import random
import zlib

import pytest
import torch

from squeezetune.compression import decode_bytes
from squeezetune.compression.coding import codec
from squeezetune.compression.coding.container import pack_sections, unpack_sections
from squeezetune.compression.unstructured.pruning import prune_layer
from squeezetune.compression.unstructured.sharing import share_layer
from squeezetune.errors import SqueezeError
from squeezetune.tasks.models import LeNet5


@pytest.fixture(scope="module")
def sections() -> dict[str, bytes]:
    torch.manual_seed(0)
    model = LeNet5()
    for name, keep, k in (("conv1", 300, 64), ("conv2", 3000, 64), ("fc1", 30000, 32), ("fc2", 900, 16)):
        layer = getattr(model, name)
        prune_layer(layer, keep=keep)
        share_layer(layer, k=k)
    codec.round_floats(model, 16)
    return codec.encode_model(model, task="lenet5-digits", coder="auto", float_bits=16).sections


def _mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    kind = rng.randrange(5)
    if kind == 0 and data:
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(data) * 8)
            data[i // 8] ^= 1 << (i % 8)
    elif kind == 1 and data:
        data[rng.randrange(len(data))] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
    elif kind == 2:
        del data[rng.randrange(len(data) + 1) :]
    elif kind == 3:
        at = rng.randrange(len(data) + 1)
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        at = rng.randrange(len(data) + 1)
        data[at:at] = data[at : at + rng.randint(1, 64)]
    return bytes(data)


def _mutate_meta(rng: random.Random, raw: bytes) -> bytes:
    meta = json.loads(zlib.decompress(raw))
    layer = rng.choice(meta["layers"])
    key = rng.choice(sorted(layer))
    layer[key] = rng.choice([-1, 0, 1, 2**40, "x", None, [1], 3.5, {"a": 1}, "huffman", [2**31, 2]])
    return zlib.compress(json.dumps(meta).encode())


def test_every_damaged_section_is_a_squeeze_error_or_decodes(sections):
    rng = random.Random(0)
    outcomes = {"detected": 0, "decoded": 0}
    names = list(sections)
    for i in range(400):
        damaged = dict(sections)
        name = rng.choice(names)
        damaged[name] = _mutate_meta(rng, damaged[name]) if name == "m" and i % 2 else _mutate(rng, damaged[name])
        try:
            decode_bytes(pack_sections(damaged))
            outcomes["decoded"] += 1
        except SqueezeError as exc:
            assert "\n" not in str(exc)
            outcomes["detected"] += 1
    assert outcomes["detected"] > 300


def test_every_single_bit_flip_of_a_real_container_is_detected(sections):
    data = pack_sections(sections)
    decode_bytes(data)
    rng = random.Random(1)
    for bit in rng.sample(range(len(data) * 8), 600):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(SqueezeError):
            decode_bytes(bytes(flipped))


def test_a_container_naming_an_importable_factory_is_refused(sections):
    meta = json.loads(zlib.decompress(sections["m"]))
    meta["task"] = "os:getcwd"
    damaged = {**sections, "m": zlib.compress(json.dumps(meta).encode())}
    with pytest.raises(SqueezeError, match="not built in"):
        decode_bytes(pack_sections(damaged))
    assert unpack_sections(pack_sections(damaged))


def _with_meta(sections: dict[str, bytes], edit) -> bytes:
    meta = json.loads(zlib.decompress(sections["m"]))
    edit(meta)
    return pack_sections({**sections, "m": zlib.compress(json.dumps(meta).encode())})


def test_a_stream_claiming_more_weights_than_the_layer_has_is_refused_cheaply(sections):
    """One used symbol needs no payload, so a few bytes may claim 2**28 symbols; the layer's own
    count refuses them before anything that size is allocated."""
    import tracemalloc

    meta = json.loads(zlib.decompress(sections["m"]))
    fc2 = next(m for m in meta["layers"] if m["n"] == "fc2")
    huge = bytes([0x10, 0x01, 0xFF, 0xFF, 0xFF, 0x7F])  # raw, 1-symbol alphabet, 2**28 - 1 symbols
    damaged = {**sections, f"{fc2['i']}w": huge}
    fc2["cw"] = "raw"
    data = pack_sections({**damaged, "m": zlib.compress(json.dumps(meta).encode())})
    tracemalloc.start()
    try:
        with pytest.raises(SqueezeError, match=r"claims 268435455 symbols; expected \d+"):
            decode_bytes(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20


def test_a_shape_the_model_does_not_have_is_refused_before_decoding(sections):
    def grow(meta):
        next(m for m in meta["layers"] if m["n"] == "fc1")["s"] = [10**6, 10**6]

    with pytest.raises(SqueezeError, match=r"container tensor 'fc1.weight' has shape \(1000000, 1000000\), the task's model expects"):
        decode_bytes(_with_meta(sections, grow))

    def rename(meta):
        meta["rest"][0][0] = "fc9.bias"

    with pytest.raises(SqueezeError, match=r"container holds tensor 'fc9.bias' that the task's model lacks"):
        decode_bytes(_with_meta(sections, rename))
