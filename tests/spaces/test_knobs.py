from __future__ import annotations

import optuna
import pytest
from hypothesis import given
from hypothesis import strategies as st

from squeezetune.errors import SqueezeError
from squeezetune.spaces import Choice, Fixed, FloatRange, IntRange, Knob, parse_domain


@pytest.mark.parametrize(
    "raw, default, expected",
    [
        (5, IntRange(1, 9), Fixed(5)),
        ([2, 4], IntRange(1, 9, log=True), IntRange(2, 4, log=True)),
        ({"low": 2, "high": 4, "log": False}, IntRange(1, 9, log=True), IntRange(2, 4)),
        ({"high": 4}, IntRange(1, 9), IntRange(1, 4)),
        (0.1, FloatRange(0.01, 1.0, log=True), Fixed(0.1)),
        ([0.01, 0.05], FloatRange(0.01, 1.0, log=True), FloatRange(0.01, 0.05, log=True)),
        ("ans", Choice(("huffman", "ans")), Fixed("ans")),
        (["ans", "huffman"], Choice(("huffman", "ans")), Choice(("ans", "huffman"))),
        ({"choices": [True]}, Choice((True, False)), Fixed(True)),
    ],
)
def test_parse_domain(raw, default, expected):
    assert parse_domain(raw, default, "k") == expected


@pytest.mark.parametrize(
    "raw, default",
    [([1, 2, 3], IntRange(1, 9)), ("x", IntRange(1, 9)), (True, IntRange(1, 9)), ([3, 1], IntRange(1, 9)), (1, Choice((True, False))), ([], Choice(("a", "b"))), (["a", "a"], Choice(("a", "b")))],
)
def test_parse_domain_rejects(raw, default):
    with pytest.raises(SqueezeError):
        parse_domain(raw, default, "k")


@given(low=st.integers(1, 1000), span=st.integers(0, 1000), log=st.booleans(), seed=st.integers(0, 1000))
def test_suggest_in_range(low, span, log, seed):
    knob = Knob("k", IntRange(low, low + span, log=log))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    assert knob.domain.contains(knob.suggest(study.ask()))


def test_fixed_knob_is_not_sampled():
    study = optuna.create_study()
    trial = study.ask()
    assert Knob("k", Fixed(3)).suggest(trial) == 3
    assert Knob("k", IntRange(4, 4)).suggest(trial) == 4
    assert trial.params == {}
