"""Settling the trials a dead driver left RUNNING, on a real Optuna sqlite study and a real MLflow store."""

from __future__ import annotations

import math

import optuna
import pytest
from mlflow import MlflowClient

from squeezetune.search.runner import _settle_interrupted
from squeezetune.search.searcher import ERROR_ATTR, INTERRUPTED_ATTR, RUN_ATTR, objective_metrics

OBJECTIVES = objective_metrics(("accuracy", "bytes"))


@pytest.fixture()
def stores(tmp_path):
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}", directions=["maximize", "minimize"])
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("settle")
    return study, client, exp


def _running_trial(study, client, exp):
    t = study.ask()
    t.suggest_float("x", 0.0, 1.0)
    run = client.create_run(exp)
    t.set_user_attr(RUN_ATTR, run.info.run_id)
    return t, run.info.run_id


def _finished_trial(study, client, exp, accuracy: float, bytes: float):
    """A trial left RUNNING whose MLflow run finished with these metrics before the driver died."""
    t, rid = _running_trial(study, client, exp)
    client.log_metric(rid, "accuracy", accuracy)
    client.log_metric(rid, "bytes", bytes)
    client.log_metric(rid, "epoch", 3)
    client.set_terminated(rid, "FINISHED")
    return t, rid


def test_running_trials_are_told_failed_or_requeued(stores):
    study, client, exp = stores
    finished, _ = _finished_trial(study, client, exp, 0.91, 1234.0)
    failed, failed_run = _running_trial(study, client, exp)
    client.set_tag(failed_run, "error", "ValueError: boom")
    client.set_terminated(failed_run, "FAILED")
    killed, killed_run = _running_trial(study, client, exp)  # its run stays RUNNING: the worker died

    messages: list[str] = []
    _settle_interrupted(study, client, messages.append, OBJECTIVES)

    trials = study.get_trials()
    assert trials[finished.number].state == optuna.trial.TrialState.COMPLETE
    assert trials[finished.number].values == [0.91, 1234.0]
    assert trials[finished.number].user_attrs["epoch"] == 3  # the fidelity it reached, as front.csv shows it
    assert trials[failed.number].state == optuna.trial.TrialState.FAIL
    assert trials[failed.number].user_attrs[ERROR_ATTR] == "ValueError: boom"
    assert not trials[failed.number].user_attrs.get(INTERRUPTED_ATTR)
    assert trials[killed.number].state == optuna.trial.TrialState.FAIL
    assert trials[killed.number].user_attrs[INTERRUPTED_ATTR] is True
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1
    assert waiting[0].system_attrs["fixed_params"] == trials[killed.number].params  # asked again with the same values
    assert waiting[0].user_attrs == {RUN_ATTR: killed_run, "retry_of": killed.number, "requeues": 1}  # the one requeue path, counted
    assert any("interrupted" in m and killed_run in m for m in messages)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


def test_a_finished_run_with_nan_accuracy_is_requeued(stores):
    study, client, exp = stores
    t, _ = _finished_trial(study, client, exp, math.nan, 10.0)
    _settle_interrupted(study, client, lambda _: None, OBJECTIVES)
    assert study.get_trials()[t.number].user_attrs[INTERRUPTED_ATTR] is True
    assert len(study.get_trials(states=(optuna.trial.TrialState.WAITING,))) == 1


