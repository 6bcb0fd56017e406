"""The ``squeezetune`` command line.

Every user error ends in one line on stderr (``error: ...``) and exit code 2, never a traceback.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
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


SeedOpt = typer.Option(0, "--seed", min=0, help="Random seed (an integer >= 0).")
SEED_HELP = "Seed of the dense baseline's training, k-means initialisation and the images refits sample (an integer >= 0); a fine-tune stage shuffles with its own seed (default 0)."


def _check_out(out: Path, suffix: str) -> Path:
    """Refuse, before any work, an output path that is misnamed or whose folder cannot take a file."""
    if out.suffix != suffix:
        raise SqueezeError(f"--out {str(out)!r} must end in {suffix}")
    if out.is_dir():
        raise SqueezeError(f"--out {str(out)!r} is a folder: expected a file name ending in {suffix}")
    folder = out.parent
    if not folder.is_dir():
        raise SqueezeError(f"--out directory {str(folder)!r} does not exist")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise SqueezeError(f"--out directory {str(folder)!r} cannot take a new file: {exc.strerror or exc}") from None
    return out


def _check_device(device: Optional[str]) -> None:
    if device is not None:
        from squeezetune.compression.finetune import pick_device

        pick_device(device)


@app.command("train")
def train_cmd(
    task: str = TaskOpt,
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the dense weights (.safetensors)."),
    data_dir: Optional[Path] = DataDirOpt,
    seed: int = SeedOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Train a task's dense baseline and write its weights."""
    from squeezetune.compression import evaluate, save_weights, train_dense
    from squeezetune.compression.baseline import chance_note
    from squeezetune.tasks import get_task

    t = get_task(task)
    _check_out(out, ".safetensors")
    _check_device(device)
    train_split, eval_split = t.splits(data_dir)
    model = train_dense(t, train_split, device=device, seed=seed, progress=_progress, eval_split=eval_split)
    save_weights(model, out, metadata={"task": t.name})
    accuracy = evaluate(model, eval_split, device=device)
    typer.echo(f"wrote {out}: accuracy {accuracy:.4f}")
    note = chance_note(accuracy, eval_split)
    if note:
        typer.echo(note, err=True)


