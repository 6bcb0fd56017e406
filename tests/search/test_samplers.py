"""Every configurable sampler drives a two-objective Optuna study over the kinds of knobs a space has."""

from __future__ import annotations

import optuna
import pytest

from squeezetune.search.config import SamplerChoice
from squeezetune.search.searcher import make_sampler


@pytest.mark.parametrize("kind", [s.value for s in SamplerChoice])
def test_sampler_runs_a_two_objective_study(kind):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(kind, seed=0, population=4))

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
def test_constrained_samplers_read_the_constraints_each_trial_carries(kind):
    """The search sets each limit's violation on the trial (``Trial.set_constraint``) before telling it."""
    from squeezetune.search.searcher import OutcomeConstraints
    from squeezetune.spaces import Constraints

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    limits = OutcomeConstraints(Constraints(max_bytes=500, max_drop=50.0), dense_accuracy=1.0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=make_sampler(kind, seed=0, population=4))

    def objective(trial):
        keep = trial.suggest_int("keep", 10, 1000, log=True)
        outcome = {"accuracy": 1.0 - 1.0 / keep, "bytes": keep}
        limits.set_on(trial, outcome)
        return outcome["accuracy"], float(keep)

    study.enqueue_trial({"keep": 900})  # infeasible, and on the unconstrained front
    study.optimize(objective, n_trials=8)
    for t in study.trials:
        keep = t.params["keep"]
        assert t.constraints == {"max_bytes": round(keep / 500 - 1.0, 12), "max_drop": round(round(100.0 / keep, 4) - 50.0, 12)}  # the drop to 1e-4 points
    assert all(t.params["keep"] <= 500 for t in study.best_trials)  # the front is taken from feasible trials


def test_unknown_sampler_is_refused():
    from squeezetune.errors import SqueezeError
    from squeezetune.search.config import SearchConfig

    with pytest.raises(SqueezeError, match=r"sampler='cmaes' is not known: expected one of \['nsga2', 'tpe', 'gp', 'random'\]"):
        SearchConfig.from_dict({"sampler": "cmaes"})


@pytest.mark.parametrize("kind", ["random", "nsga2", "tpe"])
def test_a_resumed_sampler_does_not_replay_the_configurations_tried(kind, tmp_path):
    """What --resume does: a new sampler on the stored study, seeded from (seed, trials so far)."""
    from squeezetune.search.searcher import resumed_seed

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"

    def objective(trial):
        return trial.suggest_float("x", 0.0, 1.0), trial.suggest_int("k", 1, 10**6)

    first = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"], sampler=make_sampler(kind, seed=3, population=4))
    first.optimize(objective, n_trials=3)
    assert resumed_seed(3, 0) == 3 and resumed_seed(3, 3) == resumed_seed(3, 3) != 3
    again = optuna.load_study(study_name="s", storage=storage, sampler=make_sampler(kind, seed=resumed_seed(3, len(first.trials)), population=4))
    again.optimize(objective, n_trials=3)
    params = [tuple(sorted(t.params.items())) for t in again.trials]
    assert len(set(params)) == 6


@pytest.mark.parametrize("kind", [s.value for s in SamplerChoice])
def test_every_sampler_survives_the_pickling_ray_tune_gives_its_search_algorithm(kind):
    """Tune pickles the search algorithm, sampler included, when a search starts (its tuner state):
    a sampler holding a lock (NSGA-II from Optuna 5.1) failed every NSGA-II search there."""
    from ray import cloudpickle

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(kind, seed=0, population=4)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=5)
    again = cloudpickle.loads(cloudpickle.dumps(sampler))
    resumed = optuna.create_study(directions=["maximize", "minimize"], sampler=again)
    resumed.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), n_trials=5)
    assert len(resumed.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 5


def test_a_study_nsga2_began_keeps_its_generations_with_the_picklable_sampler(tmp_path):
    """The picklable NSGA-II writes the study attributes Optuna's own does, so --resume of a study
    begun before goes on from its generation instead of starting over at 0."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{tmp_path / 'study.db'}"

    def objective(t):
        return t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)

    plain = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "minimize"], sampler=optuna.samplers.NSGAIISampler(population_size=4, seed=0))
    plain.optimize(objective, n_trials=12)
    key = f"{optuna.samplers.NSGAIISampler.__name__}:generation"
    reached = max(t.system_attrs[key] for t in plain.trials)
    assert reached >= 1
    again = optuna.load_study(study_name="s", storage=storage, sampler=make_sampler("nsga2", seed=1, population=4))
    again.optimize(objective, n_trials=4)
    assert all(t.system_attrs.get(key, -1) >= reached for t in again.trials[12:])
