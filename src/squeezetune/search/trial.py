"""One search trial, as a Ray Tune function trainable: the whole pipeline, logged to its MLflow child run.

The trial receives the dense baseline's weights and the data from the driver (``tune.with_parameters``
puts them in Ray's object store once), so no node needs the data files or retrains the baseline.
It runs :func:`~squeezetune.compression.pipeline.compress` -- the stages of its recipe (gradual
pruning, neurons, recovery, sharing, centroid fine-tune in the default space), encode, decode the
file back and measure it -- on the device Ray gave it (a GPU when the trial asked for one).

Multi-fidelity: at each rung (an epoch count of the ``finetune`` stage, or of ``gradual_prune``'s
training in a space without ``finetune``; see :class:`~squeezetune.search.config.Fidelity`) the
trial reports the model as the file would hold it then -- pruned to its final targets (gradual
pruning), shared, coded and decoded (:class:`~squeezetune.compression.stages.EpochEvent`'s
snapshot) -- with its validation accuracy, evaluation accuracy and real bytes; the MLflow run logs
them as metric steps, with the epochs reached as the ``epoch`` metric. If MO-ASHA stops it there, Tune ends the trial at that report and the run
is marked KILLED with the tag ``squeezetune.outcome=stopped``. A trial that runs the whole schedule
reports its ``final`` outcome, measured on the written file.

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
OUTCOME_TAG = "squeezetune.outcome"
"""``complete``, ``stopped`` (by MO-ASHA at a rung) or ``failed``."""


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
    rungs: tuple[int, ...] = ()
    """Epochs of ``rung_stage`` at which the trial reports before its final outcome."""
    rung_stage: str = "finetune"
    """The recipe stage whose epochs are the fidelity (``finetune`` or ``gradual_prune``)."""
    full_epochs: int = 0
    """The fidelity stage's epochs in the full schedule (the ``epoch`` of a final report)."""
    dense_val_accuracy: float = 0.0
    latency: bool = False
    """Whether trials measure latency (an objective or a constraint needs it)."""
    sensitivity: dict[str, list] | None = None
    """The per-tensor pruning sensitivity the driver measured (for a space with ``prune.budget``)."""


def knob_params(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if not k.startswith("_")}


def metrics_of(report, setup: TrialSetup) -> dict[str, float]:
    """The MLflow metrics of one pipeline report (:meth:`Report.metrics`), and whether it is feasible."""
    from squeezetune.spaces import Constraints

    m = report.metrics()
    c = Constraints.from_dict(setup.constraints)
    if c:
        m["feasible"] = float(all(v <= 0 for v in c.of(report.outcome(), dense_accuracy=setup.dense_val_accuracy, accuracy_key="val_accuracy").values()))
    return m


def run_trial(config: dict[str, Any], setup: TrialSetup, dense_state: dict[str, np.ndarray], data: tuple[np.ndarray, ...]) -> None:
    """Ray Tune trainable: compress with the sampled knobs, report at each rung and at the end, log everything."""
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
    clock = {"mlflow": time.perf_counter() - started}
    base: dict[str, Any] = {"run_id": run_id, "trial": number, "node": node}

    def report(result: dict[str, Any]) -> None:
        tune.report({**base, **result, "mlflow_seconds": clock["mlflow"], "trial_seconds": time.perf_counter() - started})

    try:
        report_data, device = _compress(config, params, setup, dense_state, data, c, run_id, report, clock)
        if not math.isfinite(report_data.accuracy):
            raise ValueError(f"the decoded model's accuracy is {report_data.accuracy}")
        t0 = time.perf_counter()
        reached = setup.full_epochs if setup.rung_stage else 0  # no fidelity stage: outcome at step 0
        metrics = tracking.metrics_batch({**metrics_of(report_data, setup), **_epoch(setup, reached)}, step=reached)
        tracking.retry(lambda: c.log_batch(run_id, metrics=metrics, tags=[RunTag("squeezetune.device", device), RunTag(OUTCOME_TAG, "complete")]))
        tracking.retry(lambda: c.set_terminated(run_id, "FINISHED"))
        clock["mlflow"] += time.perf_counter() - t0
        result = {**report_data.outcome(), "pipeline_seconds": float(report_data.seconds), "device": device, "epoch": reached, "final": True}
    except SystemExit:  # Tune stopped the trial at a rung report (MO-ASHA): its run ends there
        try:
            tracking.retry(lambda: c.set_tag(run_id, OUTCOME_TAG, "stopped"))
            tracking.retry(lambda: c.set_terminated(run_id, "KILLED"))
        finally:
            raise
    except Exception as exc:  # recorded as a failed trial; the search goes on
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:480]
        result = {"accuracy": float("nan"), "bytes": float("nan"), "error": message, "epoch": 0}
        try:
            tracking.retry(lambda: c.set_tag(run_id, "error", message))
            tracking.retry(lambda: c.set_tag(run_id, OUTCOME_TAG, "failed"))
            tracking.retry(lambda: c.set_terminated(run_id, "FAILED"))
        except Exception:
            pass
    report(result)


