"""The README's main job, today's code against an earlier commit's: `squeezetune search` on the
built-in digits task with every setting at its default, seed by seed.

For each version and seed it runs ``squeezetune search --seed S --name main-job`` in a fresh folder
(its own ``mlflow.db``), then ``squeezetune pareto --name main-job``, and reads the front that
command shows: the points the search selected, with their accuracy on the digits' evaluation
images and their real container bytes. The earlier version runs from ``git archive`` of its
commit's ``src/`` (``--against``), in the same virtual environment and on the same machine.

Reported: the search's wall time, the front (ratio and accuracy drop on the evaluation images,
each against its own version's dense baseline), the drop of the front's least lossy point, and the
hypervolume of the front in (evaluation accuracy, bytes) above the reference point ``REF``.

    .venv/bin/python benchmarks/bench_main_job.py --seeds 0 1 2 --against ec19a4e
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, markdown_table, write_section  # noqa: E402

from squeezetune.search.pareto import Point, hypervolume  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HERE = "this checkout"
REF = (0.90, 30_000)
"""Hypervolume reference point: (evaluation accuracy, container bytes)."""
AGAINST = "ec19a4e"
"""The default earlier version: the last commit whose search had no multi-fidelity, no validation
split (it selected its front on the evaluation images it reported) and no warm-start neighbours."""


def source_of(version: str, root: Path) -> Path:
    """The ``src`` folder to run ``version`` from: this checkout's (``HERE``), or ``git archive`` of a commit's."""
    if version == HERE:
        return REPO / "src"
    out = root / f"src-{version}"
    if not out.exists():
        out.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", version, "src"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out / "src"


def cli(src: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = "import sys; from squeezetune.cli import main; sys.argv[0] = 'squeezetune'; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True)


def parse_front(text: str) -> tuple[float, int, list[dict]]:
    """``pareto``'s table: (dense accuracy, dense bytes, points), accuracy on the evaluation images."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("trial"))
    cols = lines[at].replace("drop pt", "drop_pt").replace("val acc", "val_acc").split()
    points, dense = [], None
    for line in lines[at + 1 :]:
        fields = line.split()
        if not fields:
            break
        row = dict(zip(cols, fields))
        acc, size = float(row["accuracy"]), int(row["bytes"].replace(",", ""))
        if fields[0] == "dense":
            dense = (acc, size)
        else:
            points.append({"trial": int(fields[0]), "acc": acc, "bytes": size, **({"val": float(row["val_acc"])} if "val_acc" in row else {})})
    if dense is None:
        raise ValueError(f"no dense row in pareto's output:\n{text}")
    return dense[0], dense[1], points


def run(version: str, seed: int, root: Path) -> dict:
    src = source_of(version, root)
    work = root / version / str(seed)
    work.mkdir(parents=True)
    start = time.perf_counter()
    search = cli(src, work, "search", "--seed", str(seed), "--name", "main-job")
    wall = time.perf_counter() - start
    (work / "search.log").write_text(search.stdout + search.stderr)
    if search.returncode != 0:
        raise RuntimeError(f"{version} seed {seed}: search exited {search.returncode}; see {work / 'search.log'}")
    front = cli(src, work, "pareto", "--name", "main-job")
    if front.returncode != 0:
        raise RuntimeError(f"{version} seed {seed}: pareto exited {front.returncode}: {front.stderr.strip()}")
    dense_acc, dense_bytes, points = parse_front(front.stdout)
    return {"wall": wall, "dense_accuracy": dense_acc, "dense_bytes": dense_bytes, "points": points}


def drop(r: dict, p: dict) -> float:
    return 100 * (r["dense_accuracy"] - p["acc"])


def row(version: str, seed: int, r: dict) -> list[object]:
    pts = sorted(r["points"], key=lambda p: p["bytes"])
    front = ", ".join(f"{r['dense_bytes'] / p['bytes']:.1f}x ({-drop(r, p) + 0.0:+.2f})" for p in pts)
    least = min(pts, key=lambda p: drop(r, p))
    return [version, seed, f"{r['wall']:.0f} s", f"{100 * r['dense_accuracy']:.2f}%", front, f"{r['dense_bytes'] / least['bytes']:.1f}x ({-drop(r, least) + 0.0:+.2f})", f"{front_hypervolume(r):.0f}"]


def front_hypervolume(r: dict) -> float:
    return hypervolume([Point(p["trial"], p["acc"], p["bytes"]) for p in r["points"]], REF)


def _change(drops: list[float]) -> str:
    """The accuracy changes of ``drops`` (points lost), as a range from the best to the worst."""
    return f"{0.0 - min(drops):+.2f} to {0.0 - max(drops):+.2f} pt against its dense model"


def write(results: dict, against: str) -> None:
    rows = [row(v, int(s), r) for v in (HERE, against) for s, r in sorted(results.get(v, {}).items())]
    lines = [
        "## The README's main job (`benchmarks/bench_main_job.py`)",
        "",
        f"Measured on {machine()}. `squeezetune search --seed S` on its defaults (24 trials, `lenet300-digits`, local Ray), "
        f"this checkout against commit {against}, run from `git archive` in the same environment. "
        "The front is what `squeezetune pareto` shows: this checkout selects it on the 180 validation images held out of the 1,437 training digits "
        f"and trains on the rest; {against} trains on all 1,437 and selects on the 360 evaluation digits it reports (one image: 0.28 pt), "
        "so its losses are flattered by that choice. Points: ratio (accuracy change in points on the evaluation digits, against its own dense baseline). "
        f"Hypervolume in (evaluation accuracy, bytes) above ({REF[0]}, {REF[1]:,} B).",
        "",
        markdown_table(["version", "seed", "search wall", "dense", "front", "least lossy point", "hypervolume"], rows),
    ]
    seeds = sorted(set(results.get(HERE, {})) & set(results.get(against, {})), key=int)
    if seeds:
        hv = {v: [front_hypervolume(results[v][s]) for s in seeds] for v in (HERE, against)}
        least = {v: [min(drop(results[v][s], p) for p in results[v][s]["points"]) for s in seeds] for v in (HERE, against)}
        above = sum(a > b for a, b in zip(hv[HERE], hv[against]))
        lines += [
            "",
            f"Hypervolume above {against}'s in {above} of {len(seeds)} seeds. "
            f"The least lossy point of the front is {_change(least[HERE])} here, "
            f"{_change(least[against])} with {against} (whose figures are on the images it selected on).",
        ]
    write_section("main-job", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--against", default=AGAINST, help="the earlier commit to run beside this checkout")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--results", default=None, help="JSON file that keeps every finished run, so a rerun continues")
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="bench-main-job-"))
    path = Path(args.results) if args.results else root / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for seed in args.seeds:
        for version in (HERE, args.against):
            done = results.setdefault(version, {})
            if str(seed) in done:
                continue
            print(f"{version} seed {seed}", flush=True)
            done[str(seed)] = run(version, seed, root)
            path.write_text(json.dumps(results, indent=1))
    write(results, args.against)


if __name__ == "__main__":
    main()
