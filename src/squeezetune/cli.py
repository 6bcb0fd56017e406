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
    from squeezetune.compression import evaluate, save_weights, train_dense
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
    from squeezetune.compression import compress, load_recipe, report_path
    from squeezetune.compression.report import format_stages, format_summary, format_tensors
    from squeezetune.tasks import get_task

    t = get_task(task)
    _check_out(out, ".sqz")
    if allocation is not None and allocation not in ("uniform", "sensitivity"):
        raise SqueezeError(f"--allocation {allocation!r}: expected uniform or sensitivity")
    splits = _load(t, data_dir)
    loaded = load_recipe(recipe, t.model, t.build_model(), macs_target=macs_target, allocation=allocation)
    report = compress(t, loaded, out=out, splits=splits, dense=dense, device=device, seed=seed, progress=_progress)
    typer.echo(format_stages(report))
    typer.echo(format_tensors(report.tensors))
    typer.echo("\n" + format_summary(report, f"{out} and {report_path(out)}"))


@app.command("inspect")
def inspect_cmd(container: Path = typer.Argument(..., help="A .sqz container.")) -> None:
    """Print what a container holds, tensor by tensor."""
    from squeezetune.compression.coding import codec
    from squeezetune.compression.coding.container import read_container
    from squeezetune.compression.tensors import kept_raw
    from squeezetune.tasks import builtin_task_names, get_task

    sections = read_container(container)
    info = codec.describe(sections)
    reasons: dict[str, str] = {}
    if info.task in builtin_task_names():  # why each raw tensor was kept raw, from the task's model
        reasons = kept_raw(get_task(info.task).build_model())
    typer.echo(f"{container}: task {info.task}, {container.stat().st_size:,} bytes, {len(sections)} sections")
    width = max([len(t.key) for t in info.tensors] + [14])
    typer.echo(f"{'tensor':<{width}} {'shape':<16} {'entries':>8} {'clusters':>8} {'idx bits':>8} {'order':<14} {'bytes':>8}")
    for t in info.tensors:
        shape = "x".join(map(str, t.shape))
        if t.coded:
            typer.echo(f"{t.key:<{width}} {shape:<16} {t.entries:>8,} {t.clusters or '-':>8} {t.index_bits or '-':>8} {t.order:<14} {t.bytes:>8,}")
        else:
            typer.echo(f"{t.key:<{width}} {shape:<16} raw {t.dtype}: {reasons.get(t.key, 'not pruned or shared by the recipe')}")
    typer.echo(f"{'(raw section)':<{width}} {'':<58} {info.raw_bytes:>8,}")
    typer.echo(f"{'(meta)':<{width}} {'':<58} {info.meta_bytes:>8,}")


@app.command("evaluate")
def evaluate_cmd(
    container: Path = typer.Argument(..., help="A .sqz container."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task (default: the one recorded in the file)."),
    data_dir: Optional[Path] = DataDirOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Decode a container and print its model's accuracy."""
    from squeezetune.compression import decode_file
    from squeezetune.compression.finetune import evaluate
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
    from squeezetune.compression import decode_file, save_weights
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
