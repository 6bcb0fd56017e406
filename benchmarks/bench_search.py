"""Search benchmark: multi-objective search (NSGA-II, TPE) vs random search vs the Deep Compression recipe.

On lenet300-mnist with the MNIST protocol (8,000 train / 2,000 eval images), each search gets the
same budget of trials (32 by default) with cheap trials (1-2 fine-tune epochs, 0-1 centroid
epochs); the hand recipe (``deep-compression``) is run once with the same fine-tune budget as the
most expensive trial, and once with its full schedule (12 + 4 epochs) for reference.

For each method: hypervolume of the front with a fixed reference point, best compression ratio at
<= 0.2 accuracy-point loss, ratio the front reaches at the hand recipe's accuracy, wall time, and
the overhead Ray + MLflow add per trial (a trial's wall time from suggestion to result, minus the
pipeline's own seconds; and the seconds spent in MLflow calls inside the trial).

    python benchmarks/bench_search.py --data-dir ../shared/data/mnist [--trials 32] [--methods nsga2,tpe,random]

Writes the ``search`` section of BENCHMARKS.md. Runs in a scratch folder (``--workdir``), with its
own sqlite MLflow store (default: <tmp>/squeezetune-search-bench), so nothing lands in the caller's mlflow.db.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, markdown_table, write_section  # noqa: E402

REF = (0.90, 100_000)
"""Hypervolume reference point: (accuracy 0.90, 100,000 container bytes). Units: accuracy fraction x bytes."""
MAX_DROP = 0.2
SPACE = {
    "finetune": {"epochs": [1, 2], "distill": [True, False]},
    "finetune_centroids": {"epochs": [0, 1]},
}


def run_method(method: str, args, workdir: Path) -> dict:
    from squeezetune.search.config import SearchConfig
    from squeezetune.search.runner import run_search

    name = f"bench-{method}-{time.strftime('%Y%m%d-%H%M%S')}"
    config = SearchConfig.from_dict(
        {
            "name": name,
            "task": "lenet300-mnist",
            "data_dir": str(args.data_dir),
            "trials": args.trials,
            "sampler": method,
            "seed": args.seed,
            "max_concurrent": args.concurrent,
            "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
            "space": SPACE,
        }
    )
    t0 = time.perf_counter()
    outcome = run_search(config, progress=lambda m: print(f"[{method} {time.perf_counter() - t0:6.0f}s] {m}", flush=True))
    return {"outcome": outcome, "wall": time.perf_counter() - t0}


def run_hand(args, workdir: Path) -> dict:
    from squeezetune.compression.pipeline import compress, dense_model
    from squeezetune.compression.pruning import prunable_layers
    from squeezetune.compression.recipes import Recipe, deep_compression
    from squeezetune.tasks import get_task

    task = get_task("lenet300-mnist")
    splits = task.load_data(args.data_dir)
    dense = dense_model(task, splits, seed=args.seed)
    recipe = deep_compression("lenet300", prunable_layers(dense)).to_dict()
    out = {}
    short = dict(recipe, finetune=dict(recipe["finetune"], epochs=SPACE["finetune"]["epochs"][1]), finetune_centroids=dict(recipe["finetune_centroids"], epochs=SPACE["finetune_centroids"]["epochs"][1]))
    for label, r in (("short", short), ("full", recipe)):
        t0 = time.perf_counter()
        report = compress(task, Recipe.from_dict(r), out=workdir / f"hand-{label}.sqz", dense=dense, splits=splits, seed=args.seed)
        out[label] = {"report": report, "wall": time.perf_counter() - t0}
    return out


def summarise(points, dense_accuracy: float, dense_bytes: int, hand_accuracy: float) -> dict:
    from squeezetune.search.pareto import best_ratio, hypervolume, pareto_front

    front = pareto_front(points)
    best = best_ratio(points, dense_bytes=dense_bytes, dense_accuracy=dense_accuracy, max_drop=MAX_DROP)
    at_hand = [p for p in front if p.accuracy >= hand_accuracy - 1e-9]
    return {
        "hv": hypervolume(front, REF),
        "front": len(front),
        "best_ratio": dense_bytes / best.bytes if best else None,
        "best": best,
        "ratio_at_hand_acc": dense_bytes / min(p.bytes for p in at_hand) if at_hand else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist")
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--methods", default="nsga2,tpe,random")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--concurrent", type=int, default=max(1, os.cpu_count() or 1))
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "squeezetune-search-bench")
    ap.add_argument("--no-write", action="store_true", help="Print the table; leave BENCHMARKS.md alone.")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.chdir(args.workdir)

    from squeezetune.search.pareto import Point

    hand = run_hand(args, args.workdir)
    h_short, h_full = hand["short"]["report"], hand["full"]["report"]
    dense_accuracy, dense_bytes = h_short["dense_accuracy"], h_short["dense_bytes"]
    hand_acc = h_short["accuracy"]

    rows, raw = [], {}
    for label, h in (("Deep Compression (same fine-tune budget)", hand["short"]), ("Deep Compression (full 12+4 epochs)", hand["full"])):
        r = h["report"]
        s = summarise([Point(0, r["accuracy"], r["compressed_bytes"])], dense_accuracy, dense_bytes, hand_acc)
        rows.append([label, 1, f"{s['hv']:.0f}", f"{100 * r['accuracy']:.2f}% / {r['ratio']:.1f}x", f"{s['best_ratio']:.1f}x" if s["best_ratio"] else "none", f"{s['ratio_at_hand_acc']:.1f}x" if s["ratio_at_hand_acc"] else "-", f"{h['wall']:.0f}", "-", "-"])
        raw[label] = {"accuracy": r["accuracy"], "bytes": r["compressed_bytes"], "ratio": r["ratio"], "seconds": h["wall"]}

    for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
        res = run_method(method, args, args.workdir)
        o = res["outcome"]
        s = summarise(o.points, o.dense_accuracy, o.dense_bytes, hand_acc)
        overhead = [p.extra["wall_seconds"] - p.extra["pipeline_seconds"] for p in o.points if "wall_seconds" in p.extra and "pipeline_seconds" in p.extra]
        mlflow_s = [p.extra["mlflow_seconds"] for p in o.points if "mlflow_seconds" in p.extra]
        top = max(o.front, key=lambda p: (p.accuracy, -p.bytes)) if o.front else None
        rows.append(
            [
                {"nsga2": "NSGA-II", "tpe": "TPE (multi-objective)", "random": "random search"}.get(method, method),
                f"{o.counts['complete']} (+{o.counts['failed']} failed)",
                f"{s['hv']:.0f}",
                f"{100 * top.accuracy:.2f}% / {o.dense_bytes / top.bytes:.1f}x" if top else "-",
                f"{s['best_ratio']:.1f}x" if s["best_ratio"] else "none",
                f"{s['ratio_at_hand_acc']:.1f}x" if s["ratio_at_hand_acc"] else "none",
                f"{res['wall']:.0f}",
                f"{statistics.median(overhead):.1f} (mean {statistics.mean(overhead):.1f})" if overhead else "-",
                f"{statistics.mean(mlflow_s):.2f}" if mlflow_s else "-",
            ]
        )
        raw[method] = {
            "hv": s["hv"],
            "best_ratio": s["best_ratio"],
            "ratio_at_hand_acc": s["ratio_at_hand_acc"],
            "wall": res["wall"],
            "overhead": overhead,
            "front": [p.to_dict() for p in o.front],
            "name": o.name,
        }

    headers = [
        "method",
        "trials",
        f"hypervolume (ref {REF[0]:.2f} acc, {REF[1]:,} B)",
        "most accurate front point (acc / ratio)",
        f"best ratio at <= {MAX_DROP} pt loss",
        f"ratio at the hand recipe's accuracy ({100 * hand_acc:.2f}%)",
        "wall s",
        "Ray+MLflow overhead s/trial (median)",
        "MLflow s/trial",
    ]
    text = (
        f"lenet300-mnist, MNIST protocol (8,000 train / 2,000 eval), dense model {100 * dense_accuracy:.2f}%, {dense_bytes:,} bytes. "
        f"{args.trials} trials per search, {args.concurrent} at once, 1 CPU each; trials fine-tune 1-2 epochs (+0-1 centroid epochs), "
        f"every other knob from the default space (keep 2-60% per layer, 2-8 bits per layer, k-means init, coder, index bits, distillation). "
        f"Seed {args.seed}. Hypervolume: area (accuracy fraction x bytes) dominated by the front up to the reference point "
        f"(accuracy {REF[0]}, {REF[1]:,} bytes). Overhead: a trial's wall time from suggestion to result minus its pipeline seconds "
        f"(includes Ray actor start for the first trials and the Pareto-front logging).\n\n"
        f"Measured on {machine()}.\n\n" + markdown_table(headers, rows) + "\n"
    )
    print(text)
    (args.workdir / "bench_search.json").write_text(json.dumps(raw, indent=2, default=str))
    if not args.no_write:
        write_section("search", "## search\n\n" + text)


if __name__ == "__main__":
    main()
