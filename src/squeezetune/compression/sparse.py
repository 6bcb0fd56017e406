"""Relative-index sparse storage with filler zeros (Deep Compression, Fig. 2).

The kept positions of a flattened weight tensor are stored as differences from the previous
kept position, each in ``index_bits`` bits. A difference ``d`` is stored as the symbol ``d - 1``,
so a symbol covers ``d`` in ``[1, 2**index_bits]``. When a gap is longer than ``2**index_bits``,
a *filler zero* is inserted ``2**index_bits`` positions on: an entry that holds no weight. The
weight stream marks fillers with a reserved symbol (see :mod:`squeezetune.compression.codec`).

>>> symbols, is_filler = encode_positions(np.array([0, 3, 40]), index_bits=3)
>>> symbols.tolist(), is_filler.tolist()
([0, 2, 7, 7, 7, 7, 4], [False, False, True, True, True, True, False])
>>> decode_positions(symbols, index_bits=3).tolist()
[0, 3, 11, 19, 27, 35, 40]
"""

from __future__ import annotations

import numpy as np


def encode_positions(positions: np.ndarray, index_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Difference symbols for sorted ``positions`` and a flag for each entry that is a filler."""
    span = 1 << index_bits
    positions = np.asarray(positions, dtype=np.int64)
    gaps = np.diff(positions, prepend=-1)
    fillers = (gaps - 1) // span
    entries = fillers + 1
    total = int(entries.sum())
    symbols = np.full(total, span - 1, dtype=np.int64)
    last = np.cumsum(entries) - 1
    symbols[last] = gaps - fillers * span - 1
    is_filler = np.ones(total, dtype=bool)
    is_filler[last] = False
    return symbols, is_filler


def decode_positions(symbols: np.ndarray, index_bits: int) -> np.ndarray:
    """Positions of every entry (fillers included) from difference symbols."""
    del index_bits  # a symbol s always means a step of s + 1; the width only bounds s
    return np.cumsum(np.asarray(symbols, dtype=np.int64) + 1) - 1
