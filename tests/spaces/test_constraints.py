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


def test_a_drop_of_exactly_the_limit_is_within_it_whatever_float32_makes_of_the_accuracies():
    """Four of 2,000 images lost is 0.2 points, though float32 accuracies differ by 0.2000034."""
    import numpy as np

    from squeezetune.search.export import pick
    from squeezetune.search.pareto import Point, best_ratio

    dense, acc = float(np.float32(1968 / 2000)), float(np.float32(1964 / 2000))
    assert 100.0 * (dense - acc) > 0.2  # what a plain difference says
    c = Constraints(max_drop=0.2)
    assert c.named_violations(accuracy=acc, bytes=1, dense_accuracy=dense)["max_drop"] <= 0
    assert c.named_violations(accuracy=float(np.float32(1963 / 2000)), bytes=1, dense_accuracy=dense)["max_drop"] > 0  # five images are not
    p = Point(0, acc, 100)
    assert best_ratio([p], dense_bytes=1000, dense_accuracy=dense, max_drop=0.2) == p
    assert pick([p], [p], dense_accuracy=dense, max_drop=0.2) == p


def test_no_point_within_the_drop_names_the_split_both_losses_and_the_trial_to_take():
    from squeezetune.search.export import pick
    from squeezetune.search.pareto import point

    points = [point(3, {"val_accuracy": 0.965, "accuracy": 0.9715, "bytes": 6444}), point(7, {"val_accuracy": 0.95, "accuracy": 0.96, "bytes": 3000})]
    with pytest.raises(SqueezeError) as err:
        pick(points, points, dense_accuracy=0.970, dense_eval_accuracy=0.9725, max_drop=0.2)
    message = str(err.value)
    assert "validation images" in message and "trial 3 (6,444 bytes)" in message
    assert "loses 0.50 points there and 0.10 on the evaluation images" in message and "--trial 3" in message


def test_export_notes_a_pick_that_loses_more_than_the_limit_on_the_evaluation_images():
    from squeezetune.search.export import beyond_the_limit
    from squeezetune.search.pareto import point

    lucky = point(25, {"val_accuracy": 0.987, "accuracy": 0.979, "bytes": 2820})  # -0.10 pt on validation, -0.70 on evaluation
    note = beyond_the_limit(lucky, max_drop=0.2, dense_eval_accuracy=0.986, validation_images=1000, evaluation_images=2000)
    assert note.startswith("note: trial 25 is within --max-drop 0.2 on the 1,000 validation images") and "loses 0.7 points on the 2,000 evaluation images" in note
    held = point(3, {"val_accuracy": 0.987, "accuracy": 0.982, "bytes": 4400})  # exactly 0.20 pt: within
    assert beyond_the_limit(held, max_drop=0.2, dense_eval_accuracy=0.984, validation_images=1000, evaluation_images=2000) is None
    from squeezetune.search.pareto import Point

    assert beyond_the_limit(Point(1, 0.9, 100), max_drop=0.2, dense_eval_accuracy=0.99, validation_images=1, evaluation_images=1) is None  # no held-out figure to compare
    assert beyond_the_limit(lucky, max_drop=0.2, dense_eval_accuracy=float("nan"), validation_images=1000, evaluation_images=2000) is None  # no dense figure
    near = point(4, {"val_accuracy": 0.987, "accuracy": 0.983967, "bytes": 4400})  # 0.2033 pt on 30,000 images: not printed as "0.20"
    assert "loses 0.2033 points" in beyond_the_limit(near, max_drop=0.2, dense_eval_accuracy=0.986, validation_images=1000, evaluation_images=30000)


def test_max_drop_passes_over_a_lucky_point_among_trials_of_its_size_that_lose_more():
    from squeezetune.search.export import neighbourhood_drop, neighbourhood_note, pick
    from squeezetune.search.pareto import pareto_front, point

    dense = 0.990
    lucky = point(1, {"val_accuracy": 0.989, "accuracy": 0.98, "bytes": 2000})  # -0.1 pt; its neighbours lose 0.8 and 0.9
    crowd = [point(2, {"val_accuracy": 0.982, "accuracy": 0.98, "bytes": 2100}), point(3, {"val_accuracy": 0.981, "accuracy": 0.98, "bytes": 1900})]
    steady = [point(n, {"val_accuracy": v, "accuracy": 0.98, "bytes": b}) for n, v, b in ((4, 0.989, 4000), (5, 0.990, 4200), (6, 0.990, 4400))]
    points = [lucky, *crowd, *steady]
    front = pareto_front(points)
    assert neighbourhood_drop(lucky, points, dense) == pytest.approx((0.1 + 0.8 + 0.9) / 3)
    chosen = pick(points, front, dense_accuracy=dense, max_drop=0.2)
    assert chosen.trial == 5 and neighbourhood_note(chosen, points, dense_accuracy=dense, max_drop=0.2) is None
    assert pick(points, front, dense_accuracy=dense, max_drop=1.0).trial == 3  # a wider limit takes the smallest
    # no point's neighbourhood within the limit: the smallest within it by its own figure, with a note
    alone = [lucky, *crowd]
    chosen = pick(alone, pareto_front(alone), dense_accuracy=dense, max_drop=0.2)
    note = neighbourhood_note(chosen, alone, dense_accuracy=dense, max_drop=0.2)
    assert chosen.trial == 1 and note.startswith("note: no front point within --max-drop 0.2") and "lose 0.60 points on average" in note


def test_a_front_emptied_by_the_constraints_is_a_one_line_error_naming_trial():
    from squeezetune.search.export import pick
    from squeezetune.search.pareto import Point

    outside = [Point(0, 0.95, 1000, feasible=False), Point(1, 0.96, 2000, feasible=False)]
    for selector in ({"max_drop": 0.5}, {"max_bytes": 5000}):
        with pytest.raises(SqueezeError, match="front is empty: expected --trial N"):
            pick(outside, [], dense_accuracy=0.97, **selector)
    assert pick(outside, [], dense_accuracy=0.97, trial=1).trial == 1
