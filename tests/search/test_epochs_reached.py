"""The fidelity each trial reached, read back from a real sqlite MLflow store as ``pareto`` reads it."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from squeezetune.search import tracking
from squeezetune.search.export import epochs_reached, trial_points
from squeezetune.search.trial import OUTCOME_TAG


@pytest.fixture()
def store(tmp_path):
    c = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = c.create_experiment("epochs")
    parent = c.create_run(exp, tags={tracking.ROLE_TAG: "parent"}).info.run_id
    return c, exp, parent


def _trial(c, exp, parent, number: int, steps: dict[int, dict[str, float]], *, outcome: str, status: str) -> str:
    """A trial's run as a search logs it: its figures at each step (rungs, then the full schedule)."""
    tags = {tracking.PARENT_TAG: parent, tracking.ROLE_TAG: "trial", tracking.TRIAL_TAG: str(number), OUTCOME_TAG: outcome}
    rid = c.create_run(exp, tags=tags).info.run_id
    for step, metrics in steps.items():
        for key, value in metrics.items():
            c.log_metric(rid, key, value, step=step)
    c.set_terminated(rid, status)
    return rid


def test_finished_and_stopped_trials_carry_the_epochs_they_reached(store):
    c, exp, parent = store
    rung = {"val_accuracy": 0.50, "accuracy": 0.52, "bytes": 900.0}
    _trial(c, exp, parent, 0, {2: {**rung, "epoch": 2}, 40: {"val_accuracy": 0.97, "accuracy": 0.96, "bytes": 800.0, "epoch": 40}}, outcome="complete", status="FINISHED")
    _trial(c, exp, parent, 1, {2: {**rung, "epoch": 2}, 6: {"val_accuracy": 0.61, "accuracy": 0.60, "bytes": 700.0, "epoch": 6}}, outcome="stopped", status="KILLED")
    _trial(c, exp, parent, 2, {2: {**rung, "epoch": 2}}, outcome="stopped", status="KILLED")
    _trial(c, exp, parent, 3, {}, outcome="failed", status="FAILED")

    finished = trial_points(c, exp, parent)
    assert [(p.trial, p.extra["epoch"], p.accuracy, p.extra["eval_accuracy"]) for p in finished] == [(0, 40, 0.97, 0.96)]
    stopped = trial_points(c, exp, parent, stopped=True)
    assert [(p.trial, p.extra["epoch"], p.bytes) for p in stopped] == [(1, 6, 700), (2, 2, 900)]  # the figures at the last rung reached
    assert stopped[0].accuracy == 0.61 and stopped[0].extra["eval_accuracy"] == 0.60


def test_runs_logged_without_an_epoch_metric_read_it_from_their_last_step(store):
    c, exp, parent = store
    full = _trial(c, exp, parent, 0, {2: {"accuracy": 0.5, "bytes": 900.0}, 40: {"accuracy": 0.96, "bytes": 800.0}}, outcome="complete", status="FINISHED")
    stopped = _trial(c, exp, parent, 1, {2: {"accuracy": 0.5, "bytes": 900.0}, 6: {"accuracy": 0.6, "bytes": 700.0}}, outcome="stopped", status="KILLED")
    no_fidelity = _trial(c, exp, parent, 2, {0: {"accuracy": 0.9, "bytes": 500.0}}, outcome="complete", status="FINISHED")
    assert [epochs_reached(c, c.get_run(rid)) for rid in (full, stopped, no_fidelity)] == [40, 6, None]
    assert {p.trial: p.extra.get("epoch") for p in trial_points(c, exp, parent)} == {0: 40, 2: None}
