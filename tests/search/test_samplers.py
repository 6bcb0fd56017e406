"""Every configurable sampler drives a two-objective Optuna study over the kinds of knobs a space has."""

from __future__ import annotations

import optuna
import pytest

from squeezetune.search.config import SamplerChoice
from squeezetune.search.searcher import make_sampler


@pytest.mark.parametrize("kind", [s.value for s in SamplerChoice])
def test_sampler_runs_a_two_objective_study(kind):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(kind, seed=0, population=4, constraints_func=None))

    def objective(trial):
        keep = trial.suggest_int("keep", 10, 1000, log=True)
        bits = trial.suggest_int("bits", 2, 8)
        coder = trial.suggest_categorical("coder", ["huffman", "ans"])
        lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        accuracy = 1.0 - 1.0 / keep - 0.01 / bits - abs(lr - 0.01)
        return accuracy, keep * bits + (5 if coder == "huffman" else 0)

    study.optimize(objective, n_trials=8)
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 8
    front = study.best_trials
    assert front and all(not _dominated(t, done) for t in front)


def _dominated(t, trials) -> bool:
    return any(o.values[0] >= t.values[0] and o.values[1] <= t.values[1] and o.values != t.values for o in trials)


@pytest.mark.parametrize("kind", ["nsga2", "tpe", "gp"])
def test_constrained_samplers_record_the_violations(kind):
    """The search passes a constraints_func (max bytes, max drop) to the samplers that take one."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def violations(trial):
        return [trial.user_attrs["bytes"] - 500.0]  # feasible at most 500 bytes

    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(kind, seed=0, population=4, constraints_func=violations))

    def objective(trial):
        keep = trial.suggest_int("keep", 10, 1000, log=True)
        trial.set_user_attr("bytes", float(keep))
        return 1.0 - 1.0 / keep, float(keep)

    study.optimize(objective, n_trials=8)
    feasible = [t for t in study.trials if t.system_attrs.get("constraints", [1.0])[0] <= 0]
    assert all(t.params["keep"] <= 500 for t in feasible)
    assert all(list(t.system_attrs["constraints"]) == [t.params["keep"] - 500.0] for t in study.trials)
    assert all(t.params["keep"] <= 500 for t in study.best_trials)  # the front is taken from feasible trials


def test_unknown_sampler_is_refused():
    from squeezetune.errors import SqueezeError
    from squeezetune.search.config import SearchConfig

    with pytest.raises(SqueezeError, match=r"sampler='cmaes' is not known: expected one of \['nsga2', 'tpe', 'gp', 'random'\]"):
        SearchConfig.from_dict({"sampler": "cmaes"})
