"""Exporting one trial of a search: container, dense weights, torch.export program, ONNX, MLflow model.

A trial is picked from the search's child runs in MLflow (so any tracking store works, no Optuna
storage needed): by number (``trial``), as the most accurate front point within ``max_bytes``, or as
the smallest front point losing at most ``max_drop`` accuracy points, by its own figure and, on
average, with the finished trials nearest to it in size (:func:`pick`). ``max_latency_ms`` narrows
the last two to the trials whose decoded model ran within it (:func:`within_latency`), and the front
is taken over those. Its container is downloaded,
decoded, and written as

* ``model.sqz`` -- the container itself;
* ``model.safetensors`` -- the decoded model's weights as plain tensors (shrunk shapes where the trial shrank layers);
* ``model.pt2`` -- a ``torch.export`` program (batch dimension dynamic);
* ``model.onnx`` -- ONNX, opset :data:`ONNX_OPSET`, batch dimension dynamic;
* ``export.json`` -- what was exported: search, trial, runs, bytes, every re-measured accuracy;
* an ``mlflow.pytorch.log_model`` entry (pt2 serialization), registered under a model name with an
  alias. It is logged in an export run of its own (a child of the search's parent run, tagged
  ``squeezetune.role=export``); the trial's run is only read, so a failed export cannot change it.

Every written model is loaded back and its accuracy measured on the task's eval split. The folder
is written whole or not at all: the files go to a hidden folder beside ``out``, which is renamed to
``out`` once everything (MLflow included) succeeded. An ``out`` that exists and is not empty is
refused unless ``force`` is given; it is then replaced in one step.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from squeezetune._io import atomic_folder
from squeezetune.compression.report import OUTCOME
from squeezetune.errors import SqueezeError
from squeezetune.search import tracking
from squeezetune.search.pareto import Baseline, Point, pareto_front, point
from squeezetune.search.trial import OUTCOME_TAG
from squeezetune.spaces.constraints import LATENCIES, drop_points

ONNX_OPSET = 18
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def trial_points(c, exp_id: str, parent_id: str, *, stopped: bool = False) -> list[Point]:
    """One point per trial run that finished its full schedule (trial number from its tag); with
    ``stopped``, one per trial MO-ASHA stopped at a rung instead, with its figures there (a stopped
    trial wrote no file: it is listed, never exported). Each point's ``epoch`` is the epochs of the
    fidelity stage the trial reached (:func:`epochs_reached`)."""
    return _points(c, tracking.children(c, exp_id, parent_id), stopped=stopped)


def _points(c, runs, *, stopped: bool) -> list[Point]:
    out = []
    for run in runs:
        m = run.data.metrics
        wanted = run.data.tags.get(OUTCOME_TAG) == "stopped" if stopped else run.info.status == "FINISHED"
        if not wanted or not math.isfinite(m.get("accuracy", math.nan)) or "bytes" not in m:
            continue
        trial = int(run.data.tags.get(tracking.TRIAL_TAG, -1))
        outcome = {k: m[k] for k in OUTCOME if k in m}
        epoch = epochs_reached(c, run)
        if epoch is not None:
            outcome["epoch"] = epoch
        out.append(point(trial, outcome, run_id=run.info.run_id, feasible=m.get("feasible", 1.0) > 0))
    return out


def epochs_reached(c, run) -> int | None:
    """The epochs of the fidelity stage a trial's run reached: its ``epoch`` metric, or, for a run
    without one, the last step of its ``bytes`` history (a rung's figures are
    logged at its epoch, the final outcome at the full schedule's). ``None`` for a search without a
    fidelity, whose trials log their outcome at step 0."""
    epoch = run.data.metrics.get("epoch")
    if epoch is None:
        steps = [m.step for m in tracking.retry(lambda: c.get_metric_history(run.info.run_id, "bytes"))]
        epoch = max(steps, default=0)
    return int(epoch) if epoch and epoch > 0 else None


def baseline_of(parent) -> Baseline:
    """The dense figures a search's parent run holds, and the objectives it searched beyond accuracy and bytes."""
    m = parent.data.metrics
    objectives = parent.data.params.get("objectives", "accuracy,bytes").split(",")
    return Baseline(m.get("dense_accuracy", float("nan")), int(m.get("dense_bytes", 0)) or 1, m.get("dense_val_accuracy"), tuple(objectives[2:]))


def search_front(uri: str, experiment: str, name: str) -> tuple[list[Point], list[Point], Baseline]:
    """``(points, front, baseline)`` of a search read from MLflow."""
    c, exp_id, parent = tracking.find_search(uri, experiment, name)
    points = trial_points(c, exp_id, parent.info.run_id)
    baseline = baseline_of(parent)
    return points, pareto_front(points, minimise=baseline.also_minimised), baseline


def search_trials(uri: str, experiment: str, name: str) -> tuple[list[Point], list[Point], Baseline]:
    """``(finished, stopped, baseline)`` of a search read from MLflow in one listing of its trials:
    those that ran the full schedule, and those MO-ASHA stopped at a rung, with their figures there."""
    c, exp_id, parent = tracking.find_search(uri, experiment, name)
    runs = tracking.children(c, exp_id, parent.info.run_id)
    return _points(c, runs, stopped=False), _points(c, runs, stopped=True), baseline_of(parent)


def beyond_the_limit(chosen: Point, *, max_drop: float, dense_eval_accuracy: float, validation_images: int, evaluation_images: int) -> str | None:
    """A note when the point picked within ``max_drop`` on validation loses more on the evaluation images.

    ``export --max-drop`` picks the smallest file within the limit on the validation images; of
    many trials near the limit, that is also the one luckiest there, so its evaluation-image loss
    is often larger. The user is told, not silently handed a figure the search never promised.
    """
    if "eval_accuracy" not in chosen.extra:
        return None
    lost = drop_points(dense_eval_accuracy, chosen.extra["eval_accuracy"])
    if not math.isfinite(lost) or lost <= max_drop:
        return None
    return (
        f"note: trial {chosen.trial} is within --max-drop {max_drop:g} on the {validation_images:,} validation images it was picked on, but loses {lost:.4g} points "
        f"on the {evaluation_images:,} evaluation images no selection saw (the smallest file within a limit on one split is also the luckiest on it); "
        "a smaller --max-drop, or a --trial from `squeezetune pareto`, trades size for margin"
    )


NEIGHBOURHOOD = 3
"""``--max-drop`` also judges a front point by the mean drop of the finished trials nearest to it in
size, itself included (:func:`neighbourhood_drop`)."""


def neighbourhood_drop(chosen: Point, points: list[Point], dense_accuracy: float, k: int = NEIGHBOURHOOD) -> float:
    """The mean accuracy drop (points, on the split the search selected on) of ``chosen`` and the
    ``k - 1`` other finished trials nearest to it in log bytes, within the limit or not.

    The smallest front point within a limit on one split is also the one luckiest there: with 1,000
    validation images a 0.2-point limit is two images, and a trial's drop there scatters by several
    tenths of a point. Trials of about the same size lose about the same, so their mean is a figure
    less flattered by that luck than the point's own (measured in BENCHMARKS.md, section
    ``export-selection``).
    """
    if chosen.bytes <= 0:
        return drop_points(dense_accuracy, chosen.accuracy)
    usable = (p for p in points if p.trial != chosen.trial and p.bytes > 0 and math.isfinite(p.accuracy))
    others = sorted(usable, key=lambda p: (abs(math.log(p.bytes / chosen.bytes)), p.trial))
    near = [chosen, *others[: k - 1]]
    return sum(drop_points(dense_accuracy, p.accuracy) for p in near) / len(near)


def pick(
    points: list[Point],
    front: list[Point],
    *,
    dense_accuracy: float,
    trial: int | None = None,
    max_bytes: int | None = None,
    max_drop: float | None = None,
    dense_eval_accuracy: float | None = None,
    narrowed: str = "",
) -> Point:
    """The trial to export; exactly one selector must be given.

    ``max_drop`` picks the smallest front point within the limit whose neighbourhood (it and the
    finished trials nearest in size, :func:`neighbourhood_drop`) is within it on average too; when
    no point's is, the smallest within the limit by its own figure (:func:`neighbourhood_note`
    says so). ``dense_accuracy`` is the dense model's on the split the points were selected on;
    ``dense_eval_accuracy``, when the search held out a validation split, its accuracy on the
    evaluation images (only for the message when no point is within ``max_drop``). ``narrowed`` says,
    in the messages, how ``front`` was narrowed (`` within --max-latency-ms 2 (latency_ms_b1)``).
    """
    check_selectors(trial=trial, max_bytes=max_bytes, max_drop=max_drop)
    if not points:
        raise SqueezeError("the search has no finished trial to export")
    if trial is not None:
        for p in points:
            if p.trial == trial:
                return p
        raise SqueezeError(f"--trial {trial} is not a finished trial of this search: expected one of {sorted(p.trial for p in points)}")
    if not front:
        raise SqueezeError("no finished trial of the search meets its constraints, so its front is empty: expected --trial N (`squeezetune pareto --all` lists them)")
    if max_bytes is not None:
        ok = [p for p in front if p.bytes <= max_bytes]
        if not ok:
            raise SqueezeError(f"--max-bytes {max_bytes:,}: no front point{narrowed} is that small; the smallest takes {min(p.bytes for p in front):,} bytes")
        return max(ok, key=lambda p: (p.accuracy, -p.bytes))
    ok = [p for p in front if drop_points(dense_accuracy, p.accuracy) <= max_drop]
    if not ok:
        best = max(front, key=lambda p: (p.accuracy, -p.bytes))
        where, held = "", ""
        if "eval_accuracy" in best.extra and dense_eval_accuracy is not None:
            where = " on the validation images the search selects on"
            held = f" there and {drop_points(dense_eval_accuracy, best.extra['eval_accuracy']):.2f} on the evaluation images"
        raise SqueezeError(
            f"--max-drop {max_drop}: no front point{narrowed} loses that little{where}; the most accurate, trial {best.trial} ({best.bytes:,} bytes), "
            f"loses {drop_points(dense_accuracy, best.accuracy):.2f} points{held}: expected a larger --max-drop, or --trial {best.trial}"
        )
    safe = [p for p in ok if neighbourhood_drop(p, points, dense_accuracy) <= max_drop]
    return min(safe or ok, key=lambda p: (p.bytes, -p.accuracy))


def select(
    points: list[Point],
    baseline: Baseline,
    *,
    trial: int | None = None,
    max_bytes: int | None = None,
    max_drop: float | None = None,
    max_latency_ms: float | None = None,
    latency: str | None = None,
    search: str = "",
) -> Point:
    """The trial ``export`` writes: :func:`pick` on the front of ``points``, or, with
    ``max_latency_ms``, on the front of the points within it by ``latency`` (the figure the search
    timed, :func:`searched_latency`; ``None`` refuses ``max_latency_ms``)."""
    check_selectors(trial=trial, max_bytes=max_bytes, max_drop=max_drop, max_latency_ms=max_latency_ms)
    candidates, narrowed = points, ""
    if max_latency_ms is not None:
        check_timed(max_latency_ms, latency, search)
        feasible = [p for p in points if p.feasible]  # the front holds nothing else
        if feasible:
            candidates = within_latency(feasible, max_latency_ms=max_latency_ms, figure=latency)
            narrowed = f" within --max-latency-ms {max_latency_ms:g} ({latency})"
    front = pareto_front(candidates, minimise=baseline.also_minimised)
    return pick(points, front, dense_accuracy=baseline.selected, trial=trial, max_bytes=max_bytes, max_drop=max_drop, dense_eval_accuracy=baseline.accuracy, narrowed=narrowed)


def neighbourhood_note(chosen: Point, points: list[Point], *, dense_accuracy: float, max_drop: float) -> str | None:
    """A note when ``chosen`` was picked by its own figure alone: no front point within ``max_drop``
    had a neighbourhood within it (``None`` otherwise)."""
    lost = neighbourhood_drop(chosen, points, dense_accuracy)
    if lost <= max_drop:
        return None
    return (
        f"note: no front point within --max-drop {max_drop:g} has trials of its size within it on average; trial {chosen.trial} is picked by its own figure, "
        f"and it and the trials nearest in size lose {lost:.2f} points on average, so its own may be luck"
    )


def searched_latency(objectives: Sequence[str], constraints) -> str | None:
    """The latency figure a search timed its trials by: its third objective's, else its
    ``max_latency_ms`` constraint's (``constraints.latency``); ``None`` when it timed none."""
    named = [o for o in objectives[2:] if o in LATENCIES]
    if named:
        return named[0]
    return constraints.latency if constraints.max_latency_ms is not None else None


def check_timed(max_latency_ms: float, latency: str | None, search: str) -> None:
    """Refuse ``max_latency_ms`` on a search that timed no trial (``latency`` is ``None``)."""
    if latency is None:
        raise SqueezeError(
            f"--max-latency-ms {max_latency_ms:g}: search {search!r} timed no trial (it has no latency objective and no max_latency_ms constraint): expected --max-bytes or --max-drop alone"
        )


def within_latency(points: list[Point], *, max_latency_ms: float, figure: str) -> list[Point]:
    """The points whose decoded model ran within ``max_latency_ms`` by ``figure`` (``latency_ms_b1``,
    say); a point without the figure is left out. Refused when none is left, naming the fastest.

    >>> pts = [Point(0, 0.97, 4000, extra={"latency_ms_b1": 2.0}), Point(1, 0.96, 5000, extra={"latency_ms_b1": 0.5})]
    >>> [p.trial for p in within_latency(pts, max_latency_ms=1.0, figure="latency_ms_b1")]
    [1]
    """
    fast = [p for p in points if p.extra.get(figure, math.inf) <= max_latency_ms]  # a NaN is never within
    if fast:
        return fast
    timed = [p for p in points if math.isfinite(p.extra.get(figure, math.nan))]
    if not timed:
        raise SqueezeError(f"--max-latency-ms {max_latency_ms:g}: no finished trial has a {figure} figure to compare")
    quickest = min(timed, key=lambda p: (p.extra[figure], p.bytes))
    raise SqueezeError(
        f"--max-latency-ms {max_latency_ms:g}: no finished trial ran that fast by {figure}; the fastest, trial {quickest.trial} ({quickest.bytes:,} bytes), "
        f"took {quickest.extra[figure]:.4g} ms: expected a larger --max-latency-ms"
    )


def check_selectors(*, trial: int | None, max_bytes: int | None, max_drop: float | None, max_latency_ms: float | None = None) -> None:
    """Exactly one of ``trial``, ``max_bytes``, ``max_drop``, each in its range; ``max_latency_ms``
    only beside ``max_bytes`` or ``max_drop``, which it narrows."""
    given = [k for k, v in (("--trial", trial), ("--max-bytes", max_bytes), ("--max-drop", max_drop)) if v is not None]
    if not given and max_latency_ms is not None:
        raise SqueezeError(f"--max-latency-ms {max_latency_ms:g} narrows --max-bytes or --max-drop: expected one of them beside it (or --trial alone)")
    if len(given) != 1:
        raise SqueezeError(f"give exactly one of --trial, --max-bytes, --max-drop; got {given or 'none'}")
    if max_latency_ms is not None:
        if trial is not None:
            raise SqueezeError(f"--max-latency-ms {max_latency_ms:g} narrows --max-bytes or --max-drop; --trial {trial} picks one trial whatever its latency: expected one or the other")
        if not (math.isfinite(max_latency_ms) and max_latency_ms > 0):
            raise SqueezeError(f"--max-latency-ms {max_latency_ms:g}: expected a number of milliseconds > 0")
    if max_drop is not None and not (math.isfinite(max_drop) and 0 <= max_drop <= 100):
        raise SqueezeError(f"--max-drop {max_drop}: expected accuracy points in [0, 100] (0.5 = half a point)")
    if max_bytes is not None and max_bytes < 1:
        raise SqueezeError(f"--max-bytes {max_bytes}: expected a number of bytes >= 1")
    if trial is not None and trial < 0:
        raise SqueezeError(f"--trial {trial}: expected a trial number >= 0")


@dataclass
class Exported:
    point: Point
    files: dict[str, Path]
    accuracy: dict[str, float]
    model_uri: str | None = None
    registered: str | None = None
    run_id: str | None = None
    """The export run the model is logged in."""
    notes: list[str] = field(default_factory=list)


EXPORT_ROLE = "export"
EXPORTED_TRIAL_TAG = "squeezetune.exported_trial"
EXPORTED_RUN_TAG = "squeezetune.exported_run"


def check_registry_names(model_name: str, alias: str) -> None:
    """Refuse, before any work, a registered model name or alias MLflow would reject (``/`` or ``:``
    in a name; the reserved aliases ``latest`` and ``v<number>``)."""
    from mlflow.exceptions import MlflowException

    try:
        from mlflow.utils.validation import _validate_model_alias_name, _validate_model_alias_name_reserved, _validate_model_name
    except ImportError:  # another MLflow: registering checks them, and the export is still all-or-nothing
        return
    for check, what, value in ((_validate_model_name, "--model-name", model_name), (_validate_model_alias_name, "--alias", alias), (_validate_model_alias_name_reserved, "--alias", alias)):
        try:
            check(value)
        except MlflowException as exc:
            raise SqueezeError(f"{what} {value!r} is refused by MLflow: {exc.message}") from None


def check_out_folder(out: Path, *, force: bool = False) -> None:
    """``out`` must be a new folder in an existing one, an empty folder, or (with ``force``) any folder."""
    if out.exists() and not out.is_dir():
        raise SqueezeError(f"--out {str(out)!r} is a file: expected a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SqueezeError(f"--out {str(out)!r} is a folder that is not empty: expected a new or empty folder, or --force to replace it")
    if not out.parent.is_dir():
        raise SqueezeError(f"--out {str(out)!r}: its folder {str(out.parent)!r} does not exist")
    try:
        tempfile.TemporaryDirectory(dir=out.parent).cleanup()
    except OSError as exc:
        raise SqueezeError(f"--out {str(out)!r}: cannot write in {str(out.parent)!r} ({exc.strerror or exc})") from None


def export_trial(
    uri: str,
    experiment: str,
    name: str,
    out: str | Path,
    *,
    trial: int | None = None,
    max_bytes: int | None = None,
    max_drop: float | None = None,
    max_latency_ms: float | None = None,
    data_dir: str | Path | None = None,
    model_name: str | None = None,
    alias: str = "exported",
    force: bool = False,
    progress: Progress = _quiet,
) -> Exported:
    """Write the chosen trial's model in every format to ``out`` and register it in MLflow."""
    from squeezetune.search.runner import load_saved_config
    from squeezetune.tasks import get_task, hold_out

    out = Path(out)
    check_selectors(trial=trial, max_bytes=max_bytes, max_drop=max_drop, max_latency_ms=max_latency_ms)
    registered = model_name if model_name is not None else f"squeezetune-{name}"
    check_registry_names(registered, alias)
    check_out_folder(out, force=force)
    c, exp_id, parent = tracking.find_search(uri, experiment, name)
    config = load_saved_config(uri, experiment, name)
    figure = searched_latency(config.objectives, config.constraints)
    if max_latency_ms is not None:
        check_timed(max_latency_ms, figure, name)  # before the data is read
    task = get_task(config.task)
    data_dir = data_dir if data_dir is not None else config.data_dir
    train, eval_split = task.splits(data_dir)
    points = trial_points(c, exp_id, parent.info.run_id)
    baseline = baseline_of(parent)
    selected_on, split = (hold_out(train, config.validation)[1], "validation") if baseline.val_accuracy is not None else (eval_split, "evaluation")
    one_image = 100.0 / max(1, len(selected_on))
    if max_drop is not None and 0 < max_drop < one_image:
        progress(
            f"note: --max-drop is in accuracy points on the {len(selected_on):,} {split} images the search selects on; {max_drop:g} points is less than one of them "
            f"({one_image:.3g} points), so only trials that lose nothing qualify"
        )
    chosen = select(points, baseline, trial=trial, max_bytes=max_bytes, max_drop=max_drop, max_latency_ms=max_latency_ms, latency=figure, search=name)
    held = chosen.extra.get("eval_accuracy", chosen.accuracy)
    speed = f", {chosen.extra[figure]:.4g} ms by {figure}" if max_latency_ms is not None and figure is not None else ""
    progress(f"exporting trial {chosen.trial} (run {chosen.run_id}): accuracy {held:.4f} on the evaluation images, {chosen.bytes:,} bytes{speed}")
    notes = []
    if max_drop is not None:
        note = neighbourhood_note(chosen, points, dense_accuracy=baseline.selected, max_drop=max_drop)
        if note:
            progress(note)
            notes.append(note)
    if max_drop is not None and split == "validation":
        note = beyond_the_limit(chosen, max_drop=max_drop, dense_eval_accuracy=baseline.accuracy, validation_images=len(selected_on), evaluation_images=len(eval_split))
        if note:
            progress(note)
            notes.append(note)

    with atomic_folder(out, replace=force) as staging:
        files, acc, model, example = _write_formats(c, chosen, task, eval_split, name, staging)
        run_id, model_uri = _log_export_run(uri, c, exp_id, parent.info.run_id, name, chosen, model, example, registered, alias)
        final = {k: out / v.name for k, v in files.items()}
        final["summary"] = out / "export.json"
        summary = {
            "search": name,
            "trial": chosen.trial,
            "run_id": chosen.run_id,
            "export_run_id": run_id,
            "task": task.name,
            "bytes": chosen.bytes,
            "val_accuracy_in_search": chosen.accuracy if "eval_accuracy" in chosen.extra else None,
            "accuracy_in_search": chosen.extra.get("eval_accuracy", chosen.accuracy),
            "accuracy": acc,
            "files": {k: str(v.absolute()) for k, v in final.items()},  # absolute: the summary is read from anywhere
            "mlflow_model": model_uri,
            "registered_model": f"models:/{registered}@{alias}",
            "onnx_opset": ONNX_OPSET,
        }
        if figure is not None and figure in chosen.extra:
            summary[f"{figure}_in_search"] = chosen.extra[figure]
        if max_latency_ms is not None:
            summary["max_latency_ms"] = max_latency_ms
        (staging / "export.json").write_text(json.dumps(summary, indent=2))
    return Exported(chosen, final, acc, model_uri, f"models:/{registered}@{alias}", run_id, notes)


def _write_formats(c, point: Point, task, eval_split, search: str, folder: Path):
    """Write container, safetensors, torch.export program and ONNX of ``point`` into ``folder``;
    returns the files, each one's re-measured accuracy, the decoded model and an example input."""
    import torch

    from squeezetune.compression import decode_file, evaluate, save_weights
    from squeezetune.tasks import example_input

    files: dict[str, Path] = {}
    acc: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="squeezetune-export-") as tmp:
        try:
            local = Path(c.download_artifacts(point.run_id, "model.sqz", tmp))
        except Exception as exc:
            raise SqueezeError(f"trial {point.trial} has no model.sqz artifact in run {point.run_id} ({type(exc).__name__})") from None
        files["container"] = folder / "model.sqz"
        files["container"].write_bytes(local.read_bytes())
    model = decode_file(files["container"], task=task).eval()
    acc["container"] = evaluate(model, eval_split)

    files["safetensors"] = folder / "model.safetensors"
    save_weights(model, files["safetensors"], metadata={"task": task.name, "search": search, "trial": str(point.trial)})

    one = example_input(task, eval_split)
    example = torch.cat([one, one])  # two items, so that the batch dimension is traced as dynamic
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    files["torch_export"] = folder / "model.pt2"
    torch.export.save(program, str(files["torch_export"]))
    acc["torch_export"] = _accuracy(torch.export.load(str(files["torch_export"])).module(), eval_split)

    files["onnx"] = folder / "model.onnx"
    _export_onnx(model, example, files["onnx"])
    acc["onnx"] = _onnx_accuracy(files["onnx"], eval_split)
    return files, acc, model, example


def _accuracy(module, split) -> float:
    import torch

    with torch.no_grad():
        logits = torch.cat([module(split.x[i : i + 1000]) for i in range(0, len(split), 1000)])
    return float((logits.argmax(1) == split.y).float().mean())


def _export_onnx(model, example, path: Path) -> None:
    import contextlib
    import io
    import logging
    import warnings

    import torch

    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=ONNX_OPSET, dynamic_shapes=({0: batch},), input_names=["x"], output_names=["logits"], external_data=False)


