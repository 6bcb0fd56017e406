"""Entropy coding of integer symbol streams (cluster indices, index gaps) for the container.

One verb each way: :func:`encode_stream` turns an array of symbols in ``[0, alphabet_size)`` into
self-contained bytes, and :func:`decode_stream` turns them back, given only the bytes and the
:class:`Coder`. Three coders:

- ``RAW``: fixed-width bit packing at ``ceil(log2(alphabet_size))`` bits per symbol.
- ``HUFFMAN``: canonical Huffman codes of at most 16 bits (:mod:`.huffman`), with a sync index
  so that decoding runs over all chunks of up to 2048 symbols at once.
- ``ANS``: asymmetric numeral systems through ``constriction`` (:mod:`.ans`), within a few bytes
  of the empirical entropy.

Stream layout (``varint``: :mod:`.varint`; bit fields are packed MSB first)::

    tag        1 byte: 0x10 | coder (raw 0, huffman 1, ans 2); the high nibble is the format version
    alphabet   varint in [1, 65536]
    n          varint in [0, MAX_SYMBOLS], the number of symbols
    raw:       payload: n fields of ceil(log2(alphabet)) bits
    huffman:   (n > 0) symbol set; (k >= 2 used symbols) code lengths minus 1, 4 bits each, for
               the used symbols in increasing order; if n > 2048 the sync index: varint base,
               1 byte width, then for each chunk but the last its length in bits minus base in
               width bits; payload
    ans:       (n > 0) symbol set; (k >= 2) k varints, the count of each used symbol (the exact
               histogram: the decoder checks it); payload: little-endian uint32 words
    symbol set: varint k; if k < alphabet, 1 byte mode: 0 = bitmap of ceil(alphabet/8) bytes,
               1 = k varints (the first used symbol, then each gap minus 1)

A stream with one used symbol has no payload. :func:`decode_stream` returns ``uint8`` symbols for
alphabets up to 256 and ``uint16`` above, and raises only :class:`SqueezeError` on damaged input.

Example:
    >>> import numpy as np
    >>> symbols = np.array([3, 1, 3, 3, 0, 3, 2, 3])
    >>> data = encode_stream(symbols, 4, Coder.HUFFMAN)
    >>> decode_stream(data, Coder.HUFFMAN).tolist()
    [3, 1, 3, 3, 0, 3, 2, 3]
    >>> coder, data = best_coder(symbols, 4)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np

from squeezetune.compression.coding import ans, huffman
from squeezetune.compression.coding.varint import encode_varint, encode_varints, read_varint, read_varints
from squeezetune.errors import SqueezeError

#: Largest alphabet a stream may use (symbols fit in ``uint16``).
MAX_ALPHABET = 1 << 16
#: Most symbols in one stream; a header claiming more is rejected before anything is allocated.
MAX_SYMBOLS = 1 << 28
_FORMAT_VERSION = 1
_CODER_IDS = {"raw": 0, "huffman": 1, "ans": 2}
_LENGTH_BITS = 4  # stored Huffman code length minus 1; 16 = huffman.MAX_CODE_LENGTH fits
_PACK_CHUNK = 1 << 20  # values per bit-packing step (a multiple of 8, so steps stay byte-aligned)


class Coder(str, Enum):
    """How a stream is entropy coded."""

    RAW = "raw"
    HUFFMAN = "huffman"
    ANS = "ans"


@dataclass(frozen=True)
class StreamStats:
    """Sizes of one coded stream beside its empirical entropy.

    ``payload_bytes`` is the coded body; ``table_bytes`` the code table (symbol set, Huffman
    lengths and sync index, or ANS counts); the rest of ``total_bytes`` is the 3-7 byte header.
    """

    coder: Coder
    n_symbols: int
    entropy_bits: float
    payload_bytes: int
    table_bytes: int
    total_bytes: int

    @property
    def header_bytes(self) -> int:
        return self.total_bytes - self.payload_bytes - self.table_bytes

    @property
    def payload_over_entropy(self) -> float:
        """Payload bits per bit of empirical entropy (nan when the entropy is 0)."""
        return 8 * self.payload_bytes / self.entropy_bits if self.entropy_bits else float("nan")


# --- public API -------------------------------------------------------------------------------


def encode_stream(symbols: np.ndarray, alphabet_size: int, coder: Coder) -> bytes:
    """Code ``symbols`` (a 1-D integer array, each in ``[0, alphabet_size)``) into self-contained bytes.

    >>> len(encode_stream(np.zeros(1000, dtype=np.int64), 256, Coder.ANS))  # one used symbol: header and set
    8
    """
    return encode_stream_with_stats(symbols, alphabet_size, coder)[0]


def encode_stream_with_stats(symbols: np.ndarray, alphabet_size: int, coder: Coder) -> tuple[bytes, StreamStats]:
    """Like :func:`encode_stream`, also returning the stream's :class:`StreamStats`."""
    coder = _as_coder(coder)
    symbols, counts = _validate(symbols, alphabet_size)
    return _encode(symbols, counts, coder)


