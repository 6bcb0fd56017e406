"""Position symbols: relative indices with filler zeros (Deep Compression, Fig. 2), row-wise run lengths, row counts.

The kept positions of a flattened weight tensor are stored as differences from the previous
entry, one ``index_bits``-wide symbol each (position -1 precedes the first entry). With
``span = 2**index_bits``:

* a symbol ``s < span - 1`` is a kept weight ``s + 1`` positions after the previous entry;
* the symbol ``span - 1`` is a *filler zero*: an entry ``span - 1`` positions on that holds no
  weight, inserted wherever a gap is longer than a symbol can span.

Because a filler is told apart by its symbol, the weight stream holds kept weights only.

*Row-wise run lengths* view the mask as ``rows x cols`` and restart the differences at every row
(column -1 precedes each row's first entry); the number of kept weights in each row, coded apart
(:func:`encode_row_counts`), says where a row ends, so the zeros after a row's last weight cost
nothing and an empty row costs only its count.

>>> symbols, kept = encode_positions(np.array([0, 3, 40]), index_bits=3)
>>> symbols.tolist()
[0, 2, 7, 7, 7, 7, 7, 1]
>>> decode_positions(symbols, index_bits=3).tolist()
[0, 3, 40]
>>> mask = np.array([[0, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=bool)
>>> symbols, fillers = encode_runs(mask, index_bits=2)
>>> symbols.tolist(), mask.sum(1).tolist()
([1, 1, 0], [2, 0, 1])
>>> decode_runs(symbols, mask.sum(1), cols=4, index_bits=2).tolist()
[1, 3, 8]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from squeezetune.compression.coding.streams import (
    MAX_ALPHABET,
    Coder,
    _entropy_bits,
    _pack,
    _Reader,
    _unpack,
    decode_stream,
    smallest_stream,
    stream_coder,
)
from squeezetune.compression.coding.varint import encode_varint
from squeezetune.errors import SqueezeError


def _gap_symbols(gaps: np.ndarray, index_bits: int) -> tuple[np.ndarray, int]:
    """Symbols for gaps (each >= 1) with a filler wherever a gap exceeds ``2**index_bits - 1``."""
    step = (1 << index_bits) - 1
    if step == 0:
        raise ValueError("index_bits must be >= 1")
    fillers = (gaps - 1) // step
    entries = fillers + 1
    symbols = np.full(int(entries.sum()), step, dtype=np.int64)
    symbols[np.cumsum(entries) - 1] = gaps - fillers * step - 1
    return symbols, int(fillers.sum())


def encode_positions(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, int]:
    """Difference symbols for strictly increasing ``positions``; and the number of fillers."""
    positions = np.asarray(positions, dtype=np.int64)
    return _gap_symbols(np.diff(positions, prepend=-1), index_bits)


def decode_positions(symbols: np.ndarray, index_bits: int) -> np.ndarray:
    """The kept positions (fillers dropped) from difference symbols."""
    step = (1 << index_bits) - 1
    symbols = np.asarray(symbols, dtype=np.int64)
    ends = np.cumsum(np.where(symbols >= step, step, symbols + 1)) - 1
    return ends[symbols < step]


def encode_runs(mask: np.ndarray, index_bits: int) -> tuple[np.ndarray, int]:
    """Row-wise difference symbols of a 2-D boolean ``mask`` (rows in order); and the number of fillers."""
    rows, cols = np.nonzero(mask)
    first = np.ones(len(rows), dtype=bool)
    first[1:] = rows[1:] != rows[:-1]
    previous = np.where(first, -1, np.roll(cols, 1))
    return _gap_symbols(cols.astype(np.int64) - previous, index_bits)


def decode_runs(symbols: np.ndarray, counts: np.ndarray, cols: int, index_bits: int) -> np.ndarray:
    """The flat kept positions of a ``len(counts) x cols`` mask from :func:`encode_runs`'s symbols.

    Raises :class:`SqueezeError` unless the symbols hold exactly ``counts.sum()`` kept entries,
    none past the end of its row and no filler after the last one.
    """
    step = (1 << index_bits) - 1
    symbols = np.asarray(symbols, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    kept = symbols < step
    n_kept = int(kept.sum())
    if n_kept != int(counts.sum()):
        raise SqueezeError(f"run-length stream holds {n_kept} kept entries; the row counts say {int(counts.sum())}")
    if len(symbols) and not kept[-1]:
        raise SqueezeError("run-length stream ends in a filler; expected a kept entry last")
    if n_kept == 0:
        return np.zeros(0, dtype=np.int64)
    row_of_kept = np.repeat(np.arange(len(counts)), counts)
    row = row_of_kept[np.cumsum(kept) - kept]  # a filler belongs to the row of the entry after it
    ends = np.cumsum(np.where(kept, symbols + 1, step))
    starts = np.searchsorted(row, np.arange(len(counts)))
    before = np.concatenate(([0], ends))[starts]
    col = (ends - before[row] - 1)[kept]
    if col.max() >= cols:
        raise SqueezeError(f"run-length stream reaches column {int(col.max())}; rows have {cols} columns")
    return row_of_kept * cols + col


# --- row counts: how many weights each row keeps ------------------------------------------------

_MAX_SHIFT = 16


def encode_row_counts(counts: np.ndarray, cols: int, coders: Sequence[Coder]) -> tuple[bytes, float]:
    """Bytes holding ``counts`` (each in ``[0, cols]``); and their empirical entropy in bits.

    Each count is split at a shift ``s`` (Rice style): ``count >> s`` is entropy coded with the
    smallest of ``coders`` and the low ``s`` bits are stored as they are, so that rows with many
    different counts do not pay a code table of that many entries. Every ``s`` that keeps the
    alphabet within a stream's is tried. Layout: ``s`` (1 byte), varint length of the high
    stream, the high stream (its coder in its tag), the low bits packed MSB first.
    """
    counts = np.asarray(counts, dtype=np.int64)
    best = b""
    for shift in range(min(_MAX_SHIFT, max(cols, 1).bit_length()) + 1):
        alphabet = (cols >> shift) + 1
        if alphabet > MAX_ALPHABET:
            continue
        high, _ = smallest_stream(counts >> shift, alphabet, coders)
        data = bytes([shift]) + encode_varint(len(high)) + high + _pack(counts & ((1 << shift) - 1), shift)
        if not best or len(data) < len(best):
            best = data
    if not best:
        raise SqueezeError(f"rows of {cols} columns are too long for a row-count stream; expected at most {MAX_ALPHABET << _MAX_SHIFT}")
    return best, _entropy_bits(np.unique(counts, return_counts=True)[1])


def decode_row_counts(reader: _Reader, rows: int, cols: int) -> np.ndarray:
    """Read what :func:`encode_row_counts` wrote for ``rows`` rows of ``cols`` columns."""
    shift = reader.byte("row-count shift")
    if shift > min(_MAX_SHIFT, max(cols, 1).bit_length()) or (cols >> shift) + 1 > MAX_ALPHABET:
        raise SqueezeError(f"row-count shift is {shift}; expected at most {min(_MAX_SHIFT, max(cols, 1).bit_length())} with an alphabet within {MAX_ALPHABET}")
    length = reader.varint("row-count stream length", 1, reader.left())
    data = reader.take(length, "row-count stream")
    high = decode_stream(data, stream_coder(data), expected=rows).astype(np.int64)
    low = _unpack(reader.take((rows * shift + 7) // 8, "row-count low bits"), rows, shift)
    counts = high << shift | low
    if rows and counts.max() > cols:
        raise SqueezeError(f"a row count is {int(counts.max())}; rows have {cols} columns")
    return counts
