"""The search against hand-written recipes on the MNIST protocol: multi-fidelity, multi-objective.

For each net and seed this runs what a user types,

    squeezetune search --task NET --data-dir D --trials 32 --max-drop 0.2 --seed S

(every other setting at its default: max-compression's stages as the space, warm-started from that
recipe and its four neighbours, MO-ASHA with rungs inside gradual pruning's 40 epochs and ``early_stopping: auto``,
validation split held out of the training images), then the same with ``--sampler random``, and (``--full-budget``) the
same sampler with every trial on the full schedule. Beside them, the recipe written by hand from
the built-in stages (``HAND``), and every built-in recipe that applies, runs on the *same* dense baseline
(the search's: trained on the 7,000 images left after the validation split) with its full
schedule. Accuracy loss is measured on the decoded file, on the 2,000 evaluation images no
selection saw, against that dense baseline. Each search gets at most the same wall-clock budget
(``--budget-minutes``, 30 by default): a search still running then is cut and scored on what it
finished.

Reported per net: the best ratio at <= 0.2 pt loss (median and worst seed), the hypervolume of the
front against random search's (same seed), over the whole front and over its points within 0.2 pt, the wall time, and the time at which the search's front
first reached the hand recipe's point (MO-ASHA vs full-budget trials).

    .venv/bin/python benchmarks/bench_search.py --data-dir ../shared/data/mnist --seeds 0 1 2 [--full-budget]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, markdown_table, write_section  # noqa: E402

from squeezetune.spaces.constraints import drop_points  # noqa: E402

MAX_DROP = 0.2
TRIALS = 32
HAND = {
    # the hand recipes the goal was set from (their authors' full schedules)
    "lenet300-mnist": {
        "name": "hand-lenet300",
        "prune": {"layers": {"fc1": {"keep_fraction": 0.025}, "fc2": {"keep_fraction": 0.05}, "fc3": {"keep_fraction": 0.2}}},
        "finetune": {"epochs": 40, "lr": 0.01, "weight_decay": 1e-5, "distill": True},
        "share": {"default": {"bits": 5}},
        "finetune_centroids": {"epochs": 8, "lr": 0.001, "distill": True},
        "encode": {"index_bits": "auto", "coder": "auto", "float_bits": 16},
    },
    "lenet5-mnist": {
        "name": "hand-lenet5",
        "prune": {"layers": {"conv1": {"keep_fraction": 0.5}, "conv2": {"keep_fraction": 0.05}, "fc1": {"keep_fraction": 0.008}, "fc2": {"keep_fraction": 0.08}}},
        "finetune": {"epochs": 30, "lr": 0.01, "weight_decay": 1e-5, "distill": True},
        "share": {"layers": {"conv1": {"bits": 5}, "conv2": {"bits": 5}, "fc1": {"bits": 4}, "fc2": {"bits": 4}}},
        "finetune_centroids": {"epochs": 6, "lr": 0.001, "distill": True},
        "encode": {"index_bits": "auto", "coder": "auto", "float_bits": 16},
    },
}
REF = {"lenet300-mnist": (0.90, 60_000), "lenet5-mnist": (0.90, 100_000)}
"""Hypervolume reference point per net: (evaluation accuracy, container bytes)."""


def run_search(
    task: str,
    data_dir: str,
    seed: int,
    workdir: Path,
    *,
    sampler: str | None,
    full_budget: bool,
    budget_s: float,
    trials: int = TRIALS,
    time_budget: float | None = None,
    extra: dict | None = None,
) -> dict:
    """One search as the CLI runs it; cut at ``budget_s`` seconds (Ctrl-C semantics) and scored."""
    import optuna

    from squeezetune.search.config import SearchConfig
    from squeezetune.search.runner import run_search as run

    workdir.mkdir(parents=True, exist_ok=True)
    data = {
        "name": "bench",
        "task": task,
        "data_dir": data_dir,
        "trials": trials,
        "time_budget": time_budget,
        "seed": seed,
        "constraints": {"max_drop": MAX_DROP},
        "tracking_uri": f"sqlite:///{workdir / 'mlflow.db'}",
    }
    if sampler:
        data["sampler"] = sampler
    data.update(extra or {})
    if full_budget:
        data["fidelity"] = {**(data.get("fidelity") or {}), "early_stopping": False}
    config = SearchConfig.from_dict(data)
    started = time.time()
    timer = threading.Timer(budget_s, lambda: os.kill(os.getpid(), 2))  # SIGINT: the search stops as on Ctrl-C
    timer.start()
    cut = False
    try:
        outcome = run(config, progress=lambda m: print(f"    {m}", flush=True))
        baseline = outcome.baseline
    except KeyboardInterrupt:
        cut = True
        baseline = None
    finally:
        timer.cancel()
    wall = time.time() - started
    study = optuna.load_study(study_name="bench", storage=f"sqlite:///{workdir / 'optuna.db'}")
    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    if baseline is None:
        from squeezetune.search.export import baseline_of
        from squeezetune.search.tracking import client, find_parent

        c = client(config.tracking_uri)
        baseline = baseline_of(find_parent(c, c.get_experiment_by_name("squeezetune").experiment_id, "bench"))
    points = [
        {"trial": t.number, "val": t.user_attrs["val_accuracy"], "acc": t.user_attrs["accuracy"], "bytes": int(t.user_attrs["bytes"]), "at": t.datetime_complete.timestamp() - started} for t in done
    ]
    n = {s.name: sum(t.state == s for t in study.get_trials(deepcopy=False)) for s in optuna.trial.TrialState}
    # Ray Tune takes the SIGINT and returns, so a search the budget cut can also end normally, with trials left running or waiting
    cut = cut or bool(n["RUNNING"] or n["WAITING"])
    return {
        "points": points,
        "wall": wall,
        "cut": cut,
        "dense_accuracy": baseline.accuracy,
        "dense_val": baseline.val_accuracy,
        "dense_bytes": baseline.bytes,
        "states": n,
        "trials": trials,
        "time_budget": time_budget,
        "sampler": config.sampler.value,
        "extra": extra,
    }


RECIPES = ("hand", "deep-compression", "max-compression")
"""The recipes run beside the searches: the hand recipe, and the built-in ones that aim at bytes, not MACs."""


def hand_runs(task: str, data_dir: str, workdir: Path, names: tuple[str, ...] = RECIPES) -> dict:
    """The hand and built-in recipes ``names``, full schedule, on the search's own dense baseline and split."""
    from squeezetune.compression import BUILTIN_RECIPES, Recipe, compress, dense_model, load_recipe
    from squeezetune.tasks import get_task, hold_out

    workdir.mkdir(parents=True, exist_ok=True)
    t = get_task(task)
    train, held = t.load_data(Path(data_dir))
    fit, val = hold_out(train)
    dense = dense_model(t, (fit, held), seed=0)
    recipes = {name: Recipe.from_dict(HAND[task]) if name == "hand" else load_recipe(name, t.model, t.build_model()) for name in names if name == "hand" or name in BUILTIN_RECIPES}
    out = {}
    for label, recipe in recipes.items():
        t0 = time.time()
        report = compress(t, recipe, out=workdir / f"{label}.sqz", dense=dense, splits=(fit, held), validation=val, latency=False)
        out[label] = {
            "acc": report.accuracy,
            "val": report.val_accuracy,
            "bytes": report.compressed_bytes,
            "dense_accuracy": report.dense_accuracy,
            "dense_bytes": report.dense_bytes,
            "wall": time.time() - t0,
        }
        print(f"  {label}: {report.accuracy:.4f} {report.compressed_bytes:,} B ({report.ratio:.1f}x) in {out[label]['wall']:.0f} s", flush=True)
    return out


