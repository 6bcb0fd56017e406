"""``constraints.max_latency_ms`` gets a note before any trial: the dense model's latency on this
machine, and whether any stage of the space can make a trial faster (the real timing of a real model)."""

from __future__ import annotations

import pytest

from squeezetune.search.config import SearchConfig
from squeezetune.search.runner import check_constraints, latency_note, space_config
from squeezetune.spaces import Constraints, derive_space
from squeezetune.tasks import example_input, get_task


def test_the_note_says_what_the_limit_asks():
    limit = Constraints(max_latency_ms=0.5)
    assert latency_note(0.4, limit, reshapes=False) == (
        "note: constraints.max_latency_ms=0.5 by latency_ms_b1: the dense model takes 0.4 ms on this machine, within the limit, so it rules out only trials slower than the model they compress"
    )
    assert "no stage in the space changes the architecture" in latency_note(2.0, limit, reshapes=False)
    assert latency_note(2.0, limit, reshapes=True) == "note: constraints.max_latency_ms=0.5 by latency_ms_b1: the dense model takes 2 ms on this machine: the trials must run 4x faster"


@pytest.mark.slow
def test_the_search_times_the_dense_model_against_the_limit():
    task = get_task("lenet300-digits")
    model = task.build_model()
    example = example_input(task, task.splits(None)[0])
    notes: list[str] = []
    for space, limit in (({}, 1e-6), ({}, 1e6), (None, 1e-6)):  # one-shot pruning and sharing, then the default space (neuron removal)
        config = SearchConfig.from_dict({"task": task.name, "space": space})
        derived = derive_space(task.build_model(), space_config(config), example, sensitivity={})
        check_constraints(derived, Constraints(max_latency_ms=limit), task=task, dense=model, splits=None, dense_macs=None, seed=0, example=example, progress=notes.append)
    tight, loose, reshaped = notes
    assert tight.startswith("note: constraints.max_latency_ms=1e-06 by latency_ms_b1: the dense model takes ") and "expect none to meet it" in tight
    assert loose.startswith("note: constraints.max_latency_ms=1e+06") and "within the limit" in loose
    assert reshaped.startswith("note: constraints.max_latency_ms=1e-06") and reshaped.endswith("x faster")
