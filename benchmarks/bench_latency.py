"""Latency benchmark: does the speed-up one measurement shows agree with the next, within its interval?

ResNet-20 (``resnet20-mnist``, untrained, seed 0) against itself pruned to ~0.45 of its MACs by
the ``channel-pruning`` recipe's structured stage (LASSO channel selection and least squares, a
uniform plan, counts in multiples of 8) with no fine-tuning: the counts, and so the speed, do not
depend on the weights' values, and LASSO reads random images. At batch 64 on the CPU, for each
thread count of ``--threads``:

* :func:`squeezetune.compression.latency.speedup`, the measurement behind the compress report's
  ``speedup_b64``, ``--repeats`` times in this process and once in each of ``--processes`` fresh
  processes, ``--budget`` seconds each;
* the compress report's own figure (``compare_latency_report``, its default 4-second budget
  spread over batch 1 and 64);
* ``torch.utils.benchmark.Timer.blocked_autorange`` on each model in turn (not interleaved), each
  in the memory layout ``speedup`` picked, ``--min-run-time`` seconds each: the ratio of the
  medians, with no interval.

    python benchmarks/bench_latency.py [--threads 1,2] [--budget 20]

The machine is shared: every row states the 1-minute load average before and after it.
Writes the ``latency`` section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, markdown_table, write_section  # noqa: E402

from squeezetune.compression import Context, apply_stage  # noqa: E402
from squeezetune.compression.latency import LAYOUTS, LatencyConfig, speedup  # noqa: E402
from squeezetune.compression.measure import macs  # noqa: E402
from squeezetune.compression.pipeline import compare_latency_report  # noqa: E402
from squeezetune.compression.recipes import structured_pruning  # noqa: E402
from squeezetune.tasks import Split, get_task  # noqa: E402

TASK = "resnet20-mnist"
MACS_TARGET = 0.45
BATCH = 64
EXAMPLE = torch.zeros(1, 1, 28, 28)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load() -> float:
    return os.getloadavg()[0]


def models() -> tuple[torch.nn.Module, torch.nn.Module]:
    """The dense ResNet-20 and its pruned copy, the same in every process (fixed seeds)."""
    torch.manual_seed(0)
    dense = get_task(TASK).build_model().eval()
    g = torch.Generator().manual_seed(0)
    images = Split(torch.randn(512, 1, 28, 28, generator=g), torch.randint(0, 10, (512,), generator=g))
    step = structured_pruning("lasso", macs_target=MACS_TARGET).steps[0]  # the recipe's structured stage, without its fine-tune
    pruned = apply_stage(dense, step.config, Context(teacher=dense, example=EXAMPLE, train=images, eval=images))
    return dense, pruned.eval()


def measure(dense, pruned, threads: int, budget: float) -> dict:
    s = speedup(dense, pruned, batch=BATCH, device="cpu", example=EXAMPLE, config=LatencyConfig(budget_s=budget, threads=threads))
    return {"ratio": s.ratio, "low": s.low, "high": s.high, "dense_ms": s.dense_ms, "pruned_ms": s.compressed_ms, "rounds": s.rounds, "seconds": s.seconds, "layouts": list(s.layouts)}


def autorange(dense, pruned, threads: int, layouts: list[str], min_run_time: float) -> dict:
    """``blocked_autorange`` on each model in turn, in the given memory layouts; the ratio of the medians."""
    from torch.utils import benchmark

    x = EXAMPLE.expand(BATCH, -1, -1, -1).contiguous()
    medians = []
    t0 = time.perf_counter()
    for model, layout in zip((dense, pruned), layouts):
        fmt = LAYOUTS[layout]
        m = model if fmt is torch.contiguous_format else copy.deepcopy(model).to(memory_format=fmt)
        with torch.inference_mode():
            timer = benchmark.Timer("m(x)", globals={"m": m, "x": x.contiguous(memory_format=fmt)}, num_threads=threads)
            medians.append(timer.blocked_autorange(min_run_time=min_run_time).median * 1000.0)
    return {"ratio": medians[0] / medians[1], "dense_ms": medians[0], "pruned_ms": medians[1], "seconds": time.perf_counter() - t0}


def child(threads: int, budget: float) -> None:
    dense, pruned = models()
    print(json.dumps(measure(dense, pruned, threads, budget)))


def fresh_process(threads: int, budget: float) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", str(threads), str(budget)], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def agree(rows: list[dict]) -> str:
    """Of the rows with an interval: how many ordered pairs have the one's estimate inside the other's
    interval, and how many pairs of intervals overlap."""
    timed = [r for r in rows if "low" in r]
    ordered = [(a, b) for a in timed for b in timed if a is not b]
    inside = sum(b["low"] <= a["ratio"] <= b["high"] for a, b in ordered)
    pairs = [(a, b) for i, a in enumerate(timed) for b in timed[i + 1 :]]
    overlap = sum(a["low"] <= b["high"] and b["low"] <= a["high"] for a, b in pairs)
    return f"one estimate inside another's interval in {inside} of {len(ordered)} ordered pairs, intervals overlapping in {overlap} of {len(pairs)} pairs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="CPU thread counts, comma-separated")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds per speedup measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=10.0)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(int(args.child[0]), float(args.child[1]))
        return
    start = time.perf_counter()
    log("pruning")
    dense, pruned = models()
    fraction = macs(pruned, EXAMPLE) / macs(dense, EXAMPLE)
    log(f"MACs {macs(dense, EXAMPLE):,} -> {macs(pruned, EXAMPLE):,} ({fraction:.3f})")

    table = []
    notes = []
    for threads in [int(t) for t in args.threads.split(",")]:
        rows = []

        def add(method: str, result: dict, before: float) -> None:
            result = {**result, "method": method, "load": f"{before:.1f} -> {load():.1f}"}
            rows.append(result)
            interval = f"{result['ratio']:.3f}x [{result['low']:.3f}, {result['high']:.3f}]" if "low" in result else f"{result['ratio']:.3f}x (no interval)"
            log(f"{threads} threads, {method}: {interval}, {result['dense_ms']:.2f} -> {result['pruned_ms']:.2f} ms, load {result['load']}")
            table.append(
                [
                    threads,
                    method,
                    f"{result['dense_ms']:.2f}",
                    f"{result['pruned_ms']:.2f}",
                    interval,
                    result.get("rounds", "-"),
                    f"{result['seconds']:.1f}",
                    result["load"],
                ]
            )

        for i in range(args.repeats):
            before = load()
            add(f"`speedup`, this process, run {i + 1}", measure(dense, pruned, threads, args.budget), before)
        for i in range(args.processes):
            before = load()
            add(f"`speedup`, fresh process {i + 1}", fresh_process(threads, args.budget), before)
        before = load()
        t0 = time.perf_counter()
        lat = compare_latency_report(dense, pruned, EXAMPLE, device=torch.device("cpu"), config=LatencyConfig(threads=threads))
        report = {"ratio": lat["speedup_b64"], "low": lat["speedup_b64_low"], "high": lat["speedup_b64_high"], "dense_ms": lat["dense_latency_ms_b64"], "pruned_ms": lat["latency_ms_b64"]}
        add("compress report (`speedup_b64`, default budget)", {**report, "seconds": time.perf_counter() - t0}, before)
        layouts = rows[0]["layouts"]
        before = load()
        auto = autorange(dense, pruned, threads, layouts, args.min_run_time)
        add(f"`blocked_autorange` ({layouts[0]} / {layouts[1]})", auto, before)
        inside = [r for r in rows if "low" in r and r["low"] <= auto["ratio"] <= r["high"]]
        notes.append(f"{threads} thread(s): {agree(rows)}; the `blocked_autorange` ratio {auto['ratio']:.3f} inside {len(inside)} of {sum('low' in r for r in rows)} intervals.")

    total = time.perf_counter() - start
    md = [
        "## Latency: one speed-up against the next (`benchmarks/bench_latency.py`)",
        "",
        f"{machine()}. ResNet-20 (`{TASK}`, untrained, seed 0) against its LASSO channel-pruned copy at {fraction:.3f} of its MACs "
        f"(the `channel-pruning` recipe's structured stage, `macs_target` {MACS_TARGET}, no fine-tuning), batch {BATCH}, CPU. "
        f"`speedup`: warm-up until passes stop getting faster, rounds A B B A B A A B, the median per-round ratio and its ~95% "
        f"order-statistic interval (never narrower than 2% either side), {args.budget:.0f} s each; `blocked_autorange`: "
        f"each model alone, {args.min_run_time:.0f} s each, ratio of medians. The machine was shared with other jobs: "
        "the load column is the 1-minute load average before and after each row, and the absolute milliseconds move with it.",
        "",
        markdown_table(["threads", "method", "dense ms", "pruned ms", "speed-up [95% interval]", "rounds", "s", "load"], table),
        "",
        *[f"* {n}" for n in notes],
        "",
        f"Total wall time {total / 60:.1f} min.",
    ]
    text = "\n".join(md)
    print(text)
    if not args.no_write:
        write_section("latency", text)


if __name__ == "__main__":
    main()
