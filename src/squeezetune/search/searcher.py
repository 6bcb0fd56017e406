"""Ray Tune's ``OptunaSearch``, tied to a persistent Optuna study and to MLflow child runs.

:class:`TrackedOptunaSearch` adds to the stock searcher:

* each new Optuna trial gets its MLflow child run when it is suggested, on the driver, and the run
  id travels in the trial's config -- so a trial that Tune retries (its node died) or that
  ``--resume`` re-runs logs into the same run, never a duplicate;
* a trial's last result decides how Optuna hears of it (:meth:`TrackedOptunaSearch.on_trial_complete`):

  - its ``final`` outcome (the full schedule ran): COMPLETE, with the objectives;
  - an ``error``, or a worker that kept dying: FAIL, with the error as a user attribute;
  - a rung result but no final one (MO-ASHA stopped it early): PRUNED, never COMPLETE with
    partial values. Its last rung's figures stay as user attributes (``rung_*``), and it carries
    the constraint ``fidelity = 1 - epochs reached / full epochs`` (above 0: infeasible). That is
    how a stopped trial feeds the sampler. TPE (the default) models the best tenth of the trials
    against the rest: completed trials that meet the constraints come first, then the others by
    total violation, so while few trials have completed, those stopped at a late rung close to the
    limits stand for the good region, and those stopped at the first rung, or far off, for the bad
    one. NSGA-II and GP draw their parents and model from completed trials only (NSGA-II needs a
    whole population of them before it breeds, which MO-ASHA's stopping delays for long);
  - no result at all (Ctrl-C, never started): re-queued with the same parameters and run;

* the outcome is stored as Optuna user attributes, and the constraint violations it implies are
  set on the trial (``Trial.set_constraint``, see :meth:`OutcomeConstraints.set_on`) before ``tell``,
  so the constrained samplers rank feasible trials first.

The study lives in an RDB storage (sqlite by default), which is what ``--resume`` reads; Tune's own
searcher checkpoint (a pickle) is not written.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import optuna
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from squeezetune.compression.report import OUTCOME
from squeezetune.search import _adapters
from squeezetune.spaces import Constraints

logger = logging.getLogger(__name__)

RUN_ATTR = "mlflow_run_id"
OUTCOME_ATTRS = (*OUTCOME, "epoch", "pipeline_seconds", "trial_seconds", "mlflow_seconds")
"""What a trial's result leaves on its Optuna trial as user attributes."""
STOPPED_ATTR = "stopped_at"
"""The epochs of the fidelity stage a trial had reached when MO-ASHA stopped it."""
RUNG_PREFIX = "rung_"
OBJECTIVE_METRICS = {"accuracy": ("val_accuracy", "max"), "bytes": ("bytes", "min")}
"""Each objective a search can name, as the trial's result key Optuna is told and its direction."""
INTERRUPTED_ATTR = "interrupted"
REQUEUES_ATTR = "requeues"
DEFERRED_ATTR = "deferred"
"""A waiting trial queued again behind the retries of a resume (its copy runs; it counts nowhere)."""
"""How often a trial's parameters were queued again after it ended without a result."""
MAX_REQUEUES = 3
ERROR_ATTR = "error"


def objective_values(objectives: list[tuple[str, str]], outcome: Mapping[str, Any]) -> list[Any]:
    """The objective values of an outcome (a trial's result, a run's metrics); an outcome without a
    validation accuracy (a search recorded before validation splits) gives its ``accuracy``."""
    return [outcome.get(key, outcome.get("accuracy")) if key == "val_accuracy" else outcome.get(key) for key, _ in objectives]


def objective_metrics(objectives) -> list[tuple[str, str]]:
    """``(result key, "max" | "min")`` of each objective: accuracy is the validation accuracy
    (selection never sees the evaluation images), latencies are minimised."""
    return [OBJECTIVE_METRICS.get(o, (o, "min")) for o in objectives]


