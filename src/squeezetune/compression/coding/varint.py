"""Varints: the unsigned integers of every length field, count and table in the container and its streams.

A varint is an unsigned LEB128 integer: 7 bits per byte, least significant group first, the high
bit set on every byte but the last. Only the shortest encoding is written and only it is read,
at most 9 bytes, so values lie in ``[0, 2**63)``: 1 byte below 128, 2 below 16 KiB, 3 below
2 MiB. Readers check every byte against the data actually present and raise a one-line
:class:`~squeezetune.errors.SqueezeError` naming what was read, where, and what was expected.

Example:
    >>> import numpy as np
    >>> encode_varint(300)
    b'\\xac\\x02'
    >>> read_varint(b"\\x00\\xac\\x02", 1, "length")
    (300, 3)
    >>> data = encode_varints(np.array([0, 127, 128]))
    >>> data
    b'\\x00\\x7f\\x80\\x01'
    >>> values, end = read_varints(data, 0, 3, "counts")
    >>> values.tolist(), end
    ([0, 127, 128], 4)
"""

from __future__ import annotations

import operator

import numpy as np

from squeezetune.errors import SqueezeError

__all__ = ["MAX_BYTES", "MAX_VALUE", "encode_varint", "encode_varints", "read_varint", "read_varints"]

#: Longest varint written or read, in bytes.
MAX_BYTES = 9
#: Largest value a varint holds, ``2**63 - 1`` (it fits ``int64``).
MAX_VALUE = (1 << 7 * MAX_BYTES) - 1


def encode_varint(value: int) -> bytes:
    """``value`` (an integer in ``[0, 2**63)``) as a varint."""
    value = operator.index(value)
    if not 0 <= value <= MAX_VALUE:
        raise SqueezeError(f"varint value {value} must be in [0, 2**63)")
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_varints(values: np.ndarray) -> bytes:
    """The varints of a 1-D integer array, back to back; the same bytes as :func:`encode_varint` on each."""
    v = np.asarray(values)
    if v.ndim != 1 or (v.size and v.dtype.kind not in "iu"):
        raise SqueezeError(f"varint values must be a 1-D integer array; got {v.ndim}-D {v.dtype}")
    if len(v) == 0:
        return b""
    if v.min() < 0 or v.max() > MAX_VALUE:
        raise SqueezeError(f"varint values span [{v.min()}, {v.max()}]; expected [0, 2**63)")
    v = v.astype(np.uint64)
    size = 1 + sum((v >= np.uint64(1) << np.uint64(7 * i)).astype(np.int64) for i in range(1, MAX_BYTES))
    owner = np.repeat(np.arange(len(v)), size)
    place = np.arange(len(owner)) - np.repeat(np.cumsum(size) - size, size)
    out = (v[owner] >> (7 * place).astype(np.uint64)) & np.uint64(0x7F)
    out |= np.where(place < size[owner] - 1, 0x80, 0).astype(np.uint64)
    return out.astype(np.uint8).tobytes()


def read_varint(data: bytes | bytearray | memoryview, at: int, what: str) -> tuple[int, int]:
    """The varint at offset ``at`` of ``data``, and the offset just past it.

    ``what`` names the field in error messages. Raises :class:`SqueezeError` when ``data`` ends
    inside the varint, when it runs past :data:`MAX_BYTES` bytes, or when it is not the shortest
    encoding of its value.
    """
    value = 0
    left = len(data) - at
    for i in range(MAX_BYTES):
        if i >= left:
            raise SqueezeError(f"truncated: {what} needs at least {i + 1} bytes at offset {at}, {max(left, 0)} left")
        byte = data[at + i]
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if byte == 0 and i > 0:
                raise SqueezeError(f"{what} at offset {at} is not a shortest-form varint")
            return value, at + i + 1
    raise SqueezeError(f"{what} at offset {at} is longer than {MAX_BYTES} bytes; expected a varint below 2**63")


def read_varints(data: bytes | bytearray | memoryview, at: int, count: int, what: str) -> tuple[np.ndarray, int]:
    """``count`` varints from offset ``at`` of ``data`` as an ``int64`` array, and the offset just past them.

    Vectorized; it accepts and refuses exactly what :func:`read_varint` does, and looks at no
    more than ``MAX_BYTES * count`` bytes.
    """
    if count == 0:
        return np.zeros(0, dtype=np.int64), at
    left = max(len(data) - at, 0)
    window = np.frombuffer(data, dtype=np.uint8, count=min(left, MAX_BYTES * count), offset=at) if left else np.zeros(0, dtype=np.uint8)
    ends = np.flatnonzero(window < 0x80)[:count] + 1
    starts = np.concatenate(([0], ends))[:-1]
    size = ends - starts
    bad = (size > MAX_BYTES) | ((size > 1) & (window[ends - 1] == 0))
    if bad.any():
        j = int(np.argmax(bad))
        where = f"{what} at offset {at + int(starts[j])} (varint {j})"
        if size[j] > MAX_BYTES:
            raise SqueezeError(f"{where} is longer than {MAX_BYTES} bytes; expected a varint below 2**63")
        raise SqueezeError(f"{where} is not a shortest-form varint")
    if len(ends) < count:
        end = int(ends[-1]) if len(ends) else 0
        if len(window) - end >= MAX_BYTES:
            raise SqueezeError(f"{what} at offset {at + end} (varint {len(ends)}) is longer than {MAX_BYTES} bytes; expected a varint below 2**63")
        raise SqueezeError(f"truncated: {what} needs {count} varints at offset {at}, the {left} bytes left hold {len(ends)}")
    body = window[: ends[-1]]
    place = np.arange(len(body)) - np.repeat(starts, size)
    values = np.add.reduceat((body & 0x7F).astype(np.uint64) << (7 * place).astype(np.uint64), starts)
    return values.astype(np.int64), at + int(ends[-1])
