"""The container file: named byte sections in one pickle-free, checksummed file.

A compressed model is stored as a handful of named sections (codebooks, encoded indices, biases,
a small JSON header, ...). This module only moves those bytes in and out of a file; it knows
nothing about what they mean. Reading never unpickles or evaluates anything.

Byte layout (multi-byte integers are little-endian; a *varint* is an unsigned LEB128 integer in
its shortest encoding, at most 9 bytes, so below 2**63; see :mod:`.varint`)::

    offset  size    field
    0       4       MAGIC = b"\\x89SQZ"  (the high first byte catches 7-bit-clean mangling)
    4       1       format version, u8; FORMAT_VERSION = 1
    5       4       file CRC32, u32: zlib.crc32 over every other byte of the file, that is
                    bytes 0..4 followed by bytes 9..end
    9       varint  section count N (N >= 0)
            then N table entries, one per section, in order:
            1       name length L, u8, 1..255
            L       name, printable ASCII (space to tilde)
            varint  payload length P
            4       CRC32 of the payload, u32
            then the N payloads back to back, in table order. The file ends exactly where the
            last payload ends; a byte more or less is an error.

Overhead: 10 bytes per file (one more per extra byte of the count varint, from 128 sections on),
and per section 1 + L + 4 + len(varint(P)) bytes, where the varint takes 1 byte for P < 128,
2 for P < 16 KiB, 3 for P < 2 MiB. A section named "L0.pos" holding 5 KB costs 13 bytes; with
two-character names a section costs 8-10.

Why every single-bit flip is detected: the file CRC sits at a fixed offset and covers all other
bytes, so it does not depend on how a damaged table parses. CRC32 detects every error burst of
up to 32 bits in the data it covers (so every single-bit flip and every changed byte), and a flip
inside the stored CRC makes it disagree with the intact data. Magic and version are also checked
first, for clear messages about foreign or newer files; the per-section CRCs name which payload
is damaged.

Reading checks, in order: magic, version, table and lengths (truncated, trailing bytes), each
section's CRC, the file CRC, then names (printable ASCII, no duplicates). Every failure is a
one-line :class:`~squeezetune.errors.SqueezeError`. Parsing never allocates on the word of a
length field: a length is checked against the bytes actually present before it is used.

Example::

    >>> data = pack_sections({"meta": b'{"v": 1}', "L0.b": bytes(3)})
    >>> len(data)
    41
    >>> unpack_sections(data)
    {'meta': b'{"v": 1}', 'L0.b': b'\\x00\\x00\\x00'}
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Mapping

from squeezetune.compression.coding.varint import encode_varint, read_varint
from squeezetune.errors import SqueezeError

__all__ = ["FORMAT_VERSION", "MAGIC", "pack_sections", "read_container", "unpack_sections", "write_container"]

MAGIC = b"\x89SQZ"
FORMAT_VERSION = 1

_VERSION_AT = len(MAGIC)
_CRC_AT = _VERSION_AT + 1
_TABLE_AT = _CRC_AT + 4
_MAX_NAME = 255
_MIN_ENTRY_BYTES = 1 + 1 + 4  # name length, 1-byte payload length, payload CRC (empty name)


def pack_sections(sections: Mapping[str, bytes]) -> bytes:
    """Encode ``sections`` (name -> payload, order kept) as container bytes.

    Names are 1-255 printable ASCII characters; payloads are anything exposing the buffer
    protocol (bytes, bytearray, memoryview, a contiguous numpy array), stored as raw bytes.
    """
    if not isinstance(sections, Mapping):
        raise SqueezeError(f"sections must be a mapping of name to bytes, got {type(sections).__name__}")
    table = bytearray(encode_varint(len(sections)))
    payloads = []
    for name, payload in sections.items():
        if not _valid_name(name):
            raise SqueezeError(f"section name {name!r} must be 1-{_MAX_NAME} printable ASCII characters")
        try:
            raw = bytes(memoryview(payload))
        except TypeError:
            raise SqueezeError(f"section {name!r} payload is {type(payload).__name__}, expected bytes") from None
        table += bytes([len(name)]) + name.encode("ascii") + encode_varint(len(raw))
        table += zlib.crc32(raw).to_bytes(4, "little")
        payloads.append(raw)
    head = MAGIC + bytes([FORMAT_VERSION])
    body = bytes(table) + b"".join(payloads)
    return head + zlib.crc32(body, zlib.crc32(head)).to_bytes(4, "little") + body


def unpack_sections(data: bytes) -> dict[str, bytes]:
    """Decode container bytes into ``{name: payload}`` in file order.

    Raises :class:`SqueezeError`, and nothing else, for any input that is not an intact container.
    """
    try:
        view = memoryview(data)
    except (TypeError, ValueError):  # not a buffer, or a released memoryview
        raise SqueezeError(f"container data must be bytes, got {type(data).__name__}") from None
    if view.ndim != 1 or view.format != "B" or not view.c_contiguous:
        view = memoryview(view.tobytes())
    return _unpack(view, None)


def write_container(path: str | os.PathLike[str], sections: Mapping[str, bytes]) -> int:
    """Write ``sections`` to ``path`` atomically and return the number of bytes written.

    The bytes go to a temporary file in the same directory, are flushed to disk, and then
    replace ``path`` in one step, so ``path`` is either untouched or complete. On any failure
    the temporary file is removed.
    """
    from squeezetune._io import atomic_write_bytes

    data = pack_sections(sections)
    atomic_write_bytes(path, data)
    return len(data)


def read_container(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """Read and verify the container at ``path``; see :func:`unpack_sections`."""
    where = repr(str(path))
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise SqueezeError(f"container {where} does not exist") from None
    except OSError as e:
        raise SqueezeError(f"cannot read container {where}: {e.strerror or e}") from e
    return _unpack(memoryview(data), where)


def _unpack(data: memoryview, where: str | None) -> dict[str, bytes]:
    """Parse and verify ``data`` (a flat byte view); ``where`` names the file in messages."""
    size = len(data)

    def error(message: str) -> SqueezeError:
        return SqueezeError(f"{where}: {message}" if where else message)

    def need(nbytes: int, what: str, at: int) -> None:
        if nbytes > size - at:
            raise error(f"truncated: {what} needs {nbytes} bytes at offset {at}, file has {size}")

    head = bytes(data[: len(MAGIC)])
    if head != MAGIC:
        if MAGIC.startswith(head):
            need(len(MAGIC), "magic", 0)
        raise SqueezeError(f"{where or 'data'} is not a squeezetune container: magic {head!r}, expected {MAGIC!r}")
    need(1, "format version", _VERSION_AT)
    if data[_VERSION_AT] != FORMAT_VERSION:
        raise error(f"format version {data[_VERSION_AT]}, expected {FORMAT_VERSION}")
    need(4, "file checksum", _CRC_AT)
    stored_file_crc = int.from_bytes(data[_CRC_AT:_TABLE_AT], "little")

    def varint(at: int, what: str) -> tuple[int, int]:
        try:
            return read_varint(data, at, what)
        except SqueezeError as e:
            raise error(str(e)) from None

    count, pos = varint(_TABLE_AT, "section count")
    need(count * _MIN_ENTRY_BYTES, f"section table of {count} sections", pos)
    entries: list[tuple[str, int, int]] = []
    for index in range(count):
        need(1, f"name length of section {index}", pos)
        name_len = data[pos]
        need(name_len, f"name of section {index}", pos + 1)
        # latin-1 maps each byte to one character, so the name check below sees the raw bytes
        name = bytes(data[pos + 1 : pos + 1 + name_len]).decode("latin-1")
        length, pos = varint(pos + 1 + name_len, f"length of section {name!r}")
        need(4, f"checksum of section {name!r}", pos)
        entries.append((name, length, int.from_bytes(data[pos : pos + 4], "little")))
        pos += 4

    start = pos
    for name, length, _ in entries:
        need(length, f"section {name!r}", start)
        start += length
    if start != size:
        raise error(f"{size - start} trailing bytes after the last section, which ends at offset {start}")

    payloads = []
    start = pos
    for name, length, stored in entries:
        payload = data[start : start + length]
        actual = zlib.crc32(payload)
        if actual != stored:
            raise error(f"checksum mismatch in section {name!r}: stored crc32 {stored:#010x}, computed {actual:#010x}")
        payloads.append(payload)
        start += length
    actual = zlib.crc32(data[_TABLE_AT:], zlib.crc32(data[:_CRC_AT]))
    if actual != stored_file_crc:
        raise error(f"checksum mismatch in the header or section table: stored crc32 {stored_file_crc:#010x}, computed {actual:#010x}")

    sections: dict[str, bytes] = {}
    for (name, _, _), payload in zip(entries, payloads):
        if not _valid_name(name):
            raise error(f"section name {name!r} must be 1-{_MAX_NAME} printable ASCII characters")
        if name in sections:
            raise error(f"duplicate section name {name!r}")
        sections[name] = bytes(payload)
    return sections


def _valid_name(name: object) -> bool:
    return isinstance(name, str) and 1 <= len(name) <= _MAX_NAME and name.isascii() and name.isprintable()
