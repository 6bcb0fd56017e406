"""A search with latency as its third objective: the front logged to MLflow and the one ``pareto``
prints (``export`` picks from the same :func:`search_front` reading) are taken over all three
objectives (a real Optuna study, a real sqlite MLflow store, the real CLI)."""

from __future__ import annotations

import math
from dataclasses import replace

import optuna
import pytest
from mlflow import MlflowClient

from squeezetune.errors import SqueezeError
from squeezetune.search import tracking
from squeezetune.search.export import search_front, searched_latency, select
from squeezetune.search.front import PARETO_TAG, FrontLogger
from squeezetune.search.pareto import Baseline, pareto_front
from squeezetune.search.searcher import RUN_ATTR
from squeezetune.search.trial import OUTCOME_TAG
from squeezetune.spaces import Constraints

# (val accuracy, eval accuracy, bytes, latency ms): trial 1 is larger and less accurate than trial 0
# but four times faster; trial 2 is beaten by trial 0 in all three
TRIALS = [(0.97, 0.965, 4_000, 2.0), (0.96, 0.955, 5_000, 0.5), (0.95, 0.95, 6_000, 3.0)]


@pytest.fixture()
def search(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    c = MlflowClient(uri)
    exp = c.create_experiment("squeezetune")
    parent = c.create_run(exp, tags={tracking.SEARCH_TAG: "lat", tracking.ROLE_TAG: "parent"}).info.run_id
    c.log_param(parent, "objectives", "accuracy,bytes,latency_ms_b1")
    for key, value in {"dense_accuracy": 0.97, "dense_val_accuracy": 0.975, "dense_bytes": 100_000}.items():
        c.log_metric(parent, key, value)
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
    for number, (val, acc, size, ms) in enumerate(TRIALS):
        tags = {tracking.PARENT_TAG: parent, tracking.ROLE_TAG: "trial", tracking.TRIAL_TAG: str(number), OUTCOME_TAG: "complete"}
        rid = c.create_run(exp, tags=tags).info.run_id
        figures = {"val_accuracy": val, "accuracy": acc, "bytes": size, "latency_ms_b1": ms}
        for key, value in figures.items():
            c.log_metric(rid, key, value)
        c.set_terminated(rid, "FINISHED")
        study.add_trial(optuna.trial.create_trial(values=[val, size, ms], user_attrs={**figures, RUN_ATTR: rid}))
    return uri, c, parent, study


def test_the_logged_front_and_the_pareto_tags_cover_the_faster_point(search):
    uri, c, parent, study = search
    baseline = Baseline(0.97, 100_000, 0.975, ("latency_ms_b1",))
    _, front = FrontLogger(uri, parent, search="lat", constraints=Constraints(), baseline=baseline).update(study)
    assert [p.trial for p in front] == [0, 1] == sorted(t.number for t in study.best_trials)
    tags = {int(r.data.tags[tracking.TRIAL_TAG]): r.data.tags[PARETO_TAG] for r in tracking.children(c, c.get_run(parent).info.experiment_id, parent)}
    assert tags == {0: "true", 1: "true", 2: "false"}
    csv = c.download_artifacts(parent, "front/front.csv")
    header, *lines = open(csv).read().splitlines()
    assert "latency_ms_b1" in header.split(",") and len(lines) == 2


def test_pareto_reads_the_third_objective_from_the_search(search, cli):
    uri, *_ = search
    points, front, baseline = search_front(uri, "squeezetune", "lat")
    assert baseline.also_minimised == ("latency_ms_b1",) and [p.trial for p in front] == [0, 1]
    code, out, err = cli(["pareto", "--name", "lat", "--tracking-uri", uri])
    assert code == 0, err
    assert "2 on the front" in out and "latency_ms_b1" in out and "0.500" in out


def test_export_picks_among_the_trials_within_a_latency(search):
    """``export --max-latency-ms`` narrows ``--max-drop``/``--max-bytes`` to the trials that fast,
    and takes the front over them (the selection ``export_trial`` makes, on the search read back)."""
    uri, *_ = search
    points, _, baseline = search_front(uri, "squeezetune", "lat")
    assert select(points, baseline, max_drop=5.0).trial == 0  # the smallest within 5 points
    assert select(points, baseline, max_drop=5.0, max_latency_ms=1.0, latency="latency_ms_b1").trial == 1
    assert select(points, baseline, max_bytes=5_500, max_latency_ms=2.5, latency="latency_ms_b1").trial == 0
    with pytest.raises(SqueezeError, match=r"^--max-bytes 4,500: no front point within --max-latency-ms 1 \(latency_ms_b1\) is that small"):
        select(points, baseline, max_bytes=4_500, max_latency_ms=1.0, latency="latency_ms_b1")
    with pytest.raises(SqueezeError, match=r"^--max-latency-ms 0.1: no finished trial ran that fast by latency_ms_b1; the fastest, trial 1 \(5,000 bytes\), took 0.5 ms"):
        select(points, baseline, max_drop=5.0, max_latency_ms=0.1, latency="latency_ms_b1")
    with pytest.raises(SqueezeError, match=r"^--max-latency-ms 1: no finished trial has a latency_ms_b64 figure"):
        select(points, baseline, max_drop=5.0, max_latency_ms=1.0, latency="latency_ms_b64")
    with pytest.raises(SqueezeError, match=r"^--max-latency-ms 0: expected a number of milliseconds > 0"):
        select(points, baseline, max_drop=5.0, max_latency_ms=0.0, latency="latency_ms_b1")


def test_a_search_with_only_a_latency_constraint_is_narrowed_on_its_two_objective_front(search):
    """A search that timed its trials for ``max_latency_ms`` alone has an accuracy-bytes front; the
    narrowing takes the front over the fast trials, so a trial off the full front can be picked."""
    uri, *_ = search
    points, _, _ = search_front(uri, "squeezetune", "lat")
    flat = Baseline(0.97, 100_000, 0.975)
    assert [p.trial for p in pareto_front(points)] == [0]
    assert select(points, flat, max_drop=5.0, max_latency_ms=1.0, latency="latency_ms_b1").trial == 1
    # only feasible trials are candidates, and the fastest named is a feasible one
    fast_but_out = [replace(p, feasible=p.trial != 1) for p in points]
    with pytest.raises(SqueezeError, match=r"^--max-latency-ms 1: no finished trial ran that fast by latency_ms_b1; the fastest, trial 0 \(4,000 bytes\), took 2 ms"):
        select(fast_but_out, flat, max_drop=5.0, max_latency_ms=1.0, latency="latency_ms_b1")
    untimed = [replace(p, extra={**p.extra, "latency_ms_b1": math.nan}) if p.trial == 1 else p for p in points]
    assert select(untimed, flat, max_drop=5.0, max_latency_ms=2.5, latency="latency_ms_b1").trial == 0  # a NaN is never within


def test_the_latency_export_narrows_by_is_the_one_the_search_timed():
    assert searched_latency(["accuracy", "bytes", "latency_ms_b64"], Constraints(max_latency_ms=1.0)) == "latency_ms_b64"
    assert searched_latency(["accuracy", "bytes"], Constraints(max_latency_ms=1.0, latency="latency_ms_b64")) == "latency_ms_b64"
    assert searched_latency(["accuracy", "bytes"], Constraints()) is None