def test_a_trial_that_never_reports_is_requeued_a_few_times_then_failed(tmp_path):
    """Tune ends a trial without a result (Ctrl-C, or a trainable that returns early): queued again,
    with the same parameters and MLflow run, at most MAX_REQUEUES times; then recorded as failed."""
    from squeezetune.search.searcher import MAX_REQUEUES, REQUEUES_ATTR, TrackedOptunaSearch

    told = []
    searcher = TrackedOptunaSearch(
        lambda trial: {"x": trial.suggest_float("x", 0.0, 1.0)},
        sampler=optuna.samplers.RandomSampler(seed=0),
        study_name="never-reports",
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        new_run=lambda number: f"run-{number}",
        on_told=told.append,
    )
    configs = []
    for attempt in range(MAX_REQUEUES + 1):
        configs.append(searcher.suggest(f"tune-{attempt}"))
        searcher.on_trial_complete(f"tune-{attempt}", result=None)
    trials = searcher.study.get_trials()
    assert len(trials) == MAX_REQUEUES + 1 and not searcher.study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len({c["x"] for c in configs}) == 1 and {c["_run_id"] for c in configs} == {"run-0"}
    assert all(t.state == optuna.trial.TrialState.FAIL for t in trials)
    assert [bool(t.user_attrs.get(INTERRUPTED_ATTR)) for t in trials] == [True] * MAX_REQUEUES + [False]
    assert trials[-1].user_attrs[REQUEUES_ATTR] == MAX_REQUEUES
    assert trials[-1].user_attrs[ERROR_ATTR] == f"the trial ended without reporting a result {MAX_REQUEUES + 1} times"
    assert [t.number for t in told] == [trials[-1].number]


def test_settled_trials_carry_the_search_constraints(stores):
    """A trial told from its MLflow run after a driver died gets the same constraints a live one does."""
    from squeezetune.search.searcher import OutcomeConstraints
    from squeezetune.spaces import Constraints

    study, client, exp = stores
    t, _ = _finished_trial(study, client, exp, 0.95, 3000.0)
    _settle_interrupted(study, client, lambda _: None, OBJECTIVES, OutcomeConstraints(Constraints(max_bytes=2000, max_drop=1.0), dense_accuracy=0.97))
    settled = study.get_trials()[t.number]
    assert settled.state == optuna.trial.TrialState.COMPLETE
    assert settled.constraints == {"max_bytes": 0.5, "max_drop": pytest.approx(1.0)}


def test_live_trials_carry_the_search_constraints(tmp_path):
    from squeezetune.search.searcher import OutcomeConstraints, TrackedOptunaSearch
    from squeezetune.spaces import Constraints

    searcher = TrackedOptunaSearch(
        lambda trial: {"x": trial.suggest_float("x", 0.0, 1.0)},
        sampler=optuna.samplers.NSGAIISampler(seed=0, population_size=2),
        study_name="constrained",
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        new_run=lambda number: f"run-{number}",
        constraints=OutcomeConstraints(Constraints(max_bytes=1000), dense_accuracy=0.9),
    )
    searcher.suggest("a")
    searcher.on_trial_complete("a", result={"val_accuracy": 0.8, "accuracy": 0.8, "bytes": 1500, "epoch": 3, "final": True})
    searcher.suggest("b")
    searcher.on_trial_complete("b", result={"val_accuracy": 0.7, "accuracy": 0.7, "bytes": 900, "epoch": 3, "final": True})
    first, second = searcher.study.get_trials()
    assert first.constraints == {"max_bytes": 0.5} and second.constraints == {"max_bytes": pytest.approx(-0.1)}
    assert [t.number for t in searcher.study.best_trials] == [second.number]  # only the feasible one counts


def test_a_requeued_warm_start_stays_a_warm_start():
    from squeezetune.search.searcher import requeue

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial({"x": 1.0}, user_attrs={"warm_start": True})
    first = study.ask({"x": optuna.distributions.FloatDistribution(0, 2)})
    requeue(study, first, run_id="run-1")
    again = study.ask({"x": optuna.distributions.FloatDistribution(0, 2)})
    assert again.params == {"x": 1.0} and again.user_attrs["warm_start"] is True and again.user_attrs["retry_of"] == first.number


