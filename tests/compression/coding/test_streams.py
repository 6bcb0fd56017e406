"""Guarantees of the entropy coders: exact round trips, sizes near the entropy, damage detected."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from squeezetune.compression.coding import huffman
from squeezetune.compression.coding import streams as coding
from squeezetune.compression.coding.streams import (
    Coder,
    best_coder,
    decode_stream,
    empirical_entropy_bits,
    encode_stream,
    encode_stream_with_stats,
)
from squeezetune.errors import SqueezeError

ALL_CODERS = list(Coder)


def make_symbols(kind: str, alphabet: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "uniform":
        return rng.integers(0, alphabet, n)
    if kind == "geometric":  # the shape of index gaps and of k-means indices on Gaussian weights
        return np.minimum(rng.geometric(rng.uniform(0.05, 0.9), n) - 1, alphabet - 1)
    if kind == "one":
        return np.full(n, rng.integers(0, alphabet))
    # sparse: a few scattered symbols of a large alphabet, very unequal frequencies
    used = rng.choice(alphabet, size=min(alphabet, 5), replace=False)
    return used[np.minimum(rng.geometric(0.5, n) - 1, len(used) - 1)]


def decodes_or_squeeze_error(data: bytes, coder: Coder) -> None:
    """The only allowed outcomes for damaged input: some symbols, or SqueezeError."""
    try:
        out = decode_stream(data, coder)
    except SqueezeError as exc:
        assert "\n" not in str(exc)
    else:
        assert isinstance(out, np.ndarray) and out.ndim == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    coder=st.sampled_from(ALL_CODERS),
    alphabet=st.integers(1, 300),
    n=st.integers(0, 5000),
    kind=st.sampled_from(["uniform", "geometric", "one", "sparse"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_round_trip_is_exact(coder, alphabet, n, kind, seed):
    symbols = make_symbols(kind, alphabet, n, seed)
    data, stats = encode_stream_with_stats(symbols, alphabet, coder)
    out = decode_stream(data, coder)
    assert out.dtype == (np.uint8 if alphabet <= 256 else np.uint16) and out.shape == (n,)
    np.testing.assert_array_equal(out, symbols)
    assert stats.total_bytes == len(data) == stats.header_bytes + stats.table_bytes + stats.payload_bytes
    assert stats.n_symbols == n
    assert stats.entropy_bits == pytest.approx(empirical_entropy_bits(symbols, alphabet))


@pytest.mark.parametrize("coder", ALL_CODERS)
@pytest.mark.parametrize(
    "symbols, alphabet",
    [
        (np.zeros(0, dtype=np.int64), 1),
        (np.zeros(0, dtype=np.int64), 256),
        (np.zeros(7, dtype=np.uint8), 1),
        (np.full(100_000, 41, dtype=np.int32), 300),
        (np.array([65535, 0, 65535], dtype=np.uint64), 65536),
        (np.arange(65536), 65536),
        (np.array([5]), 6),
    ],
)
def test_edge_cases_round_trip(coder, symbols, alphabet):
    out = decode_stream(encode_stream(symbols, alphabet, coder), coder)
    assert out.dtype == (np.uint8 if alphabet <= 256 else np.uint16)
    np.testing.assert_array_equal(out, symbols)


@pytest.mark.parametrize("n", [1, 2, 2047, 2048, 2049, 4095, 4097, 3 * 2048 + 5, 50_000])
def test_huffman_step_decoder_matches_jump_decoder(n, monkeypatch):
    symbols = make_symbols("geometric", 40, n, seed=n)
    data = encode_stream(symbols, 40, Coder.HUFFMAN)
    np.testing.assert_array_equal(decode_stream(data, Coder.HUFFMAN), symbols)
    monkeypatch.setattr(huffman, "_JUMP_DECODE_MAX_BITS", 0)  # force the sync-index decoder
    np.testing.assert_array_equal(decode_stream(data, Coder.HUFFMAN), symbols)


def test_large_stream_uses_the_sync_index_and_detects_its_damage():
    symbols = make_symbols("uniform", 256, 300_000, seed=1)  # 2.4M bits: the step decoder
    data, stats = encode_stream_with_stats(symbols, 256, Coder.HUFFMAN)
    np.testing.assert_array_equal(decode_stream(data, Coder.HUFFMAN), symbols)
    assert stats.table_bytes < 400  # symbol set (k = 256: 2 bytes), 128 length bytes, sync index
    sync_start = stats.header_bytes + 2 + 128  # its base, width and 146 entries
    assert stats.table_bytes > 2 + 128 + 4
    for i in range(sync_start, stats.header_bytes + stats.table_bytes):
        damaged = bytearray(data)
        damaged[i] ^= 0x10
        with pytest.raises(SqueezeError):
            decode_stream(bytes(damaged), Coder.HUFFMAN)


def geometric_stream(n: int, seed: int = 0) -> np.ndarray:
    return np.minimum(np.random.default_rng(seed).geometric(0.3, n) - 1, 31)


def test_ans_payload_within_one_percent_of_entropy():
    symbols = geometric_stream(200_000)
    _, stats = encode_stream_with_stats(symbols, 32, Coder.ANS)
    assert stats.entropy_bits / 8 <= stats.payload_bytes <= 1.01 * stats.entropy_bits / 8
    assert stats.table_bytes < 64


@pytest.mark.parametrize("kind", ["uniform", "geometric", "sparse"])
def test_huffman_payload_within_one_bit_per_symbol_of_entropy(kind):
    symbols = make_symbols(kind, 256, 20_000, seed=3)
    _, stats = encode_stream_with_stats(symbols, 256, Coder.HUFFMAN)
    assert stats.entropy_bits <= 8 * stats.payload_bytes <= stats.entropy_bits + len(symbols) + 8


def test_raw_payload_is_fixed_width():
    _, stats = encode_stream_with_stats(np.arange(1000) % 20, 20, Coder.RAW)
    assert (stats.payload_bytes, stats.table_bytes) == (625, 0)  # 5 bits each


def test_best_coder_picks_the_smallest():
    symbols = geometric_stream(10_000)
    coder, data = best_coder(symbols, 32, candidates=(Coder.RAW, Coder.HUFFMAN, Coder.ANS))
    sizes = {c: len(encode_stream(symbols, 32, c)) for c in Coder}
    assert len(data) == min(sizes.values()) and sizes[coder] == len(data)
    np.testing.assert_array_equal(decode_stream(data, coder), symbols)


def test_empirical_entropy_bits():
    assert empirical_entropy_bits(np.array([0, 1, 0, 1]), 2) == pytest.approx(4.0)
    assert empirical_entropy_bits(np.array([3, 3, 3]), 4) == 0.0
    assert empirical_entropy_bits(np.zeros(0, dtype=np.int64), 4) == 0.0


@settings(max_examples=60, deadline=None)
@given(counts=st.lists(st.integers(0, 10**6), min_size=1, max_size=300))
def test_canonical_huffman_is_prefix_free(counts):
    lengths = huffman.code_lengths(np.array(counts))
    assert lengths.max(initial=0) <= huffman.MAX_CODE_LENGTH
    assert huffman.kraft_sum(lengths) <= 1.0
    assert np.all((lengths > 0) == (np.array(counts) > 0)) or sum(c > 0 for c in counts) == 0
    codes = huffman.canonical_codes(lengths)
    words = sorted(format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths) if n > 0)
    assert all(not b.startswith(a) for a, b in zip(words, words[1:]))  # sorted: a prefix would be adjacent


@settings(max_examples=60, deadline=None)
@given(max_length=st.integers(2, 16), data=st.data())
def test_length_limiting_keeps_the_code_complete(max_length, data):
    size = data.draw(st.integers(2, min(300, 1 << max_length)))
    counts = data.draw(st.lists(st.integers(1, 2**40), min_size=size, max_size=size))
    lengths = huffman.code_lengths(np.array(counts), max_length=max_length)
    assert 1 <= lengths.min() and lengths.max() <= max_length
    assert huffman.kraft_sum(lengths) == 1.0
    order = np.lexsort((-np.arange(size), counts))  # rarest first; on ties, the larger symbol first
    assert np.all(np.diff(lengths[order].astype(int)) <= 0)  # rarer symbols never get shorter codes


def test_code_lengths_are_limited_and_still_complete():
    fibonacci = [1, 1]
    while len(fibonacci) < 40:
        fibonacci.append(fibonacci[-1] + fibonacci[-2])
    lengths = huffman.code_lengths(np.array(fibonacci))  # unlimited Huffman would need 39 bits
    assert lengths.max() == huffman.MAX_CODE_LENGTH
    assert huffman.kraft_sum(lengths) == 1.0
    symbols = np.repeat(np.arange(40), np.minimum(fibonacci, 2000))
    np.testing.assert_array_equal(decode_stream(encode_stream(symbols, 40, Coder.HUFFMAN), Coder.HUFFMAN), symbols)


def test_canonical_codes_reject_impossible_lengths():
    with pytest.raises(SqueezeError):
        huffman.canonical_codes(np.array([1, 1, 1]))


@pytest.mark.parametrize(
    "symbols, alphabet, match",
    [
        (np.array([0, 7, 2]), 5, "symbol 7 at index 1"),
        (np.array([1, -3]), 5, "symbol -3 at index 1"),
        (np.array([0, 1]), 0, "alphabet_size=0"),
        (np.array([0, 1]), 65537, "alphabet_size=65537"),
        (np.array([0, 1]), 2.0, "alphabet_size=2.0"),
        (np.zeros((2, 2), dtype=np.int64), 4, "1-D integer array"),
        (np.array([0.0, 1.0]), 4, "1-D integer array"),
    ],
)
def test_bad_input_is_named(symbols, alphabet, match):
    for call in (lambda: encode_stream(symbols, alphabet, Coder.ANS), lambda: empirical_entropy_bits(symbols, alphabet)):
        with pytest.raises(SqueezeError, match=match):
            call()


def test_coder_is_checked():
    with pytest.raises(SqueezeError, match="'lzma'"):
        encode_stream(np.array([0]), 2, "lzma")
    data = encode_stream(np.array([0, 1, 1]), 2, Coder.HUFFMAN)
    with pytest.raises(SqueezeError, match="huffman"):
        decode_stream(data, Coder.ANS)
    np.testing.assert_array_equal(decode_stream(data, "huffman"), [0, 1, 1])  # plain strings work too


@pytest.mark.parametrize("coder", ALL_CODERS)
def test_truncation_and_bit_flips_never_escape_squeeze_error(coder):
    for kind, alphabet, n in [("geometric", 32, 300), ("one", 4, 50), ("uniform", 300, 40), ("geometric", 20, 4500)]:
        data = encode_stream(make_symbols(kind, alphabet, n, seed=7), alphabet, coder)
        for cut in range(len(data)):
            with pytest.raises(SqueezeError):  # every stream knows its own length
                decode_stream(data[:cut], coder)
        for bit in range(8 * min(len(data), 120)):
            flipped = bytearray(data)
            flipped[bit // 8] ^= 1 << (bit % 8)
            decodes_or_squeeze_error(bytes(flipped), coder)
        decodes_or_squeeze_error(data + b"\x00", coder)


@settings(max_examples=400, deadline=None)
@given(
    coder=st.sampled_from(ALL_CODERS),
    body=st.binary(max_size=200),
    prefix=st.sampled_from([b"", b"\x00", b"\x05\x64", b"\x20\x10", b"\xac\x02\xe8\x07"]),  # alphabet, n
)
def test_garbage_never_escapes_squeeze_error(coder, body, prefix):
    tag = bytes([0x10 | ALL_CODERS.index(coder)]) if prefix else b""  # get past the tag, header
    decodes_or_squeeze_error(tag + prefix + body, coder)


@pytest.mark.parametrize(
    "data",
    [
        bytes([0x12, 0x80, 0x80, 0x04, 0xFF, 0xFF, 0xFF, 0x7F]),  # alphabet 65536, n = 2**28 - 1, ...
        bytes([0x11, 0x02, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F]),  # a claimed count beyond MAX_SYMBOLS
        bytes([0x10, 0x01, 0xFF, 0xFF, 0xFF, 0x7F]),  # 2**28 - 1 symbols of a 1-symbol alphabet: legal
    ],
)
def test_huge_claims_are_cheap(data):
    coder = ALL_CODERS[data[0] & 15]
    try:
        out = decode_stream(data, coder)
    except SqueezeError:
        return
    assert out.nbytes <= coding.MAX_SYMBOLS  # uint8, no larger temporary


def test_a_count_the_caller_did_not_expect_is_refused_before_allocating():
    import tracemalloc

    legal = bytes([0x10, 0x01, 0xFF, 0xFF, 0xFF, 0x7F])  # 2**28 - 1 symbols of a 1-symbol alphabet
    tracemalloc.start()
    try:
        with pytest.raises(SqueezeError, match=r"raw stream claims 268435455 symbols; expected 10"):
            decode_stream(legal, Coder.RAW, expected=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    data = encode_stream(np.array([3, 1, 3], dtype=np.uint8), 4, Coder.ANS)
    assert decode_stream(data, Coder.ANS, expected=3).tolist() == [3, 1, 3]


def test_imports_without_constriction():
    script = (
        "import sys; sys.modules['constriction'] = None\n"
        "import numpy as np\n"
        "from squeezetune.compression.coding.streams import Coder, encode_stream, decode_stream\n"
        "data = encode_stream(np.array([1, 2, 2]), 3, Coder.HUFFMAN)\n"
        "assert decode_stream(data, Coder.HUFFMAN).tolist() == [1, 2, 2]\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)
