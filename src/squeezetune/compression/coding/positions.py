"""Relative-index sparse storage with filler zeros (Deep Compression, Fig. 2).

The kept positions of a flattened weight tensor are stored as differences from the previous
entry, one ``index_bits``-wide symbol each (position -1 precedes the first entry). With
``span = 2**index_bits``:

* a symbol ``s < span - 1`` is a kept weight ``s + 1`` positions after the previous entry;
* the symbol ``span - 1`` is a *filler zero*: an entry ``span - 1`` positions on that holds no
  weight, inserted wherever a gap is longer than a symbol can span.

Because a filler is told apart by its symbol, the weight stream holds kept weights only.

>>> symbols, kept = encode_positions(np.array([0, 3, 40]), index_bits=3)
>>> symbols.tolist()
[0, 2, 7, 7, 7, 7, 7, 1]
>>> decode_positions(symbols, index_bits=3).tolist()
[0, 3, 40]
"""

from __future__ import annotations

import numpy as np


def encode_positions(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, int]:
    """Difference symbols for strictly increasing ``positions``; and the number of fillers."""
    step = (1 << index_bits) - 1
    positions = np.asarray(positions, dtype=np.int64)
    gaps = np.diff(positions, prepend=-1)
    if step == 0:
        raise ValueError("index_bits must be >= 1")
    fillers = (gaps - 1) // step
    entries = fillers + 1
    symbols = np.full(int(entries.sum()), step, dtype=np.int64)
    symbols[np.cumsum(entries) - 1] = gaps - fillers * step - 1
    return symbols, int(fillers.sum())


def decode_positions(symbols: np.ndarray, index_bits: int) -> np.ndarray:
    """The kept positions (fillers dropped) from difference symbols."""
    step = (1 << index_bits) - 1
    symbols = np.asarray(symbols, dtype=np.int64)
    ends = np.cumsum(np.where(symbols >= step, step, symbols + 1)) - 1
    return ends[symbols < step]
