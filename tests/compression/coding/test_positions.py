from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezetune.compression.coding.positions import (
    decode_positions,
    decode_row_counts,
    decode_runs,
    encode_positions,
    encode_row_counts,
    encode_runs,
)
from squeezetune.compression.coding.streams import Coder, _Reader
from squeezetune.errors import SqueezeError


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000), st.floats(0.001, 1.0), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_positions_round_trip_with_fillers(n, density, bits, seed):
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero(rng.random(n) < density)
    symbols, fillers = encode_positions(positions, bits)
    assert symbols.min(initial=0) >= 0 and symbols.max(initial=0) < 2**bits
    assert np.array_equal(decode_positions(symbols, bits), positions)
    # a filler is inserted only where a gap is longer than one symbol can span
    gaps = np.diff(positions, prepend=-1)
    assert fillers == int(((gaps - 1) // (2**bits - 1)).sum()) == int((symbols == 2**bits - 1).sum())
    assert len(symbols) == len(positions) + fillers


def test_filler_lands_every_span_minus_one_positions():
    symbols, fillers = encode_positions(np.array([100]), 5)
    assert symbols.tolist() == [31, 31, 31, 7] and fillers == 3
    assert decode_positions(symbols, 5).tolist() == [100]


def _mask(rows: int, cols: int, density: float, kind: str, seed: int) -> np.ndarray:
    """A ``rows x cols`` mask: i.i.d., with dead rows and columns, or with clustered survivors."""
    rng = np.random.default_rng(seed)
    mask = rng.random((rows, cols)) < density
    if kind == "dead":
        mask[rng.random(rows) < 0.3] = False
        mask[:, rng.random(cols) < 0.3] = False
    elif kind == "clustered":
        mask = np.repeat(np.repeat(rng.random((rows // 4 + 1, cols // 4 + 1)) < density, 4, 0), 4, 1)[:rows, :cols]
    return mask


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 40),
    st.integers(1, 300),
    st.sampled_from([0.0, 0.005, 0.05, 0.3, 1.0]),
    st.sampled_from(["iid", "dead", "clustered"]),
    st.integers(1, 8),
    st.integers(0, 2**31 - 1),
)
def test_runs_round_trip_restarts_at_each_row(rows, cols, density, kind, bits, seed):
    mask = _mask(rows, cols, density, kind, seed)
    symbols, fillers = encode_runs(mask, bits)
    assert symbols.min(initial=0) >= 0 and symbols.max(initial=0) < 2**bits
    assert np.array_equal(decode_runs(symbols, mask.sum(1), cols, bits), np.flatnonzero(mask))
    # a row's zeros after its last kept weight cost nothing: no trailing filler, one symbol per kept weight at most span
    assert len(symbols) == mask.sum() + fillers and (not len(symbols) or symbols[-1] < 2**bits - 1)


def test_runs_refuse_symbols_that_disagree_with_the_row_counts():
    mask = np.array([[0, 1, 0, 1], [1, 0, 0, 0]], dtype=bool)
    symbols, _ = encode_runs(mask, 2)
    with pytest.raises(SqueezeError, match="row counts say 2"):
        decode_runs(symbols, np.array([1, 1]), 4, 2)
    with pytest.raises(SqueezeError, match="ends in a filler"):
        decode_runs(np.array([0, 3]), np.array([1, 0]), 4, 2)
    with pytest.raises(SqueezeError, match="reaches column 5"):
        decode_runs(np.array([2, 2]), np.array([2, 0]), 4, 2)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 300), st.integers(1, 70000), st.integers(0, 2**31 - 1))
def test_row_counts_round_trip_at_the_smallest_shift(rows, cols, seed):
    rng = np.random.default_rng(seed)
    counts = np.minimum(rng.geometric(rng.uniform(0.001, 1.0), rows) - 1, cols)
    data, bits = encode_row_counts(counts, cols, [Coder.HUFFMAN, Coder.ANS, Coder.RAW])
    reader = _Reader(data)
    assert np.array_equal(decode_row_counts(reader, rows, cols), counts) and not reader.left()
    assert bits >= 0


def test_row_counts_split_off_low_bits_when_the_counts_vary_widely():
    counts = np.clip(np.random.default_rng(0).normal(500, 60, 300), 0, 1000).astype(np.int64)
    data, _ = encode_row_counts(counts, 1000, [Coder.HUFFMAN, Coder.ANS])
    assert data[0] >= 3  # ~200 distinct counts in 300 rows: a table for each would cost more than raw low bits
    gaussian_bits = np.log2(60 * np.sqrt(2 * np.pi * np.e))  # 7.96 bits per count
    assert len(data) < 1.1 * 300 * gaussian_bits / 8


@pytest.mark.parametrize("cut", range(0, 12))
def test_damaged_row_counts_are_a_one_line_error(cut):
    counts = np.array([3, 0, 7, 7, 1, 0, 2])
    data, _ = encode_row_counts(counts, 9, [Coder.HUFFMAN])
    damaged = [data[:cut], data[:cut] + b"\xff" + data[cut + 1 :]]
    for blob in damaged:
        try:
            out = decode_row_counts(_Reader(blob), 7, 9)
        except SqueezeError as exc:
            assert "\n" not in str(exc)
        else:
            assert len(out) == 7 and out.max() <= 9
