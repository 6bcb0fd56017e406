"""MO-ASHA: ranking by non-domination and crowding, decisions at each rung, and a real Ray Tune run
in which stopped trials reach Optuna as PRUNED, never as COMPLETE with partial values."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from squeezetune.search.pareto import crowding_distances, nondominated_ranks, priority
from squeezetune.search.scheduler import MOASHA, rungs


def test_nondominated_ranks_peel_fronts():
    pts = [(1, 5), (2, 2), (5, 1), (3, 3), (4, 4), (6, 6)]
    assert nondominated_ranks(pts) == [0, 0, 0, 1, 2, 3]


def test_crowding_keeps_the_ends_and_prefers_isolated_points():
    d = crowding_distances([(0, 10), (1, 9), (2, 8), (9, 1), (10, 0)])
    assert math.isinf(d[0]) and math.isinf(d[4])
    assert d[3] > d[1]  # (9, 1) sits alone, (1, 9) between close neighbours


def test_priority_puts_feasible_first_and_weighs_every_objective_among_the_infeasible():
    vectors = [(-0.90, 100), (-0.95, 900), (-0.50, 50), (-0.99, 5000)]
    order = priority(vectors, [0.0, 0.0, 2.0, 0.5])
    assert order[:2] in ([0, 1], [1, 0]) and set(order[2:]) == {2, 3}
    # no weighted sum: a point dominated in both objectives always ranks after its dominator
    assert priority([(1, 1), (2, 2)]) == [0, 1]


def _decide(scheduler: MOASHA, tid: str, epoch: int, acc: float, size: float, **extra) -> str:
    return scheduler.on_trial_result(None, SimpleNamespace(trial_id=tid), {"epoch": epoch, "val_accuracy": acc, "bytes": size, **extra})


def test_rungs_and_decisions():
    assert rungs(min_t=1, max_t=27, eta=3) == (1, 3, 9)
    s = MOASHA([("val_accuracy", "max"), ("bytes", "min")], max_t=27, min_t=1, eta=3)
    assert _decide(s, "a", 1, 0.90, 1000) == "CONTINUE"  # the first at a rung always goes on
    assert _decide(s, "b", 1, 0.80, 2000) == "STOP"  # dominated by a: not in the best ceil(2/3) = 1
    assert _decide(s, "c", 1, 0.95, 5000) == "STOP"  # a and c both end the front; ceil(3/3) = 1 place: the earlier keeps it
    assert _decide(s, "d", 1, 0.97, 3000) == "CONTINUE"  # dominates c; with a, the front of four: ceil(4/3) = 2 places
    assert _decide(s, "a", 2, 0.91, 990) == "CONTINUE"  # between rungs: no decision
    assert _decide(s, "b", 27, 0.5, 10, final=True) == "CONTINUE"  # a final outcome is never stopped
    assert s.stopped == {"b": 1, "c": 1}


def test_a_constraint_ranks_infeasible_trials_after_feasible_ones():
    s = MOASHA([("val_accuracy", "max"), ("bytes", "min")], max_t=9, min_t=1, eta=3, violation=lambda r: 0.97 - r["val_accuracy"])
    assert _decide(s, "small", 1, 0.90, 100) == "CONTINUE"
    assert _decide(s, "big", 1, 0.98, 9000) == "CONTINUE"  # feasible: ahead of the small, infeasible one
    assert _decide(s, "tiny", 1, 0.50, 50) == "STOP"  # infeasible and far off


def test_at_a_rung_the_accuracy_limit_allows_the_recovery_seen_from_there():
    """A limit on the finished model's accuracy: a trial at a rung is judged with the most recovery a
    finished trial made from that rung, not as it stands mid-way."""
    limit = 0.97
    s = MOASHA([("val_accuracy", "max"), ("bytes", "min")], max_t=9, min_t=1, eta=3, violation=lambda r: limit - r["val_accuracy"])
    assert s.recovery(1) == 0.0  # nothing finished yet: the strict limit
    assert _decide(s, "big", 1, 0.975, 9000) == "CONTINUE"
    assert _decide(s, "small", 1, 0.95, 1000) == "STOP"  # infeasible as it stands, behind the feasible big one
    # three trials finish, having gained 0.0, 0.03 and 0.04 since their first rung: allowance 0.04
    for tid, at_rung, final, size in (("r0", 0.97, 0.97, 20000), ("r1", 0.90, 0.93, 500)):
        s.seed(tid, {1: {"val_accuracy": at_rung, "bytes": size}}, {"val_accuracy": final, "bytes": size})  # finished sampled trials
    warm = SimpleNamespace(trial_id="r2", config={"_warm_start": True})  # never stopped: it reaches its final outcome
    assert s.on_trial_result(None, warm, {"epoch": 1, "val_accuracy": 0.92, "bytes": 500}) == "CONTINUE"
    assert s.on_trial_result(None, warm, {"epoch": 9, "val_accuracy": 0.96, "bytes": 500, "final": True}) == "CONTINUE"
    assert s.recovery(1) == pytest.approx(0.04)
    assert s.violation_at(1, {"val_accuracy": 0.95}) < 0 < s.violation_at(1, {"val_accuracy": 0.92})
    assert _decide(s, "small2", 1, 0.955, 1000) == "CONTINUE"  # 0.955 + 0.04 meets the limit: on the feasible front with big, 2 places for 5 sampled trials
    assert s.recovery(3) == 0.0  # no finished trial reported at 3 epochs


def test_a_warm_start_is_ranked_but_never_stopped():
    s = MOASHA([("val_accuracy", "max"), ("bytes", "min")], max_t=9, min_t=1, eta=3, violation=lambda r: 0.97 - r["val_accuracy"])
    assert _decide(s, "best", 1, 0.98, 100) == "CONTINUE"
    recipe = SimpleNamespace(trial_id="recipe", config={"_warm_start": True})
    assert s.on_trial_result(None, recipe, {"epoch": 1, "val_accuracy": 0.90, "bytes": 9000}) == "CONTINUE"  # dominated, yet it goes on
    assert "recipe" in s._recorded[1] and "recipe" not in s.stopped
    plain = SimpleNamespace(trial_id="plain", config={"_warm_start": False})
    assert s.on_trial_result(None, plain, {"epoch": 1, "val_accuracy": 0.90, "bytes": 9000}) == "STOP"  # the same figures, not a warm start


def test_warm_starts_take_no_place_among_the_promoted():
    """Ranked, but not counted: the best ceil(n / eta) are counted over the sampled trials alone."""
    s = MOASHA([("val_accuracy", "max"), ("bytes", "min")], max_t=9, min_t=1, eta=3)
    for tid, acc, size in (("recipe", 0.98, 100), ("smaller", 0.97, 80), ("larger", 0.99, 130)):
        assert s.on_trial_result(None, SimpleNamespace(trial_id=tid, config={"_warm_start": True}), {"epoch": 1, "val_accuracy": acc, "bytes": size}) == "CONTINUE"
    assert _decide(s, "a", 1, 0.95, 500) == "CONTINUE"  # behind all three, yet the first sampled trial: 1 of 1 place
    assert _decide(s, "b", 1, 0.94, 600) == "STOP"  # dominated by a: ceil(2/3) = 1 place, a's
    assert _decide(s, "c", 1, 0.93, 700) == "STOP"  # dominated by a and b: 1 place of ceil(3/3)
    assert _decide(s, "d", 1, 0.965, 300) == "CONTINUE"  # best of the sampled four: ceil(4/3) = 2 places
    assert s.stopped == {"b": 1, "c": 1}
    # a resumed search's warm starts take no place either
    r = MOASHA([("val_accuracy", "max"), ("bytes", "min")], max_t=9, min_t=1, eta=3)
    r.seed("earlier-0", {1: {"val_accuracy": 0.98, "bytes": 100}}, warm_start=True)
    assert _decide(r, "a", 1, 0.95, 500) == "CONTINUE"
    r.seed("earlier-1", {1: {"val_accuracy": 0.96, "bytes": 90}})  # a sampled trial it ran before: it holds the place
    assert _decide(r, "b", 1, 0.955, 450) == "STOP"


def test_auto_stops_none_while_every_full_schedule_fits_in_the_budget():
    """early_stopping: auto. Before a trial finished: strict. Then, with 8 trials of 60 s on 2 slots
    (4 min) inside a 5-min budget, a trial outside the promoted places goes on; once the mean full
    schedule is 90 s (6 min for the 8), over the budget, it stops again. Seeded trials carry no time."""
    said: list[str] = []
    s = MOASHA([("val_accuracy", "max"), ("bytes", "min")], max_t=9, min_t=1, eta=3, budget_s=300, trials=8, slots=2, say=said.append)
    s.seed("earlier-0", {1: {"val_accuracy": 0.99, "bytes": 100}}, {"val_accuracy": 0.99, "bytes": 100}, warm_start=True)
    assert s.full_schedule_s() is None and s.stopping()
    assert _decide(s, "a", 1, 0.90, 1000) == "CONTINUE"  # the first sampled trial at the rung
    assert _decide(s, "b", 1, 0.80, 2000) == "STOP"  # no time measured yet: stopped as without a budget
    assert _decide(s, "a", 9, 0.95, 1000, final=True, time_total_s=60.0) == "CONTINUE"
    assert _decide(s, "a", 9, 0.95, 1000, final=True, time_total_s=61.0) == "CONTINUE"  # Tune repeats the last result: timed once
    assert s.full_schedule_s() == 60 and s.projected_s() == 240 and not s.stopping()
    assert _decide(s, "c", 1, 0.70, 3000) == "CONTINUE"  # dominated: outside ceil(3/3) = 1 place, yet spared
    assert s.spared == {"c"} and "c" not in s.stopped
    assert _decide(s, "c", 9, 0.96, 3000, final=True, time_total_s=120.0) == "CONTINUE"
    assert s.projected_s() == 360 and s.stopping()
    assert _decide(s, "d", 1, 0.60, 4000) == "STOP"
    assert s.stopped == {"b": 1, "d": 1}
    assert "90 s on average" in s.summary() and "over its 5 min" in s.summary() and "2 trials stopped early, 1 went on" in s.summary()
    assert len(said) == 2  # told when the first schedule was timed, and when stopping came back on
    assert "takes 60 s; 8 of them, 2 at a time, take 4.0 min, within its 5 min: no trial is stopped" in said[0]
    assert "takes 90 s" in said[1] and "6.0 min, over its 5 min: trials outside the promoted places stop" in said[1]
    # without a budget (early_stopping: true) a measured schedule changes nothing
    t = MOASHA([("val_accuracy", "max"), ("bytes", "min")], max_t=9, min_t=1, eta=3)
    assert _decide(t, "a", 1, 0.90, 1000) == "CONTINUE"
    assert _decide(t, "a", 9, 0.95, 1000, final=True, time_total_s=1.0) == "CONTINUE"
    assert _decide(t, "b", 1, 0.80, 2000) == "STOP" and t.summary() is None


def test_a_seeded_scheduler_ranks_against_earlier_trials_and_keeps_their_recovery():
    """What a resumed search starts from: the trials it ran before, read back, not an empty scheduler."""
    limit = 0.97
    objectives = [("val_accuracy", "max"), ("bytes", "min")]
    s = MOASHA(objectives, max_t=9, min_t=1, eta=3, violation=lambda r: limit - r["val_accuracy"])
    s.seed("earlier-0", {1: {"val_accuracy": 0.92, "bytes": 500}, 3: {"val_accuracy": 0.95, "bytes": 500}}, {"val_accuracy": 0.975, "bytes": 500})
    s.seed("earlier-1", {1: {"val_accuracy": 0.96, "bytes": 400}})  # stopped at the first rung
    assert s.recovery(1) == pytest.approx(0.055) and s.recovery(3) == pytest.approx(0.025)
    assert set(s._recorded[1]) == {"earlier-0", "earlier-1"} and not s.stopped
    fresh = MOASHA(objectives, max_t=9, min_t=1, eta=3, violation=lambda r: limit - r["val_accuracy"])
    assert _decide(fresh, "new", 1, 0.93, 450) == "CONTINUE"  # alone at the rung, it would go on
    assert _decide(s, "new", 1, 0.93, 450) == "STOP"  # behind the earlier 0.96 at 400 bytes, dominated
    s.seed("earlier-2", {1: {"val_accuracy": float("nan"), "bytes": 10}})  # a result no vector can be made of: skipped
    assert "earlier-2" not in s._recorded[1]


@pytest.mark.slow
def test_stopped_trials_reach_optuna_as_pruned(tmp_path):
    """A real Tune run with a synthetic trainable: MO-ASHA stops most trials at the rungs; Optuna
    hears COMPLETE only with final values, PRUNED for the rest, each carrying its fidelity."""
    import optuna
    import ray
    from ray import tune

    from squeezetune.search.searcher import TrackedOptunaSearch, make_sampler, objective_metrics

    def space(trial):
        return {"x": trial.suggest_float("x", 0.0, 1.0)}

    def trainable(config):
        x = config["x"]
        for epoch in (1, 3):
            tune.report({"epoch": epoch, "val_accuracy": x * epoch / 9, "bytes": 1000 * (1 - x) + 10, "final": False})
        tune.report({"epoch": 9, "val_accuracy": x, "bytes": 1000 * (1 - x) + 10, "final": True})

    objectives = objective_metrics(("accuracy", "bytes"))
    runs = iter(range(1000))
    searcher = TrackedOptunaSearch(
        space,
        sampler=make_sampler("random", seed=0, population=4),
        study_name="s",
        storage=f"sqlite:///{tmp_path / 'o.db'}",
        new_run=lambda n: f"run-{next(runs)}",
        objectives=objectives,
        full_epochs=9,
    )
    # a budget no schedule fits in: it stops as without one, and times each finished trial as Tune reports it
    scheduler = MOASHA(objectives, max_t=9, min_t=1, eta=3, budget_s=1e-9, trials=12, slots=2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=12, max_concurrent_trials=2),
            run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    trials = searcher.study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(complete) + len(pruned) == 12 and pruned and complete
    assert len(scheduler._full_s) == len(complete) and scheduler.full_schedule_s() > 0 and not scheduler.spared
    for t in complete:
        assert t.values == [pytest.approx(t.params["x"]), pytest.approx(1000 * (1 - t.params["x"]) + 10)]  # the final values
    for t in pruned:
        assert t.values is None and t.user_attrs["stopped_at"] in (1, 3)
        assert t.constraints["fidelity"] == pytest.approx(1 - t.user_attrs["stopped_at"] / 9)


def test_scheduler_for_reads_early_stopping():
    """auto (the default) gives MO-ASHA a budget: the time budget's time left, else AUTO_MINUTES;
    true gives none (it always stops), false no scheduler at all; slots never exceed the trials."""
    from squeezetune.search.config import AUTO_MINUTES, SearchConfig
    from squeezetune.search.runner import scheduler_for

    default = SearchConfig.from_dict({})
    assert default.fidelity.early_stopping == "auto" and SearchConfig.from_dict(default.to_dict()).fidelity.early_stopping == "auto"
    auto = scheduler_for(default, 0.98, trials=3, slots=8)
    assert auto.budget_s == 60 * AUTO_MINUTES and (auto.trials, auto.slots) == (3, 3)
    assert scheduler_for(default, 0.98, trials=32, slots=2, budget_s=120.0).budget_s == 120.0
    always = scheduler_for(SearchConfig.from_dict({"fidelity": {"early_stopping": True}}), 0.98, trials=32, slots=2, budget_s=120.0)
    assert always.budget_s is None and always.summary() is None
    assert scheduler_for(SearchConfig.from_dict({"fidelity": {"early_stopping": False}}), 0.98, trials=32, slots=2) is None
