"""Any model: the built-in tasks with other inputs and layer types, compressed and searched.

For each task (a 1-D conv net, a Transformer encoder on token ids, an LSTM, a 3x32x32 CNN; all on
scikit-learn's bundled digits, so nothing is downloaded) this reports the dense model's accuracy
and bytes, the built-in ``deep-compression`` recipe (its generic rule: every compressible tensor
pruned and shared), and a 16-trial search, with each layer type's share of the file and the
latency of the dense and the decoded model at batch 1 and 64 (CPU, medians of interleaved runs).

    .venv/bin/python benchmarks/bench_tasks.py [--tasks conv1d-digits ...] [--trials 16]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, markdown_table, write_section  # noqa: E402

TASKS = ["conv1d-digits", "transformer-digits", "lstm-digits", "cnn32-digits"]


def shares(report) -> str:
    """Each layer type's share of the file: its tensors' coded bytes, and the raw tensors and meta."""
    by_kind: dict[str, int] = defaultdict(int)
    for t in report.tensors:
        if t.coded_bytes is not None:
            by_kind[t.kind] += t.coded_bytes
    by_kind["raw tensors (biases, norms)"] += report.raw_bytes
    by_kind["meta"] += report.meta_bytes
    total = report.compressed_bytes
    return ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1]) if v)


def run(task_name: str, trials: int, workdir: Path) -> dict:
    from squeezetune.compression import compress
    from squeezetune.search.config import SearchConfig
    from squeezetune.search.runner import run_search

    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    report = compress(task_name, "deep-compression", out=workdir / "dc.sqz", progress=lambda m: None)
    dc = {
        "dense_accuracy": report.dense_accuracy,
        "accuracy": report.accuracy,
        "dense_bytes": report.dense_bytes,
        "bytes": report.compressed_bytes,
        "ratio": report.ratio,
        "shares": shares(report),
        "latency": report.latency,
        "coded": sum(1 for t in report.tensors if t.action != "raw"),
        "compressible": sum(1 for t in report.tensors if t.action != "raw" or "not pruned" in t.why),
        "wall": time.time() - t0,
    }
    t0 = time.time()
    config = SearchConfig.from_dict(
        {
            "name": "bench",
            "task": task_name,
            "trials": trials,
            "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
            "fidelity": {"epochs": 12, "centroid_epochs": 3, "min_epochs": 2},
            "constraints": {"max_drop": 1.0},
            "space": {},  # the one-shot space this benchmark's section describes (prune, fine-tune, share)
        }
    )
    outcome = run_search(config, progress=lambda m: None)
    front = [{"val": p.accuracy, "acc": p.extra.get("eval_accuracy", p.accuracy), "bytes": p.bytes} for p in outcome.front]
    points = [{"val": p.accuracy, "acc": p.extra.get("eval_accuracy", p.accuracy), "bytes": p.bytes, "feasible": p.feasible} for p in outcome.points]
    search = {"errors": outcome.errors[:3], "search_dense_accuracy": outcome.baseline.accuracy, "search_dense_bytes": outcome.baseline.bytes, "search_wall": time.time() - t0, "counts": outcome.counts}
    return {"dc": dc, "front": front, "points": points, **search, "measured": time.strftime("%Y-%m-%d %H:%M")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--results", default=None)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-tasks-"))
    results_path = Path(args.results) if args.results else root / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for task in args.tasks:
        if task not in results:
            print(f"{task} ...", flush=True)
            results[task] = run(task, args.trials, root / task)
            results_path.write_text(json.dumps(results, indent=1))
    rows, lat_rows = [], []
    for task, r in results.items():
        dc = r["dc"]
        best = max((p for p in r["front"] if 100 * (r["search_dense_accuracy"] - p["acc"]) <= 1.0), key=lambda p: r["search_dense_bytes"] / p["bytes"], default=None)
        search = f"{r['search_dense_bytes'] / best['bytes']:.1f}x at {100 * best['acc']:.2f}%" if best else "none within 1 pt"
        search += f" (its dense baseline: {100 * r['search_dense_accuracy']:.2f}%)"
        top = max(r.get("points", []), key=lambda p: p["acc"], default=None)
        if best is None and top is not None:
            search += f" (most accurate complete trial: {r['search_dense_bytes'] / top['bytes']:.1f}x at {100 * top['acc']:.2f}%)"
        rows.append(
            [
                task,
                f"{100 * dc['dense_accuracy']:.2f}%",
                f"{dc['dense_bytes']:,}",
                f"{100 * dc['accuracy']:.2f}% ({100 * (dc['accuracy'] - dc['dense_accuracy']):+.2f} pt)",
                f"{dc['ratio']:.1f}x ({dc['bytes']:,} B)",
                f"{dc['coded']} of {dc['compressible']}",
                dc["shares"],
                f"{search} (front of {len(r['front'])}; {r['counts']['complete']} complete, {r['counts']['stopped']} stopped, "
                + (f"{r['counts']['failed']} failed: {'; '.join(r.get('errors', []))}, " if r["counts"].get("failed") else "")
                + f"{r['search_wall'] / 60:.1f} min)",
                r.get("measured", "-"),
            ]
        )
        lat = dc["latency"]
        lat_rows.append([task, f"{lat['dense_latency_ms_b1']:.2f}", f"{lat['latency_ms_b1']:.2f}", f"{lat['dense_latency_ms_b64']:.2f}", f"{lat['latency_ms_b64']:.2f}"])
    text = [
        f"Measured on {machine()}. `deep-compression` is the built-in recipe's generic rule (convolution kernels keep 50% at 8 bits, "
        "every other tensor 10% at 5 bits from 100,000 weights up and more below (`dense_keep`: 17% at 12,500, 28% at 1,563), the last 25% at 5 bits; "
        "20 + 4 epochs distilled). The search is "
        f"{args.trials} trials over a 12 + 3 epoch fidelity (MO-ASHA, `early_stopping` at its default) and `max_drop: 1.0`; its figure is the best ratio at <= 1 pt loss "
        "(evaluation images; its dense baseline is trained on the training images left after the validation split). "
        "Shares are of the deep-compression file.",
        "",
        markdown_table(["task", "dense", "dense bytes", "deep-compression accuracy", "ratio", "tensors coded", "share of the file", "16-trial search", "measured"], rows),
        "",
        "Latency of the dense and the decoded deep-compression model (ms per forward pass, CPU, the compress report's interleaved medians):",
        "",
        markdown_table(["task", "dense b1", "decoded b1", "dense b64", "decoded b64"], lat_rows),
    ]
    write_section("tasks", "\n".join(text))


if __name__ == "__main__":
    main()
