from __future__ import annotations

import pytest

from squeezetune.errors import SqueezeError
from squeezetune.spaces import Constraints


def test_violations_are_nonpositive_exactly_when_met():
    c = Constraints(max_bytes=1000, max_drop=0.5, max_macs=100)
    assert c.violations(accuracy=0.98, bytes=1000, dense_accuracy=0.985, macs=100) == [0.0, 0.0, 0.0]
    assert c.feasible(accuracy=0.98, bytes=1000, dense_accuracy=0.985, macs=100)
    assert not c.feasible(accuracy=0.98, bytes=1001, dense_accuracy=0.985, macs=100)
    assert not c.feasible(accuracy=0.97, bytes=10, dense_accuracy=0.985, macs=10)
    assert not c.feasible(accuracy=float("nan"), bytes=10, dense_accuracy=0.985, macs=10)


def test_no_constraints_is_falsy_and_always_feasible():
    c = Constraints.from_dict({})
    assert not c and c.violations(accuracy=0.1, bytes=10**9, dense_accuracy=1.0) == []


@pytest.mark.parametrize("data", [{"max_bytes": 0}, {"max_drop": -1}, {"max_drop": "x"}, {"max_size": 5}, {"max_macs": 1.5}])
def test_bad_constraints(data):
    with pytest.raises(SqueezeError):
        Constraints.from_dict(data)
