from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezetune.compression.coding.codebook import pack_codebook, sort_codebook, unpack_codebook
from squeezetune.errors import SqueezeError


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 400), st.sampled_from([16, 32]), st.floats(1e-4, 10.0), st.integers(0, 10_000))
def test_round_trip_is_bit_exact(k, bits, scale, seed):
    dtype = np.float16 if bits == 16 else np.float32
    values = (np.random.default_rng(seed).normal(0, scale, k)).astype(dtype)
    if k > 3:
        values[:2] = [-0.0, 0.0]
    ordered = values[sort_codebook(values)]
    decoded = unpack_codebook(pack_codebook(ordered, bits), k, bits)
    assert decoded.view(np.uint8).tobytes() == ordered.tobytes()


def test_smaller_than_raw_for_a_typical_codebook():
    values = np.unique(np.random.default_rng(0).normal(0, 0.05, 256).astype(np.float16))
    assert len(pack_codebook(values, 16)) < 0.7 * values.nbytes


@pytest.mark.parametrize("data", [b"", b"\x20\x00\x00", b"\x03\x00\x3c", b"\x00\x00\x3c\x00\x00\x00\x00"])
def test_garbage_is_a_squeeze_error(data):
    with pytest.raises(SqueezeError):
        unpack_codebook(data, 5, 16)
