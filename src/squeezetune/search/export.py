"""Exporting one trial of a search: container, dense weights, torch.export program, ONNX, MLflow model.

A trial is picked from the search's child runs in MLflow (so any tracking store works, no Optuna
storage needed): by number (``trial``), as the most accurate front point within ``max_bytes``, or as
the smallest front point losing at most ``max_drop`` accuracy points. Its container is downloaded,
decoded, and written as

* ``model.sqz`` -- the container itself;
* ``model.safetensors`` -- dense weights of the decoded model;
* ``model.pt2`` -- a ``torch.export`` program (batch dimension dynamic);
* ``model.onnx`` -- ONNX, opset :data:`ONNX_OPSET`, batch dimension dynamic;
* an ``mlflow.pytorch.log_model`` entry (pt2 serialization) in the trial's run, registered under a
  model name with an alias.

Every written model is loaded back and its accuracy measured on the task's eval split.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from squeezetune.errors import SqueezeError
from squeezetune.search import tracking
from squeezetune.search.pareto import Point, pareto_front

ONNX_OPSET = 18
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def trial_points(c, exp_id: str, parent_id: str) -> list[Point]:
    """One point per finished child run (trial number from its tag)."""
    out = []
    for run in tracking.children(c, exp_id, parent_id):
        m = run.data.metrics
        if run.info.status != "FINISHED" or not math.isfinite(m.get("accuracy", math.nan)) or "bytes" not in m:
            continue
        feasible = m.get("feasible", 1.0) > 0
        trial = int(run.data.tags.get(tracking.TRIAL_TAG, -1))
        out.append(Point(trial, m["accuracy"], int(m["bytes"]), run.info.run_id, feasible, {"ratio": m.get("ratio"), "dense_accuracy": m.get("dense_accuracy")}))
    return out


def search_front(uri: str, experiment: str, name: str) -> tuple[list[Point], list[Point], dict[str, float]]:
    """``(points, front, dense)`` of a search read from MLflow; ``dense`` holds dense_accuracy, dense_bytes."""
    c, exp_id, parent = tracking.find_search(uri, experiment, name)
    points = trial_points(c, exp_id, parent.info.run_id)
    dense = {k: parent.data.metrics[k] for k in ("dense_accuracy", "dense_bytes") if k in parent.data.metrics}
    return points, pareto_front(points), dense


def pick(points: list[Point], front: list[Point], *, dense_accuracy: float, trial: int | None = None, max_bytes: int | None = None, max_drop: float | None = None) -> Point:
    """The trial to export; exactly one selector must be given."""
    given = [k for k, v in (("--trial", trial), ("--max-bytes", max_bytes), ("--max-drop", max_drop)) if v is not None]
    if len(given) != 1:
        raise SqueezeError(f"give exactly one of --trial, --max-bytes, --max-drop; got {given or 'none'}")
    if not points:
        raise SqueezeError("the search has no finished trial to export")
    if trial is not None:
        for p in points:
            if p.trial == trial:
                return p
        raise SqueezeError(f"--trial {trial} is not a finished trial of this search: expected one of {sorted(p.trial for p in points)}")
    if max_bytes is not None:
        ok = [p for p in front if p.bytes <= max_bytes]
        if not ok:
            raise SqueezeError(f"--max-bytes {max_bytes:,}: no front point is that small; the smallest takes {min(p.bytes for p in front):,} bytes")
        return max(ok, key=lambda p: (p.accuracy, -p.bytes))
    ok = [p for p in front if 100.0 * (dense_accuracy - p.accuracy) <= max_drop + 1e-9]
    if not ok:
        best = max(front, key=lambda p: p.accuracy)
        raise SqueezeError(f"--max-drop {max_drop}: no front point loses that little; the most accurate loses {100.0 * (dense_accuracy - best.accuracy):.2f} points")
    return min(ok, key=lambda p: (p.bytes, -p.accuracy))


@dataclass
class Exported:
    point: Point
    files: dict[str, Path]
    accuracy: dict[str, float]
    model_uri: str | None = None
    registered: str | None = None
    notes: list[str] = field(default_factory=list)


def export_trial(
    uri: str,
    experiment: str,
    name: str,
    out: str | Path,
    *,
    trial: int | None = None,
    max_bytes: int | None = None,
    max_drop: float | None = None,
    data_dir: str | Path | None = None,
    model_name: str | None = None,
    alias: str = "exported",
    progress: Progress = _quiet,
) -> Exported:
    """Write the chosen trial's model in every format to ``out`` and register it in MLflow."""
    import torch

    from squeezetune.compression.finetune import evaluate
    from squeezetune.compression.pipeline import decode_file, save_weights
    from squeezetune.search.runner import load_saved_config
    from squeezetune.tasks import get_task

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SqueezeError(f"--out {str(out)!r} is a file: expected a folder")
    c, exp_id, parent = tracking.find_search(uri, experiment, name)
    config = load_saved_config(uri, experiment, name)
    points = trial_points(c, exp_id, parent.info.run_id)
    front = pareto_front(points)
    dense_accuracy = parent.data.metrics.get("dense_accuracy", max((p.accuracy for p in points), default=0.0))
    point = pick(points, front, dense_accuracy=dense_accuracy, trial=trial, max_bytes=max_bytes, max_drop=max_drop)
    progress(f"exporting trial {point.trial} (run {point.run_id}): accuracy {point.accuracy:.4f}, {point.bytes:,} bytes")

    task = get_task(config.task)
    data_dir = data_dir if data_dir is not None else config.data_dir
    if task.needs_data_dir and data_dir is None:
        raise SqueezeError(f"task {task.name!r} needs --data-dir to re-measure accuracy: expected a folder with MNIST idx files")
    _, eval_split = task.load_data(Path(data_dir) if data_dir is not None else None)
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    acc: dict[str, float] = {}

    with tempfile.TemporaryDirectory(prefix="squeezetune-export-") as tmp:
        try:
            local = Path(c.download_artifacts(point.run_id, "model.sqz", tmp))
        except Exception as exc:
            raise SqueezeError(f"trial {point.trial} has no model.sqz artifact in run {point.run_id} ({type(exc).__name__})") from None
        files["container"] = out / "model.sqz"
        files["container"].write_bytes(local.read_bytes())
    model = decode_file(files["container"], task=task).eval()
    acc["container"] = evaluate(model, eval_split)

    files["safetensors"] = out / "model.safetensors"
    save_weights(model, files["safetensors"], metadata={"task": task.name, "search": name, "trial": str(point.trial)})

    example = eval_split.x[:2].clone()
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    files["torch_export"] = out / "model.pt2"
    torch.export.save(program, str(files["torch_export"]))
    acc["torch_export"] = _accuracy(torch.export.load(str(files["torch_export"])).module(), eval_split)

    files["onnx"] = out / "model.onnx"
    _export_onnx(model, example, files["onnx"])
    acc["onnx"] = _onnx_accuracy(files["onnx"], eval_split)

    registered = model_name or f"squeezetune-{name}"
    model_uri = _log_mlflow_model(uri, point.run_id, model, example, registered, alias)
    files["summary"] = out / "export.json"
    summary = {
        "search": name,
        "trial": point.trial,
        "run_id": point.run_id,
        "task": task.name,
        "bytes": point.bytes,
        "accuracy_in_search": point.accuracy,
        "accuracy": acc,
        "files": {k: str(v) for k, v in files.items()},
        "mlflow_model": model_uri,
        "registered_model": f"models:/{registered}@{alias}",
        "onnx_opset": ONNX_OPSET,
    }
    files["summary"].write_text(json.dumps(summary, indent=2))
    return Exported(point, files, acc, model_uri, f"models:/{registered}@{alias}")


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
        torch.onnx.export(
            model, (example,), str(path), dynamo=True, opset_version=ONNX_OPSET, dynamic_shapes=({0: batch},), input_names=["x"], output_names=["logits"], external_data=False
        )


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


def _log_mlflow_model(uri: str, run_id: str, model, example, registered: str, alias: str) -> str:
    import logging
    import warnings

    import mlflow
    import mlflow.pytorch

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    c = tracking.client(uri)
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
    return info.model_uri