def within_limit(points: list[dict], dense_accuracy: float) -> list[dict]:
    """The points losing at most MAX_DROP points on the evaluation images."""
    return [p for p in points if drop_points(dense_accuracy, p["acc"]) <= MAX_DROP]


def best_within(points: list[dict], dense_accuracy: float, dense_bytes: int) -> float | None:
    """The best ratio among points losing at most MAX_DROP points on the evaluation images."""
    ok = within_limit(points, dense_accuracy)
    return dense_bytes / min(p["bytes"] for p in ok) if ok else None


def exported(points: list[dict], dense_val: float, dense_accuracy: float, dense_bytes: int) -> str:
    """What ``squeezetune export --max-drop MAX_DROP`` hands the user: the smallest point within
    MAX_DROP on the validation images it was selected on, then its ratio and evaluation-image loss."""
    from squeezetune.errors import SqueezeError
    from squeezetune.search.export import pick
    from squeezetune.search.pareto import Point, pareto_front

    on_val = [Point(p["trial"], p["val"], p["bytes"]) for p in points]
    try:
        chosen = pick(on_val, pareto_front(on_val), dense_accuracy=dense_val, max_drop=MAX_DROP)
    except SqueezeError:
        return "none"
    p = next(p for p in points if p["trial"] == chosen.trial)
    return f"{dense_bytes / p['bytes']:.1f}x ({100 * (p['acc'] - dense_accuracy):+.2f} pt)"


