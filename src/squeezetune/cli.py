"""The ``squeezetune`` command line.

Every user error ends in one line on stderr (``error: ...``) and exit code 2, never a traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Optional

import typer

from squeezetune.errors import SqueezeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Make trained PyTorch models small and fast, and search for the best way to do it.",
)

TaskOpt = typer.Option("lenet300-digits", "--task", "-t", help="Built-in task name or module:factory.")
DataDirOpt = typer.Option(None, "--data-dir", "-d", help="MNIST raw folder (idx files) for *-mnist tasks.")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ... (default: CUDA when present).")


def _progress(message: str, _start: list[float] = [time.perf_counter()]) -> None:
    typer.echo(f"[{time.perf_counter() - _start[0]:7.1f}s] {message}", err=True)


def _check_out(out: Path, suffix: str) -> Path:
    if out.suffix != suffix:
        raise SqueezeError(f"--out {str(out)!r} must end in {suffix}")
    if out.parent and not out.parent.exists():
        raise SqueezeError(f"--out directory {str(out.parent)!r} does not exist")
    return out


@app.command("train")
def train_cmd(
    task: str = TaskOpt,
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the dense weights (.safetensors)."),
    data_dir: Optional[Path] = DataDirOpt,
    seed: int = typer.Option(0, help="Random seed."),
    device: Optional[str] = DeviceOpt,
) -> None:
    """Train a task's dense baseline and write its weights."""
    from squeezetune.compression.finetune import evaluate
    from squeezetune.compression.pipeline import save_weights, train_dense
    from squeezetune.tasks import get_task

    t = get_task(task)
    _check_out(out, ".safetensors")
    train_split, eval_split = _load(t, data_dir)
    model = train_dense(t, train_split, device=device, seed=seed, progress=_progress)
    save_weights(model, out, metadata={"task": t.name})
    typer.echo(f"wrote {out}: accuracy {evaluate(model, eval_split, device=device):.4f}")


def _load(task, data_dir: Optional[Path]):
    if task.needs_data_dir and data_dir is None:
        raise SqueezeError(f"task {task.name!r} needs --data-dir: expected a folder with MNIST idx files")
    return task.load_data(data_dir)


@app.command("compress")
def compress_cmd(
    task: str = TaskOpt,
    recipe: str = typer.Option(
        "deep-compression", "--recipe", "-r", help="deep-compression, filter-pruning, channel-pruning, or a YAML recipe file."
    ),
    out: Path = typer.Option(Path("model.sqz"), "--out", "-o", help="Container to write (.sqz); the report goes beside it."),
    data_dir: Optional[Path] = DataDirOpt,
    dense: Optional[Path] = typer.Option(None, "--dense", help="Dense weights (.safetensors); trained and cached if absent."),
    macs_target: Optional[float] = typer.Option(
        None, "--macs-target", help="Fraction of dense MACs to keep, in (0, 1] (structured recipes; default 0.5)."
    ),
    allocation: Optional[str] = typer.Option(
        None, "--allocation", help="Per-layer channel counts for --macs-target: uniform or sensitivity."
    ),
    seed: int = typer.Option(0, help="Random seed."),
    device: Optional[str] = DeviceOpt,
) -> None:
    """Compress a task's model with a recipe; write F.sqz and F.report.json."""
    from squeezetune.compression.pipeline import compress, prunable_layers, report_path
    from squeezetune.compression.recipes import load_recipe
    from squeezetune.tasks import get_task

    t = get_task(task)
    _check_out(out, ".sqz")
    if allocation is not None and allocation not in ("uniform", "sensitivity"):
        raise SqueezeError(f"--allocation {allocation!r}: expected uniform or sensitivity")
    loaded = load_recipe(recipe, t.model, prunable_layers(t.build_model()), macs_target=macs_target, allocation=allocation)
    splits = _load(t, data_dir)
    report = compress(t, loaded, out=out, splits=splits, dense=dense, device=device, seed=seed, progress=_progress)
    typer.echo(format_stages(report))
    typer.echo(format_layers(report))
    typer.echo(
        f"\n{report['task']}: accuracy {report['dense_accuracy']:.4f} -> {report['accuracy']:.4f}, "
        f"{report['dense_bytes']:,} -> {report['compressed_bytes']:,} bytes ({report['ratio']:.1f}x)\n"
        f"params {report['dense_params']:,} -> {report['params']:,}, MACs {report['dense_macs']:,} -> {report['macs']:,}, "
        f"CPU latency b1 {report['dense_latency_ms_b1']:.2f} -> {report['latency_ms_b1']:.2f} ms, "
        f"b64 {report['dense_latency_ms_b64']:.2f} -> {report['latency_ms_b64']:.2f} ms\n"
        f"wrote {out} and {report_path(out)}"
    )


