"""Ray Tune's ``OptunaSearch``, tied to a persistent Optuna study and to MLflow child runs.

:class:`TrackedOptunaSearch` adds three things to the stock searcher:

* each new Optuna trial gets its MLflow child run when it is suggested, on the driver, and the run
  id travels in the trial's config -- so a trial that Tune retries (its node died) or that
  ``--resume`` re-runs logs into the same run, never a duplicate;
* a trial that reports an ``error`` or a non-finite accuracy is told to Optuna as FAIL (the stock
  searcher would try to tell NaN values and leave the trial RUNNING);
* the outcome is stored as Optuna user attributes, and the constraint violations it implies are
  set on the trial (``Trial.set_constraint``, see :meth:`OutcomeConstraints.set_on`) before ``tell``, so the
  constrained samplers rank feasible trials first.

The study lives in an RDB storage (sqlite by default), which is what ``--resume`` reads; Tune's own
searcher checkpoint (a pickle) is not written.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import optuna
from ray.tune.search.optuna import OptunaSearch

from squeezetune.compression.report import OUTCOME
from squeezetune.spaces import Constraints

logger = logging.getLogger(__name__)

RUN_ATTR = "mlflow_run_id"
OUTCOME_ATTRS = (*OUTCOME, "pipeline_seconds", "trial_seconds", "mlflow_seconds")
"""What a trial's result leaves on its Optuna trial as user attributes."""
INTERRUPTED_ATTR = "interrupted"
REQUEUES_ATTR = "requeues"
"""How often a trial's parameters were queued again after it ended without a result."""
MAX_REQUEUES = 3
ERROR_ATTR = "error"
METRICS = ["accuracy", "bytes"]
MODES = ["max", "min"]


@dataclass(frozen=True)
class OutcomeConstraints:
    """The search's constraints, and the dense accuracy ``max_drop`` is measured against."""

    constraints: Constraints
    dense_accuracy: float

    def set_on(self, trial: optuna.trial.Trial, outcome: Mapping[str, Any]) -> None:
        """Record on ``trial``, before it is told, how far ``outcome`` (accuracy, bytes, MACs) is
        from each limit (``<= 0``: met); NSGA-II, TPE and GP read them back as ``trial.constraints``."""
        violations = self.constraints.named_violations(
            accuracy=float(outcome["accuracy"]), bytes=int(outcome["bytes"]), dense_accuracy=self.dense_accuracy, macs=outcome.get("macs")
        )
        for name, value in violations.items():
            trial.set_constraint(name, value)


def make_sampler(kind: str, *, seed: int, population: int) -> optuna.samplers.BaseSampler:
    """NSGA-II, TPE, GP (Gaussian-process Bayesian optimisation; log expected hypervolume improvement
    for two objectives) or random. The first three honour the constraints each trial carries."""
    if kind == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=population, seed=seed)
    if kind == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=population, seed=seed, multivariate=True)
    if kind == "gp":
        return optuna.samplers.GPSampler(n_startup_trials=population, seed=seed)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise TypeError(f"no sampler for {kind!r}; known: ['nsga2', 'tpe', 'gp', 'random']")


def resumed_seed(seed: int, trials_so_far: int) -> int:
    """The sampler seed for a search whose study already holds ``trials_so_far`` trials.

    A sampler seeded as before replays its stream from the start: a resumed search would suggest
    the configurations it already tried. A fresh study keeps ``seed`` itself, so a new search is
    reproducible; a resumed one gets a seed drawn from ``(seed, trials_so_far)``, the same on every
    machine for the same study.

    >>> resumed_seed(7, 0), resumed_seed(7, 3) == resumed_seed(7, 3), resumed_seed(7, 3) != resumed_seed(7, 4)
    (7, True, True)
    """
    if trials_so_far == 0:
        return seed
    import numpy as np

    return int(np.random.SeedSequence([seed, trials_so_far]).generate_state(1)[0])


