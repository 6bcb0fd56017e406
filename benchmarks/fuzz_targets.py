"""Decoders for ``fuzz_decoder.py --target`` that reach past the container's checksums.

Every damaged byte of a container is caught by its CRCs, so fuzzing ``decode_bytes`` alone
never reaches the model decoder behind them. ``resealed`` recomputes the checksums of a damaged
container first (when its table still parses), so the damaged payloads and meta reach the
model decoder, which must then reject them with a ``SqueezeError`` or decode them.

    .venv/bin/python benchmarks/fuzz_decoder.py --seed-file m.sqz --target fuzz_targets:resealed
"""

from __future__ import annotations

from squeezetune.compression import decode_bytes
from squeezetune.compression.coding.container import pack_sections
from squeezetune.errors import SqueezeError


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    for i in range(at, min(at + 9, len(data))):
        value |= (data[i] & 0x7F) << shift
        shift += 7
        if data[i] < 0x80:
            return value, i + 1
    raise SqueezeError("bad varint")


def resealed(data: bytes):
    """Parse the section table ignoring every checksum, reseal, and decode the model."""
    data = bytes(data)
    if len(data) < 10:
        raise SqueezeError("too short")
    count, at = _varint(data, 9)
    entries = []
    for _ in range(count):
        if at >= len(data):
            raise SqueezeError("table truncated")
        n = data[at]
        name = data[at + 1 : at + 1 + n]
        length, at = _varint(data, at + 1 + n)
        entries.append((name.decode("latin-1"), length))
        at += 4
    sections = {}
    for name, length in entries:
        if at + length > len(data):
            raise SqueezeError("payload truncated")
        sections[name] = data[at : at + length]
        at += length
    try:
        resealed_bytes = pack_sections(sections)
    except SqueezeError:
        raise
    return decode_bytes(resealed_bytes)
