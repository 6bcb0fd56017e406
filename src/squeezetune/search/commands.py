"""The ``search``, ``pareto`` and ``export`` commands, added to the CLI by :func:`register`.

Heavy modules (Ray, Optuna, MLflow) are imported inside the commands, so ``squeezetune --help``
stays fast.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from squeezetune.errors import SqueezeError

TrackingOpt = typer.Option(None, "--tracking-uri", help="MLflow store: sqlite:///path/mlflow.db or http://host:5000 (default: sqlite:///<cwd>/mlflow.db).")
ExperimentOpt = typer.Option("squeezetune", "--experiment", help="MLflow experiment holding the search.")
NameOpt = typer.Option(..., "--name", "-n", help="The search's name.")


class NoTrialCompleted(SqueezeError):
    """A search ran to its end and every trial failed: exit code 1, not 2 (the input may be fine)."""

    exit_code = 1


def _progress(message: str, _start: list[float] = [time.perf_counter()]) -> None:
    typer.echo(f"[{time.perf_counter() - _start[0]:7.1f}s] {message}", err=True)


def search_cmd(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Search config (YAML); defaults apply without one."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Built-in task name or module:factory (default lenet300-digits)."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", "-d", help="MNIST raw folder for *-mnist tasks."),
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="Trials to finish, failed ones included (default 24)."),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="Minutes after which no trial starts (those running finish); the search ends then even short of --trials."),
    tracking_uri: Optional[str] = TrackingOpt,
    name: Optional[str] = typer.Option(None, "--name", "-n", help="The search's name (default: search-<date>-<time>)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="tpe (default), nsga2, gp or random."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Seed of the sampler and of every trial's pipeline (default 0)."),
    resume: Optional[str] = typer.Option(None, "--resume", help="Continue the interrupted search NAME to its requested trials (or to --trials)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster: auto, host:port or ray://host:port; local forces a local Ray (default: $RAY_ADDRESS, else local)."),
    cpus: Optional[float] = typer.Option(None, "--cpus-per-trial", min=0, help="CPUs per trial."),
    gpus: Optional[float] = typer.Option(None, "--gpus-per-trial", min=0, help="GPUs per trial (fractions allowed, e.g. 0.25)."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", min=1, help="Trials running at once."),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="MLflow experiment (default squeezetune)."),
    max_drop: Optional[float] = typer.Option(
        None, "--max-drop", help="Constraint: lose at most this many accuracy points against the dense model (0.2 = a fifth of a point); as constraints.max_drop."
    ),
) -> None:
    """Search compression recipes: maximise accuracy, minimise container bytes (Ray Tune + Optuna + MLflow)."""
    from squeezetune.search.config import SearchConfig
    from squeezetune.search.present import table
    from squeezetune.search.runner import load_saved_config, run_search
    from squeezetune.search.tracking import probe, resolve_tracking_uri, ui_command

    if resume is not None:
        fixed = (("--config", config), ("--task", task), ("--name", name), ("--sampler", sampler), ("--seed", seed), ("--max-drop", max_drop))
        clashing = [flag for flag, v in fixed if v is not None]
        if clashing:
            raise SqueezeError(
                f"--resume continues the saved config: {clashing[0]} cannot be changed "
                "(only --trials, --time-budget, --tracking-uri, --ray-address, --data-dir, --cpus-per-trial, --gpus-per-trial, --max-concurrent)"
            )
        uri = resolve_tracking_uri(tracking_uri)
        probe(uri)
        cfg = load_saved_config(uri, experiment or "squeezetune", resume)
    else:
        cfg = SearchConfig.from_yaml(config) if config is not None else SearchConfig()
    if max_drop is not None:
        cfg = cfg.replace(constraints={**cfg.constraints.to_dict(), "max_drop": max_drop})
    resources = None
    if cpus is not None or gpus is not None:
        resources = {"cpus": cpus if cpus is not None else cfg.resources.cpus, "gpus": gpus if gpus is not None else cfg.resources.gpus}
    cfg = cfg.replace(
        task=task,
        data_dir=str(data_dir) if data_dir is not None else None,
        trials=trials,
        time_budget=time_budget,
        tracking_uri=tracking_uri,
        name=name,
        sampler=sampler,
        seed=seed,
        ray_address=ray_address,
        resources=resources,
        max_concurrent=max_concurrent,
        experiment=experiment,
    )
    outcome = run_search(cfg, resume=resume is not None, progress=_progress)
    n = outcome.counts
    typer.echo(f"\nsearch {outcome.name!r}: {n['complete']} trials ran the full schedule, {n['stopped']} were stopped early, {n['failed']} failed, of {outcome.trials}; {outcome.seconds:.0f} s")
    size = len(outcome.front)
    typer.echo(f"Pareto front ({size} point{'s' * (size != 1)}; selected on validation accuracy, with the accuracy on the evaluation images no selection saw and the real container bytes):")
    typer.echo(table(outcome.front, outcome.baseline))
    if not outcome.finished:
        typer.echo(f"\nthe search stopped before all trials finished; continue it with: squeezetune search --resume {outcome.name}")
    elif outcome.out_of_time:
        done = n["complete"] + n["stopped"] + n["failed"]
        typer.echo(f"\nthe time budget ended the search after {done} of {outcome.trials} trials; run more with: squeezetune search --resume {outcome.name} --time-budget MINUTES")
    typer.echo(f"\nMLflow: parent run {outcome.parent_run_id} in {outcome.tracking_uri}")
    typer.echo(ui_command(outcome.tracking_uri, outcome.experiment_id))
    if not outcome.finished:
        raise typer.Exit(130)
    if n["complete"] == 0:
        first = outcome.errors[0] if outcome.errors else "no error recorded"
        raise NoTrialCompleted(f"no trial of search {outcome.name!r} completed ({n['failed']} failed; first error: {first})")


def pareto_cmd(
    name: str = NameOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    experiment: str = ExperimentOpt,
    all_points: bool = typer.Option(False, "--all", help="Also list the dominated trials, those outside the search's constraints and those MO-ASHA stopped at a rung."),
) -> None:
    """Print a search's Pareto front (read from MLflow); the epochs column is the fidelity each trial reached."""
    from squeezetune.search.export import search_front, search_trials
    from squeezetune.search.pareto import pareto_front
    from squeezetune.search.present import table
    from squeezetune.search.tracking import probe, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    probe(uri)
    if all_points:
        points, stopped, baseline = search_trials(uri, experiment, name)
        front, stopped = pareto_front(points, minimise=baseline.also_minimised), sorted(stopped, key=lambda p: p.bytes)
    else:
        (points, front, baseline), stopped = search_front(uri, experiment, name), []
    also = f", {len(stopped)} stopped at a rung" if stopped else ""
    typer.echo(f"search {name!r}: {len(points)} trials ran the full schedule{also}, {len(front)} on the front (selected on validation accuracy; accuracy and drop on the evaluation images)")
    typer.echo(table(front, baseline))
    if all_points:
        rest = sorted((p for p in points if p not in front), key=lambda p: p.bytes)
        for title, group in (
            ("dominated", [p for p in rest if p.feasible]),
            ("infeasible (outside the search's constraints)", [p for p in rest if not p.feasible]),
            ("stopped by MO-ASHA (figures at the last rung reached, before the rest of the schedule; no file to export)", stopped),
        ):
            if not group:
                continue
            typer.echo(f"\n{title}:")
            typer.echo(table(group, baseline))


