from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezetune.compression.sparse import decode_positions, encode_positions


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000), st.floats(0.001, 1.0), st.integers(1, 8), st.integers(0, 2**31 - 1))
def test_positions_round_trip_with_fillers(n, density, bits, seed):
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero(rng.random(n) < density)
    symbols, is_filler = encode_positions(positions, bits)
    assert symbols.min(initial=0) >= 0 and symbols.max(initial=0) < 2**bits
    decoded = decode_positions(symbols, bits)
    assert np.array_equal(decoded[~is_filler], positions)
    # a filler is inserted only where a gap is longer than the index width can span
    gaps = np.diff(positions, prepend=-1)
    assert is_filler.sum() == int(((gaps - 1) // 2**bits).sum())


def test_filler_lands_every_span_positions():
    symbols, is_filler = encode_positions(np.array([100]), 5)
    assert symbols.tolist() == [31, 31, 31, 4]
    assert decode_positions(symbols, 5).tolist() == [31, 63, 95, 100]
    assert is_filler.tolist() == [True, True, True, False]
