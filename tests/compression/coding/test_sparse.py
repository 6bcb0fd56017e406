"""Choosing a layer's position coding: every coding round-trips, the smallest wins, damage stays bounded."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from squeezetune.compression.coding.sparse import PositionCoding, decode_mask, encode_mask
from squeezetune.compression.coding.streams import Coder
from squeezetune.errors import SqueezeError
from tests.compression.coding.test_positions import _mask

CODERS = [Coder.HUFFMAN, Coder.ANS, Coder.RAW]


def _decode(coded, rows: int, cols: int, data: bytes | None = None) -> np.ndarray:
    return decode_mask(coded.data if data is None else data, coded.coding, rows, cols, entries=coded.entries, index_bits=coded.index_bits, coder=coded.coder)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 30),
    st.integers(1, 120),
    st.sampled_from([0.0, 0.01, 0.1, 0.6, 1.0]),
    st.sampled_from(["iid", "dead", "clustered"]),
    st.one_of(st.integers(1, 8), st.just("auto")),
    st.integers(0, 2**31 - 1),
)
def test_every_coding_round_trips_and_the_smallest_is_kept(rows, cols, density, kind, bits, seed):
    mask = _mask(rows, cols, density, kind, seed)
    sizes = {}
    for coding in PositionCoding:
        coded, tried = encode_mask(mask, bits, CODERS, [coding])
        assert coded.coding is coding and tried == {coding.value: len(coded.data)}
        assert np.array_equal(_decode(coded, rows, cols), np.flatnonzero(mask)), coding
        sizes[coding.value] = len(coded.data)
    best, tried = encode_mask(mask, bits, CODERS)
    assert tried == sizes and len(best.data) == min(sizes.values())
    assert best.coding is next(c for c in PositionCoding if sizes[c.value] == len(best.data))  # ties: the first listed
    assert np.array_equal(_decode(best, rows, cols), np.flatnonzero(mask))


def test_structure_makes_the_bitmask_win_and_an_independent_mask_costs_no_more_than_before():
    rng = np.random.default_rng(0)
    structured = _mask(200, 400, 0.2, "dead", 0)
    best, tried = encode_mask(structured, "auto", CODERS)
    assert best.coding is PositionCoding.BITMASK and tried["bitmask"] < 0.9 * tried["relative"]
    iid = rng.random((200, 400)) < 0.05
    best, tried = encode_mask(iid, 5, CODERS)
    assert len(best.data) <= tried["relative"]


@pytest.mark.parametrize("coding", list(PositionCoding))
def test_damaged_positions_are_a_one_line_error_or_stay_within_the_layer(coding):
    rows, cols = 20, 40
    mask = _mask(rows, cols, 0.1, "dead", 5)
    coded, _ = encode_mask(mask, "auto", CODERS, [coding])
    rng = np.random.default_rng(1)
    blobs = [coded.data[:cut] for cut in range(len(coded.data))]
    for bit in rng.choice(len(coded.data) * 8, min(200, len(coded.data) * 8), replace=False):
        flipped = bytearray(coded.data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        blobs.append(bytes(flipped))
    for blob in blobs:
        try:
            positions = _decode(coded, rows, cols, blob)
        except SqueezeError as exc:
            assert "\n" not in str(exc)
        else:
            assert len(positions) == 0 or (positions.min() >= 0 and positions.max() < rows * cols and np.all(np.diff(positions) > 0))


@pytest.mark.parametrize("coding", list(PositionCoding))
def test_a_count_beyond_the_layer_is_refused_before_anything_that_size_is_allocated(coding):
    rows, cols = 10, 10
    # one used symbol needs no payload: a few bytes may claim 2**28 - 1 symbols
    huge = bytes([0x10, 0x01, 0xFF, 0xFF, 0xFF, 0x7F])
    data = {
        PositionCoding.RELATIVE: huge,
        PositionCoding.RUNS: bytes([0, len(huge)]) + huge + bytes([3]) + huge,  # row counts claim 2**28 rows
        PositionCoding.BITMASK: bytes([0x80, 0, len(huge)]) + huge,
    }[coding]
    tracemalloc.start()
    try:
        with pytest.raises(SqueezeError):
            decode_mask(data, coding, rows, cols, entries=2**28 - 1, index_bits=1, coder=Coder.RAW)
        with pytest.raises(SqueezeError):
            decode_mask(data, coding, rows, cols, entries=50, index_bits=1, coder=Coder.RAW)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