class TrackedOptunaSearch(OptunaSearch):
    """``OptunaSearch`` over a define-by-run space, two objectives, an RDB study and MLflow child runs.

    ``new_run(trial_number) -> run_id`` creates a child run on the driver; ``reuse_run(run_id,
    trial_number)`` is called when a retried trial takes over its first attempt's run.
    """

    def __init__(
        self,
        space: Callable,
        *,
        sampler: optuna.samplers.BaseSampler,
        study_name: str,
        storage: str,
        new_run: Callable[[int], str],
        reuse_run: Callable[[str, int], None] | None = None,
        on_told: Callable[[optuna.trial.FrozenTrial | None], None] | None = None,
        constraints: OutcomeConstraints | None = None,
    ) -> None:
        rdb = optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 30}} if storage.startswith("sqlite") else None)
        super().__init__(space=space, metric=METRICS, mode=MODES, sampler=sampler, study_name=study_name, storage=rdb)
        self._new_run = new_run
        self._reuse_run = reuse_run
        self._on_told = on_told
        self._constraints = constraints
        self._suggested_at: dict[str, float] = {}

    @property
    def study(self) -> optuna.Study:
        return self._ot_study

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        ot_trial = self._ot_trials[trial_id]
        run_id = ot_trial.user_attrs.get(RUN_ATTR)
        if run_id is None:
            run_id = self._new_run(ot_trial.number)
            ot_trial.set_user_attr(RUN_ATTR, run_id)
        elif self._reuse_run is not None:
            self._reuse_run(run_id, ot_trial.number)
        self._suggested_at[trial_id] = time.perf_counter()
        return {**config, "_run_id": run_id, "_trial": ot_trial.number}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        result = result or {}
        message = result.get("error")
        acc = result.get("accuracy")
        if not error and not message and acc is None:
            self._interrupted(trial_id, ot_trial)
            return
        if not message and error:
            message = "the trial's worker failed (after Tune's retries)"
        if not message and not (isinstance(acc, (int, float)) and math.isfinite(acc)):
            message = f"accuracy is {acc}"
        for key in OUTCOME_ATTRS:
            v = result.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                ot_trial.set_user_attr(key, v)
        if trial_id in self._suggested_at:
            ot_trial.set_user_attr("wall_seconds", time.perf_counter() - self._suggested_at.pop(trial_id))
        if result.get("node"):
            ot_trial.set_user_attr("node", str(result["node"]))
        if message:
            ot_trial.set_user_attr(ERROR_ATTR, str(message)[:500])
            try:
                self._ot_study.tell(ot_trial, None, state=optuna.trial.TrialState.FAIL)
            except Exception as exc:  # already finished
                logger.warning("could not record trial %s as failed: %s", ot_trial.number, exc)
            self._completed_trials.add(trial_id)
        else:
            result = {**result, "bytes": float(result["bytes"]), "accuracy": float(acc)}
            if self._constraints is not None:
                self._constraints.set_on(ot_trial, result)
            super().on_trial_complete(trial_id, result=result, error=False)
        if self._on_told is not None:
            self._on_told(self._ot_study._storage.get_trial(ot_trial._trial_id))

    def _interrupted(self, trial_id: str, ot_trial) -> None:
        """Tune stopped the trial before it reported (Ctrl-C, or never started): queue it again.

        The Optuna trial is closed as FAIL marked ``interrupted`` (not counted as done) and its
        parameters are enqueued with the same MLflow run, so a later trial -- in this session or
        after ``--resume`` -- runs it into that run.
        """
        requeues = int(ot_trial.user_attrs.get(REQUEUES_ATTR, 0))
        if requeues >= MAX_REQUEUES:  # it keeps ending without a result: a real failure, not an interruption
            ot_trial.set_user_attr(ERROR_ATTR, f"the trial ended without reporting a result {requeues + 1} times")
        else:
            ot_trial.set_user_attr(INTERRUPTED_ATTR, True)
        try:
            self._ot_study.tell(ot_trial, None, state=optuna.trial.TrialState.FAIL)
        except Exception as exc:
            logger.warning("could not close interrupted trial %s: %s", ot_trial.number, exc)
        if requeues < MAX_REQUEUES:
            attrs = {k: v for k, v in ot_trial.user_attrs.items() if k == RUN_ATTR}
            attrs.update({"retry_of": ot_trial.number, REQUEUES_ATTR: requeues + 1})
            self._ot_study.enqueue_trial(dict(ot_trial.params), user_attrs=attrs, skip_if_exists=False)
        self._completed_trials.add(trial_id)
        self._suggested_at.pop(trial_id, None)
        if requeues >= MAX_REQUEUES and self._on_told is not None:
            self._on_told(self._ot_study._storage.get_trial(ot_trial._trial_id))

    def save(self, checkpoint_path: str) -> None:
        """Not written: the study is persisted in its RDB storage, which ``--resume`` reads."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore (see :meth:`save`)."""
