"""``--time-budget``: a real search (local Ray, sqlite MLflow store) asked for far more trials than
its budget holds starts none after the budget, lets the running ones finish, and ends as finished."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

TRIALS = 200
BUDGET_MIN = 0.75


def test_no_trial_starts_after_the_time_budget(workdir, cli):
    import optuna
    from mlflow import MlflowClient

    code, out, err = cli(["search", "--name", "budgeted", "--trials", str(TRIALS), "--time-budget", str(BUDGET_MIN), "--max-concurrent", "2"])
    assert code == 0, err
    assert "time budget: no trial starts later than 0.75 min" in err
    assert "the time budget ended the search after" in out and f"of {TRIALS} trials" in out

    c = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = c.get_experiment_by_name("squeezetune")
    runs = c.search_runs([exp.experiment_id], filter_string="tags.`squeezetune.search` = 'budgeted'", max_results=1000)
    parent = next(r for r in runs if r.data.tags.get("squeezetune.role") == "parent")
    children = [r for r in runs if r.data.tags.get("squeezetune.role") == "trial"]
    assert parent.info.status == "FINISHED"
    # early_stopping: auto measured the full schedules against the budget's time left: far over it
    assert "MO-ASHA (early_stopping: auto): a full schedule took" in err
    assert "200 of them, 2 at a time" in parent.data.tags["squeezetune.early_stopping"] and "over its" in parent.data.tags["squeezetune.early_stopping"]
    assert 0 < len(children) < TRIALS
    # the parent run is created after the search began, so the deadline lies before this bound
    deadline_ms = parent.info.start_time + BUDGET_MIN * 60_000
    assert all(r.info.start_time <= deadline_ms for r in children)
    assert all(r.info.status in ("FINISHED", "KILLED", "FAILED") for r in children)  # none left running

    study = optuna.load_study(study_name="budgeted", storage=f"sqlite:///{workdir / 'optuna.db'}")
    done = [t for t in study.trials if t.state.is_finished()]
    assert len(done) == len(children) and not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
