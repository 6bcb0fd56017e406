"""Position codings against the mask's empirical entropy, and what they save in real containers.

Masks at 0.5%, 2% and 10% density:

- i.i.d. random masks of the shapes of LeNet-300-100's and LeNet-5's fc1;
- real masks: magnitude pruning (``magnitude_mask``) of trained LeNet-300-100 (fc1, fc2) and
  LeNet-5 (conv2, fc1) layers, dense baselines trained on the MNIST protocol (first 8,000 test
  images) and taken from the cache (``SQUEEZETUNE_CACHE``) when there.

For each mask and each position coding of :mod:`squeezetune.compression.coding.sparse`, the
coded bytes beside the empirical entropy of the mask under that coding's model, in the better of
the two orientations (rows = outputs or inputs) as the codec picks, and the mask's i.i.d.
Bernoulli entropy ``N * H(K / N)``.

Then the built-in ``deep-compression`` recipe on lenet300-mnist and lenet5-mnist: each container
is decoded and its model re-encoded with relative indices only (the coding before per-layer
choice; byte for byte the file when the file was written by that version) and with the choice.
``--containers DIR`` reads ``DIR/{task}.sqz`` (e.g. written by an older checkout); otherwise the
recipe runs here first.

    .venv/bin/python benchmarks/bench_positions.py [--data-dir ../shared/data/mnist] [--containers DIR]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils import parametrize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, markdown_table, write_section  # noqa: E402

from squeezetune.compression.coding import codec  # noqa: E402
from squeezetune.compression.coding.codebook import unpack_codebook  # noqa: E402
from squeezetune.compression.coding.container import pack_sections, read_container  # noqa: E402
from squeezetune.compression.coding.sparse import PositionCoding, decode_mask, encode_mask  # noqa: E402
from squeezetune.compression.coding.streams import Coder, decode_stream  # noqa: E402
from squeezetune.compression.pipeline import compress, decode_file, dense_bytes, dense_model  # noqa: E402
from squeezetune.compression.recipes import deep_compression  # noqa: E402
from squeezetune.compression.tensors import compressible  # noqa: E402
from squeezetune.compression.unstructured.pruning import apply_mask, magnitude_mask, plain_state_dict  # noqa: E402
from squeezetune.compression.unstructured.sharing import SharedWeight  # noqa: E402
from squeezetune.tasks import get_task  # noqa: E402

DENSITIES = (0.005, 0.02, 0.1)
REAL = {"lenet300-mnist": ("fc1", "fc2"), "lenet5-mnist": ("conv2", "fc1")}
CODERS = [Coder.HUFFMAN, Coder.ANS, Coder.RAW]


def bernoulli_bits(kept: int, total: int) -> float:
    p = kept / total
    return 0.0 if kept in (0, total) else -total * (p * math.log2(p) + (1 - p) * math.log2(1 - p))


def views(mask: np.ndarray) -> dict[str, np.ndarray]:
    """The mask as rows x cols with rows = outputs ("out") and rows = inputs ("in")."""
    return {"out": mask.reshape(mask.shape[0], -1), "in": np.swapaxes(mask, 0, 1).reshape(mask.shape[1], -1)}


def measure(mask: np.ndarray) -> dict[str, tuple[int, float, str, float]]:
    """Per coding: (bytes, entropy bits under its model, orientation, decode ms), the orientation that codes smaller."""
    best: dict[str, tuple[int, float, str, float]] = {}
    for orientation, view in views(mask).items():
        for coding in PositionCoding:
            coded, _ = encode_mask(view, "auto", CODERS, [coding])
            if coding.value not in best or len(coded.data) < best[coding.value][0]:
                best[coding.value] = (len(coded.data), coded.entropy_bits, orientation, decode_ms(coded, *view.shape))
    return best


def decode_ms(coded, rows: int, cols: int, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        decode_mask(coded.data, coded.coding, rows, cols, entries=coded.entries, index_bits=coded.index_bits, coder=coded.coder)
        times.append(time.perf_counter() - t0)
    return 1000 * min(times)


def masks(data_dir: str) -> list[tuple[str, float, np.ndarray]]:
    out = []
    rng = np.random.default_rng(0)
    for density in DENSITIES:
        for name, shape in (("i.i.d. 300x784", (300, 784)), ("i.i.d. 500x800", (500, 800))):
            out.append((name, density, rng.random(shape) < density))
    for task_name, layer_names in REAL.items():
        task = get_task(task_name)
        model = dense_model(task, task.load_data(Path(data_dir)), progress=lambda m: print(f"  {m}", flush=True))
        layers = _weight_layers(model)
        for layer_name in layer_names:
            weight = layers[layer_name].weight.detach()
            for density in DENSITIES:
                mask = magnitude_mask(weight, keep=max(1, round(density * weight.numel()))).bool().numpy()
                out.append((f"{task_name.split('-')[0]} {layer_name} {'x'.join(map(str, weight.shape))}", density, mask))
    return out


def mask_rows(data_dir: str) -> tuple[list[list[object]], list[list[object]]]:
    rows, timings = [], []
    for name, density, mask in sorted(masks(data_dir), key=lambda m: (m[1], m[0].startswith("lenet"), m[0])):
        t0 = time.perf_counter()
        sizes = measure(mask)
        best = min(sizes, key=lambda c: sizes[c][0])
        kept = int(mask.sum())
        rows.append(
            [name, f"{100 * density:g}%", f"{kept:,}", f"{bernoulli_bits(kept, mask.size) / 8:,.0f}"]
            + [f"{'**' if c == best else ''}{sizes[c][0]:,}{'**' if c == best else ''} ({sizes[c][1] / 8:,.0f}) {sizes[c][2]}" for c in (p.value for p in PositionCoding)]
            + [f"{sizes[best][0] / (bernoulli_bits(kept, mask.size) / 8):.3f}"]
        )
        timings.append([name, f"{100 * density:g}%"] + [f"{sizes[c][3]:.1f}" for c in (p.value for p in PositionCoding)])
        print(" | ".join(map(str, rows[-1])), f"({time.perf_counter() - t0:.1f} s)", flush=True)
    return rows, timings


def rebuild(model: torch.nn.Module, sections: dict[str, bytes]) -> torch.nn.Module:
    """Masks and shared weights back on a decoded model exactly as the encoder saw them.

    Labels and codebooks are read from the container rather than from the decoded values: two
    centroids may round to one float16 value, and the file keeps both.
    """
    meta = codec.read_meta(sections)
    layers = _weight_layers(model)
    for m in meta["layers"]:
        layer, i, order = layers[m["n"]], m["i"], int(m["o"])
        weight = layer.weight.detach()
        flat_shape = (weight.shape[1], weight.shape[0], *weight.shape[2:]) if order else tuple(weight.shape)
        mask = (weight.transpose(0, 1) if order else weight).reshape(-1) != 0
        if "cp" not in m and "pc" not in m:
            mask[:] = True
        if m["k"]:
            labels = torch.zeros(mask.numel(), dtype=torch.int64)
            labels[mask] = torch.from_numpy(decode_stream(sections[f"{i}w"], Coder(m["cw"]), expected=int(mask.sum())).astype(np.int64))
            codebook = torch.from_numpy(unpack_codebook(sections[f"{i}c"], int(m["k"]), meta.get("fb", 32)).astype(np.float32))
            unflat = lambda t: (t.reshape(flat_shape).transpose(0, 1) if order else t.reshape(flat_shape)).contiguous()  # noqa: E731
            parametrize.register_parametrization(layer, "weight", SharedWeight(codebook, unflat(labels), unflat(mask).float()))
            assert torch.equal(layer.weight, weight)
        else:
            apply_mask(layer, (weight != 0).float() if ("cp" in m or "pc" in m) else torch.ones_like(weight))
    return model


def _weight_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Each compressible weight's module, by module name (as a container's meta names it)."""
    return {t.module_name: t.module for t in compressible(model).values() if t.attr == "weight"}


