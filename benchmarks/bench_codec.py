"""Encode and decode throughput of whole model containers, and decode time at 25M parameters.

Builds models of growing size (stacks of ``nn.Linear``), prunes each layer to a fixed density by
magnitude, shares weights with 5-bit k-means, then times ``encode_model`` + writing the file and
``decode_file`` (read, verify checksums, entropy-decode, rebuild the tensors), per coder.

    .venv/bin/python benchmarks/bench_codec.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, markdown_table, write_section  # noqa: E402

from squeezetune.compression.coding import codec  # noqa: E402
from squeezetune.compression.coding.container import read_container, write_container  # noqa: E402
from squeezetune.compression.unstructured.pruning import prune_layer  # noqa: E402
from squeezetune.compression.unstructured.sharing import share_layer  # noqa: E402


class Stack(nn.Module):
    def __init__(self, width: int, depth: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))


def build(width: int, depth: int, density: float, bits: int) -> Stack:
    torch.manual_seed(0)
    model = Stack(width, depth)
    for layer in model.layers:
        prune_layer(layer, keep=int(density * layer.weight.numel()))
        share_layer(layer, k=2**bits)
    return model


def measure(model: Stack, coder: str, positions: str, repeats: int = 3) -> dict:
    params = sum(layer.weight.numel() + layer.bias.numel() for layer in model.layers)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.sqz"
        enc_times, dec_times = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            encoded = codec.encode_model(model, task="bench", coder=coder, positions=positions)
            size = write_container(path, encoded.sections)
            enc_times.append(time.perf_counter() - t0)
            fresh = Stack(model.layers[0].in_features, len(model.layers))
            t0 = time.perf_counter()
            decoded = codec.decode_sections(read_container(path), fresh)
            dec_times.append(time.perf_counter() - t0)
        w = decoded.layers[0].weight
        assert torch.equal(w, model.layers[0].weight.detach())
    enc, dec = sorted(enc_times)[len(enc_times) // 2], sorted(dec_times)[len(dec_times) // 2]
    return {"params": params, "bytes": size, "encode_s": enc, "decode_s": dec}


def main() -> None:
    torch.set_num_threads(2)
    rows = []
    configs = [(1000, 1), (2000, 4), (5000, 1)]
    for width, depth in configs:
        model = build(width, depth, density=0.1, bits=5)
        for coder, positions in (("huffman", "auto"), ("ans", "auto"), ("ans", "relative")):
            r = measure(model, coder, positions, repeats=3 if width * width * depth < 10_000_000 else 1)
            rows.append(
                [
                    f"{r['params'] / 1e6:.1f}M",
                    coder,
                    positions,
                    f"{r['bytes']:,}",
                    f"{4 * r['params'] / r['bytes']:.1f}x",
                    f"{r['encode_s']:.2f}",
                    f"{r['params'] / 1e6 / r['encode_s']:.1f}",
                    f"{r['decode_s']:.2f}",
                    f"{r['params'] / 1e6 / r['decode_s']:.1f}",
                ]
            )
            print(rows[-1], flush=True)
    text = (
        "### Container encode and decode throughput\n\n"
        "Stacks of `nn.Linear` layers pruned by magnitude to 10% density and shared with 5-bit k-means "
        "(random init weights, so positions are close to random). Encode = entropy coding + writing the file; "
        "decode = reading it, verifying every CRC, entropy decoding and rebuilding the dense tensors. Medians of 3 "
        "runs (1 run at 25M). Positions `auto` codes each layer's positions every way and keeps the smallest (on these "
        "near-random masks a static bitmask, a few bytes under relative indices, decoded one symbol per weight); "
        "`relative` keeps relative indices for every layer, the only coding before the choice.\n\n"
        + markdown_table(["parameters", "coder", "positions", "file bytes", "ratio", "encode s", "encode M params/s", "decode s", "decode M params/s"], rows)
        + f"\n\nMeasured on {machine()} by `benchmarks/bench_codec.py`.\n"
    )
    write_section("codec", text)


if __name__ == "__main__":
    main()
