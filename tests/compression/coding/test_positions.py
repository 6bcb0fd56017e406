from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezetune.compression.coding.positions import decode_positions, encode_positions


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
