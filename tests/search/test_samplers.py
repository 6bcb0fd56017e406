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
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 8
    assert study.best_trials  # a non-empty Pareto front


def test_unknown_sampler_is_refused():
    from squeezetune.errors import SqueezeError
    from squeezetune.search.config import SearchConfig

    with pytest.raises(SqueezeError, match=r"sampler='cmaes' is not known: expected one of \['nsga2', 'tpe', 'gp', 'random'\]"):
        SearchConfig.from_dict({"sampler": "cmaes"})
