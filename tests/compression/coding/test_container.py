"""The container format: round trips, the documented layout, and that damage is always caught."""

from __future__ import annotations

import os
import string
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from squeezetune.compression.coding.container import (
    FORMAT_VERSION,
    MAGIC,
    pack_sections,
    read_container,
    unpack_sections,
    write_container,
)
from squeezetune.errors import SqueezeError

NAMES = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " ", min_size=1, max_size=24)
SECTIONS = st.dictionaries(NAMES, st.binary(max_size=300), max_size=8)

# A small container with an empty payload, a 2-byte length varint and a 1-byte one.
SMALL = {"meta": b'{"layers": 3}', "L0.pos": bytes(range(200)), "empty": b"", "L0.b": b"\x01\x02\x03"}


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n >= 0x80 else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _build(entries: list[tuple[bytes, bytes]], version: int = FORMAT_VERSION) -> bytes:
    """Write a container by hand, following the layout in the module docstring."""
    table = _varint(len(entries))
    for name, payload in entries:
        table += bytes([len(name)]) + name + _varint(len(payload)) + zlib.crc32(payload).to_bytes(4, "little")
    body = table + b"".join(payload for _, payload in entries)
    head = MAGIC + bytes([version])
    return head + zlib.crc32(head + body).to_bytes(4, "little") + body


def _message(data: bytes) -> str:
    with pytest.raises(SqueezeError) as info:
        unpack_sections(data)
    message = str(info.value)
    assert message and "\n" not in message
    return message


@settings(max_examples=200)
@given(SECTIONS)
def test_round_trip_keeps_bytes_and_order(sections):
    data = pack_sections(sections)
    out = unpack_sections(data)
    assert out == sections
    assert list(out) == list(sections)


def test_zero_sections_is_ten_bytes():
    data = pack_sections({})
    assert len(data) == 10
    assert unpack_sections(data) == {}


def test_layout_matches_the_documented_bytes():
    entries = [(name.encode(), payload) for name, payload in SMALL.items()]
    assert pack_sections(SMALL) == _build(entries)


def test_overhead_per_section():
    base = len(pack_sections({}))
    assert len(pack_sections({"L0.pos": bytes(5000)})) - base - 5000 == 1 + 6 + 2 + 4
    assert len(pack_sections({"a": bytes(100)})) - base - 100 == 1 + 1 + 1 + 4


def test_payloads_may_be_any_buffer():
    import numpy as np

    weights = np.arange(6, dtype=np.float32)
    out = unpack_sections(pack_sections({"w": weights, "b": bytearray(b"xy"), "m": memoryview(b"z")}))
    assert out == {"w": weights.tobytes(), "b": b"xy", "m": b"z"}


def test_longest_name_round_trips():
    assert unpack_sections(pack_sections({"n" * 255: b"x"})) == {"n" * 255: b"x"}


@pytest.mark.parametrize("name", ["", "n" * 256, "caf\u00e9", "tab\there", 3])
def test_bad_names_are_refused(name):
    with pytest.raises(SqueezeError, match="printable ASCII"):
        pack_sections({name: b""})


@pytest.mark.parametrize("sections", [[("a", b"")], {"a": "text"}, {"a": 5}])
def test_bad_sections_are_refused(sections):
    with pytest.raises(SqueezeError):
        pack_sections(sections)


def test_every_single_bit_flip_is_detected():
    data = pack_sections(SMALL)
    for bit in range(len(data) * 8):
        damaged = bytearray(data)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(SqueezeError):
            unpack_sections(bytes(damaged))


def test_every_changed_byte_is_detected():
    data = pack_sections({"a": b"xyz", "bb": b"", "c": bytes(range(10))})
    for offset in range(len(data)):
        for value in range(256):
            if value != data[offset]:
                damaged = data[:offset] + bytes([value]) + data[offset + 1 :]
                with pytest.raises(SqueezeError):
                    unpack_sections(damaged)


