"""Multi-objective search over compression recipes: Ray Tune + Optuna, tracked in MLflow.

``squeezetune search`` (see :mod:`squeezetune.search.commands`) runs :func:`run_search`: every trial
runs the whole compression pipeline on a recipe sampled from the model's space
(:mod:`squeezetune.spaces`) and reports the decoded model's accuracy and the real container's bytes;
the Pareto front of the two is kept current in the search's MLflow parent run.

Only this package imports Ray, Optuna and MLflow; the pure parts (:func:`pareto_front`,
:func:`hypervolume`, :class:`SearchConfig`) import neither. Ray and MLflow load lazily.
"""

from squeezetune.search.config import Resources, SamplerChoice, SearchConfig
from squeezetune.search.pareto import Point, best_ratio, dominates, hypervolume, pareto_front

__all__ = [
    "Point",
    "Resources",
    "SamplerChoice",
    "SearchConfig",
    "best_ratio",
    "dominates",
    "hypervolume",
    "pareto_front",
    "run_search",
]


def __getattr__(name: str):
    if name == "run_search":
        from squeezetune.search.runner import run_search

        return run_search
    raise AttributeError(name)