def _encode(symbols: np.ndarray, counts: np.ndarray, coder: Coder) -> tuple[bytes, StreamStats]:
    alphabet_size = len(counts)
    header = bytes([_FORMAT_VERSION << 4 | _CODER_IDS[coder.value]]) + encode_varint(alphabet_size) + encode_varint(len(symbols))
    table, payload = _ENCODERS[coder](symbols, alphabet_size, counts)
    stats = StreamStats(
        coder=coder,
        n_symbols=len(symbols),
        entropy_bits=_entropy_bits(counts),
        payload_bytes=len(payload),
        table_bytes=len(table),
        total_bytes=len(header) + len(table) + len(payload),
    )
    return header + table + payload, stats


def decode_stream(data: bytes, coder: Coder, expected: int | None = None) -> np.ndarray:
    """Rebuild the symbols of a stream written by :func:`encode_stream` with the same ``coder``.

    Returns a 1-D ``uint8`` array when the alphabet has at most 256 symbols, else ``uint16``.
    Raises :class:`SqueezeError` (and nothing else) when ``data`` is damaged, truncated or not a
    ``coder`` stream. A few bytes can legitimately hold up to ``MAX_SYMBOLS`` symbols (one used
    symbol, or ANS with one symbol dominating), so that cap bounds the output; otherwise memory
    and time stay proportional to ``len(data)``. A caller that knows how many symbols the stream
    must hold passes ``expected``: a stream that claims another count is refused before anything
    is allocated for it.
    """
    coder = _as_coder(coder)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise SqueezeError(f"stream data must be bytes; got {type(data).__name__}")
    reader = _Reader(bytes(data))
    tag = reader.byte("stream tag")
    want = _FORMAT_VERSION << 4 | _CODER_IDS[coder.value]
    if tag != want:
        known = {v: k for k, v in _CODER_IDS.items()}
        what = f"a version {tag >> 4} {known.get(tag & 15, 'unknown')} stream" if tag >> 4 else "not a stream"
        raise SqueezeError(f"stream tag 0x{tag:02x} is {what}; expected 0x{want:02x} for {coder.value}")
    alphabet_size = reader.varint("alphabet size", 1, MAX_ALPHABET)
    n = reader.varint("symbol count", 0, MAX_SYMBOLS)
    if expected is not None and n != expected:
        raise SqueezeError(f"{coder.value} stream claims {n} symbols; expected {expected}")
    dtype = np.uint8 if alphabet_size <= 256 else np.uint16
    try:
        out = _DECODERS[coder](reader, alphabet_size, n, dtype)
    except SqueezeError:
        raise
    except (IndexError, ValueError, OverflowError) as exc:  # a guard missed; still the caller's data
        raise SqueezeError(f"{coder.value} stream is damaged: {exc}") from exc
    if reader.left():
        raise SqueezeError(f"{coder.value} stream has {reader.left()} bytes after its end; expected none")
    return out


