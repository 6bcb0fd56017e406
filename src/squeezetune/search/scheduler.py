"""MO-ASHA: multi-objective asynchronous successive halving, as a Ray Tune scheduler.

Each trial trains its fidelity stage (a fine-tune, or gradual pruning's training) for up to
``max_t`` epochs and reports at the *rungs*
``min_t, min_t * eta, min_t * eta**2, ...`` below ``max_t`` (Schmucker et al. 2021). When a trial
reaches a rung, it is ranked among every trial that has reached that rung so far: feasible first,
then by non-domination rank over all objectives, then by crowding distance (NSGA-II's diversity
rule); infeasible trials after them, by how far they miss their constraints
(:func:`~squeezetune.search.pareto.priority`). A trial in the best ``ceil(n / eta)`` goes on, any
other stops there (``n`` counts the sampled trials, not the warm starts: see below). No weighted
sum of objectives is formed. Decisions are asynchronous, as in ASHA: no trial waits for a rung to
fill, and the first trials at a rung always go on.

An accuracy limit (``max_drop``) is the limit of the *finished* model, and a trial at a rung is
still recovering: judged by it as is, a heavily pruned trial at 18 of 40 epochs ranks behind every
larger one that already meets the limit, and the search only ever finishes large models. So at each
rung the limit is checked against the rung's accuracy plus the *recovery seen so far* from that
rung: the largest gain, final minus rung accuracy, of any trial that finished (never below zero;
zero until a trial has finished, so the first decisions are strict ones). The largest, not a
typical gain: most trials that finish are mildly pruned and gain nothing after the first rung
(their median gain is about 0), while a heavily pruned one gains a point or more, and it is those
the allowance is for; like ASHA, the rule is optimistic about a trial that could still make it.
Warm starts, which are never stopped, finish first and give the first measurements. A resumed
search seeds the scheduler with the rung results and outcomes of the trials it ran before
(:meth:`MOASHA.seed`, read back from their MLflow runs' metric steps), so its rankings and
recovery carry on where they were.

A warm-start trial (a built-in or user recipe projected into the space, marked ``_warm_start`` in
its config) is ranked at each rung like any other, so later trials are compared against it, but it
is never stopped: the front a search ends with is never worse than the recipes it started from.
Nor does it take a place: the best ``ceil(n / eta)`` are counted over the ``n`` *sampled* trials at
the rung, in their order among all trials. Counted among them, a search's warm starts (a recipe and
its neighbours, which reach every rung first and rank near its top) would fill the few places
of the later rungs, and the sampler's trials would almost never finish.

Early stopping only pays when the trials cannot all have the full schedule. Given a ``budget_s``
(``fidelity.early_stopping: auto``, the default), the scheduler stops no trial while ``trials``
full schedules, each as long as the mean wall time of the trials that finished so far, run
``slots`` at a time, fit in ``budget_s``; every trial then goes to the end, as with
``early_stopping: false``. Before any trial has finished, and whenever the projection is over the
budget, it stops trials by the rule above. The warm starts run first: with the five of a built-in
net and two slots, the sampled trials start once four of them have finished, so they reach their
first rung with full schedules timed; with no warm starts, or as many slots as warm starts, the
first decisions are strict ones. ``slots`` is what the cluster can run at once. (On
LeNet-300-100, where a full schedule takes 20-30 s, 32 full-budget trials ended with
more hypervolume than MO-ASHA's in each of five seeds, in 7-9 minutes: its rungs measure a model
pruned at once to its targets, before centroid tuning, and stopped trials that would have ended
well.)

>>> rungs(min_t=2, max_t=40, eta=3)
(2, 6, 18)
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Sequence

from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from squeezetune.search.pareto import priority


def rungs(*, min_t: int, max_t: int, eta: int) -> tuple[int, ...]:
    """The fidelities (epochs) below ``max_t`` at which trials are compared."""
    out, t = [], min_t
    while t < max_t:
        out.append(t)
        t *= eta
    return tuple(out)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f}".removesuffix(".0")


def _finite(v: Any) -> float | None:
    """``v`` as a float when it is a finite number (not a bool), else ``None``."""
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _warm_start(trial) -> bool:
    config = getattr(trial, "config", None)
    return bool(config.get("_warm_start")) if isinstance(config, Mapping) else False


class MOASHA(FIFOScheduler):
    """Multi-objective ASHA over ``objectives`` (``(metric, "max" | "min")`` pairs).

    ``violation(result)`` gives a result's total constraint violation (``<= 0``: feasible).
    ``time_attr`` names the fidelity in each result; a result with ``final`` set is the trial's
    complete outcome and is never stopped. ``recovery_key`` names the accuracy that rises with
    fine-tuning (default: the first maximised objective), to which a rung's observed recovery is
    added before ``violation`` is checked (see the module doc). With ``budget_s``, it stops no
    trial while ``trials`` full schedules, ``slots`` at a time, fit in that many seconds
    (:meth:`stopping`), and tells ``say`` what it measured when a first trial finishes and whenever
    that turns stopping on or off.
    """

    def __init__(
        self,
        objectives: Sequence[tuple[str, str]],
        *,
        max_t: int,
        min_t: int,
        eta: int = 3,
        time_attr: str = "epoch",
        violation: Callable[[Mapping[str, Any]], float] | None = None,
        recovery_key: str | None = None,
        budget_s: float | None = None,
        trials: int = 1,
        slots: int = 1,
        say: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__()
        if eta < 2 or min_t < 1 or max_t < min_t:
            raise ValueError(f"MOASHA needs eta >= 2 and 1 <= min_t <= max_t, got eta={eta} min_t={min_t} max_t={max_t}")
        if trials < 1 or slots < 1:
            raise ValueError(f"MOASHA needs trials >= 1 and slots >= 1, got trials={trials} slots={slots}")
        self.objectives = tuple(objectives)
        self.time_attr = time_attr
        self.eta = eta
        self.milestones = rungs(min_t=min_t, max_t=max_t, eta=eta)
        self._violation = violation or (lambda result: 0.0)
        self.recovery_key = recovery_key or next((m for m, mode in self.objectives if mode == "max"), None)
        self._recorded: dict[int, dict[str, tuple[tuple[float, ...], dict[str, Any]]]] = {m: {} for m in self.milestones}
        self._recovery: dict[int, float] = dict.fromkeys(self.milestones, 0.0)
        self._warm: set[str] = set()
        self.stopped: dict[str, int] = {}
        """Trials this scheduler stopped, and the rung where it stopped them."""
        self.budget_s = budget_s
        self.trials = trials
        self.slots = slots
        self._full_s: dict[str, float] = {}  # trial id -> wall time of its full schedule
        self._say = say
        self._said: bool | None = None  # the stopping() last announced
        self.spared: set[str] = set()
        """Trials that ranked out of the promoted places at a rung but went on, the full schedules fitting in ``budget_s``."""

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        return True  # objectives are fixed at construction

    def _vector(self, result: Mapping[str, Any]) -> tuple[float, ...] | None:
        values = []
        for metric, mode in self.objectives:
            v = result.get(metric)
            if not isinstance(v, (int, float)) or not math.isfinite(v):
                return None
            values.append(-float(v) if mode == "max" else float(v))
        return tuple(values)

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        t = result.get(self.time_attr)
        if result.get("final"):
            self._finished(trial.trial_id, result)
            return TrialScheduler.CONTINUE
        vector = self._vector(result)
        if t is None or vector is None:
            return TrialScheduler.CONTINUE
        for milestone in reversed(self.milestones):
            if t < milestone:
                continue
            recorded = self._recorded[milestone]
            if trial.trial_id in recorded:
                return TrialScheduler.CONTINUE
            recorded[trial.trial_id] = (vector, dict(result))
            if _warm_start(trial):
                self._warm.add(trial.trial_id)
            if self.promotable(milestone, trial.trial_id):
                return TrialScheduler.CONTINUE
            if not self.stopping():
                self.spared.add(trial.trial_id)
                return TrialScheduler.CONTINUE
            self.stopped[trial.trial_id] = milestone
            return TrialScheduler.STOP
        return TrialScheduler.CONTINUE

    def seed(self, trial_id: str, at_rungs: Mapping[int, Mapping[str, Any]], final: Mapping[str, Any] | None = None, *, warm_start: bool = False) -> None:
        """Record an earlier trial (one a resumed search ran before): its results at the rungs it
        reached and, when it finished, its final outcome. Later trials are ranked against it, and
        its gains from each rung raise the recovery, as if this scheduler had seen it run; a
        ``warm_start`` takes no place among the promoted."""
        if warm_start:
            self._warm.add(trial_id)
        for milestone, result in at_rungs.items():
            vector = self._vector(result)
            if milestone in self._recorded and vector is not None:
                self._recorded[milestone][trial_id] = (vector, dict(result))
        if final is not None:
            self._finished(trial_id, final)

    def promotable(self, milestone: int, trial_id: str) -> bool:
        """Whether ``trial_id`` is among the best ``ceil(n / eta)`` of the ``n`` sampled (not warm-start)
        trials at ``milestone``, ranked among all the trials there; a warm start always is (it is
        never stopped)."""
        if trial_id in self._warm:
            return True
        recorded = self._recorded[milestone]
        ids = list(recorded)
        order = priority([recorded[i][0] for i in ids], [self.violation_at(milestone, recorded[i][1]) for i in ids])
        sampled = [ids[i] for i in order if ids[i] not in self._warm]
        keep = math.ceil(len(sampled) / self.eta)
        return trial_id in sampled[:keep]

    def full_schedule_s(self) -> float | None:
        """The mean wall time of the trials that finished in this run (``None`` before the first)."""
        return sum(self._full_s.values()) / len(self._full_s) if self._full_s else None

    def projected_s(self) -> float | None:
        """How long ``trials`` full schedules take, ``slots`` at a time (``None`` before a trial finished)."""
        each = self.full_schedule_s()
        return None if each is None else math.ceil(self.trials / self.slots) * each

    def stopping(self) -> bool:
        """Whether trials outside the promoted places stop now: always without ``budget_s``; with it,
        until a trial has finished and whenever the projected full schedules are over the budget."""
        if self.budget_s is None:
            return True
        projected = self.projected_s()
        return projected is None or projected > self.budget_s

    def _announce(self) -> None:
        if self.budget_s is None or self._say is None or self._said == self.stopping():
            return
        self._said = self.stopping()
        what = "trials outside the promoted places stop" if self._said else "no trial is stopped while that holds"
        self._say(f"MO-ASHA (early_stopping: auto): a full schedule takes {self.full_schedule_s():.0f} s; {self._projection()}: {what}")

    def _projection(self) -> str:
        """The measured projection against the budget, in words (once a trial has finished)."""
        projected = self.projected_s()
        within = "within" if projected <= self.budget_s else "over"
        return f"{self.trials} of them, {self.slots} at a time, take {projected / 60:.1f} min, {within} its {_minutes(self.budget_s)} min"

    def summary(self) -> str | None:
        """What early stopping did, in a line (``None`` without ``budget_s``, where it always stops)."""
        if self.budget_s is None:
            return None
        each = self.full_schedule_s()
        if each is None:
            return f"MO-ASHA: no trial finished, so the cost of a full schedule was never measured; {len(self.stopped)} trials stopped early"
        return (
            f"MO-ASHA (early_stopping: auto): a full schedule took {each:.0f} s on average, so {self._projection()}; "
            f"{len(self.stopped)} trials stopped early, {len(self.spared)} went on though they ranked outside the promoted places"
        )

    def recovery(self, milestone: int) -> float:
        """The most accuracy a finished trial gained between ``milestone`` and its final outcome
        (0 before any trial that reported there finished)."""
        return self._recovery[milestone]

    def violation_at(self, milestone: int, result: Mapping[str, Any]) -> float:
        """``result``'s constraint violation, its accuracy raised by the recovery seen from ``milestone``."""
        gain = self.recovery(milestone)
        accuracy = self._accuracy(result)
        if gain > 0 and accuracy is not None:
            result = {**result, self.recovery_key: accuracy + gain}
        return float(self._violation(result))

    def _accuracy(self, result: Mapping[str, Any]) -> float | None:
        return _finite(result.get(self.recovery_key)) if self.recovery_key else None

    def _finished(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """Raise each rung's recovery to what this trial gained from it (its rung record is kept), and
        time its full schedule (``time_total_s``; a resumed search reads it from the earlier trial's run)."""
        seconds = _finite(result.get("time_total_s"))
        if seconds is not None and seconds > 0 and trial_id not in self._full_s:  # Tune hands the last result over twice
            self._full_s[trial_id] = seconds
            self._announce()
        final = self._accuracy(result)
        if final is None:
            return
        for milestone, recorded in self._recorded.items():
            at_rung = self._accuracy(recorded[trial_id][1]) if trial_id in recorded else None
            if at_rung is not None:
                self._recovery[milestone] = max(self._recovery[milestone], final - at_rung)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        pass

    def on_trial_remove(self, tune_controller, trial) -> None:
        pass

    def debug_string(self) -> str:
        counts = ", ".join(f"{m} epochs: {len(r)} reached" for m, r in self._recorded.items())
        return f"MO-ASHA ({len(self.stopped)} stopped; {counts})"