def _epoch(setup: TrialSetup, epoch: int) -> dict[str, float]:
    """The ``epoch`` metric of a report at ``epoch`` epochs of the fidelity stage (what ``pareto`` shows
    as the fidelity a trial reached); none in a search without a fidelity stage."""
    return {"epoch": float(epoch)} if setup.rung_stage and setup.full_epochs > 0 else {}


class _Rungs:
    """The ``on_epoch`` callback that reports the trial at each rung of its fidelity stage (``setup.rung_stage``)."""

    def __init__(self, setup: TrialSetup, splits, example, dense_bytes: int, c, run_id: str, report, clock: dict) -> None:
        self.setup, self.splits, self.example, self.dense_bytes = setup, splits, example, dense_bytes
        self.c, self.run_id, self.report, self.clock = c, run_id, report, clock

    def __call__(self, event) -> None:
        if event.stage != self.setup.rung_stage or event.epoch not in self.setup.rungs or event.snapshot is None:
            return
        from squeezetune.compression import evaluate

        decoded, size = event.snapshot()
        _, val, held = self.splits
        figures = {"val_accuracy": evaluate(decoded, val), "accuracy": evaluate(decoded, held), "bytes": float(size), "ratio": self.dense_bytes / size}
        if self.setup.latency:
            from squeezetune.compression.pipeline import compare_latency_report

            figures.update(compare_latency_report(None, decoded, self.example, device=next(decoded.parameters()).device))
        t0 = time.perf_counter()
        tracking.retry(lambda: self.c.log_batch(self.run_id, metrics=tracking.metrics_batch({**figures, **_epoch(self.setup, event.epoch)}, step=event.epoch)))
        self.clock["mlflow"] += time.perf_counter() - t0
        self.report({**figures, "epoch": event.epoch, "final": False})


def _compress(config, params, setup: TrialSetup, dense_state, data, c, run_id, report, clock):
    import torch

    from squeezetune.compression import compress, dense_bytes, pick_device, report_path
    from squeezetune.spaces import derive_space
    from squeezetune.tasks import Split, example_input, get_task

    task = get_task(setup.task, search_path=setup.task_path)
    dense = task.build_model()
    dense.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in dense_state.items()})
    arrays = [torch.from_numpy(np.array(a)) for a in data]
    fit, val, held = (Split(arrays[i], arrays[i + 1]) for i in (0, 2, 4))
    space = derive_space(dense, setup.space, example_input(task, fit), sensitivity=setup.sensitivity)
    recipe = space.recipe(params, name=f"{setup.search}-trial-{config['_trial']}")
    device = pick_device(None)
    rungs = _Rungs(setup, (fit, val, held), example_input(task, fit), dense_bytes(dense), c, run_id, report, clock)
    with tempfile.TemporaryDirectory(prefix="squeezetune-trial-") as tmp:
        out = Path(tmp) / "model.sqz"
        report = compress(task, recipe, out=out, dense=dense, splits=(fit, held), validation=val, device=device, seed=setup.seed, on_epoch=rungs, latency=setup.latency)
        import yaml

        (Path(tmp) / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        for path in (out, report_path(out), Path(tmp) / "recipe.yaml"):
            tracking.retry(lambda path=path: c.log_artifact(run_id, str(path)))
    return report, str(device)
