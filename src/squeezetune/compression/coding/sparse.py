"""A layer's kept positions in the fewest bytes: every position coding is tried and the smallest kept.

The mask is seen as ``rows x cols`` (the weight's first axis against the rest). Three codings:

``relative``  Deep Compression's relative indices with filler zeros over the flattened mask
              (:func:`.positions.encode_positions`), one entropy-coded stream; the default of
              files written before the others existed.
``runs``      row-wise run lengths (:func:`.positions.encode_runs`): the row counts, then the
              within-row differences, entropy coded.
``bitmask``   one bit per weight, coded with adaptive context-modelled probabilities
              (:mod:`.bitmask`).

``index_bits`` is the width of the difference symbols of ``relative`` and ``runs``: one width,
or ``"auto"`` for the smallest of :data:`AUTO_INDEX_BITS`. Each stream is coded with the smallest
of the given coders. Ties go to the coding listed first, so a layer whose ``relative`` stream is
as small as any other is written exactly as before.

Layouts: ``relative`` is the stream alone (its width and coder are in the layer's metadata);
``runs`` is the row counts (:func:`.positions.encode_row_counts`), one byte of width, then the
difference stream; ``bitmask`` is described in :mod:`.bitmask`.

>>> rng = np.random.default_rng(0)
>>> mask = rng.random((64, 40)) < 0.3; mask[:, rng.random(40) < 0.5] = False  # about half the inputs removed
>>> coded, sizes = encode_mask(mask, "auto", [Coder.HUFFMAN, Coder.ANS])
>>> coded.coding.value, sizes
('bitmask', {'relative': 191, 'runs': 216, 'bitmask': 143})
>>> positions = decode_mask(coded.data, coded.coding, 64, 40, entries=coded.entries)
>>> positions.tolist() == np.flatnonzero(mask).tolist()
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from squeezetune.compression.coding.bitmask import decode_bitmask, encode_bitmask
from squeezetune.compression.coding.positions import (
    decode_positions,
    decode_row_counts,
    decode_runs,
    encode_positions,
    encode_row_counts,
    encode_runs,
)
from squeezetune.compression.coding.streams import Coder, _Reader, decode_stream, smallest_stream, stream_coder
from squeezetune.errors import SqueezeError

AUTO_INDEX_BITS = range(1, 9)
"""The widths ``index_bits="auto"`` tries for the difference symbols."""


class PositionCoding(str, Enum):
    """How a layer's kept positions are stored."""

    RELATIVE = "relative"
    RUNS = "runs"
    BITMASK = "bitmask"


@dataclass(frozen=True)
class CodedPositions:
    """One coding of a mask: its bytes, what the decoder needs beside them, and its report.

    ``entries`` is the number of symbols of the difference stream (``relative``, ``runs``) or the
    number of kept weights (``bitmask``). ``entropy_bits`` is the empirical entropy of the mask
    under the coding's model: the order-0 entropy of the difference symbols (plus that of the
    row counts for ``runs``), or for ``bitmask`` the ideal code length under its adaptive model
    (learning cost included) plus the row counts' entropy.
    """

    coding: PositionCoding
    data: bytes
    entries: int
    index_bits: int
    fillers: int
    coder: Coder
    n_symbols: int
    entropy_bits: float
    payload_bytes: int
    table_bytes: int

    def report(self) -> dict[str, Any]:
        """The fields of a :class:`.streams.StreamStats`, and the coding."""
        return {
            "coder": self.coder.value,
            "n_symbols": self.n_symbols,
            "entropy_bits": self.entropy_bits,
            "payload_bytes": self.payload_bytes,
            "table_bytes": self.table_bytes,
            "total_bytes": len(self.data),
            "coding": self.coding.value,
        }


def _widths(index_bits: int | str) -> Sequence[int]:
    return AUTO_INDEX_BITS if index_bits == "auto" else (int(index_bits),)


def _relative(mask: np.ndarray, index_bits: int | str, coders: Sequence[Coder]) -> CodedPositions:
    best = None
    positions = np.flatnonzero(mask)
    for bits in _widths(index_bits):
        symbols, fillers = encode_positions(positions, bits)
        data, stats = smallest_stream(symbols, 1 << bits, coders)
        if best is None or len(data) < len(best.data):
            best = CodedPositions(PositionCoding.RELATIVE, data, len(symbols), bits, fillers, stats.coder, stats.n_symbols, stats.entropy_bits, stats.payload_bytes, stats.table_bytes)
    return best