def _outcomes(run: dict) -> list[tuple]:
    """A search's finished trials without their times: what two searches are compared by."""
    return sorted((p["trial"], p["val"], p["acc"], p["bytes"]) for p in run["points"])


def hypervolume(points: list[dict], ref: tuple[float, int]) -> float:
    from squeezetune.search.pareto import Point, pareto_front
    from squeezetune.search.pareto import hypervolume as hv

    front = pareto_front([Point(p["trial"], p["acc"], p["bytes"]) for p in points])
    return hv(front, ref)


IMAGE_PT = 0.05
"""One of the 2,000 evaluation images, in accuracy points."""


def hypervolume_within(run: dict, task: str, dense_accuracy: float) -> float:
    """The hypervolume of the points losing at most MAX_DROP on the evaluation images, above
    (dense accuracy - MAX_DROP - one image, REF's bytes): the part of the front the constrained
    search is for (the reference one image below the limit, so that a point at the limit counts)."""
    return hypervolume(within_limit(run["points"], dense_accuracy), (dense_accuracy - (MAX_DROP + IMAGE_PT) / 100, REF[task][1]))


def reached(points: list[dict], hand: dict) -> float | None:
    """Seconds until a finished trial matched the hand recipe (at least as accurate on the evaluation images, at most its bytes)."""
    times = [p["at"] for p in points if p["acc"] >= hand["acc"] - 1e-9 and p["bytes"] <= hand["bytes"]]
    return min(times) if times else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--tasks", nargs="+", default=["lenet300-mnist", "lenet5-mnist"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--budget-minutes", type=float, default=30.0)
    parser.add_argument("--trials", type=int, default=TRIALS, help="the searches' --trials")
    parser.add_argument("--time-budget", type=float, default=None, help="the searches' --time-budget (minutes; below --budget-minutes, so the last trials finish)")
    parser.add_argument("--search-config", default=None, help="YAML of search config keys (space, fidelity, ...) every search also gets")
    parser.add_argument("--full-budget", action="store_true", help="also run the default sampler with every trial on the full schedule (seed 0)")
    parser.add_argument("--no-random", action="store_true")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES, help="the recipes run beside the searches (hand is always run: the table reads its dense baseline)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--results", default=None, help="JSON file that keeps every finished run, so a rerun continues")
    parser.add_argument("--section", default="search", help="the BENCHMARKS.md section written (default: search)")
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-search-"))
    results_path = Path(args.results) if args.results else root / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    extra = None
    if args.search_config:
        import yaml

        extra = yaml.safe_load(Path(args.search_config).read_text())

    def save() -> None:
        results_path.write_text(json.dumps(results, indent=1))

    for task in args.tasks:
        r = results.setdefault(task, {})
        missing = [n for n in dict.fromkeys(["hand", *args.recipes]) if n not in r.get("hand", {})]
        if missing:
            print(f"{task}: recipes {', '.join(missing)}", flush=True)
            r.setdefault("hand", {}).update(hand_runs(task, args.data_dir, root / task / "recipes", tuple(missing)))
            save()
        runs = [("default", None, False, s) for s in args.seeds]
        if not args.no_random:
            runs += [("random", "random", False, s) for s in args.seeds]
        if args.full_budget:
            runs += [("full-budget", None, True, args.seeds[0])]
        for label, sampler, full, seed in runs:
            key = f"{label}/{seed}"
            if key in r:
                continue
            print(f"{task}: {key}", flush=True)
            r[key] = run_search(
                task,
                args.data_dir,
                seed,
                root / task / label / str(seed),
                sampler=sampler,
                full_budget=full,
                budget_s=60 * args.budget_minutes,
                trials=args.trials,
                time_budget=args.time_budget,
                extra=extra,
            )
            save()
    write(results, args)


