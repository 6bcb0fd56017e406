"""A pruning mask as a bitmask coded with adaptive, context-modelled probabilities (ANS through ``constriction``).

The mask is viewed as ``rows x cols`` (the weight's first axis against the rest) and coded row
by row, one binary symbol per weight. The probability that bit ``(r, c)`` is set comes from
counts that grow as coding proceeds:

* the column's rate so far, ``(ones_c + beta * K / N) / (r + beta)``: how many of the ``r`` rows
  above keep column ``c``, shrunk towards the layer's density ``K / N`` by a prior of ``beta``
  rows, so that a removed input (a dead column) soon costs almost nothing while an i.i.d. mask
  pays little for learning (``beta = 0`` codes every bit at the layer's density);
* optionally the row's count ``k_r``, stored beforehand (:func:`.positions.encode_row_counts`):
  the column's odds are then scaled by the row's odds against the layer's,
  ``odds = odds_c * (k_r / (cols - k_r)) / (K / (N - K))``, and rows with ``k_r`` of 0 or
  ``cols`` (removed outputs, dense rows) cost nothing more.

Here ``ones_c`` and ``r`` count the rows above the current *step*: the column counts are updated
after every :func:`rows_per_step` rows (1 to 16, about 8192 bits), so a row's probabilities
depend only on earlier steps and the decoder decodes a whole step at once; a model without
column counts (``beta = 0``) decodes 2**18 bits at a time, and one without row counts either
uses a single Bernoulli for every bit. The encoder compares every ``beta`` of :data:`BETAS`,
with and without row counts, by their ideal code lengths (on evenly spread blocks of about
2**20 bits of a larger mask) and keeps the smallest; the stream names it.

Probabilities are computed from integers with IEEE ``+ - * /`` alone and rounded down to a
multiple of ``2**-20`` before ``constriction`` sees them, so encoder and decoder agree bit for bit
on any platform.

Layout: model byte (``0x80`` if rows are counted, ``| index into BETAS``); the row counts or, if
rows are not counted, ``K`` as a varint; the payload, little-endian uint32 ANS words.

>>> mask = np.zeros((6, 10), dtype=bool); mask[:, 3] = True; mask[2, 7] = True
>>> data, bits, payload = encode_bitmask(mask, [Coder.ANS, Coder.RAW])
>>> decode_bitmask(data, 6, 10).tolist() == np.flatnonzero(mask).tolist()
True
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from squeezetune.compression.coding.ans import _constriction, decoding
from squeezetune.compression.coding.positions import decode_row_counts, encode_row_counts
from squeezetune.compression.coding.streams import Coder, _Reader
from squeezetune.compression.coding.varint import encode_varint
from squeezetune.errors import SqueezeError

#: Prior strengths (in rows) of the column rates the encoder tries; 0: columns not modelled.
BETAS = (0, 4, 16, 64)
_GRID = float(1 << 20)  # probabilities are multiples of 1 / _GRID, in [1 / _GRID, 1 - 1 / _GRID]
_BLOCK = 1 << 18  # bits per vectorised step of the encoder (and of the decoder where columns are not modelled)
_SELECT_BITS = 1 << 20  # the models are compared on about this many bits of a larger mask (evenly spread blocks)
_STEP_BITS = 8192  # the column counts are updated after about this many bits ...
_STEP_ROWS = (1, 16)  # ... but after 1 to 16 rows, and at least 32 times per mask


def rows_per_step(rows: int, cols: int) -> int:
    """How many rows are coded with the same column counts (the decoder decodes them at once)."""
    return max(_STEP_ROWS[0], min(_STEP_BITS // max(cols, 1), rows // 32, _STEP_ROWS[1]))


def _probabilities(ones: np.ndarray, seen: np.ndarray, k: np.ndarray, cols: int, kept: int, total: int, beta: int, counted: bool) -> np.ndarray:
    """P(bit = 1) for a block of rows: ``ones`` (rows x cols) set bits above in each column,
    ``seen`` (rows x 1) rows above, ``k`` (rows x 1) row counts (used if ``counted``)."""
    prior = beta * kept / total
    if counted and beta:
        num = (ones + prior) * (k * float(total - kept))
        den = (seen - ones + (beta - prior)) * ((cols - k) * float(kept))
        p = num / (num + den)
    elif counted:
        p = np.broadcast_to(k / cols, np.broadcast_shapes(ones.shape, k.shape))
    elif beta:
        p = (ones + prior) / (seen + beta)
    else:
        p = np.full(ones.shape, kept / total)
    return np.clip(np.floor(p * _GRID), 1.0, _GRID - 1.0) / _GRID


def _blocks(mask: np.ndarray, reverse: bool = False) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first row, rows, the column counts each row is coded with) for blocks of whole steps of rows."""
    rows, cols = mask.shape
    per_step = rows_per_step(rows, cols)
    step = per_step * max(1, _BLOCK // (per_step * max(cols, 1)))
    starts = range(0, rows, step)
    above = np.zeros(cols, dtype=np.int64) if not reverse else mask.sum(0, dtype=np.int64)
    for r0 in reversed(starts) if reverse else starts:
        block = mask[r0 : r0 + step]
        if reverse:
            above = above - block.sum(0)
        ones = above + np.cumsum(block, 0, dtype=np.int64) - block  # set bits above each row ...
        yield r0, block, np.repeat(ones[::per_step], per_step, 0)[: len(block)]  # ... as of its step's first row
        if not reverse:
            above = above + block.sum(0)


def _coded_rows(counts: np.ndarray, cols: int, counted: bool) -> np.ndarray:
    return (counts > 0) & (counts < cols) if counted else np.ones(len(counts), dtype=bool)


def _block_bits(r0: int, block: np.ndarray, ones: np.ndarray, counts: np.ndarray, kept: int, beta: int, counted: bool) -> tuple[np.ndarray, np.ndarray]:
    """The bits of a block's coded rows, and their probabilities of being set."""
    k = counts[r0 : r0 + len(block), None]
    coded = _coded_rows(k[:, 0], block.shape[1], counted)
    per_step = rows_per_step(len(counts), block.shape[1])
    seen = (np.arange(r0, r0 + len(block)) // per_step * per_step)[coded, None]
    return block[coded], _probabilities(ones[coded], seen, k[coded], block.shape[1], kept, counts.size * block.shape[1], beta, counted)


def _code_length(x: np.ndarray, p: np.ndarray) -> float:
    """``-sum(log2 P(x))`` in bits for bits ``x`` set with probabilities ``p``."""
    return -float(np.log2(np.where(x, p, 1.0 - p)).sum())


def _model(p: np.ndarray, beta: int, counted: bool) -> tuple:
    """``constriction``'s model for bits with probabilities ``p``: one Bernoulli for all when the
    model is static (decoded at about three times the speed), else a parameter per bit."""
    bernoulli = _constriction().stream.model.Bernoulli
    if not beta and not counted:
        return (bernoulli(float(p.flat[0]), perfect=False),)
    return bernoulli(perfect=False), np.ascontiguousarray(p.reshape(-1))


def _model_byte(beta: int, counted: bool) -> int:
    return 0x80 * counted | BETAS.index(beta)


def encode_bitmask(mask: np.ndarray, coders: Sequence[Coder], models: Sequence[tuple[int, bool]] | None = None) -> tuple[bytes, float, int]:
    """Code a 2-D boolean ``mask`` with the best model of :data:`BETAS` x (rows counted or not).

    Returns the bytes, the ideal code length in bits of the mask under the chosen model
    (``-sum(log2 p)`` of its bits, plus the empirical entropy of the row counts if stored), and
    the size of the ANS payload in bytes.
    ``coders`` are those the row counts may use; ``models`` (pairs of beta and counted) limits
    the models tried.
    """
    mask = np.asarray(mask, dtype=bool)
    cols = mask.shape[1]
    total, kept = mask.size, int(mask.sum())
    counts = mask.sum(1, dtype=np.int64)
    if kept in (0, total):
        return bytes([_model_byte(0, False)]) + encode_varint(kept), 0.0, 0
    heads, count_bits = {False: encode_varint(kept)}, 0.0
    if cols < 2**31:  # else too long a row to count
        heads[True], count_bits = encode_row_counts(counts, cols, coders)
    models = [(beta, counted) for counted in heads for beta in BETAS if models is None or (beta, counted) in models]
    if not models:
        raise SqueezeError(f"no bitmask model to try; expected pairs (beta, counted) with beta in {BETAS}")
    estimate = dict.fromkeys(models, 0.0)
    sample = -(-total // _SELECT_BITS)  # every sample-th block
    for i, (r0, block, ones) in enumerate(_blocks(mask)):
        for beta, counted in models if i % sample == 0 else ():
            estimate[beta, counted] += _code_length(*_block_bits(r0, block, ones, counts, kept, beta, counted))
    beta, counted = min(models, key=lambda m: sample * estimate[m] + 8 * len(heads[m[1]]))
    coder = _constriction().stream.stack.AnsCoder()
    bits = counted * count_bits + (estimate[beta, counted] if sample == 1 else 0.0)
    for r0, block, ones in _blocks(mask, reverse=True):  # a stack: the last row goes in first
        x, p = _block_bits(r0, block, ones, counts, kept, beta, counted)
        coder.encode_reverse(x.reshape(-1).astype(np.int32), *_model(p, beta, counted))
        bits += _code_length(x, p) if sample > 1 else 0.0
    words = coder.get_compressed().astype("<u4").tobytes()
    return bytes([_model_byte(beta, counted)]) + heads[counted] + words, bits, len(words)


def decode_bitmask(data: bytes, rows: int, cols: int) -> np.ndarray:
    """The flat kept positions of the ``rows x cols`` mask coded in ``data`` by :func:`encode_bitmask`.

    Raises :class:`SqueezeError` (only) when ``data`` is damaged; memory stays within the mask's
    ``rows * cols`` bits whatever ``data`` holds.
    """
    reader = _Reader(bytes(data))
    model = reader.byte("bitmask model")
    counted, index = bool(model & 0x80), model & 0x7F
    if index >= len(BETAS):
        raise SqueezeError(f"bitmask model byte 0x{model:02x} names prior {index}; expected below {len(BETAS)}")
    beta, total = BETAS[index], rows * cols
    if counted:
        counts = decode_row_counts(reader, rows, cols)
        kept = int(counts.sum())
    else:
        kept = reader.varint("kept count", 0, total)
        counts = np.zeros(rows, dtype=np.int64)
    mask = np.zeros((rows, cols), dtype=bool)
    if kept in (0, total):
        if reader.left():
            raise SqueezeError(f"bitmask of a {'full' if kept else 'empty'} mask has {reader.left()} bytes more; expected none")
        mask[:] = bool(kept)
        return np.flatnonzero(mask)
    payload = reader.rest()
    if len(payload) % 4:
        raise SqueezeError(f"bitmask payload has {len(payload)} bytes; expected a multiple of 4")
    coded = _coded_rows(counts, cols, counted)
    mask[counts == cols] = True
    above = np.zeros(cols, dtype=np.int64)
    per_step = rows_per_step(rows, cols) if beta else max(1, _BLOCK // cols)  # without column counts, rows do not wait for each other
    with decoding(f"bitmask payload of {len(payload)} bytes"):
        coder = _constriction().stream.stack.AnsCoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
        for r0 in range(0, rows, per_step):
            step = slice(r0, min(r0 + per_step, rows))
            live = np.flatnonzero(coded[step]) + r0
            if len(live):
                p = _probabilities(above[None], np.array([[r0]]), counts[live, None], cols, kept, total, beta, counted)
                model = _model(np.broadcast_to(p, (len(live), cols)), beta, counted)
                bits = coder.decode(*model, len(live) * cols) if len(model) == 1 else coder.decode(*model)
                mask[live] = (bits != 0).reshape(len(live), cols)
                if counted and not np.array_equal(mask[live].sum(1), counts[live]):
                    raise SqueezeError(f"bitmask rows {r0}-{step.stop - 1} decode to {mask[live].sum(1).tolist()[:4]} kept weights; their row counts say {counts[live].tolist()[:4]}")
            above += mask[step].sum(0)
        empty = coder.is_empty()
    if not empty:
        raise SqueezeError(f"bitmask payload of {len(payload)} bytes has data left after {rows} rows; expected it to end there")
    if int(above.sum()) != kept:
        raise SqueezeError(f"bitmask decodes to {int(above.sum())} kept weights; expected {kept}")
    return np.flatnonzero(mask)
