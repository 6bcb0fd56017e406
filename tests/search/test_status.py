from __future__ import annotations

from types import SimpleNamespace

import optuna

from squeezetune.search.pareto import Baseline, point
from squeezetune.search.status import SearchStatus


def test_a_told_trial_no_longer_counts_as_running_though_rays_callback_comes_later():
    lines: list[str] = []
    status = SearchStatus(2, Baseline(0.97, 100_000, 0.975), 0.2, lines.append, live=False)
    ray_callback = status.callback()
    for n in (0, 1):
        ray_callback.on_trial_start(0, [], SimpleNamespace(config={"_trial": n}))
    assert "2 running" in lines[-1]
    attrs = {"accuracy": 0.97, "val_accuracy": 0.975, "bytes": 1000}
    frozen = optuna.trial.create_trial(state=optuna.trial.TrialState.COMPLETE, values=[0.975, 1000], user_attrs=attrs)
    frozen.number = 0
    status.told(frozen, {"complete": 1, "stopped": 0, "failed": 0}, [point(frozen.number, attrs)])
    assert "[1/2 done: 1 complete, 0 stopped, 0 failed, 1 running; front 1; best 100.0x within 0.2 pt]" in lines[-1]
    ray_callback.on_trial_complete(0, [], SimpleNamespace(config={"_trial": 0}))  # Ray's own completion: no double count
    assert status.running == 1
