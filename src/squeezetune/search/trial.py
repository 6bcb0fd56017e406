"""One search trial, as a Ray Tune function trainable: the whole pipeline, logged to its MLflow child run.

The trial receives the dense baseline's weights and the data from the driver (``tune.with_parameters``
puts them in Ray's object store once), so no node needs the data files or retrains the baseline.
It runs :func:`~squeezetune.compression.pipeline.compress` -- prune, fine-tune, share, fine-tune
centroids, encode, decode the file back and measure it -- on the device Ray gave it (a GPU when the
trial asked for one), then reports the real container bytes and the decoded model's accuracy.

A trial whose pipeline raises or yields a non-finite accuracy does not crash the search: its run is
marked FAILED with the error as a tag, and it reports ``error`` so the searcher records a failure.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from squeezetune.search import tracking

ATTEMPTS_TAG = "squeezetune.attempts"
"""How many times a run's trial started: above 1 after Tune retried it (lost node) or --resume re-ran it."""


@dataclass(frozen=True)
class TrialSetup:
    """Everything a trial needs besides its sampled knobs (plain data, sent to every trial)."""

    search: str
    task: str
    tracking_uri: str
    space: dict[str, Any]
    constraints: dict[str, Any] = field(default_factory=dict)
    dense_accuracy: float = 0.0
    seed: int = 0
    threads: int = 1
    task_path: str | None = None
    """The driver's working folder, where a ``module:factory`` task's module may live."""


def knob_params(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def metrics_of(report, constraints: dict[str, Any]) -> dict[str, float]:
    """The MLflow metrics of one pipeline report (:meth:`Report.metrics`), and whether it is feasible."""
    from squeezetune.spaces import Constraints

    m = report.metrics()
    c = Constraints.from_dict(constraints)
    if c:
        m["feasible"] = float(c.feasible(accuracy=report.accuracy, bytes=report.compressed_bytes, dense_accuracy=report.dense_accuracy, macs=report.macs))
    return m


def run_trial(config: dict[str, Any], setup: TrialSetup, dense_state: dict[str, np.ndarray], data: tuple[np.ndarray, ...]) -> None:
    """Ray Tune trainable: compress with the sampled knobs, log everything, report the outcome once."""
    import ray
    import torch
    from mlflow.entities import RunTag
    from ray import tune

    started = time.perf_counter()
    torch.set_num_threads(max(1, setup.threads))
    run_id, number = config["_run_id"], config["_trial"]
    params = knob_params(config)
    node = ray.get_runtime_context().get_node_id()
    c = tracking.client(setup.tracking_uri)
    previous = tracking.retry(lambda: c.get_run(run_id)).data.tags.get(ATTEMPTS_TAG, "0")
    attempts = int(previous) + 1 if previous.isdigit() else 1
    tags = [RunTag(tracking.TRIAL_TAG, str(number)), RunTag("squeezetune.node", node), RunTag(ATTEMPTS_TAG, str(attempts))]
    tracking.retry(lambda: c.update_run(run_id, status="RUNNING"))
    tracking.retry(lambda: c.log_batch(run_id, params=tracking.params_batch(params), tags=tags))
    mlflow_seconds = time.perf_counter() - started
    out: dict[str, Any] = {"run_id": run_id, "trial": number, "node": node}
    try:
        report, device = _compress(config, params, setup, dense_state, data, c, run_id)
        if not math.isfinite(report.accuracy):
            raise ValueError(f"the decoded model's accuracy is {report.accuracy}")
        out.update(report.outcome(), pipeline_seconds=float(report.seconds), device=device)
        t0 = time.perf_counter()
        tracking.retry(lambda: c.log_batch(run_id, metrics=tracking.metrics_batch(metrics_of(report, setup.constraints)), tags=[RunTag("squeezetune.device", device)]))
        tracking.retry(lambda: c.set_terminated(run_id, "FINISHED"))
        mlflow_seconds += time.perf_counter() - t0
    except Exception as exc:  # recorded as a failed trial; the search goes on
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:480]
        out.update(accuracy=float("nan"), bytes=float("nan"), error=message)
        try:
            tracking.retry(lambda: c.set_tag(run_id, "error", message))
            tracking.retry(lambda: c.set_terminated(run_id, "FAILED"))
        except Exception:
            pass
    out["mlflow_seconds"] = mlflow_seconds
    out["trial_seconds"] = time.perf_counter() - started
    tune.report(out)


def _compress(config, params, setup: TrialSetup, dense_state, data, c, run_id):
    import torch

    from squeezetune.compression import compress, pick_device, report_path
    from squeezetune.spaces import derive_space
    from squeezetune.tasks import Split, example_input, get_task

    task = get_task(setup.task, search_path=setup.task_path)
    dense = task.build_model()
    dense.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in dense_state.items()})
    xt, yt, xe, ye = (torch.from_numpy(np.array(a)) for a in data)
    splits = (Split(xt, yt), Split(xe, ye))
    space = derive_space(dense, setup.space, example_input(task, splits[0]))
    recipe = space.recipe(params, name=f"{setup.search}-trial-{config['_trial']}")
    device = pick_device(None)
    with tempfile.TemporaryDirectory(prefix="squeezetune-trial-") as tmp:
        out = Path(tmp) / "model.sqz"
        report = compress(task, recipe, out=out, dense=dense, splits=splits, device=device, seed=setup.seed)
        import yaml

        (Path(tmp) / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        for path in (out, report_path(out), Path(tmp) / "recipe.yaml"):
            tracking.retry(lambda path=path: c.log_artifact(run_id, str(path)))
    return report, str(device)