def stream_coder(data: bytes) -> Coder:
    """The coder named by the tag of a stream written by :func:`encode_stream` (the rest is not checked).

    >>> stream_coder(encode_stream(np.array([1, 0, 1]), 2, Coder.ANS)).value
    'ans'
    """
    known = {_FORMAT_VERSION << 4 | i: Coder(name) for name, i in _CODER_IDS.items()}
    if not data or data[0] not in known:
        raise SqueezeError(f"stream tag {bytes(data[:1]).hex() or 'missing'} names no coder; expected one of {sorted(f'{t:02x}' for t in known)}")
    return known[data[0]]


def empirical_entropy_bits(symbols: np.ndarray, alphabet_size: int) -> float:
    """``n * H(p)`` in bits, where ``p`` is the histogram of ``symbols``: the ideal payload size.

    >>> round(empirical_entropy_bits(np.array([0, 1, 1, 1]), 2), 4)
    3.2451
    """
    return _entropy_bits(_validate(symbols, alphabet_size)[1])


def best_coder(symbols: np.ndarray, alphabet_size: int, candidates: tuple[Coder, ...] = (Coder.HUFFMAN, Coder.ANS)) -> tuple[Coder, bytes]:
    """Encode with each candidate and return the one with the fewest total bytes (first on ties)."""
    data, stats = smallest_stream(symbols, alphabet_size, candidates)
    return stats.coder, data


def smallest_stream(symbols: np.ndarray, alphabet_size: int, candidates: Sequence[Coder]) -> tuple[bytes, StreamStats]:
    """The fewest bytes that any of ``candidates`` codes ``symbols`` in (the first on ties), with its stats."""
    if not candidates:
        raise SqueezeError("a stream needs at least one candidate coder; got none")
    coders = [_as_coder(c) for c in candidates]
    symbols, counts = _validate(symbols, alphabet_size)
    best: tuple[bytes, StreamStats] | None = None
    for coder in coders:
        data, stats = _encode(symbols, counts, coder)
        if best is None or len(data) < len(best[0]):
            best = (data, stats)
    return best


# --- validation -------------------------------------------------------------------------------


def _as_coder(coder: Coder | str) -> Coder:
    try:
        return Coder(coder)
    except ValueError:
        raise SqueezeError(f"coder {coder!r} is unknown; expected one of {[c.value for c in Coder]}") from None


