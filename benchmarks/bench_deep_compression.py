"""Deep Compression on the MNIST protocol, laid out like the paper's Tables 2 and 3.

Runs the built-in ``deep-compression`` recipe on LeNet-300-100 and LeNet-5 (dense baseline
trained from a fixed seed on the first 8,000 images of MNIST's test split, evaluated on the last
2,000), writes real containers, and reports per layer: weights, weights kept, weight bits
before/after entropy coding, index bits before/after entropy coding, coded bytes. The ratio is
dense fp32 bytes / real file bytes; accuracies are those of the model decoded from the file.

    .venv/bin/python benchmarks/bench_deep_compression.py [--data-dir ../shared/data/mnist]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, markdown_table, write_section  # noqa: E402

from squeezetune.compression.coding import codec  # noqa: E402
from squeezetune.compression.coding.container import pack_sections, read_container  # noqa: E402
from squeezetune.compression.pipeline import compress  # noqa: E402
from squeezetune.compression.recipes import deep_compression  # noqa: E402
from squeezetune.tasks import get_task  # noqa: E402

PAPER = {"lenet300-mnist": (40, 1.64, 1.58), "lenet5-mnist": (39, 0.80, 0.74)}


def layer_rows(report: dict) -> list[list[object]]:
    rows = []
    for layer in [t for t in report["tensors"] if t["action"] != "raw"]:
        kept = layer["kept"]
        streams = layer["streams"]
        w_bits = math.log2(layer["clusters"]) if layer["clusters"] else 32
        w_coded = 8 * streams["weights"]["total_bytes"] / kept if "weights" in streams else 32
        i_coded = 8 * streams["positions"]["total_bytes"] / kept if "positions" in streams else 0
        coding = streams.get("positions", {}).get("coding", "relative")
        positions = {"relative": str(layer["index_bits"]), "runs": f"runs, {layer['index_bits']}"}.get(coding, coding)
        rows.append(
            [
                layer["name"],
                f"{layer['weights']:,}",
                f"{100 * kept / layer['weights']:.1f}%",
                f"{w_bits:.0f}",
                f"{w_coded:.2f}",
                positions,
                f"{i_coded:.2f}",
                f"{layer['fillers']:,}",
                f"{layer['coded_bytes']:,}",
                f"{4 * layer['weights'] / layer['coded_bytes']:.1f}x",
            ]
        )
    rows.append(["biases + meta", "", "", "", "", "", "", "", f"{report['raw_bytes'] + report['meta_bytes']:,}", ""])
    coded = [t for t in report["tensors"] if t["action"] != "raw"]
    total = sum(layer["weights"] for layer in coded)
    kept = sum(layer["kept"] for layer in coded)
    rows.append(["**total (file)**", f"{total:,}", f"{100 * kept / total:.1f}%", "", "", "", "", "", f"**{report['compressed_bytes']:,}**", f"**{report['ratio']:.1f}x**"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--tasks", nargs="+", default=["lenet300-mnist", "lenet5-mnist"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    sections, summary = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.tasks:
            task = get_task(name)
            recipe = deep_compression(task.model, task.build_model())
            t0 = time.perf_counter()
            out = Path(tmp) / f"{name}.sqz"
            report = compress(task, recipe, out=out, data_dir=args.data_dir, progress=lambda m: print(f"  {m}", flush=True)).to_dict()
            seconds = time.perf_counter() - t0
            change_pt = 100 * (report["accuracy"] - report["dense_accuracy"])
            stored = read_container(out)
            per_coder = {c: len(pack_sections(codec.transcode(stored, c))) for c in ("huffman", "ans", "raw")}
            paper_ratio, paper_dense_err, paper_err = PAPER.get(name, ("-", "-", "-"))
            summary.append(
                [
                    name,
                    f"{100 * report['dense_accuracy']:.2f}%",
                    f"{100 * report['accuracy']:.2f}%",
                    f"{change_pt:+.2f} pt",
                    f"{report['dense_bytes']:,}",
                    f"{report['compressed_bytes']:,}",
                    f"**{report['ratio']:.1f}x**",
                    " / ".join(f"{report['dense_bytes'] / per_coder[c]:.1f}x" for c in ("huffman", "ans", "raw")),
                    f"{paper_ratio}x (err {paper_dense_err}% -> {paper_err}%)",
                    f"{seconds:.0f} s",
                ]
            )
            table = markdown_table(
                ["layer", "#weights", "kept", "weight bits (P+Q)", "weight bits coded", "index bits or coding", "position bits coded", "fillers", "bytes", "rate"],
                layer_rows(report),
            )
            sections.append(f"#### {name}\n\n{table}\n")
            print(table, flush=True)
    text = (
        "### Deep Compression on the MNIST protocol\n\n"
        "Recipe `deep-compression`: the paper's per-layer keep rates and weight bits, 5-bit index diffs (or, per layer, "
        "row run lengths or an adaptive bitmask where smaller; see the position codings section), fine-tuning "
        "by distillation from the dense model, float16 codebooks and biases, each stream coded with the smallest of "
        "Huffman, ANS and fixed-width codes. Train: first 8,000 images of MNIST's test split; evaluate: last 2,000; seed 0. Accuracy is "
        "that of the model decoded from the written file; ratio = dense fp32 bytes / file bytes. The "
        "all-Huffman / all-ANS / raw column re-codes the same file's streams with one coder (lossless, same model). "
        "Bits columns are per kept weight; coded bits include each stream's code table.\n\n"
        + markdown_table(["task", "dense acc", "compressed acc", "change", "dense bytes", "file bytes", "ratio", "all-Huffman / all-ANS / raw", "paper (Table 1)", "time"], summary)
        + "\n\n"
        + "\n".join(sections)
        + f"\nMeasured on {machine()} by `benchmarks/bench_deep_compression.py`.\n"
    )
    write_section("deep-compression", text)


if __name__ == "__main__":
    main()
