"""pareto_front and hypervolume are pure and agree with brute force."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from squeezetune.search.pareto import Point, best_ratio, dominates, hypervolume, pareto_front

points_st = st.lists(st.tuples(st.floats(0.0, 1.0, allow_nan=False), st.integers(1, 10_000)), min_size=0, max_size=40).map(lambda xs: [Point(i, a, b) for i, (a, b) in enumerate(xs)])


@given(points_st)
def test_front_is_exactly_the_non_dominated_points(points):
    front = pareto_front(points)
    for p in front:
        assert not any(dominates(q, p) for q in points)
    on_front = {(p.accuracy, p.bytes) for p in front}
    for p in points:
        if (p.accuracy, p.bytes) not in on_front:
            assert any(dominates(q, p) for q in front)
    assert [p.bytes for p in front] == sorted(p.bytes for p in front)
    assert all(a.accuracy < b.accuracy for a, b in zip(front, front[1:]))


@given(points_st, st.floats(0.0, 0.5), st.integers(5_000, 20_000))
def test_hypervolume_matches_grid_count(points, ref_acc, ref_bytes):
    front = pareto_front(points)
    hv = hypervolume(front, (ref_acc, ref_bytes))
    # brute force on the grid of the points' own coordinates
    xs = sorted({p.bytes for p in front if p.bytes < ref_bytes} | {ref_bytes})
    ys = sorted({p.accuracy for p in front if p.accuracy > ref_acc} | {ref_acc})
    area = 0.0
    for x0, x1 in zip(xs, xs[1:]):
        for y0, y1 in zip(ys, ys[1:]):
            if any(p.bytes <= x0 and p.accuracy >= y1 for p in front):
                area += (x1 - x0) * (y1 - y0)
    assert math.isclose(hv, area, rel_tol=1e-9, abs_tol=1e-9)


def test_dominated_and_infeasible_and_nan_points_leave_the_front():
    pts = [Point(0, 0.9, 100), Point(1, 0.8, 200), Point(2, 0.95, 50, feasible=False), Point(3, float("nan"), 10)]
    assert [p.trial for p in pareto_front(pts)] == [0]
    assert [p.trial for p in pareto_front(pts, feasible_only=False)] == [2]


def test_hypervolume_grows_with_a_better_point():
    front = [Point(0, 0.9, 100)]
    assert hypervolume(front, (0.5, 1000)) < hypervolume(pareto_front(front + [Point(1, 0.95, 90)]), (0.5, 1000))
    assert hypervolume([], (0.5, 1000)) == 0.0


def test_best_ratio_respects_the_drop():
    pts = [Point(0, 0.98, 100), Point(1, 0.985, 300), Point(2, 0.99, 1000)]
    assert best_ratio(pts, dense_bytes=10_000, dense_accuracy=0.99, max_drop=0.5).trial == 1
    assert best_ratio(pts, dense_bytes=10_000, dense_accuracy=0.99, max_drop=1.0).trial == 0
    assert best_ratio(pts, dense_bytes=10_000, dense_accuracy=0.999, max_drop=0.1) is None


def test_epochs_column_is_blank_without_a_fidelity_stage():
    """A search whose space has no fidelity stage ends its trials at epoch 0: no epochs to show."""
    from squeezetune.search.pareto import Baseline, point
    from squeezetune.search.present import rows, to_csv

    baseline = Baseline(0.98, 100_000, 0.97)
    with_stage = point(1, {"val_accuracy": 0.96, "accuracy": 0.97, "bytes": 2_000, "epoch": 40})
    without = point(2, {"val_accuracy": 0.95, "accuracy": 0.96, "bytes": 1_000, "epoch": 0})
    assert [r["epochs"] for r in rows([without, with_stage], baseline)] == [None, 40]
    assert to_csv([without], baseline).splitlines()[1].split(",")[6] == ""


points3_st = st.lists(st.tuples(st.floats(0.0, 1.0, allow_nan=False), st.integers(1, 50), st.sampled_from([0.5, 1.0, 2.0])), min_size=0, max_size=30).map(
    lambda xs: [Point(i, a, b, extra={"latency_ms_b1": t}) for i, (a, b, t) in enumerate(xs)]
)


@given(points3_st)
def test_a_third_objective_front_is_exactly_the_points_no_other_beats_in_all_three(points):
    minimise = ("latency_ms_b1",)
    front = pareto_front(points, minimise=minimise)
    for p in front:
        assert not any(dominates(q, p, minimise) for q in points)
    figures = lambda p: (p.accuracy, p.bytes, p.extra["latency_ms_b1"])  # noqa: E731
    on_front = {figures(p) for p in front}
    assert len(on_front) == len(front)  # ties keep one point
    for p in points:
        if figures(p) not in on_front:
            assert any(dominates(q, p, minimise) for q in front)
    assert {(p.accuracy, p.bytes) for p in pareto_front(points)} <= {(p.accuracy, p.bytes) for p in front}  # the accuracy/bytes front stays on it
    assert [p.bytes for p in front] == sorted(p.bytes for p in front)


def test_a_latency_objective_keeps_a_faster_larger_point_on_the_front_and_in_the_tables():
    """With latency as the third objective, a point dominated in accuracy and bytes but faster than
    everything that dominates it is on the front, and the tables show its latency."""
    from squeezetune.search.pareto import Baseline
    from squeezetune.search.present import rows, table, to_csv

    small_slow = Point(0, 0.97, 4_000, extra={"latency_ms_b1": 2.0})
    large_fast = Point(1, 0.96, 5_000, extra={"latency_ms_b1": 0.5})
    large_slow = Point(2, 0.95, 6_000, extra={"latency_ms_b1": 3.0})
    untimed = Point(3, 0.94, 7_000)
    pts = [small_slow, large_fast, large_slow, untimed]
    assert [p.trial for p in pareto_front(pts)] == [0]
    assert [p.trial for p in pareto_front(pts, minimise=["latency_ms_b1"])] == [0, 1]
    assert dominates(small_slow, large_fast) and not dominates(small_slow, large_fast, ["latency_ms_b1"])

    baseline = Baseline(0.98, 100_000, 0.97, ("latency_ms_b1",))
    front = pareto_front(pts, minimise=baseline.also_minimised)
    assert [r["latency_ms_b1"] for r in rows(front, baseline)] == [2.0, 0.5]
    header, *lines = to_csv(front, baseline).splitlines()
    assert header.split(",")[5:7] == ["ratio", "latency_ms_b1"] and [line.split(",")[6] for line in lines] == ["2.0", "0.5"]
    text = table(front, baseline).splitlines()
    assert "latency_ms_b1" in text[0] and "0.500" in text[2]
    assert "latency_ms_b1" not in table(front, Baseline(0.98, 100_000, 0.97))


def test_a_missing_or_failed_latency_counts_as_slowest():
    fast = Point(0, 0.97, 4_000, extra={"latency_ms_b1": 1.0})
    nan = Point(1, 0.96, 5_000, extra={"latency_ms_b1": float("nan")})
    missing = Point(2, 0.95, 6_000)
    assert [p.trial for p in pareto_front([nan, missing, fast], minimise=["latency_ms_b1"])] == [0]
    assert dominates(fast, nan, ["latency_ms_b1"]) and not dominates(missing, nan, ["latency_ms_b1"])