@dataclass(frozen=True)
class OutcomeConstraints:
    """The search's constraints, and the dense accuracy ``max_drop`` is measured against."""

    constraints: Constraints
    dense_accuracy: float
    """The dense model's accuracy on the split the search selects on (validation)."""

    def violations(self, outcome: Mapping[str, Any]) -> dict[str, float]:
        """Each limit's violation for ``outcome``, its accuracy the one selected on (``val_accuracy``
        when the outcome has it, as every trial of a search with a validation split does)."""
        key = "val_accuracy" if "val_accuracy" in outcome else "accuracy"
        return self.constraints.of(outcome, dense_accuracy=self.dense_accuracy, accuracy_key=key)

    def set_on(self, trial: optuna.trial.Trial, outcome: Mapping[str, Any]) -> None:
        """Record on ``trial``, before it is told, how far ``outcome`` (validation accuracy, bytes,
        MACs, latency) is from each limit (``<= 0``: met); NSGA-II, TPE and GP read them back as
        ``trial.constraints``."""
        for name, value in self.violations(outcome).items():
            trial.set_constraint(name, value)


class _NSGAII(optuna.samplers.NSGAIISampler):
    """NSGA-II that pickles. Ray Tune pickles its search algorithm with the sampler in it (the
    tuner's state, searcher checkpoints), and from Optuna 5.1 the genetic samplers hold a
    ``threading.Lock`` for their generation cache: the lock is left out and made anew."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


# Optuna names the genetic samplers' study attributes after the class: keep NSGAIISampler's, so a
# study an NSGA-II search began before keeps its generations when resumed
for _key in ("_GENERATION_KEY", "_PARENT_CACHE_KEY_PREFIX"):
    if hasattr(optuna.samplers.NSGAIISampler, _key):
        setattr(_NSGAII, _key, getattr(optuna.samplers.NSGAIISampler, _key))


def make_sampler(kind: str, *, seed: int, population: int) -> optuna.samplers.BaseSampler:
    """NSGA-II, TPE, GP (Gaussian-process Bayesian optimisation; log expected hypervolume improvement
    for two objectives) or random. The first three honour the constraints each trial carries."""
    if kind == "nsga2":
        return _NSGAII(population_size=population, seed=seed)
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


def requeue(study: optuna.Study, trial: optuna.trial.FrozenTrial | optuna.trial.Trial, *, run_id: str | None, requeues: int = 0) -> None:
    """Queue ``trial``'s parameters again for a later trial that logs into the same MLflow run."""
    attrs: dict[str, Any] = {"retry_of": trial.number, REQUEUES_ATTR: requeues + 1}
    if run_id:
        attrs[RUN_ATTR] = run_id
    if trial.user_attrs.get("warm_start"):
        attrs["warm_start"] = True  # MO-ASHA never stops a warm start, retried or not
    study.enqueue_trial(dict(trial.params), user_attrs=attrs, skip_if_exists=False)