def test_a_resumed_scheduler_is_seeded_from_the_metric_steps_of_earlier_runs(stores):
    """MO-ASHA's record of a search survives the driver: each earlier trial's rung figures and final
    outcome are read back from its MLflow run's steps and seed the resumed scheduler."""
    from squeezetune.search.config import SearchConfig
    from squeezetune.search.runner import rung_history, scheduler_for

    study, client, exp = stores
    config = SearchConfig.from_dict({"constraints": {"max_drop": 0.5}})  # rungs 2, 6, 18 of 40
    steps = {"complete": {2: 0.70, 6: 0.80, 18: 0.90, 40: 0.975}, "stopped": {2: 0.60, 6: 0.65}}
    numbers = {}
    for name, accuracies in steps.items():
        t, rid = _running_trial(study, client, exp)
        for step, acc in accuracies.items():
            client.log_metric(rid, "val_accuracy", acc, step=step)
            client.log_metric(rid, "bytes", 5000.0, step=step)
        numbers[name] = t.number
        if name == "complete":
            t.set_user_attr("warm_start", True)  # a recipe: it takes no place among the promoted
            study.tell(t, [0.975, 5000.0])
            client.set_terminated(rid, "FINISHED", end_time=client.get_run(rid).info.start_time + 30_000)  # a 30 s schedule
        else:
            study.tell(t, state=optuna.trial.TrialState.PRUNED)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)  # no run: left out

    history = {e.number: e for e in rung_history(client, study, config)}
    assert set(history) == set(numbers.values())
    done, stopped = history[numbers["complete"]], history[numbers["stopped"]]
    assert {r: v["val_accuracy"] for r, v in done.at_rungs.items()} == {2: 0.70, 6: 0.80, 18: 0.90}
    assert done.final == {"val_accuracy": 0.975, "bytes": 5000.0, "time_total_s": 30.0}  # with its run's wall time
    assert set(stopped.at_rungs) == {2, 6} and stopped.final is None
    assert done.warm_start and not stopped.warm_start

    assert rung_history(client, study, SearchConfig.from_dict({"fidelity": {"early_stopping": False}})) == []  # no MO-ASHA to seed
    scheduler = scheduler_for(config, 0.98, list(history.values()), trials=8, slots=2)
    assert scheduler.full_schedule_s() == 30.0 and scheduler.budget_s == 15 * 60 and not scheduler.stopping()  # auto: 4 x 30 s fit in 15 min
    assert scheduler.recovery(2) == pytest.approx(0.275) and scheduler.recovery(18) == pytest.approx(0.075)
    assert len(scheduler._recorded[2]) == 2 and len(scheduler._recorded[18]) == 1
    assert scheduler._warm == {f"earlier-{numbers['complete']}"}


def test_interrupted_trials_run_again_before_the_warm_starts_still_waiting(stores):
    """A search cut while its first warm starts ran: on resume their retries come first, then the
    warm starts that had not started, and the cut runs are tagged interrupted, not stopped."""
    from squeezetune.search.front import counts
    from squeezetune.search.trial import OUTCOME_TAG

    study, client, exp = stores
    for x in (0.1, 0.2, 0.3, 0.4):
        study.enqueue_trial({"x": x}, user_attrs={"warm_start": True})
    cut = []
    for _ in range(2):
        t = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        run = client.create_run(exp)
        t.set_user_attr(RUN_ATTR, run.info.run_id)
        client.set_tag(run.info.run_id, OUTCOME_TAG, "stopped")  # what a trial's SystemExit leaves
        client.set_terminated(run.info.run_id, "KILLED")
        cut.append((t, run.info.run_id))

    _settle_interrupted(study, client, lambda _: None, OBJECTIVES)

    assert counts(study) == {"complete": 0, "stopped": 0, "failed": 0, "interrupted": 2, "pending": 4}
    order = [study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}) for _ in range(4)]
    assert [t.params["x"] for t in order] == [0.1, 0.2, 0.3, 0.4]
    assert [t.user_attrs.get("retry_of") for t in order[:2]] == [cut[0][0].number, cut[1][0].number]
    assert all(t.user_attrs["warm_start"] for t in order)
    assert [client.get_run(rid).data.tags[OUTCOME_TAG] for _, rid in cut] == ["interrupted", "interrupted"]
