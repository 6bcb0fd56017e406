"""The LeNet ``deep-compression`` containers now against a reference commit: same bytes, or fewer.

For each MNIST LeNet this runs ``squeezetune compress --recipe deep-compression --seed 0`` three
times on the same cached dense baseline: with the reference commit's code (a temporary git
worktree, run through its own console entry point), with today's code coding every tensor's
positions as relative indices (``encode.positions: relative``, the only coding the reference
had), and with today's default (``positions: auto``: per tensor, the smallest of relative indices,
row run lengths and an adaptive bitmask). The first two must give the same file byte for byte and
the same accuracy; the third may only be smaller.

    .venv/bin/python benchmarks/bench_lenet_bytes.py --data-dir ../shared/data/mnist [--reference c03c527]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, markdown_table, write_section  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TASKS = ["lenet300-mnist", "lenet5-mnist"]


def compress(src: Path, task: str, recipe: str, out: Path, data_dir: str, cache: Path) -> dict:
    """Run ``squeezetune compress`` from the package under ``src`` in a fresh process; the report and the file's hash."""
    code = "import sys; from squeezetune.cli import main; sys.argv = ['squeezetune'] + sys.argv[1:]; main()"
    env = {**os.environ, "PYTHONPATH": str(src), "SQUEEZETUNE_CACHE": str(cache)}
    argv = [sys.executable, "-c", code, "compress", "--task", task, "--recipe", recipe, "--data-dir", data_dir, "--out", str(out), "--seed", "0"]
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True, cwd=out.parent)
    report = json.loads(out.with_name(out.stem + ".report.json").read_text())
    return {"bytes": out.stat().st_size, "accuracy": report["accuracy"], "sha": hashlib.sha256(out.read_bytes()).hexdigest(), "seconds": time.perf_counter() - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    parser.add_argument("--reference", default="c03c527", help="the commit to compare with")
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-lenet-bytes-"))
    cache = work / "cache"
    reference = work / "reference"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(reference), args.reference], check=True, capture_output=True)
    rows = []
    try:
        for task in args.tasks:
            (work / task).mkdir()
            relative = work / task / "relative.yaml"
            relative.write_text(_relative_recipe(task))
            before = compress(reference / "src", task, "deep-compression", work / task / "before.sqz", args.data_dir, cache)
            same = compress(ROOT / "src", task, str(relative), work / task / "relative.sqz", args.data_dir, cache)
            now = compress(ROOT / "src", task, "deep-compression", work / task / "auto.sqz", args.data_dir, cache)
            print(task, before, same, now, flush=True)
            identical = "yes" if same["sha"] == before["sha"] else "no"
            rows.append(
                [
                    task,
                    f"{before['bytes']:,} ({100 * before['accuracy']:.2f}%)",
                    f"{same['bytes']:,} ({100 * same['accuracy']:.2f}%)",
                    identical,
                    f"{now['bytes']:,} ({100 * now['accuracy']:.2f}%)",
                    f"{100 * (now['bytes'] - before['bytes']) / before['bytes']:+.1f}%",
                ]
            )
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(reference)], check=False, capture_output=True)
    text = "\n".join(
        [
            "## LeNet `deep-compression` containers against the reference commit (`benchmarks/bench_lenet_bytes.py`)",
            "",
            f"Measured on {machine()}. `squeezetune compress --recipe deep-compression --seed 0` on the MNIST protocol, every run "
            f"on the same cached dense baseline; `before` is commit {args.reference} run through its own entry point. "
            "`relative` is today's code with `encode.positions: relative` (the reference's only position coding); "
            "`auto` is today's default (per tensor, the smallest of relative indices, row run lengths and an adaptive bitmask). "
            "Accuracy is the decoded file's, on the 2,000 evaluation images.",
            "",
            markdown_table(["task", "before: bytes (accuracy)", "relative: bytes (accuracy)", "byte-identical (sha256)", "auto: bytes (accuracy)", "auto vs before"], rows),
        ]
    )
    write_section("lenet-bytes", text)
    print(text)


def _relative_recipe(task: str) -> str:
    """The built-in deep-compression recipe for ``task`` with relative-index positions, as YAML."""
    sys.path.insert(0, str(ROOT / "src"))
    from squeezetune.compression.recipes import load_recipe
    from squeezetune.tasks import get_task

    t = get_task(task)
    data = load_recipe("deep-compression", t.model, t.build_model()).to_dict()
    data["encode"]["positions"] = "relative"
    return json.dumps(data)  # JSON is YAML


if __name__ == "__main__":
    main()