class TrackedOptunaSearch(OptunaSearch):
    """``OptunaSearch`` over a define-by-run space, several objectives, an RDB study and MLflow child runs.

    ``new_run(trial_number) -> run_id`` creates a child run on the driver; ``reuse_run(run_id,
    trial_number)`` is called when a retried trial takes over its first attempt's run.
    ``objectives`` are ``(result key, mode)`` pairs (:func:`objective_metrics`); ``full_epochs`` the
    fidelity a complete trial reaches. Past ``deadline`` (a :func:`time.perf_counter` value) no trial
    is suggested: Tune lets the running ones finish and ends the search.
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
        objectives: list[tuple[str, str]] | None = None,
        full_epochs: int | None = None,
        deadline: float | None = None,
    ) -> None:
        objectives = objectives or objective_metrics(("accuracy", "bytes"))
        rdb = optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 30}} if storage.startswith("sqlite") else None)
        super().__init__(space=space, metric=[m for m, _ in objectives], mode=[d for _, d in objectives], sampler=sampler, study_name=study_name, storage=rdb)
        self._objectives = objectives
        self._full_epochs = full_epochs
        self._new_run = new_run
        self._reuse_run = reuse_run
        self._on_told = on_told
        self._constraints = constraints
        self._suggested_at: dict[str, float] = {}
        self._deadline = deadline
        self.out_of_time = False
        """Whether the time budget ended the search (no trial was suggested after ``deadline``)."""
        self.interrupted = 0
        """Trials of this session that ended without a result (Ctrl-C) and were queued again."""

    @property
    def study(self) -> optuna.Study:
        return _adapters.searcher_study(self)

    def time_left(self) -> float | None:
        """Seconds until the deadline (``None`` without one)."""
        return None if self._deadline is None else max(0.0, self._deadline - time.perf_counter())

    def suggest(self, trial_id: str) -> dict | str | None:
        if self._deadline is not None and time.perf_counter() >= self._deadline:
            self.out_of_time = True
            return Searcher.FINISHED  # Tune starts no more trials; the running ones finish
        config = super().suggest(trial_id)
        ot_trial = _adapters.live_trial(self, trial_id)
        run_id = ot_trial.user_attrs.get(RUN_ATTR)
        if run_id is None:
            run_id = self._new_run(ot_trial.number)
            ot_trial.set_user_attr(RUN_ATTR, run_id)
        elif self._reuse_run is not None:
            self._reuse_run(run_id, ot_trial.number)
        self._suggested_at[trial_id] = time.perf_counter()
        return {**config, "_run_id": run_id, "_trial": ot_trial.number, "_warm_start": bool(ot_trial.user_attrs.get("warm_start"))}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Rung results reach Optuna only through the trial's final outcome (see the module doc)."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = _adapters.live_trial(self, trial_id)
        if trial_id in _adapters.told(self) or ot_trial is None:
            return
        result = result or {}
        message = result.get("error")
        values = objective_values(self._objectives, result)
        if not error and not message and result.get("epoch") is None:
            self._interrupted(trial_id, ot_trial)
            return
        if not message and error:
            message = "the trial's worker failed (after Tune's retries)"
        if not message and not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            message = f"objectives {dict(zip([m for m, _ in self._objectives], values))} are not all finite"
        final = bool(result.get("final"))
        for key in OUTCOME_ATTRS:
            v = result.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                ot_trial.set_user_attr(key if final else RUNG_PREFIX + key, v)
        if trial_id in self._suggested_at:
            ot_trial.set_user_attr("wall_seconds", time.perf_counter() - self._suggested_at.pop(trial_id))
        if result.get("node"):
            ot_trial.set_user_attr("node", str(result["node"]))
        if message:
            ot_trial.set_user_attr(ERROR_ATTR, str(message)[:500])
            self._tell(ot_trial, None, optuna.trial.TrialState.FAIL)
        elif not final:  # stopped at a rung: never COMPLETE with partial values
            epoch = int(result["epoch"])
            ot_trial.set_user_attr(STOPPED_ATTR, epoch)
            if self._constraints is not None:
                self._constraints.set_on(ot_trial, result)
            if self._full_epochs:
                ot_trial.set_constraint("fidelity", round(1.0 - epoch / self._full_epochs, 12))
            self._tell(ot_trial, None, optuna.trial.TrialState.PRUNED)
        else:
            if self._constraints is not None:
                self._constraints.set_on(ot_trial, result)
            self._tell(ot_trial, [float(v) for v in values], optuna.trial.TrialState.COMPLETE)
        _adapters.told(self).add(trial_id)
        if self._on_told is not None:
            self._on_told(_adapters.frozen(self.study, ot_trial.number))

    def _tell(self, trial: optuna.trial.Trial, values, state) -> None:
        try:
            self.study.tell(trial, values, state=state)
        except Exception as exc:  # already finished
            logger.warning("could not record trial %s as %s: %s", trial.number, state.name, exc)

    def _interrupted(self, trial_id: str, ot_trial: optuna.trial.Trial) -> None:
        """Tune stopped the trial before it reported (Ctrl-C, or never started): queue it again.

        The Optuna trial is closed as FAIL marked ``interrupted`` (not counted as done) and its
        parameters are enqueued with the same MLflow run, so a later trial -- in this session or
        after ``--resume`` -- runs it into that run.
        """
        requeues = int(ot_trial.user_attrs.get(REQUEUES_ATTR, 0))
        self.interrupted += 1
        if requeues >= MAX_REQUEUES:  # it keeps ending without a result: a real failure, not an interruption
            ot_trial.set_user_attr(ERROR_ATTR, f"the trial ended without reporting a result {requeues + 1} times")
        else:
            ot_trial.set_user_attr(INTERRUPTED_ATTR, True)
        self._tell(ot_trial, None, optuna.trial.TrialState.FAIL)
        if requeues < MAX_REQUEUES:
            requeue(self.study, ot_trial, run_id=ot_trial.user_attrs.get(RUN_ATTR), requeues=requeues)
        _adapters.told(self).add(trial_id)
        self._suggested_at.pop(trial_id, None)
        if requeues >= MAX_REQUEUES and self._on_told is not None:
            self._on_told(_adapters.frozen(self.study, ot_trial.number))

    def save(self, checkpoint_path: str) -> None:
        """Not written: the study is persisted in its RDB storage, which ``--resume`` reads."""

    def restore(self, checkpoint_path: str) -> None:
        """Nothing to restore (see :meth:`save`)."""