def format_stages(report: dict) -> str:
    rows = [f"{'stage':<20} {'accuracy':>9} {'bytes':>11} {'ratio':>7} {'seconds':>8}"]
    for s in report["stages"]:
        rows.append(f"{s['stage']:<20} {s['accuracy']:>9.4f} {s['bytes']:>11,} {report['dense_bytes'] / s['bytes']:>6.1f}x {s['seconds']:>8.1f}")
    return "\n".join(rows)


def format_layers(report: dict) -> str:
    rows = [f"{'layer':<14} {'weights':>9} {'kept':>8} {'kept%':>6} {'clusters':>8} {'idx bits':>8} {'fillers':>7} {'bytes':>8}  streams (coded/entropy bytes)"]
    for layer in report["layers"]:
        streams = ", ".join(
            f"{k}: {v['coding'] + '/' if 'coding' in v else ''}{v['coder']} {v['total_bytes']}/{v['entropy_bits'] / 8:.0f}" for k, v in layer.get("streams", {}).items()
        )
        rows.append(
            f"{layer['name']:<14} {layer['weights']:>9,} {layer['kept']:>8,} {100 * layer['kept'] / layer['weights']:>5.1f}% "
            f"{layer['clusters'] or '-':>8} {layer['index_bits'] or '-':>8} {layer['fillers']:>7} {layer['coded_bytes']:>8,}  {streams}"
        )
    return "\n".join(rows)


@app.command("inspect")
def inspect_cmd(container: Path = typer.Argument(..., help="A .sqz container.")) -> None:
    """Print a container's per-layer table."""
    from squeezetune.compression.coding import codec
    from squeezetune.compression.coding.container import read_container

    sections = read_container(container)
    meta = codec.read_meta(sections)
    typer.echo(f"{container}: task {meta['task']}, {container.stat().st_size:,} bytes, {len(sections)} sections")
    typer.echo(f"{'layer':<14} {'shape':<16} {'entries':>8} {'clusters':>8} {'idx bits':>8} {'order':<14} {'bytes':>8}")
    for m in meta["layers"]:
        i = m["i"]
        size = sum(len(sections.get(f"{i}{s}", b"")) for s in "pwc")
        shape = "x".join(map(str, m["s"]))
        typer.echo(
            f"{m['n']:<14} {shape:<16} {m['e']:>8,} {m['k'] or '-':>8} {m['b'] if 'cp' in m else '-':>8} "
            f"{'inputs-first' if m['o'] else 'outputs-first':<14} {size:>8,}"
        )
    typer.echo(f"{'(raw tensors)':<14} {len(meta['rest'])} tensors {len(sections['r']):>39,}")
    typer.echo(f"{'(meta)':<14} {'':<48} {len(sections['m']):>8,}")


@app.command("evaluate")
def evaluate_cmd(
    container: Path = typer.Argument(..., help="A .sqz container."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task (default: the one recorded in the file)."),
    data_dir: Optional[Path] = DataDirOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Decode a container and print its model's accuracy."""
    from squeezetune.compression.finetune import evaluate
    from squeezetune.compression.pipeline import decode_file
    from squeezetune.tasks import get_task

    t = get_task(task) if task else None
    model = decode_file(container, task=t)
    if t is None:
        from squeezetune.compression.coding import codec
        from squeezetune.compression.coding.container import read_container

        t = get_task(codec.read_meta(read_container(container))["task"])
    _, eval_split = _load(t, data_dir)
    typer.echo(f"{container}: accuracy {evaluate(model, eval_split, device=device):.4f} on {len(eval_split)} {t.name} images")


@app.command("decode")
def decode_cmd(
    container: Path = typer.Argument(..., help="A .sqz container."),
    out: Path = typer.Option(..., "--out", "-o", help="Dense weights to write (.safetensors)."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task (default: the one recorded in the file)."),
) -> None:
    """Decode a container into dense safetensors weights."""
    from squeezetune.compression.pipeline import decode_file, save_weights
    from squeezetune.tasks import get_task

    _check_out(out, ".safetensors")
    model = decode_file(container, task=get_task(task) if task else None)
    save_weights(model, out)
    typer.echo(f"wrote {out}")


def _register_optional() -> None:
    try:
        from squeezetune.search.commands import register
    except ImportError:
        return
    register(app)


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the CLI, turning user errors into one line and exit code 2."""
    _register_optional()
    try:
        app(args=argv, standalone_mode=False)
    except SqueezeError as exc:
        typer.echo(f"error: {exc}", err=True)
        return 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            typer.echo("aborted", err=True)
            return 1
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