@settings(max_examples=100)
@given(SECTIONS, st.data())
def test_a_bit_flip_in_any_container_is_detected(sections, draw):
    data = bytearray(pack_sections(sections))
    bit = draw.draw(st.integers(0, len(data) * 8 - 1))
    data[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(SqueezeError):
        unpack_sections(bytes(data))


def test_every_truncation_is_detected():
    data = pack_sections(SMALL)
    for length in range(len(data)):
        _message(data[:length])


def test_trailing_bytes_are_detected():
    data = pack_sections(SMALL)
    assert "1 trailing bytes" in _message(data + b"\x00")
    assert "trailing" in _message(pack_sections({}) + b"\x00" * 7)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_garbage_raises_squeeze_error(data):
    _message(data)


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_garbage_after_a_valid_header_raises_squeeze_error(tail):
    _message(MAGIC + bytes([FORMAT_VERSION]) + tail)


@pytest.mark.parametrize("data", [None, "text", 5, 3.0, [1, 2], object()])
def test_non_bytes_raise_squeeze_error(data):
    with pytest.raises(SqueezeError, match="must be bytes"):
        unpack_sections(data)


def test_bytes_like_inputs_are_accepted():
    data = pack_sections(SMALL)
    assert unpack_sections(bytearray(data)) == SMALL
    assert unpack_sections(memoryview(data)) == SMALL
    assert unpack_sections(memoryview(data + data)[: len(data)]) == SMALL


def test_foreign_magic_is_named():
    message = _message(b"PK\x03\x04" + bytes(20))
    assert message == f"data is not a squeezetune container: magic b'PK\\x03\\x04', expected {MAGIC!r}"


def test_foreign_file_is_named(tmp_path):
    path = tmp_path / "x.bin"
    path.write_bytes(b"PK\x03\x04rest of a zip")
    with pytest.raises(SqueezeError) as info:
        read_container(path)
    assert str(info.value) == f"{str(path)!r} is not a squeezetune container: magic b'PK\\x03\\x04', expected {MAGIC!r}"


def test_wrong_version_is_named():
    assert _message(_build([(b"a", b"x")], version=7)) == f"format version 7, expected {FORMAT_VERSION}"


def test_truncated_payload_names_section_and_sizes():
    data = pack_sections({"meta": b"{}", "L0.pos": bytes(120)})
    offset = len(data) - 120
    message = _message(data[:-20])
    assert message == f"truncated: section 'L0.pos' needs 120 bytes at offset {offset}, file has {len(data) - 20}"


def test_short_magic_is_truncation():
    assert _message(b"") == "truncated: magic needs 4 bytes at offset 0, file has 0"
    assert "truncated" in _message(MAGIC[:2])


def test_checksum_mismatch_names_section():
    data = bytearray(pack_sections(SMALL))
    data[-1] ^= 0x10
    assert _message(bytes(data)).startswith("checksum mismatch in section 'L0.b'")


def test_damaged_name_is_a_checksum_mismatch():
    data = bytearray(pack_sections(SMALL))
    data[data.index(b"meta")] ^= 0x20
    assert _message(bytes(data)).startswith("checksum mismatch in the header or section table")


def test_duplicate_names_are_refused():
    assert _message(_build([(b"a", b"1"), (b"a", b"2")])) == "duplicate section name 'a'"


@pytest.mark.parametrize("name", [b"", b"\x89x", b"a\nb"])
def test_bad_names_in_a_file_are_refused(name):
    assert "printable ASCII" in _message(_build([(name, b"1")]))


def test_non_shortest_varint_is_refused():
    data = bytearray(_build([]))
    data[9:10] = b"\x80\x00"  # zero sections, written in two bytes
    data[5:9] = zlib.crc32(bytes(data[:5] + data[9:])).to_bytes(4, "little")
    assert "shortest-form" in _message(bytes(data))


@pytest.mark.parametrize(
    "tail",
    [
        _varint(2**62),  # section count far beyond the file
        _varint(1) + b"\x01a" + _varint(2**62) + bytes(4),  # payload length far beyond the file
        b"\xff" * 20,  # a varint that never ends
    ],
)
def test_huge_lengths_fail_without_allocating(tail):
    data = MAGIC + bytes([FORMAT_VERSION]) + bytes(4) + tail
    tracemalloc.start()
    try:
        _message(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100_000


def test_write_and_read(tmp_path):
    path = tmp_path / "model.sqz"
    written = write_container(path, SMALL)
    assert written == path.stat().st_size == len(pack_sections(SMALL))
    assert read_container(path) == SMALL
    assert read_container(str(path)) == SMALL
    assert os.listdir(tmp_path) == ["model.sqz"]


def test_read_errors_name_the_file(tmp_path):
    path = tmp_path / "model.sqz"
    path.write_bytes(pack_sections(SMALL)[:-3])
    with pytest.raises(SqueezeError, match=r"^'.*model\.sqz': truncated: section 'L0\.b'"):
        read_container(path)


def test_missing_file(tmp_path):
    with pytest.raises(SqueezeError, match="does not exist"):
        read_container(tmp_path / "nope.sqz")
    with pytest.raises(SqueezeError, match="cannot read"):
        read_container(tmp_path)


def test_write_into_missing_directory(tmp_path):
    with pytest.raises(SqueezeError, match="cannot write"):
        write_container(tmp_path / "no" / "model.sqz", SMALL)
