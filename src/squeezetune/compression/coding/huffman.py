"""Canonical, length-limited Huffman coding of integer symbol streams, vectorized with numpy.

This module is the technique only: code lengths from symbol counts, canonical codes, and the
bit-level encode/decode of a whole array. The byte layout that stores the code lengths and the
sync index next to the payload lives in :mod:`squeezetune.compression.coding.streams`.

Decoding a prefix code is sequential by nature, so the symbols are split into ``C =
ceil(n / SYNC_INTERVAL)`` chunks whose codes are written one chunk after another, and the
encoder also reports a *sync index*: the bit offset where each chunk begins. The decoder then
advances all chunks at once, one numpy step per code: each step reads the next 16-bit window at
every chunk's position and looks up (symbol, length) in a table of ``2**max_length`` entries.
Chunks are interleaved (chunk ``c`` holds symbols ``c, c + C, c + 2C, ...``; see
:func:`chunk_layout`) so that each step's symbols land in one contiguous slice of the output.
Payloads of up to ``2**20`` bits skip the ``SYNC_INTERVAL`` steps and are decoded by pointer
jumping over every bit position instead (``log2(n)`` gathers over the whole bit string).

Example:
    >>> import numpy as np
    >>> symbols = np.array([0, 0, 0, 1, 2, 0, 1, 0])
    >>> lengths = code_lengths(np.bincount(symbols))
    >>> lengths.tolist()
    [1, 2, 2]
    >>> payload, sync = encode(symbols, lengths)
    >>> decode(payload, lengths, len(symbols), sync).tolist()
    [0, 0, 0, 1, 2, 0, 1, 0]
"""

from __future__ import annotations

import heapq

import numpy as np

from squeezetune.errors import SqueezeError

#: Longest code this module produces (and accepts); the decode table has ``2**16`` entries at most.
MAX_CODE_LENGTH = 16
#: Most symbols per chunk of the sync index (part of the stream format).
SYNC_INTERVAL = 2048
#: Payloads up to this many bits are decoded by pointer jumping instead of through the sync index.
_JUMP_DECODE_MAX_BITS = 1 << 20
_ENCODE_CHUNK = 1 << 16  # symbols per encoder step: temporaries stay small and cache-resident


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Huffman code length of every symbol (0 for symbols with count 0), at most ``max_length <= 16``.

    A single used symbol gets length 1. Lengths longer than ``max_length`` are shortened with the
    JPEG (ITU T.81 Annex K.3) adjustment, which keeps the Kraft sum exactly 1.
    """
    counts = np.asarray(counts, dtype=np.int64)
    lengths = np.zeros(len(counts), dtype=np.uint8)
    used = np.flatnonzero(counts > 0)
    k = len(used)
    if k <= 1:
        lengths[used] = 1
        return lengths
    if k > 1 << max_length:
        raise SqueezeError(f"{k} used symbols cannot get codes of at most {max_length} bits; expected <= {1 << max_length}")
    depth = _huffman_depths(counts[used])
    # How many codes of each length, then shorten the longest ones (Annex K.3).
    per_length = np.bincount(depth, minlength=max_length + 1).tolist()
    for i in range(len(per_length) - 1, max_length, -1):
        while per_length[i] > 0:
            j = i - 2
            while per_length[j] == 0:
                j -= 1
            per_length[i] -= 2
            per_length[i - 1] += 1
            per_length[j + 1] += 2
            per_length[j] -= 1
    # Most frequent symbols take the shortest lengths; ties go to the smaller symbol.
    by_frequency = used[np.lexsort((used, -counts[used]))]
    lengths[by_frequency] = np.repeat(np.arange(max_length + 1, dtype=np.uint8), per_length[: max_length + 1])
    return lengths


def _huffman_depths(counts: np.ndarray) -> np.ndarray:
    """Depth of each leaf in a Huffman tree over ``counts`` (all > 0, at least two)."""
    k = len(counts)
    heap = [(int(c), i) for i, c in enumerate(counts.tolist())]
    heapq.heapify(heap)
    parent = [0] * (2 * k - 1)
    node = k
    while len(heap) > 1:
        ca, a = heapq.heappop(heap)
        cb, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (ca + cb, node))
        node += 1
    depth = [0] * (2 * k - 1)
    for i in range(2 * k - 3, -1, -1):  # parents are created after their children
        depth[i] = depth[parent[i]] + 1
    return np.array(depth[:k], dtype=np.int64)


def kraft_sum(lengths: np.ndarray) -> float:
    """``sum(2**-length)`` over the used symbols (length > 0); a prefix code has at most 1."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return float(np.sum(np.exp2(-lengths[lengths > 0].astype(np.float64))))


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical code of every symbol (``uint32``, its low ``length`` bits; 0 where length is 0).

    Codes are assigned in order of (length, symbol), each the previous plus one, shifted left
    when the length grows. Raises :class:`SqueezeError` unless the lengths are in
    ``[0, MAX_CODE_LENGTH]`` and satisfy Kraft's inequality.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = np.zeros(len(lengths), dtype=np.uint32)
    if lengths.size and (lengths.min() < 0 or lengths.max() > MAX_CODE_LENGTH):
        raise SqueezeError(f"Huffman code lengths must be in [0, {MAX_CODE_LENGTH}]; got {lengths.min()}..{lengths.max()}")
    used = np.flatnonzero(lengths)
    order = used[np.argsort(lengths[used], kind="stable")]
    span = np.int64(1) << (MAX_CODE_LENGTH - lengths[order])  # share of 2**MAX_CODE_LENGTH per code
    total = int(span.sum())
    if total > 1 << MAX_CODE_LENGTH:
        raise SqueezeError(f"Huffman code lengths have Kraft sum {total / (1 << MAX_CODE_LENGTH)}; expected <= 1")
    first = np.cumsum(span) - span
    codes[order] = (first >> (MAX_CODE_LENGTH - lengths[order])).astype(np.uint32)
    return codes