def _onnx_accuracy(path: Path, split) -> float:
    """Accuracy of the ONNX file, run by onnxruntime when installed, else by ONNX's reference evaluator."""
    import numpy as np
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    try:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        run = lambda x: sess.run(None, {"x": x})[0]  # noqa: E731
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        ref = ReferenceEvaluator(proto)
        run = lambda x: ref.run(None, {"x": x})[0]  # noqa: E731
    x = split.x.numpy()
    logits = np.concatenate([run(x[i : i + 500]) for i in range(0, len(x), 500)])
    return float((logits.argmax(1) == split.y.numpy()).mean())


def _log_export_run(uri: str, c, exp_id: str, parent_id: str, search: str, point: Point, model, example, registered: str, alias: str) -> tuple[str, str]:
    """Log ``model`` in a new export run under the search's parent run and register it with ``alias``.

    Returns ``(export run id, model URI)``. The trial's own run is never opened; a failure ends the
    export run as FAILED (with the error as its ``error`` tag) and is a one-line :class:`SqueezeError`.
    """
    import logging
    import warnings

    import mlflow
    import mlflow.pytorch

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    run = tracking.retry(
        lambda: c.create_run(
            exp_id,
            run_name=f"{search}-export-trial-{point.trial}",
            tags={
                tracking.PARENT_TAG: parent_id,
                tracking.SEARCH_TAG: search,
                tracking.ROLE_TAG: EXPORT_ROLE,
                EXPORTED_TRIAL_TAG: str(point.trial),
                EXPORTED_RUN_TAG: str(point.run_id),
            },
        )
    )
    run_id = run.info.run_id
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mlflow.start_run(run_id=run_id):
                info = mlflow.pytorch.log_model(
                    model,
                    name="model",
                    input_example=example.numpy(),
                    serialization_format="pt2",
                    registered_model_name=registered,
                    pip_requirements=["torch", "squeezetune"],
                )
        version = info.registered_model_version
        if version is None:
            versions = c.search_model_versions(f"name = '{registered}'")
            version = max(int(v.version) for v in versions)
        c.set_registered_model_alias(registered, alias, str(version))
    except BaseException as exc:  # Ctrl-C included: the export run must not stay RUNNING
        message = " ".join(str(getattr(exc, "message", exc)).split())[:300] or type(exc).__name__
        try:
            c.set_tag(run_id, "error", message)
            c.set_terminated(run_id, "FAILED" if isinstance(exc, Exception) else "KILLED")
        except Exception:
            pass
        if not isinstance(exc, Exception):
            raise
        raise SqueezeError(f"MLflow could not log or register the model as {registered!r} (alias {alias!r}): {message}") from None
    tracking.retry(lambda: c.set_terminated(run_id, "FINISHED"))
    return run_id, info.model_uri
