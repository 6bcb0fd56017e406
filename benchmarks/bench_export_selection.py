"""How ``export --max-drop`` picks, replayed on finished searches: the point picked by its own
validation figure against the rule ``export`` uses (its neighbourhood too,
:func:`squeezetune.search.export.neighbourhood_drop`), each scored on the evaluation images no
selection saw.

The input is what ``bench_search.py --results R.json`` writes (every finished trial's validation
and evaluation accuracy and bytes, and the dense baselines). Nothing is trained here: the searches'
trials are replayed through :func:`~squeezetune.search.export.pick` as ``export`` runs it.

    .venv/bin/python benchmarks/bench_export_selection.py benchmarks/results/search-*.json --max-drop 0.2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import markdown_table, write_section  # noqa: E402

from squeezetune.errors import SqueezeError  # noqa: E402
from squeezetune.search.export import pick  # noqa: E402
from squeezetune.search.pareto import Point, pareto_front, point  # noqa: E402
from squeezetune.spaces.constraints import drop_points  # noqa: E402


def points_of(run: dict) -> list[Point]:
    return [point(p["trial"], {"val_accuracy": p["val"], "accuracy": p["acc"], "bytes": p["bytes"]}) for p in run["points"]]


def by_own_figure(points: list[Point], dense_val: float, max_drop: float) -> Point | None:
    """The smallest front point within ``max_drop`` on validation by its own figure alone."""
    ok = [p for p in pareto_front(points) if drop_points(dense_val, p.accuracy) <= max_drop]
    return min(ok, key=lambda p: (p.bytes, -p.accuracy)) if ok else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path, help="bench_search.py --results files")
    ap.add_argument("--max-drop", type=float, default=0.2)
    ap.add_argument("--about", default="", help="a sentence on where the searches come from, printed above the table")
    ap.add_argument("--dry-run", action="store_true", help="print the section instead of writing BENCHMARKS.md")
    args = ap.parse_args()
    rows, tally = [], {}
    for path in args.results:
        for task, runs in json.loads(path.read_text()).items():
            for key, run in sorted(runs.items(), key=lambda kv: (kv[0].split("/")[0], int(kv[0].split("/")[1]))):
                points = points_of(run)
                if not points:
                    continue
                dense_eval, dense_bytes = run["dense_accuracy"], run["dense_bytes"]

                def show(p: Point | None, which: str) -> str:
                    picks = tally.setdefault(task, {}).setdefault(which, [])
                    if p is None:
                        picks.append(None)
                        return "none"
                    lost = drop_points(dense_eval, p.extra["eval_accuracy"])
                    picks.append((dense_bytes / p.bytes, lost))
                    return f"{dense_bytes / p.bytes:.1f}x ({0.0 - lost:+.2f} pt)"

                own = by_own_figure(points, run["dense_val"], args.max_drop)
                try:
                    rule = pick(points, pareto_front(points), dense_accuracy=run["dense_val"], max_drop=args.max_drop)
                except SqueezeError:  # no front point within the limit
                    rule = None
                within = [p for p in points if drop_points(dense_eval, p.extra["eval_accuracy"]) <= args.max_drop]
                best = min(within, key=lambda p: p.bytes) if within else None
                rows.append([task, key, len(points), show(own, "own"), show(rule, "rule"), show(best, "best")])

    def summary(task: str, which: str) -> str:
        picks = tally[task][which]
        beyond = sum(1 for p in picks if p is None or p[1] > args.max_drop + 1e-9)
        ratios = [p[0] if p is not None else 0.0 for p in picks]
        return f"{beyond} of {len(picks)} beyond the limit or none, median ratio {statistics.median(ratios):.1f}x"

    lines = [
        "## `export --max-drop`: which point it hands over (`benchmarks/bench_export_selection.py`)",
        "",
        f"Finished searches replayed through `export`'s pick at `--max-drop {args.max_drop:g}` (selected on the validation images), "
        "each pick scored on the evaluation images: by the point's own validation drop alone, by the rule `export` uses "
        "(the point and the two finished trials nearest in size within the limit on average too), and the best the search "
        "had within the limit on the evaluation images (what no selection can know). Inputs: " + ", ".join(f"`{p.as_posix()}`" for p in args.results) + ".",
        *([args.about, ""] if args.about else []),
        "",
        markdown_table(["task", "run", "finished trials", "own figure", "export's rule", "best on evaluation"], rows),
        "",
    ]
    for task in tally:
        lines.append(f"- {task}: own figure {summary(task, 'own')}; export's rule {summary(task, 'rule')}; best on evaluation {summary(task, 'best')}")
    text = "\n".join(lines)
    if args.dry_run:
        print(text)
    else:
        write_section("export-selection", text)
        print(text)


if __name__ == "__main__":
    main()
