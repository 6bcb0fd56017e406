"""Varints: exact bytes, round trips, the vectorized codec matching the single one, damage refused."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezetune.compression.coding.varint import MAX_BYTES, MAX_VALUE, encode_varint, encode_varints, read_varint, read_varints
from squeezetune.errors import SqueezeError

EDGES = [0, 1, 127, 128, 255, 16383, 16384, 2**21 - 1, 2**21, 2**56 - 1, 2**56, 2**63 - 1]


def _error(call) -> str:
    with pytest.raises(SqueezeError) as info:
        call()
    message = str(info.value)
    assert message and "\n" not in message
    return message


@pytest.mark.parametrize(
    "value, data",
    [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"), (16384, b"\x80\x80\x01"), (2**63 - 1, b"\xff" * 8 + b"\x7f")],
)
def test_known_bytes(value, data):
    assert encode_varint(value) == data
    assert encode_varints(np.array([value])) == data
    assert read_varint(b"\x55" + data + b"\x55", 1, "v") == (value, 1 + len(data))


@pytest.mark.parametrize("value", EDGES)
def test_round_trip_at_the_edges_in_the_shortest_form(value):
    data = encode_varint(value)
    assert len(data) == max(1, -(-value.bit_length() // 7)) <= MAX_BYTES
    assert read_varint(data, 0, "v") == (value, len(data))
    values, end = read_varints(data * 3, 0, 3, "v")
    assert values.dtype == np.int64 and values.tolist() == [value] * 3 and end == 3 * len(data)


@settings(max_examples=200)
@given(st.lists(st.integers(0, MAX_VALUE), max_size=40), st.binary(max_size=4))
def test_vectorized_matches_single(values, prefix):
    data = encode_varints(np.array(values, dtype=np.int64))
    assert data == b"".join(encode_varint(v) for v in values)
    blob = prefix + data + b"\x80"  # a trailing byte that must stay unread
    decoded, end = read_varints(blob, len(prefix), len(values), "v")
    assert decoded.tolist() == values and end == len(prefix) + len(data)
    at, single = len(prefix), []
    for _ in values:
        value, at = read_varint(blob, at, "v")
        single.append(value)
    assert single == values and at == end


def test_reading_nothing_reads_nothing():
    values, end = read_varints(b"", 0, 0, "v")
    assert len(values) == 0 and end == 0
    assert encode_varints(np.zeros(0, dtype=np.int64)) == b""


@pytest.mark.parametrize("value", [128, 2**40, 2**63 - 1])
def test_truncated_varints_are_refused(value):
    data = encode_varint(value)
    for cut in range(len(data)):
        assert _error(lambda: read_varint(data[:cut], 0, "the count")).startswith(f"truncated: the count needs at least {cut + 1} bytes at offset 0")
        assert _error(lambda: read_varints(b"\x05" + data[:cut], 0, 2, "the counts")) == f"truncated: the counts needs 2 varints at offset 0, the {cut + 1} bytes left hold 1"


@pytest.mark.parametrize("data", [b"\xff" * 9 + b"\x01", b"\x80" * 9 + b"\x00", b"\xff" * 20])
def test_over_long_varints_are_refused(data):
    assert _error(lambda: read_varint(data, 0, "the length")) == "the length at offset 0 is longer than 9 bytes; expected a varint below 2**63"
    assert "varint 1) is longer than 9 bytes" in _error(lambda: read_varints(b"\x07" + data, 0, 2, "the lengths"))


@pytest.mark.parametrize("data", [b"\x80\x00", b"\x81\x80\x00", b"\xff" * 8 + b"\x00"])
def test_padded_varints_are_refused(data):
    assert _error(lambda: read_varint(data, 0, "n")) == "n at offset 0 is not a shortest-form varint"
    assert _error(lambda: read_varints(b"\x01" + data, 0, 2, "n")) == "n at offset 1 (varint 1) is not a shortest-form varint"


@pytest.mark.parametrize("bad", [-1, 2**63, 2**70])
def test_values_outside_the_range_are_refused(bad):
    assert "[0, 2**63)" in _error(lambda: encode_varint(bad))
    if bad < 2**64:
        assert "[0, 2**63)" in _error(lambda: encode_varints(np.array([0, bad], dtype=np.int64 if bad < 0 else np.uint64)))
