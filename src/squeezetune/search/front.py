"""Keeping a search's Pareto front current in MLflow while trials finish.

:func:`points_of` reads finished trials from the Optuna study (the search's record of outcomes);
:class:`FrontLogger` computes the front with :func:`~squeezetune.search.pareto.pareto_front` and
logs it to the parent run -- ``front/front.csv``, ``front/front.json``, ``front/front.png``,
``front/front.html`` -- and tags every child run ``pareto=true`` or ``pareto=false``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import optuna

from squeezetune.search import present, tracking
from squeezetune.search.pareto import Baseline, Point, pareto_front, point
from squeezetune.search.searcher import DEFERRED_ATTR, INTERRUPTED_ATTR, OUTCOME_ATTRS, RUN_ATTR
from squeezetune.spaces import Constraints

PARETO_TAG = "pareto"


def points_of(study: optuna.Study, constraints: Constraints, dense_accuracy: float) -> list[Point]:
    """One point per COMPLETE trial, marked feasible or not (``dense_accuracy``: on the split selected on)."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        a = {k: t.user_attrs[k] for k in (*OUTCOME_ATTRS, "wall_seconds", "node") if k in t.user_attrs}
        if "accuracy" not in a or "bytes" not in a:
            continue
        key = "val_accuracy" if "val_accuracy" in a else "accuracy"
        feasible = all(v <= 0 for v in constraints.of(a, dense_accuracy=dense_accuracy, accuracy_key=key).values())
        out.append(point(t.number, a, run_id=t.user_attrs.get(RUN_ATTR), feasible=feasible))
    return out


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by outcome: ``complete`` (the full schedule), ``stopped`` (by MO-ASHA at a rung),
    ``failed`` (real errors), ``interrupted`` (queued again), ``pending`` (running or waiting).
    A search is done when complete, stopped and failed trials reach its ``trials``."""
    c = {"complete": 0, "stopped": 0, "failed": 0, "interrupted": 0, "pending": 0}
    for t in study.get_trials(deepcopy=False):
        if t.state == optuna.trial.TrialState.COMPLETE:
            c["complete"] += 1
        elif t.state == optuna.trial.TrialState.PRUNED:
            c["stopped"] += 1
        elif t.state == optuna.trial.TrialState.FAIL:
            if t.user_attrs.get(DEFERRED_ATTR):
                continue  # its copy, queued behind a resume's retries, stands for it
            c["interrupted" if t.user_attrs.get(INTERRUPTED_ATTR) else "failed"] += 1
        else:
            c["pending"] += 1
    return c


class FrontLogger:
    """Logs the current front of a study to the parent run; call :meth:`update` after each trial."""

    def __init__(self, uri: str, parent_id: str, *, search: str, constraints: Constraints, baseline: Baseline) -> None:
        self.uri = uri
        self.parent_id = parent_id
        self.search = search
        self.constraints = constraints
        self.baseline = baseline
        self._tagged: dict[str, str] = {}
        self._client = None

    @property
    def client(self):
        if self._client is None:
            self._client = tracking.client(self.uri)
        return self._client

    def update(self, study: optuna.Study) -> tuple[list[Point], list[Point]]:
        """Recompute the front, log it to the parent run, retag the children; returns ``(points, front)``."""
        c = self.client
        points = points_of(study, self.constraints, self.baseline.selected)
        front = pareto_front(points, minimise=self.baseline.also_minimised)
        n = counts(study)
        with tempfile.TemporaryDirectory(prefix="squeezetune-front-") as tmp:
            d = Path(tmp)
            (d / "front.csv").write_text(present.to_csv(front, self.baseline))
            (d / "front.json").write_text(present.to_json(front, points, self.baseline, constraints=self.constraints.to_dict(), counts=n))
            title = f"{self.search}: {len(front)} of {len(points)} complete trials on the front"
            present.plot_png(front, points, d / "front.png", self.baseline, title=title)
            present.plot_html(front, points, d / "front.html", self.baseline, title=title)
            tracking.retry(lambda: c.log_artifacts(self.parent_id, str(d), "front"))
        step = n["complete"] + n["stopped"] + n["failed"]
        metrics = {"trials_complete": n["complete"], "trials_stopped": n["stopped"], "trials_failed": n["failed"], "front_size": len(front)}
        if front:
            metrics["best_ratio"] = self.baseline.bytes / min(p.bytes for p in front)
            metrics["best_accuracy"] = max(p.accuracy for p in front)
        tracking.retry(lambda: c.log_batch(self.parent_id, metrics=tracking.metrics_batch(metrics, step=step)))
        on_front = {p.run_id for p in front if p.run_id}
        for t in study.get_trials(deepcopy=False):
            rid = t.user_attrs.get(RUN_ATTR)
            if rid is None or t.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL):
                continue
            if t.user_attrs.get(INTERRUPTED_ATTR):  # its run belongs to the trial that re-ran it
                continue
            value = "true" if rid in on_front else "false"
            if self._tagged.get(rid) != value:
                tracking.retry(lambda rid=rid, value=value: c.set_tag(rid, PARETO_TAG, value))
                self._tagged[rid] = value
        return points, front