def container_rows(data_dir: str, containers: Path | None) -> tuple[list[list[object]], list[list[object]]]:
    summary, per_layer = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for task_name in REAL:
            task = get_task(task_name)
            path = containers / f"{task_name}.sqz" if containers else Path(tmp) / f"{task_name}.sqz"
            if containers is None:
                compress(task, "deep-compression", out=path, data_dir=data_dir, progress=lambda m: print(f"  {m}", flush=True))
            sections = read_container(path)
            model = rebuild(decode_file(path, task=task), sections)
            e = deep_compression(task.model, task.build_model()).encode
            encoded = {p: codec.encode_model(model, task=task_name, index_bits=e.index_bits, coder=e.coder.value, float_bits=e.float_bits, positions=p) for p in ("relative", "auto")}
            before, after = (len(pack_sections(encoded[p].sections)) for p in ("relative", "auto"))
            file_bytes = path.stat().st_size
            decoded = codec.decode_sections(encoded["auto"].sections, task.build_model())
            assert all(torch.equal(decoded.state_dict()[k], v) for k, v in plain_state_dict(model).items())
            dense = dense_bytes(task.build_model())
            summary.append(
                [task_name, f"{file_bytes:,}", "yes" if before == file_bytes else "no", f"{before:,}", f"{after:,}", f"{after - before:+,}", f"{dense / before:.1f}x", f"**{dense / after:.1f}x**"]
            )
            for old, new in zip(encoded["relative"].layers, encoded["auto"].layers):
                pos_old, pos_new = old.streams["positions"], new.streams["positions"]
                per_layer.append(
                    [
                        f"{task_name} {new.name}",
                        f"{100 * new.kept / new.weights:.1f}%",
                        f"{pos_old['total_bytes']:,}",
                        f"{pos_new['coding']} ({new.order})",
                        f"{pos_new['total_bytes']:,}",
                        f"{pos_new['entropy_bits'] / 8:,.0f}",
                        f"{bernoulli_bits(new.kept, new.weights) / 8:,.0f}",
                        " / ".join(f"{pos_new['tried'][c.value]:,}" for c in PositionCoding),
                        f"{new.streams['weights']['total_bytes']:,}" if "weights" in new.streams else "-",
                    ]
                )
            print(" | ".join(map(str, summary[-1])), flush=True)
    return summary, per_layer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--containers", type=Path, default=None, help="read DIR/{task}.sqz instead of running the recipe")
    args = parser.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    rows, timings = mask_rows(args.data_dir)
    summary, per_layer = container_rows(args.data_dir, args.containers)
    codings = [p.value for p in PositionCoding]
    text = "\n\n".join(
        [
            "## Position codings (`benchmarks/bench_positions.py`)",
            "Bytes of each position coding, with in parentheses the empirical entropy of the mask under that coding's model,"
            " and the orientation (rows = `out`puts or `in`puts) that codes smaller, as the codec picks it. Entropies:"
            " `relative` and `runs`, the order-0 entropy of their symbols at the chosen width (`runs` adds its row counts');"
            " `bitmask`, the ideal code length of the mask under its adaptive model, learning included, plus its row counts'"
            " entropy when stored. `Bernoulli` is `N * H(K / N)`, the entropy of an independent mask of that density; the last"
            " column divides the smallest coding by it. Streams are coded with the smallest of Huffman, ANS and fixed-width"
            " codes, differences at the best width of 1-8 bits. Real masks: magnitude pruning of the trained dense baseline"
            " (MNIST protocol, seed 0), no fine-tuning.",
            markdown_table(["mask", "density", "kept", "Bernoulli B"] + [f"{c} B (entropy)" for c in codings] + ["best / Bernoulli"], rows),
            f"Decoding each mask, ms (best of 5; 1-minute load average {load:.1f} on the shared cores before, so times"
            " are upper bounds): the bitmask decodes one ANS symbol per weight, the others one per kept weight or filler.",
            markdown_table(["mask", "density"] + codings, timings),
            "### `deep-compression` containers before and after the per-layer choice",
            "Each container of the built-in recipe (5-bit index width, as the recipe sets it) is decoded and re-encoded with"
            " relative indices only, the coding every layer used before, and with the per-layer choice. `same as file`: the"
            " relative re-encoding is byte for byte the container given (written by the checkout before the choice). Ratio ="
            " dense fp32 bytes / file bytes; the decoded model is identical either way.",
            markdown_table(["task", "file B", "same as file", "before B", "after B", "change", "ratio before", "ratio after"], summary),
            markdown_table(
                ["layer", "kept", "positions before B", "coding (orientation)", "positions after B", "entropy B", "Bernoulli B", f"tried {' / '.join(codings)}", "weights B"],
                per_layer,
            ),
            f"Measured on {machine()} in {time.perf_counter() - t0:.0f} s.",
        ]
    )
    write_section("positions", text)


if __name__ == "__main__":
    main()
