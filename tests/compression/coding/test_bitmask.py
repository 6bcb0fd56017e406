"""The adaptive bitmask: exact round trips, sizes at its model's code length, damage refused within the mask's bounds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from squeezetune.compression.coding import bitmask
from squeezetune.compression.coding.bitmask import decode_bitmask, encode_bitmask
from squeezetune.compression.coding.streams import Coder
from squeezetune.errors import SqueezeError
from tests.compression.coding.test_positions import _mask

CODERS = [Coder.HUFFMAN, Coder.ANS, Coder.RAW]


def _entropy_bits(mask: np.ndarray) -> float:
    p = mask.mean()
    return 0.0 if p in (0, 1) else -mask.size * (p * np.log2(p) + (1 - p) * np.log2(1 - p))


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(st.integers(1, 40), st.integers(60, 300)),
    st.integers(1, 200),
    st.sampled_from([0.0, 0.005, 0.02, 0.1, 0.5, 1.0]),
    st.sampled_from(["iid", "dead", "clustered"]),
    st.integers(0, 2**31 - 1),
)
def test_round_trip_is_bit_exact(rows, cols, density, kind, seed):
    mask = _mask(rows, cols, density, kind, seed)
    data, bits, payload = encode_bitmask(mask, CODERS)
    assert np.array_equal(decode_bitmask(data, rows, cols), np.flatnonzero(mask))
    assert payload % 4 == 0 and payload <= len(data)
    # ANS stays within a few words of the model's own code length
    assert 8 * payload <= bits + 64 + 0.001 * bits


@pytest.mark.parametrize("beta", bitmask.BETAS)
@pytest.mark.parametrize("counted", [False, True])
@pytest.mark.parametrize("shape", [(200, 30), (97, 300), (33, 5)])
def test_every_model_round_trips_when_rows_share_their_column_counts(beta, counted, shape):
    mask = _mask(*shape, 0.1, "dead", beta)
    assert bitmask.rows_per_step(*shape) > 1 or shape[0] < 64
    data, _, _ = encode_bitmask(mask, CODERS, models=[(beta, counted)])
    assert data[0] == (0x80 if counted else 0) | bitmask.BETAS.index(beta)
    assert np.array_equal(decode_bitmask(data, *shape), np.flatnonzero(mask))


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((5, 7), dtype=bool),
        np.ones((5, 7), dtype=bool),
        np.eye(1, 35, 17, dtype=bool).reshape(5, 7),  # a single kept weight
        np.eye(5, 7, dtype=bool),
        np.ones((1, 1), dtype=bool),
        np.zeros((1, 1), dtype=bool),
    ],
    ids=["empty", "full", "single", "diagonal", "1x1-full", "1x1-empty"],
)
def test_edge_masks_round_trip(mask):
    data, _, _ = encode_bitmask(mask, CODERS)
    assert np.array_equal(decode_bitmask(data, *mask.shape), np.flatnonzero(mask))
    if mask.all() or not mask.any():
        assert len(data) <= 3  # the model byte and the kept count


def test_dead_columns_and_rows_cost_less_than_an_independent_mask():
    rng = np.random.default_rng(0)
    mask = rng.random((300, 784)) < 0.1
    mask[:, rng.random(784) < 0.4] = False  # removed inputs
    mask[rng.random(300) < 0.2] = False  # removed outputs
    data, bits, _ = encode_bitmask(mask, CODERS)
    assert data[0] & 0x80 and data[0] & 0x7F  # rows counted and columns modelled
    assert len(data) < 0.9 * _entropy_bits(mask) / 8


def test_an_independent_mask_costs_about_its_bernoulli_entropy():
    mask = np.random.default_rng(1).random((200, 500)) < 0.02
    data, _, _ = encode_bitmask(mask, CODERS)
    assert len(data) < _entropy_bits(mask) / 8 * 1.01 + 16


def test_probabilities_lie_on_the_grid_the_decoder_recomputes():
    ones = np.array([[0, 3, 7, 10]])
    for beta in bitmask.BETAS:
        for counted in (False, True):
            p = bitmask._probabilities(ones, np.array([[10]]), np.array([[2]]), 4, 30, 100, beta, counted)
            scaled = p * 2**20
            assert np.array_equal(scaled, np.round(scaled)) and scaled.min() >= 1 and scaled.max() <= 2**20 - 1


@pytest.fixture(scope="module")
def coded():
    mask = _mask(30, 50, 0.1, "dead", 3)
    return mask, encode_bitmask(mask, CODERS)[0]


def _decodes_within_bounds_or_refuses(data: bytes, rows: int, cols: int) -> None:
    try:
        positions = decode_bitmask(data, rows, cols)
    except SqueezeError as exc:
        assert "\n" not in str(exc)
    else:
        assert positions.ndim == 1 and (len(positions) == 0 or (positions.min() >= 0 and positions.max() < rows * cols))


def test_every_truncation_is_refused(coded):
    mask, data = coded
    for cut in range(len(data)):
        with pytest.raises(SqueezeError):
            decode_bitmask(data[:cut], *mask.shape)


def test_flipped_bits_are_refused_or_stay_within_the_mask(coded):
    mask, data = coded
    rng = np.random.default_rng(0)
    refused = 0
    for bit in rng.choice(len(data) * 8, 300, replace=False):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        try:
            decode_bitmask(bytes(flipped), *mask.shape)
        except SqueezeError as exc:
            assert "\n" not in str(exc)
            refused += 1
    assert refused > 250  # the row counts and the stack's end catch most damage; the container's CRC catches all


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(1, 30), st.integers(1, 30))
def test_arbitrary_bytes_never_escape_as_another_exception(data, rows, cols):
    _decodes_within_bounds_or_refuses(data, rows, cols)