def _validate(symbols: np.ndarray, alphabet_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Check the arguments of the encoders; return the symbols and their histogram."""
    if isinstance(alphabet_size, bool) or not isinstance(alphabet_size, (int, np.integer)):
        raise SqueezeError(f"alphabet_size={alphabet_size!r} must be an int in [1, {MAX_ALPHABET}]")
    if not 1 <= alphabet_size <= MAX_ALPHABET:
        raise SqueezeError(f"alphabet_size={alphabet_size} must be in [1, {MAX_ALPHABET}]")
    alphabet_size = int(alphabet_size)
    symbols = np.asarray(symbols)
    if symbols.ndim != 1 or not (np.issubdtype(symbols.dtype, np.integer) or symbols.size == 0):
        raise SqueezeError(f"symbols must be a 1-D integer array; got {symbols.ndim}-D {symbols.dtype}")
    if len(symbols) > MAX_SYMBOLS:
        raise SqueezeError(f"{len(symbols)} symbols exceed one stream's limit of {MAX_SYMBOLS}; split the array")
    if symbols.size == 0:
        return symbols.astype(np.int64), np.zeros(alphabet_size, dtype=np.int64)
    low, high = symbols.min(), symbols.max()
    if low < 0 or high >= alphabet_size:
        bad = low if low < 0 else high
        index = int(np.argmax(symbols == bad))
        raise SqueezeError(f"symbol {bad} at index {index} is outside [0, {alphabet_size}) for alphabet_size={alphabet_size}")
    if not np.can_cast(symbols.dtype, np.intp):  # uint64: bincount and fancy indexing want intp
        symbols = symbols.astype(np.intp)
    return symbols, np.bincount(symbols, minlength=alphabet_size)


def _entropy_bits(counts: np.ndarray) -> float:
    c = counts[counts > 0].astype(np.float64)
    n = c.sum()
    return float(n * np.log2(n) - np.sum(c * np.log2(c))) if len(c) > 1 else 0.0


# --- bytes: bit fields, a bounds-checked reader --------------------------------------------------


def _pack(values: np.ndarray, width: int) -> bytes:
    """``values`` as ``width``-bit fields (``width <= 24``), MSB first, the last byte zero-padded.

    Eight fields fill exactly ``width`` bytes, so the values are handled as rows of eight: field
    ``j`` of every row sits at the same bit offset, and one vectorized step per ``j`` places it.
    """
    n = len(values)
    if width == 0 or n == 0:
        return b""
    parts = []
    for lo in range(0, n, _PACK_CHUNK):
        chunk = np.asarray(values[lo : lo + _PACK_CHUNK])
        rows = np.zeros((-(-len(chunk) // 8), 8), dtype=np.uint32)
        rows.reshape(-1)[: len(chunk)] = chunk
        out = np.zeros((len(rows), width + 3), dtype=np.uint32)  # 3 spare bytes per row for the last field
        for j in range(8):
            byte, bit = divmod(j * width, 8)
            field = rows[:, j] << np.uint32(32 - bit - width)  # the field within 4 bytes from `byte`
            for t in range(4):
                out[:, byte + t] |= (field >> np.uint32(24 - 8 * t)) & np.uint32(0xFF)
        parts.append(out[:, :width].astype(np.uint8).tobytes()[: (len(chunk) * width + 7) // 8])
    return b"".join(parts)


def _unpack(data: bytes, count: int, width: int, dtype: type = np.int64) -> np.ndarray:
    """Inverse of :func:`_pack`: ``count`` fields of ``width`` bits from ``data`` (exactly sized).

    ``dtype`` must hold ``width`` bits.
    """
    if width == 0:
        return np.zeros(count, dtype=dtype)
    raw = np.frombuffer(data, dtype=np.uint8)
    out = np.empty(-(-count // 8) * 8, dtype=dtype)
    step = _PACK_CHUNK * width // 8  # bytes per chunk of _PACK_CHUNK fields
    mask = np.uint32((1 << width) - 1)
    for i, lo in enumerate(range(0, count, _PACK_CHUNK)):
        chunk = raw[i * step : (i + 1) * step]
        packed = np.zeros(-(-len(chunk) // width) * width, dtype=np.uint8)
        packed[: len(chunk)] = chunk
        rows = np.zeros((len(packed) // width, width + 3), dtype=np.uint32)
        rows[:, :width] = packed.reshape(-1, width)
        fields = out[lo : lo + 8 * len(rows)].reshape(-1, 8)
        for j in range(8):
            byte, bit = divmod(j * width, 8)
            window = rows[:, byte] << np.uint32(24)
            window |= rows[:, byte + 1] << np.uint32(16)
            window |= rows[:, byte + 2] << np.uint32(8)
            window |= rows[:, byte + 3]
            fields[:, j] = (window >> np.uint32(32 - bit - width)) & mask
    return out[:count]


class _Reader:
    """Reads a stream front to back; every read checks what is left and raises SqueezeError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def left(self) -> int:
        return len(self.data) - self.pos

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]

    def take(self, size: int, what: str) -> bytes:
        if size > self.left():
            raise SqueezeError(f"stream is truncated: {what} needs {size} bytes at offset {self.pos}, {self.left()} left")
        self.pos += size
        return self.data[self.pos - size : self.pos]

    def rest(self) -> bytes:
        return self.take(self.left(), "payload")

    def varint(self, what: str, low: int, high: int) -> int:
        """A varint in ``[low, high]``."""
        value, self.pos = read_varint(self.data, self.pos, what)
        if not low <= value <= high:
            raise SqueezeError(f"{what} is {value}; expected [{low}, {high}]")
        return value

    def varints(self, count: int, what: str, low: int, high: int) -> np.ndarray:
        """``count`` varints each in ``[low, high]``, vectorized, as ``int64``."""
        values, end = read_varints(self.data, self.pos, count, what)
        if count and (values.min() < low or values.max() > high):
            raise SqueezeError(f"{what} holds {values.max() if values.max() > high else values.min()}; expected [{low}, {high}]")
        self.pos = end
        return values


