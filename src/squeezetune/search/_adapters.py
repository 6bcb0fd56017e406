"""The private parts of Ray Tune's ``OptunaSearch`` and of Optuna that the search relies on, in one place.

No public API gives these; each is checked by ``tests/search/test_adapters.py``, which fails loudly
(naming the attribute) when an upgrade of Ray or Optuna moves one.

* ``OptunaSearch._ot_study``: the study the searcher suggests from;
* ``OptunaSearch._ot_trials``: the live Optuna trial of each Tune trial id;
* ``OptunaSearch._completed_trials``: the Tune trial ids already told;
* ``FrozenTrial._trial_id``: the storage id that opens a RUNNING trial again (``optuna.trial.Trial``),
  which settling a dead driver's trials needs.
"""

from __future__ import annotations

from typing import Any

import optuna


def searcher_study(searcher: Any) -> optuna.Study:
    return searcher._ot_study


def live_trial(searcher: Any, trial_id: str) -> optuna.trial.Trial | None:
    """The Optuna trial behind Tune's ``trial_id``, or ``None`` if the searcher never suggested it."""
    return searcher._ot_trials.get(trial_id)


def told(searcher: Any) -> set[str]:
    """The Tune trial ids the searcher has already told Optuna about (updated in place)."""
    return searcher._completed_trials


def reopen(study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> optuna.trial.Trial:
    """A RUNNING trial, as a live ``Trial`` that can take user attributes and constraints again."""
    return optuna.trial.Trial(study, frozen._trial_id)


def frozen(study: optuna.Study, number: int) -> optuna.trial.FrozenTrial:
    """The trial numbered ``number`` as the storage holds it now."""
    return study.get_trials(deepcopy=False)[number]