@app.command("compress")
def compress_cmd(
    task: str = TaskOpt,
    recipe: str = typer.Option("deep-compression", "--recipe", "-r", help="deep-compression, max-compression, filter-pruning, channel-pruning, decomposition, data-free-merge, or a YAML recipe file."),
    out: Path = typer.Option(Path("model.sqz"), "--out", "-o", help="Container to write (.sqz); the report goes beside it."),
    data_dir: Optional[Path] = DataDirOpt,
    dense: Optional[Path] = typer.Option(None, "--dense", help="Dense weights (.safetensors); trained and cached if absent."),
    macs_target: Optional[float] = typer.Option(None, "--macs-target", help="Fraction of dense MACs to keep, in (0, 1] (structured and decomposition recipes; default 0.5)."),
    allocation: Optional[str] = typer.Option(None, "--allocation", help="How --macs-target is spread over layers: uniform or sensitivity (structured), uniform or energy (decompose)."),
    cost: Optional[str] = typer.Option(
        None, "--cost", help="What --macs-target is a fraction of: macs (default) or latency (the dense model's predicted latency, each layer timed on this machine and cached)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help=SEED_HELP),
    device: Optional[str] = DeviceOpt,
    latency_budget: Optional[float] = typer.Option(
        None, "--latency-budget", help="Seconds for timing the dense and the compressed model (default 4; past it only the 6 rounds a 95% interval needs still run)."
    ),
    latency_threads: Optional[int] = typer.Option(None, "--latency-threads", help="CPU threads while timing (default 1); the report states it."),
) -> None:
    """Compress a task's model with a recipe; write F.sqz and F.report.json."""
    from squeezetune.compression import compress, load_recipe, report_path
    from squeezetune.compression.latency import LatencyConfig
    from squeezetune.compression.report import format_stages, format_summary, format_tensors
    from squeezetune.tasks import get_task

    t = get_task(task)
    _check_out(out, ".sqz")
    _check_device(device)
    if allocation is not None and allocation not in ("uniform", "sensitivity", "energy"):
        raise SqueezeError(f"--allocation {allocation!r}: expected uniform or sensitivity (structured pruning), or uniform or energy (decomposition)")
    timing = LatencyConfig(**{k: v for k, v in (("budget_s", latency_budget), ("threads", latency_threads)) if v is not None})
    loaded = load_recipe(recipe, t.model, t.build_model(), macs_target=macs_target, allocation=allocation, cost=cost)
    splits = t.splits(data_dir, check_train=not (loaded.data_free and dense is not None))  # read only to train a baseline
    report = compress(t, loaded, out=out, splits=splits, dense=dense, device=device, seed=seed, progress=_progress, latency=timing)
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
    for t in info.tensors:  # a tied tensor's stored key, whatever the task: the file itself says so
        if t.tied_to:
            reasons[t.tied_to] = f"tied to {t.key}, stored once"
    typer.echo(f"{container}: task {info.task}, {container.stat().st_size:,} bytes, {len(sections)} sections")
    width = max([len(t.key) for t in info.tensors] + [14])
    typer.echo(f"{'tensor':<{width}} {'shape':<16} {'entries':>8} {'clusters':>8} {'idx bits':>8} {'positions':<9} {'order':<14} {'bytes':>8}")
    for t in info.tensors:
        shape = "x".join(map(str, t.shape))
        if t.coded:
            typer.echo(f"{t.key:<{width}} {shape:<16} {t.entries:>8,} {t.clusters or '-':>8} {t.index_bits or '-':>8} {t.positions or '-':<9} {t.order:<14} {t.bytes:>8,}")
        elif t.tied_to:
            typer.echo(f"{t.key:<{width}} {shape:<16} tied: stored once, as {t.tied_to}")
        else:
            typer.echo(f"{t.key:<{width}} {shape:<16} raw {t.dtype}: {reasons.get(t.key, 'not pruned or shared by the recipe')}")
    typer.echo(f"{'(raw section)':<{width}} {'':<68} {info.raw_bytes:>8,}")
    typer.echo(f"{'(meta)':<{width}} {'':<68} {info.meta_bytes:>8,}")


@app.command("evaluate")
def evaluate_cmd(
    container: Path = typer.Argument(..., help="A .sqz container."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task (default: the one recorded in the file)."),
    data_dir: Optional[Path] = DataDirOpt,
    device: Optional[str] = DeviceOpt,
) -> None:
    """Decode a container and print its model's accuracy."""
    from squeezetune.compression import decode_file
    from squeezetune.compression.coding import codec
    from squeezetune.compression.coding.container import read_container
    from squeezetune.compression.finetune import evaluate
    from squeezetune.tasks import get_task

    _check_device(device)
    made_for = codec.read_meta(read_container(container))["task"]
    t = get_task(task) if task else None
    model = decode_file(container, task=t)
    if t is None:
        t = get_task(made_for)
    elif t.name != made_for:
        typer.echo(f"note: {container} was made for task {made_for!r}; measuring it on {t.name!r}", err=True)
    _, eval_split = t.splits(data_dir, check_train=False)
    typer.echo(f"{container}: accuracy {evaluate(model, eval_split, device=device):.4f} on {len(eval_split)} {t.name} {'images' if eval_split.x.dim() >= 4 else 'examples'}")


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
    if "search" in _command_names():  # main() ran before in this process
        return
    try:
        from squeezetune.search.commands import register
    except ImportError:
        return
    register(app)


EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
"""Exit codes: done; a search that completed no trial (or an internal error); bad input; interrupted."""


def main(argv: list[str] | None = None) -> int:
    """Console entry point, and the CLI's one error boundary.

    Whatever a command or the argument parser raises ends here as one line on stderr and an exit
    code: bad input (a :class:`SqueezeError`, a parser error of whichever click the installed
    typer uses, an OS error such as a read-only folder) ``error: ...`` and 2; Ctrl-C 130; anything
    else ``error: internal error ...`` and 1 (``SQUEEZETUNE_DEBUG=1`` shows the traceback, and that
    of the exception behind a :class:`SqueezeError` raised from one, such as a user's loader's).
    """
    _register_optional()
    try:
        code = app(args=argv, prog_name="squeezetune", standalone_mode=False)
    except SqueezeError as exc:
        if os.environ.get("SQUEEZETUNE_DEBUG") and exc.__cause__ is not None:  # e.g. the user's load_data raised: show where
            traceback.print_exception(exc.__cause__)
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        code = EXIT_INTERRUPTED
    except Exception as exc:
        return _fail_unexpected(exc, sys.argv[1:] if argv is None else list(argv))
    code = code if isinstance(code, int) and not isinstance(code, bool) else EXIT_OK
    if code == EXIT_INTERRUPTED:
        typer.echo("interrupted", err=True)
    return code


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> int:
    typer.echo(f"error: {' '.join(message.split())}", err=True)
    return code


def _fail_unexpected(exc: Exception, argv: list[str]) -> int:
    """An exception that is not a :class:`SqueezeError`: a parser error, Ctrl-C in a prompt, an OS error, or a bug."""
    usage = _parser_error(exc, argv)
    if usage is not None:
        return _fail(usage)
    if type(exc).__name__ == "Abort" and type(exc).__module__.split(".")[0] in ("click", "typer"):
        typer.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return _fail(f"{exc.strerror}{where}")
    import os

    if os.environ.get("SQUEEZETUNE_DEBUG"):
        raise exc
    return _fail(f"internal error {type(exc).__name__}: {exc} (SQUEEZETUNE_DEBUG=1 shows the traceback)", EXIT_FAILED)


def _parser_error(exc: Exception, argv: list[str]) -> str | None:
    """The one-line message of a command-line parser error, else ``None``.

    typer 0.29 vendors click as ``typer._click``, older typers raise ``click``'s own exceptions;
    both are recognised by what they are (an exception from click or typer with an integer
    ``exit_code`` and ``format_message()``), not by the module they come from.
    """
    if type(exc).__module__.split(".")[0] not in ("click", "typer"):
        return None
    if not isinstance(getattr(exc, "exit_code", None), int) or not callable(getattr(exc, "format_message", None)):
        return None
    ctx = getattr(exc, "ctx", None)
    path = getattr(ctx, "command_path", None) or "squeezetune"
    if type(exc).__name__ == "NoArgsIsHelpError":  # bare ``squeezetune``: show the help, then say what is missing
        text = exc.format_message()
        if text.strip():
            typer.echo(text)
        return f"missing command: expected one of {', '.join(_command_names())} (squeezetune --help lists them)"
    given = _given_value(argv, getattr(getattr(exc, "param", None), "opts", None) or [])
    return f"{exc.format_message()}{f' (got {given!r})' if given is not None else ''} (see {path} --help)"


def _given_value(argv: list[str], opts: list[str]) -> str | None:
    """The value the command line gave option ``opts`` (``--trials three`` or ``--trials=three``)."""
    for i, arg in enumerate(argv):
        for opt in opts:
            if arg == opt and i + 1 < len(argv):
                return argv[i + 1]
            if opt.startswith("--") and arg.startswith(opt + "="):
                return arg[len(opt) + 1 :]
    return None


def _command_names() -> list[str]:
    return [c.name for c in app.registered_commands if c.name]


if __name__ == "__main__":
    sys.exit(main())