# --- symbol sets (the used symbols of a stream) -------------------------------------------------


def _write_symbol_set(used: np.ndarray, alphabet_size: int) -> bytes:
    k = len(used)
    if k == alphabet_size:
        return encode_varint(k)
    bits = np.zeros(alphabet_size, dtype=bool)
    bits[used] = True
    bitmap = b"\x00" + np.packbits(bits).tobytes()
    gaps = b"\x01" + encode_varints(np.diff(used, prepend=-1) - 1)
    return encode_varint(k) + min(bitmap, gaps, key=len)


def _read_symbol_set(reader: _Reader, alphabet_size: int, n: int) -> np.ndarray:
    k = reader.varint("used-symbol count", 1, min(alphabet_size, n))
    if k == alphabet_size:
        return np.arange(alphabet_size)
    mode = reader.byte("symbol-set mode")
    if mode == 0:
        bits = np.unpackbits(np.frombuffer(reader.take(-(-alphabet_size // 8), "symbol bitmap"), dtype=np.uint8))
        used = np.flatnonzero(bits)
        if len(used) != k or (k and used[-1] >= alphabet_size):
            raise SqueezeError(f"symbol bitmap marks {len(used)} symbols below {alphabet_size}; expected {k}")
        return used
    if mode == 1:
        used = np.cumsum(reader.varints(k, "symbol gaps", 0, alphabet_size) + 1) - 1
        if used[-1] >= alphabet_size:
            raise SqueezeError(f"symbol set reaches symbol {used[-1]}; expected below {alphabet_size}")
        return used
    raise SqueezeError(f"symbol-set mode is {mode}; expected 0 (bitmap) or 1 (gaps)")


# --- the three coders: each writes (table, payload) and reads them back ---------------------------


def _raw_width(alphabet_size: int) -> int:
    return (alphabet_size - 1).bit_length()


def _encode_raw(symbols: np.ndarray, alphabet_size: int, counts: np.ndarray) -> tuple[bytes, bytes]:
    return b"", _pack(symbols, _raw_width(alphabet_size))


def _decode_raw(reader: _Reader, alphabet_size: int, n: int, dtype: type) -> np.ndarray:
    width = _raw_width(alphabet_size)
    payload = reader.take((n * width + 7) // 8, f"raw payload of {n} {width}-bit symbols")
    symbols = _unpack(payload, n, width, dtype)  # width <= 8 exactly when dtype is uint8
    if n and symbols.max() >= alphabet_size:
        raise SqueezeError(f"raw symbol {symbols.max()} is outside [0, {alphabet_size})")
    return symbols


def _over_symbol_set(encode):
    """An entropy encoder whose table starts with the set of symbols used; an empty or
    one-symbol stream needs nothing more. ``encode(symbols, alphabet_size, counts, used)``
    returns the rest of the table and the payload."""

    def encode_stream(symbols: np.ndarray, alphabet_size: int, counts: np.ndarray) -> tuple[bytes, bytes]:
        if len(symbols) == 0:
            return b"", b""
        used = np.flatnonzero(counts)
        table = _write_symbol_set(used, alphabet_size)
        if len(used) == 1:
            return table, b""
        rest, payload = encode(symbols, alphabet_size, counts, used)
        return table + rest, payload

    return encode_stream


def _read_symbol_set_first(decode):
    """The decoder of an :func:`_over_symbol_set` encoder: ``decode(reader, alphabet_size, n, dtype, used)``
    runs only for streams of two or more distinct symbols."""

    def decode_stream(reader: _Reader, alphabet_size: int, n: int, dtype: type) -> np.ndarray:
        if n == 0:
            return np.zeros(0, dtype=dtype)
        used = _read_symbol_set(reader, alphabet_size, n)
        if len(used) == 1:
            return np.full(n, used[0], dtype=dtype)
        return decode(reader, alphabet_size, n, dtype, used)

    return decode_stream


def _encode_huffman(symbols: np.ndarray, alphabet_size: int, counts: np.ndarray, used: np.ndarray) -> tuple[bytes, bytes]:
    lengths = huffman.code_lengths(counts)
    payload, sync = huffman.encode(symbols, lengths)
    table = _pack(lengths[used] - 1, _LENGTH_BITS)
    if len(sync):
        chunk_bits = np.diff(sync, prepend=0)
        base = int(chunk_bits.min())
        width = int(chunk_bits.max() - base).bit_length()
        table += encode_varint(base) + bytes([width]) + _pack(chunk_bits - base, width)
    return table, payload


def _decode_huffman(reader: _Reader, alphabet_size: int, n: int, dtype: type, used: np.ndarray) -> np.ndarray:
    if n > 8 * reader.left():  # every code is at least one bit
        raise SqueezeError(f"{n} Huffman symbols cannot fit in the {reader.left()} bytes left")
    packed = reader.take(-(-len(used) * _LENGTH_BITS // 8), "Huffman code lengths")
    lengths = np.zeros(alphabet_size, dtype=np.int64)
    lengths[used] = _unpack(packed, len(used), _LENGTH_BITS) + 1
    chunks = huffman.chunk_layout(n)[0]
    max_chunk_bits = huffman.SYNC_INTERVAL * huffman.MAX_CODE_LENGTH
    sync = np.zeros(0, dtype=np.int64)
    if chunks > 1:
        base = reader.varint("sync index base", 1, max_chunk_bits)
        width = reader.byte("sync index width")
        if width > max_chunk_bits.bit_length():
            raise SqueezeError(f"sync index width is {width} bits; expected at most {max_chunk_bits.bit_length()}")
        packed = reader.take(-(-(chunks - 1) * width // 8), "sync index")
        sync = np.cumsum(_unpack(packed, chunks - 1, width) + base)
    return huffman.decode(reader.rest(), lengths, n, sync, dtype=dtype)


def _encode_ans(symbols: np.ndarray, alphabet_size: int, counts: np.ndarray, used: np.ndarray) -> tuple[bytes, bytes]:
    rank = np.zeros(alphabet_size, dtype=np.int32)
    rank[used] = np.arange(len(used), dtype=np.int32)
    words = ans.encode(rank[symbols], counts[used])
    return encode_varints(counts[used]), words.astype("<u4").tobytes()


def _decode_ans(reader: _Reader, alphabet_size: int, n: int, dtype: type, used: np.ndarray) -> np.ndarray:
    counts = reader.varints(len(used), "ANS symbol counts", 1, n)
    if counts.sum() != n:
        raise SqueezeError(f"ANS symbol counts sum to {counts.sum()}; expected the symbol count {n}")
    payload = reader.rest()
    if len(payload) % 4:
        raise SqueezeError(f"ANS payload has {len(payload)} bytes; expected a multiple of 4")
    symbols = ans.decode(np.frombuffer(payload, dtype="<u4"), counts, n, values=used.astype(dtype))
    # The counts are the exact histogram, so damage that still decodes almost surely breaks it.
    if not np.array_equal(np.bincount(symbols, minlength=alphabet_size)[used], counts):
        raise SqueezeError("ANS symbols decoded do not match the stored symbol counts; the stream is damaged")
    return symbols


_ENCODERS = {Coder.RAW: _encode_raw, Coder.HUFFMAN: _over_symbol_set(_encode_huffman), Coder.ANS: _over_symbol_set(_encode_ans)}
_DECODERS = {Coder.RAW: _decode_raw, Coder.HUFFMAN: _read_symbol_set_first(_decode_huffman), Coder.ANS: _read_symbol_set_first(_decode_ans)}