def export_cmd(
    name: str = NameOpt,
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write the exported model to (written whole, or not at all)."),
    max_bytes: Optional[int] = typer.Option(None, "--max-bytes", min=1, help="Most accurate front point within this many container bytes."),
    max_drop: Optional[float] = typer.Option(None, "--max-drop", help="Smallest front point losing at most this many points against dense (0.5 = half a point), alone and with trials near its size."),
    trial: Optional[int] = typer.Option(None, "--trial", min=0, help="This trial number (as pareto lists it)."),
    max_latency_ms: Optional[float] = typer.Option(
        None,
        "--max-latency-ms",
        help="With --max-bytes or --max-drop: pick among the trials whose decoded model ran within this many ms, by the latency the search timed (its third objective's or constraint's).",
    ),
    tracking_uri: Optional[str] = TrackingOpt,
    experiment: str = ExperimentOpt,
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", "-d", help="Data for re-measuring (default: the search's)."),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="Registered model name (default squeezetune-<search>)."),
    alias: str = typer.Option("exported", "--alias", help="Alias given to the registered model version."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it is a folder that is not empty."),
) -> None:
    """Export one trial: container, safetensors, torch.export program, ONNX, MLflow registered model."""
    from squeezetune.search.export import export_trial
    from squeezetune.search.tracking import probe, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    probe(uri)
    picked = {"trial": trial, "max_bytes": max_bytes, "max_drop": max_drop, "max_latency_ms": max_latency_ms}
    result = export_trial(uri, experiment, name, out, **picked, data_dir=data_dir, model_name=model_name, alias=alias, force=force, progress=_progress)
    p = result.point
    if "eval_accuracy" in p.extra:
        typer.echo(f"trial {p.trial} of {name!r}: {p.bytes:,} bytes, accuracy in the search {p.extra['eval_accuracy']:.4f} on the evaluation images ({p.accuracy:.4f} on validation)")
    else:
        typer.echo(f"trial {p.trial} of {name!r}: {p.bytes:,} bytes, accuracy in the search {p.accuracy:.4f}")
    for kind, path in result.files.items():
        extra = f"  accuracy {result.accuracy[kind]:.4f} (re-measured)" if kind in result.accuracy else ""
        typer.echo(f"  {kind:<13} {path}{extra}")
    typer.echo(f"  mlflow model  {result.model_uri}  registered as {result.registered} (export run {result.run_id})")


def register(app: typer.Typer) -> None:
    """Add ``search``, ``pareto`` and ``export`` to the ``squeezetune`` app."""
    app.command("search")(search_cmd)
    app.command("pareto")(pareto_cmd)
    app.command("export")(export_cmd)
