"""Compact storage of a shared-weight codebook.

A codebook's centroids are distinct floats, so sorted they differ by small steps. The
centroids are sorted, their float16 (or float32) bit patterns mapped to unsigned integers that
keep the float order, and the differences between neighbours Rice-coded with the parameter that
makes the stream shortest. A 150-entry float16 codebook takes about 60% of its raw 300 bytes.

``sort_codebook`` returns the permutation, so the caller renumbers the cluster indices and the
decoded weights stay bit-exact.

>>> values = np.array([0.5, -0.25, 0.125, 0.0], dtype=np.float16)
>>> order = sort_codebook(values)
>>> data = pack_codebook(values[order], 16)
>>> unpack_codebook(data, 4, 16).tolist()
[-0.25, 0.0, 0.125, 0.5]
"""

from __future__ import annotations

import numpy as np

from squeezetune.errors import SqueezeError

_UINT = {16: np.uint16, 32: np.uint32}
_FLOAT = {16: "<f2", 32: "<f4"}


def _to_ordered(values: np.ndarray, bits: int) -> np.ndarray:
    u = np.ascontiguousarray(values, dtype=_FLOAT[bits]).view(_UINT[bits]).astype(np.int64)
    sign, mask = 1 << (bits - 1), (1 << bits) - 1
    return np.where(u & sign, ~u & mask, u | sign)


def _from_ordered(m: np.ndarray, bits: int) -> np.ndarray:
    sign, mask = 1 << (bits - 1), (1 << bits) - 1
    u = np.where(m & sign, m & ~sign, ~m & mask)
    return u.astype(_UINT[bits]).view(_FLOAT[bits])


def sort_codebook(values: np.ndarray) -> np.ndarray:
    """The permutation that sorts float16/float32 ``values`` ascending by bit pattern (-0.0 before 0.0)."""
    values = np.asarray(values)
    return np.argsort(_to_ordered(values, 8 * values.dtype.itemsize), kind="stable")


def pack_codebook(sorted_values: np.ndarray, bits: int) -> bytes:
    """Rice-code an ascending codebook stored at ``bits`` (16 or 32) per value."""
    m = _to_ordered(sorted_values, bits)
    if len(m) == 0:
        return b""
    deltas = np.diff(m)
    if (deltas < 0).any():
        raise ValueError("pack_codebook needs ascending values")
    best = min(range(bits), key=lambda r: int((deltas >> r).sum()) + len(deltas) * (r + 1))
    q = deltas >> best
    lengths = q + 1 + best
    total = int(lengths.sum())
    out = np.zeros(total, dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    # unary part: q ones, then a zero (already zero); then `best` remainder bits, high first
    ones = np.repeat(starts, q) + (np.arange(int(q.sum())) - np.repeat(np.cumsum(q) - q, q))
    out[ones] = 1
    for b in range(best):
        out[starts + q + 1 + b] = (deltas >> (best - 1 - b)) & 1
    head = bytes([best]) + int(m[0]).to_bytes(bits // 8, "little")
    return head + np.packbits(out).tobytes()


def unpack_codebook(data: bytes, k: int, bits: int) -> np.ndarray:
    """The ``k`` ascending values of a codebook written by :func:`pack_codebook`."""
    width = bits // 8
    if k == 0:
        return np.zeros(0, dtype=_FLOAT[bits])
    if len(data) < 1 + width or data[0] >= bits:
        raise SqueezeError(f"codebook of {len(data)} bytes is too short or has Rice parameter {data[0] if data else None}")
    r = data[0]
    first = int.from_bytes(data[1 : 1 + width], "little")
    stream = np.unpackbits(np.frombuffer(data[1 + width :], dtype=np.uint8))
    zeros = np.flatnonzero(stream == 0)
    values = np.empty(k, dtype=np.int64)
    values[0] = first
    pos, zi = 0, 0
    limit = 1 << bits
    weights = 1 << np.arange(r - 1, -1, -1, dtype=np.int64)
    for i in range(1, k):
        zi = np.searchsorted(zeros, pos)
        if zi >= len(zeros):
            raise SqueezeError(f"codebook stream ends after {i} of {k} values")
        end = int(zeros[zi])
        q = end - pos
        if end + 1 + r > len(stream):
            raise SqueezeError(f"codebook stream ends after {i} of {k} values")
        rem = int(stream[end + 1 : end + 1 + r] @ weights) if r else 0
        values[i] = values[i - 1] + (q << r) + rem
        if values[i] >= limit:
            raise SqueezeError(f"codebook value {i} overflows {bits} bits")
        pos = end + 1 + r
    if len(stream) - pos >= 8:
        raise SqueezeError(f"codebook has {len(stream) - pos} bits left over after {k} values")
    return _from_ordered(values, bits)