def _check_complete(lengths: np.ndarray) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=np.int64)
    used = lengths[lengths > 0]
    if len(used) < 2 or used.max() > MAX_CODE_LENGTH:
        raise SqueezeError(f"a Huffman payload needs >= 2 code lengths in [1, {MAX_CODE_LENGTH}]; got {len(used)} used")
    total = int(np.sum(np.int64(1) << (MAX_CODE_LENGTH - used)))
    if total != 1 << MAX_CODE_LENGTH:
        raise SqueezeError(f"Huffman code lengths have Kraft sum {total / (1 << MAX_CODE_LENGTH)}; expected exactly 1")
    return lengths


def chunk_layout(n: int, interval: int = SYNC_INTERVAL) -> tuple[int, int, int]:
    """``(chunks, steps, full)``: how ``n >= 1`` symbols split into interleaved chunks.

    There are ``chunks = ceil(n / interval)`` chunks; symbol ``i`` is the ``i // chunks``-th code
    of chunk ``i % chunks``. The first ``full`` chunks hold ``steps`` symbols, the rest one fewer.
    Interleaving lets the decoder write each step's symbols to one contiguous slice.
    """
    chunks = -(-n // interval)
    steps = -(-n // chunks)
    return chunks, steps, n - (steps - 1) * chunks


def encode(symbols: np.ndarray, lengths: np.ndarray, sync_interval: int = SYNC_INTERVAL) -> tuple[bytes, np.ndarray]:
    """Pack the codes of ``symbols`` MSB-first into bytes; return them and the sync index.

    ``lengths`` must be a complete code (see :func:`code_lengths`) covering every symbol present.
    Codes are written chunk after chunk (see :func:`chunk_layout`), and the sync index holds the
    bit offset where each chunk after the first begins (empty when ``len(symbols) <=
    sync_interval``). The last byte is zero-padded.
    """
    lengths = _check_complete(lengths)
    symbols = np.asarray(symbols)
    n = len(symbols)
    if n == 0:
        return b"", np.zeros(0, dtype=np.int64)
    if not np.can_cast(symbols.dtype, np.intp):
        symbols = symbols.astype(np.intp)
    if symbols.min() < 0 or symbols.max() >= len(lengths):
        raise SqueezeError(f"symbols must be in [0, {len(lengths)}); got {symbols.min()}..{symbols.max()}")
    present = np.bincount(symbols, minlength=len(lengths))
    missing = np.flatnonzero(present * (lengths == 0))
    if len(missing):
        raise SqueezeError(f"symbol {missing[0]} has no Huffman code; expected one with count > 0")
    total_bits = int(present @ lengths)
    # One extra symbol with an empty code fills the grid's missing last-row cells.
    pad = len(lengths)
    codes = np.append(canonical_codes(lengths), 0).astype(np.int64)
    lengths = np.append(lengths, 0).astype(np.uint8)
    chunks, steps, _ = chunk_layout(n, sync_interval)
    grid = np.full(steps * chunks, pad, dtype=np.int32)
    grid[:n] = symbols
    grid = grid.reshape(steps, chunks)  # grid[j, c]: the j-th symbol of chunk c
    out = np.zeros((total_bits + 7) // 8 + 3, dtype=np.uint8)
    chunk_bits = []
    base = 0  # bit offset of the group's first code
    group = max(1, _ENCODE_CHUNK // steps)
    for c0 in range(0, chunks, group):
        sym = np.ascontiguousarray(grid[:, c0 : c0 + group].T)  # this group's chunks in turn
        ln = lengths[sym]
        chunk_bits.append(ln.sum(axis=1, dtype=np.int64))
        sym, ln = sym.reshape(-1), ln.reshape(-1)
        end = np.cumsum(ln, dtype=np.int64)
        end += base
        start = end - ln
        byte = start >> 3
        # Each code (<= 16 bits) starting at bit (start & 7) fits in the 24 bits of bytes byte..byte+2.
        start &= 7
        start += ln
        np.subtract(24, start, out=start)
        value = codes[sym] << start
        first = int(byte[0])
        byte -= first
        span = int(byte[-1]) + 3
        # Codes never share a bit, so adding their bytes is OR-ing them.
        acc = np.bincount(byte, weights=value >> 16, minlength=span)
        acc[1:] += np.bincount(byte, weights=(value >> 8) & 0xFF, minlength=span)[:-1]
        acc[2:] += np.bincount(byte, weights=value & 0xFF, minlength=span)[:-2]
        out[first : first + span] += acc.astype(np.uint8)
        base = int(end[-1])
    sync = np.cumsum(np.concatenate(chunk_bits))[:-1]
    return out[: (total_bits + 7) // 8].tobytes(), sync


def _decode_tables(lengths: np.ndarray, dtype: type) -> tuple[np.ndarray, np.ndarray, int]:
    """Symbol and code length for every value of the next ``width`` bits, and ``width``."""
    used = np.flatnonzero(lengths)
    order = used[np.lexsort((used, lengths[used]))]
    width = int(lengths[order[-1]])
    repeats = np.int64(1) << (width - lengths[order])
    return np.repeat(order.astype(dtype), repeats), np.repeat(lengths[order].astype(np.uint8), repeats), width


def _windows(buf: np.ndarray) -> np.ndarray:
    """``w[b]``: the 32 bits starting at byte ``b`` as a ``uint32`` (``buf`` padded with 3 bytes)."""
    n = len(buf) - 3
    out = np.empty(n, dtype=np.uint32)
    for r in range(4):  # the words starting at bytes r, r + 4, ... are one big-endian uint32 array
        count = (n - r + 3) // 4
        out[r::4] = np.frombuffer(buf[r : r + 4 * count], dtype=">u4")
    return out


def decode(payload: bytes, lengths: np.ndarray, n: int, sync: np.ndarray, sync_interval: int = SYNC_INTERVAL, dtype: type = np.int64) -> np.ndarray:
    """Decode ``n`` symbols written by :func:`encode`; raise :class:`SqueezeError` if they don't fit.

    The payload must be used exactly: every chunk ends where the sync index says the next one
    begins, and the last code ends in the last byte.
    """
    lengths = _check_complete(lengths)
    symbol_of, length_of, width = _decode_tables(lengths, dtype)
    total_bits = 8 * len(payload)
    if n < 1 or n > total_bits:
        raise SqueezeError(f"{n} symbols cannot be coded in {len(payload)} bytes; expected 1..{total_bits}")
    chunks, steps, full = chunk_layout(n, sync_interval)
    sync = np.asarray(sync, dtype=np.int64)
    if len(sync) != chunks - 1:
        raise SqueezeError(f"sync index has {len(sync)} entries; expected {chunks - 1} for {n} symbols")
    starts = np.concatenate(([0], sync))
    count = np.where(np.arange(chunks) < full, steps, steps - 1)
    bits = np.diff(np.append(starts, total_bits))
    if np.any(bits < count) or np.any(bits[:-1] > count[:-1] * width):
        raise SqueezeError(f"sync index is inconsistent with the code lengths and a {len(payload)}-byte payload")
    if total_bits <= _JUMP_DECODE_MAX_BITS:
        out, ends = _decode_by_jumping(payload, symbol_of, length_of, width, n, count)
    else:
        out, ends = _decode_by_steps(payload, symbol_of, length_of, width, starts, steps, full)
    if not np.array_equal(ends[:-1], starts[1:]):
        raise SqueezeError("Huffman chunks do not end where the sync index says; the stream is damaged")
    if not total_bits - 8 < ends[-1] <= total_bits:
        raise SqueezeError(f"Huffman codes end at bit {ends[-1]}; expected the last byte of a {len(payload)}-byte payload")
    return out


def _decode_by_steps(
    payload: bytes,
    symbol_of: np.ndarray,
    length_of: np.ndarray,
    width: int,
    starts: np.ndarray,
    steps: int,
    full: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Advance every chunk by one code per numpy step; return the symbols and each chunk's end."""
    chunks = len(starts)
    # Positions only grow, by at most `width` per step: pad so no read can leave the buffer.
    buf = np.frombuffer(payload, dtype=np.uint8)
    words = _windows(np.concatenate((buf, np.zeros(steps * width // 8 + 8, dtype=np.uint8))))
    out = np.empty((steps, chunks), dtype=symbol_of.dtype)  # out[j, c] is symbol j * chunks + c
    pos = starts.copy()
    # The window at bit p is (w[p >> 3] << (p & 7)) >> (32 - width), in uint32 arithmetic: the
    # left shift drops the bits before p, and p & 7 plus width never exceeds 32.
    byte = np.empty_like(pos)
    shift = np.empty(chunks, dtype=np.uint32)
    win = np.empty(chunks, dtype=np.uint32)
    step = np.empty(chunks, dtype=np.uint8)
    for j in range(steps):
        if j == steps - 1:
            ends = pos.copy()  # where the chunks with one symbol fewer end
        np.right_shift(pos, 3, out=byte)
        np.take(words, byte, out=win, mode="clip")
        np.bitwise_and(pos, 7, out=shift, casting="unsafe")
        np.left_shift(win, shift, out=win)
        np.right_shift(win, 32 - width, out=win)
        np.take(symbol_of, win, out=out[j], mode="clip")
        np.take(length_of, win, out=step, mode="clip")
        pos += step
    ends[:full] = pos[:full]
    return out.reshape(-1)[: (steps - 1) * chunks + full], ends


def _decode_by_jumping(payload: bytes, symbol_of: np.ndarray, length_of: np.ndarray, width: int, n: int, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Find every code start by pointer jumping over all bit positions (for small payloads)."""
    total_bits = 8 * len(payload)
    buf = np.concatenate((np.frombuffer(payload, dtype=np.uint8), np.zeros(5, dtype=np.uint8)))
    p = np.arange(total_bits, dtype=np.int64)
    win = (_windows(buf)[p >> 3] << (p & 7).astype(np.uint32)) >> (32 - width)
    sentinel = total_bits + 1  # absorbing: reached by running past the end
    jump = np.full(total_bits + 2, sentinel, dtype=np.int64)
    nxt = p + length_of[win]
    jump[:total_bits] = np.where(nxt <= total_bits, nxt, sentinel)
    # starts[i] is where the i-th code of the bit string begins; double the known prefix each round.
    starts = np.zeros(1, dtype=np.int64)
    while len(starts) < n + 1:
        starts = np.concatenate((starts, jump[starts][: n + 1 - len(starts)]))
        if len(starts) < n + 1:
            jump = jump[jump]
    if starts[n - 1] >= total_bits:
        raise SqueezeError(f"Huffman payload of {len(payload)} bytes ends before symbol {n}; the stream is truncated")
    symbols = symbol_of[win[starts[:n]]]  # chunk after chunk; put back in symbol order
    chunks = len(count)
    steps = int(count[0])
    grid = np.zeros((chunks, steps), dtype=symbols.dtype)
    grid[np.arange(steps) < count[:, None]] = symbols
    return grid.T.reshape(-1)[:n], starts[np.cumsum(count)]
