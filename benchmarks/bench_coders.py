"""Entropy coders on realistic Deep Compression streams: size against entropy, and speed.

Streams (all uint8 symbols, so "encode MB/s" is also millions of symbols per second):

- k-means indices: 1-D Lloyd k-means (linear init, as in Deep Compression) with 32 and 256
  clusters on Gaussian weights; the symbol is the index of a weight's cluster, clusters sorted.
- sparse index gaps: relative positions of the nonzeros of a 10%-dense random mask, 5-bit
  with filler zeros (a gap beyond 32 emits the filler symbol 31 and restarts), so symbols are
  geometric-ish in [0, 31].

Then one 25M-symbol stream (5-bit k-means indices, the size of a 25M-parameter model) per coder.

Run: ``python benchmarks/bench_coders.py`` (rewrites the "coders" section of BENCHMARKS.md).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, markdown_table, write_section  # noqa: E402

from squeezetune.compression.coding.streams import Coder, decode_stream, encode_stream_with_stats  # noqa: E402

N = 1_000_000
N_LARGE = 25_000_000
REPEATS = 3


def kmeans_indices(n: int, clusters: int, seed: int = 0) -> np.ndarray:
    """Cluster index of each of ``n`` Gaussian weights under 1-D k-means (linear init, 20 Lloyd steps)."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal(n).astype(np.float32)
    sample = np.sort(weights[: min(n, 200_000)])
    centroids = np.linspace(sample[0], sample[-1], clusters)
    for _ in range(20):
        assign = np.searchsorted((centroids[1:] + centroids[:-1]) / 2, sample)
        sums = np.bincount(assign, weights=sample, minlength=clusters)
        counts = np.bincount(assign, minlength=clusters)
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    return np.searchsorted((centroids[1:] + centroids[:-1]) / 2, weights).astype(np.uint8)


def sparse_gaps(n_weights: int, density: float = 0.1, bits: int = 5, seed: int = 0) -> np.ndarray:
    """Deep Compression's relative indices of a random mask, with filler zeros past 2**bits."""
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero(rng.random(n_weights) < density)
    gaps = np.diff(positions, prepend=-1)  # >= 1
    span = 1 << bits
    fillers = (gaps - 1) // span  # filler entries before each nonzero
    symbols = np.full(int(fillers.sum()) + len(gaps), span - 1, dtype=np.uint8)
    ends = np.cumsum(fillers + 1) - 1  # each nonzero's slot, after its fillers
    symbols[ends] = (gaps - 1) % span
    return symbols


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure(name: str, symbols: np.ndarray, alphabet: int, repeats: int = REPEATS) -> list[list[object]]:
    rows = []
    for coder in Coder:
        data, stats = encode_stream_with_stats(symbols, alphabet, coder)
        assert np.array_equal(decode_stream(data, coder), symbols)
        t_enc = best_time(lambda: encode_stream_with_stats(symbols, alphabet, coder), repeats)
        t_dec = best_time(lambda: decode_stream(data, coder), repeats)
        rows.append(
            [
                name,
                coder.value,
                f"{stats.n_symbols:,}",
                f"{stats.entropy_bits / 8:,.0f}",
                f"{stats.payload_bytes:,}",
                f"{stats.total_bytes:,}",
                f"{8 * stats.payload_bytes / stats.entropy_bits:.4f}",
                f"{symbols.nbytes / t_enc / 1e6:.1f}",
                f"{len(symbols) / t_dec / 1e6:.1f}",
            ]
        )
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    return rows


def main() -> None:
    load_before = os.getloadavg()[0]
    streams = [
        ("k-means 5-bit", kmeans_indices(N, 32), 32),
        ("k-means 8-bit", kmeans_indices(N, 256), 256),
        ("sparse gaps 5-bit", sparse_gaps(N * 10), 32),
        ("k-means 5-bit, small", kmeans_indices(1000, 32), 32),  # fixed overheads show here
    ]
    rows = [row for name, symbols, alphabet in streams for row in measure(name, symbols, alphabet)]
    large = kmeans_indices(N_LARGE, 32, seed=1)
    large_rows = []
    for coder in Coder:
        start = time.perf_counter()
        data, stats = encode_stream_with_stats(large, 32, coder)
        t_enc = time.perf_counter() - start
        t_dec = best_time(lambda: decode_stream(data, coder), 2)
        assert np.array_equal(decode_stream(data, coder), large)
        large_rows.append([coder.value, f"{stats.total_bytes:,}", f"{8 * stats.total_bytes / len(large):.3f}", f"{t_enc:.2f}", f"{t_dec:.2f}"])
        print(" | ".join(large_rows[-1]), flush=True)
    headers = ["stream", "coder", "symbols", "entropy B", "payload B", "total B", "payload/entropy", "encode MB/s", "decode Msym/s"]
    text = "\n\n".join(
        [
            "## Entropy coders (`benchmarks/bench_coders.py`)",
            f"Machine: {machine()}; 1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after"
            f" (other jobs share the cores, so speeds are lower bounds). Best of {REPEATS} wall-clock runs; sizes in"
            " bytes; `total` adds the header and the code table (Huffman lengths + sync index, ANS counts)."
            " Symbols are uint8, so encode MB/s is also Msym/s.",
            markdown_table(headers, rows),
            f"One {N_LARGE:,}-symbol stream (5-bit k-means indices, a 25M-parameter layer), seconds:",
            markdown_table(["coder", "total B", "bits/symbol", "encode s", "decode s"], large_rows),
        ]
    )
    write_section("coders", text)


if __name__ == "__main__":
    main()