def sampler_of(method: str, run: dict) -> str:
    """`` (tpe)`` after the default search's label: the sampler it ran with, when recorded."""
    return f" ({run['sampler']})" if method == "default" and run.get("sampler") else ""


def write(results: dict, args) -> None:
    lines = [
        "## Search (`benchmarks/bench_search.py`)" if getattr(args, "section", "search") == "search" else f"## {args.section} (`benchmarks/bench_search.py --section {args.section}`)",
        "",
        f"Measured on {machine()}. `squeezetune search --task NET --data-dir D --trials {args.trials}"
        f"{f' --time-budget {args.time_budget:g}' if args.time_budget else ''} --max-drop {MAX_DROP} --seed S`, every other setting "
        "at its default (the default space: max-compression's stages, its recipe and the recipe's four neighbours the first trials; MO-ASHA ranking at 2, 6 and 18 of gradual pruning's 40 epochs "
        "with `early_stopping: auto`, which stops no trial while the full schedules of all of them, timed on those finished, fit in "
        f"{'what is left of the time budget' if args.time_budget else '15 minutes'}; "
        "then the recovery fine-tune and 8 centroid epochs for trials that go on; 1,000 of the 8,000 training images held out to select on). "
        "Hand and built-in recipes ran their full schedules on the same dense baseline (trained on the other 7,000 images). "
        f"Every accuracy is the decoded file's, on the 2,000 evaluation images no selection saw; loss is against that dense baseline. "
        f"`best ratio at <= {MAX_DROP} pt` takes the best of every finished trial by its evaluation-image accuracy (an upper bound: it selects on the images it reports); "
        f"the export column is the point `export --max-drop {MAX_DROP}` would hand the user, chosen on the validation images, with its evaluation-image loss. "
        f"Each search had at most {args.budget_minutes:.0f} minutes of wall-clock time."
        + (f" Every search also had the config keys of `{Path(args.search_config).name}`, which override these defaults." if getattr(args, "search_config", None) else ""),
        "",
    ]
    for task, r in results.items():
        hand = r["hand"]["hand"]
        dense_acc, dense_bytes = hand["dense_accuracy"], hand["dense_bytes"]
        lines.append(f"**{task}**: dense baseline {100 * dense_acc:.2f}%, {dense_bytes:,} B (seed 0's, which the recipes ran on; each search's loss is against its own seed's baseline).")
        lines.append("")
        rows = []
        for label, h in r["hand"].items():
            change = 100 * (h["acc"] - dense_acc)
            ratio = f"{dense_bytes / h['bytes']:.1f}x"
            rows.append(
                [
                    label,
                    ratio if change >= -MAX_DROP - 1e-9 else f"none ({ratio} loses {-change:.2f} pt)",
                    "-",
                    f"{100 * h['acc']:.2f}% ({change:+.2f} pt)",
                    f"{h['bytes']:,}",
                    f"{h['wall']:.0f} s",
                    "-",
                    "-",
                    "-",
                ]
            )
        seeds = sorted({k.split("/")[1] for k in r if "/" in k})
        methods = list(dict.fromkeys(k.split("/")[0] for k in r if "/" in k))
        for method in sorted(methods, key=lambda m: (m != "default", m == "full-budget", m)):
            for seed in seeds:
                run = r.get(f"{method}/{seed}")
                if run is None:
                    continue
                base = run.get("dense_accuracy", dense_acc)  # each search's own dense baseline (its seed's)
                best = best_within(run["points"], base, dense_bytes)
                hv = hypervolume(run["points"], REF[task])
                hv_within = hypervolume_within(run, task, base)
                t = reached(run["points"], hand)
                states = ", ".join(f"{v} {k.lower()}" for k, v in run["states"].items() if v)
                rows.append(
                    [
                        f"search {method}{sampler_of(method, run)}, seed {seed}{' (cut at the budget)' if run['cut'] else ''}",
                        f"{best:.1f}x" if best else "none",
                        exported(run["points"], run["dense_val"], base, dense_bytes),
                        states,
                        "",
                        f"{run['wall'] / 60:.1f} min",
                        f"{hv:.0f}",
                        f"{hv_within:.1f}",
                        f"{t / 60:.1f} min" if t is not None else "not reached",
                    ]
                )
        lines.append(
            markdown_table(
                [
                    "run",
                    f"best ratio at <= {MAX_DROP} pt",
                    f"`export --max-drop {MAX_DROP}` (picked on validation)",
                    "accuracy / trials",
                    "bytes",
                    "wall",
                    "hypervolume",
                    f"hypervolume within {MAX_DROP} pt",
                    "time to the hand point",
                ],
                rows,
            )
        )
        lines.append("")
        summary = []
        for method in ("default", "random"):
            bests = [best_within(r[k]["points"], r[k].get("dense_accuracy", dense_acc), dense_bytes) or 0.0 for k in r if k.startswith(f"{method}/")]
            if bests:
                worst = f"{min(bests):.1f}x" if min(bests) else "none"
                summary.append(f"{method}: median {statistics.median(bests):.1f}x (a seed with nothing within {MAX_DROP} pt counts as 0), worst {worst}")
        pairs = [(r[f"default/{s}"], r[f"random/{s}"]) for s in seeds if f"default/{s}" in r and f"random/{s}" in r]
        if pairs:
            wins = [hypervolume(a["points"], REF[task]) > hypervolume(b["points"], REF[task]) for a, b in pairs]
            within = [hypervolume_within(a, task, a.get("dense_accuracy", dense_acc)) > hypervolume_within(b, task, b.get("dense_accuracy", dense_acc)) for a, b in pairs]
            summary.append(f"hypervolume above random search's in {sum(wins)} of {len(wins)} seeds; within {MAX_DROP} pt in {sum(within)} of {len(within)}")
        same = [
            s for s in seeds if f"default/{s}" in r and f"random/{s}" in r and _outcomes(r[f"default/{s}"]) == _outcomes(r[f"random/{s}"]) and r[f"default/{s}"]["states"] == r[f"random/{s}"]["states"]
        ]
        if same:
            summary.append(
                f"in seed {', '.join(same)} the default sampler's search ended exactly as random search's: the trials both finished are the warm starts "
                "and random start-up draws the two samplers share by seed, and every other trial was stopped early"
            )
        lines.append("; ".join(summary) + f" (hand recipe: {dense_bytes / hand['bytes']:.1f}x).")
        lines.append("")
    write_section(getattr(args, "section", "search"), "\n".join(lines))


if __name__ == "__main__":
    main()