def _runs(mask: np.ndarray, index_bits: int | str, coders: Sequence[Coder]) -> CodedPositions:
    head, count_bits = encode_row_counts(mask.sum(1), mask.shape[1], coders)
    best = None
    for bits in _widths(index_bits):
        symbols, fillers = encode_runs(mask, bits)
        data, stats = smallest_stream(symbols, 1 << bits, coders)
        data = head + bytes([bits]) + data
        if best is None or len(data) < len(best.data):
            table = len(data) - stats.payload_bytes  # the row counts, the width and the stream's header and table
            best = CodedPositions(PositionCoding.RUNS, data, len(symbols), bits, fillers, stats.coder, len(symbols) + mask.shape[0], count_bits + stats.entropy_bits, stats.payload_bytes, table)
    return best


def _bitmask(mask: np.ndarray, index_bits: int | str, coders: Sequence[Coder]) -> CodedPositions:
    data, bits, payload = encode_bitmask(mask, coders)
    return CodedPositions(PositionCoding.BITMASK, data, int(mask.sum()), 0, 0, Coder.ANS, mask.size, bits, payload, len(data) - payload)


_ENCODERS = {PositionCoding.RELATIVE: _relative, PositionCoding.RUNS: _runs, PositionCoding.BITMASK: _bitmask}


def encode_mask(
    mask: np.ndarray,
    index_bits: int | str,
    coders: Sequence[Coder],
    codings: Sequence[PositionCoding | str] = tuple(PositionCoding),
) -> tuple[CodedPositions, dict[str, int]]:
    """The smallest coding of the 2-D boolean ``mask`` among ``codings`` (the first on ties); and every coding's size in bytes."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise SqueezeError(f"a mask to code must be 2-D (rows x cols); got {mask.ndim}-D")
    tried = [_ENCODERS[PositionCoding(c)](mask, index_bits, coders) for c in codings]
    if not tried:
        raise SqueezeError(f"encode_mask needs at least one position coding; expected some of {[c.value for c in PositionCoding]}")
    best = min(tried, key=lambda c: len(c.data))  # min keeps the first of equals
    return best, {c.coding.value: len(c.data) for c in tried}


def decode_mask(
    data: bytes,
    coding: PositionCoding | str,
    rows: int,
    cols: int,
    *,
    entries: int,
    index_bits: int = 0,
    coder: Coder | str = Coder.ANS,
) -> np.ndarray:
    """The flat kept positions (ascending) of a ``rows x cols`` mask coded by :func:`encode_mask`.

    ``entries``, ``index_bits`` and ``coder`` are those of the :class:`CodedPositions` (the last
    two matter for ``relative`` only). Raises :class:`SqueezeError` on damaged input; what is
    allocated stays within a few times ``rows * cols`` whatever ``data`` holds.
    """
    coding = PositionCoding(coding)
    n = rows * cols
    if coding is PositionCoding.BITMASK:
        positions = decode_bitmask(data, rows, cols)
        if len(positions) != entries:
            raise SqueezeError(f"bitmask holds {len(positions)} kept weights; the layer says {entries}")
        return positions
    if coding is PositionCoding.RUNS:
        reader = _Reader(bytes(data))
        counts = decode_row_counts(reader, rows, cols)
        index_bits = reader.byte("run-length width")
        stream = reader.rest()
    else:
        counts, stream = None, data
    if not 1 <= index_bits <= 16 or not 0 <= entries <= n:
        raise SqueezeError(f"{coding.value} positions: index_bits={index_bits} or entries={entries} out of range for {n} weights")
    symbols = decode_stream(stream, Coder(coder) if counts is None else stream_coder(stream), expected=entries)
    if len(symbols) and symbols.max() >= 1 << index_bits:
        raise SqueezeError(f"{coding.value} positions hold a symbol above their {index_bits}-bit width")
    if counts is not None:
        return decode_runs(symbols, counts, cols, index_bits)
    positions = decode_positions(symbols, index_bits)
    if len(positions) and positions[-1] >= n:
        raise SqueezeError(f"position {int(positions[-1])} is outside the layer's {n} weights")
    return positions
