"""Latency: the speed-up interval holds the truth where the truth is known, and timing leaves no trace."""

from __future__ import annotations

import copy
import math
import random
import time

import pytest
import torch
from torch import nn

from squeezetune.compression import Report, pick_device
from squeezetune.compression.latency import LatencyConfig, cpu_threads, median_interval, speedup, time_in_rounds
from squeezetune.compression.pipeline import compare_latency_report
from squeezetune.compression.report import format_summary
from squeezetune.errors import SqueezeError

DEVICE = pick_device(None)
WIDTH, BATCH = (4096, 4096) if DEVICE.type == "cuda" else (512, 64)  # work far above the cost of a call and a launch


class Repeat(nn.Module):
    """The same layer applied ``times`` times: exactly ``times`` times the work of one."""

    def __init__(self, layer: nn.Module, times: int) -> None:
        super().__init__()
        self.layer, self.times = layer, times

    def forward(self, x):
        for _ in range(self.times):
            x = self.layer(x)
        return x


class Spy(nn.Module):
    """Records, at every pass, what the timing set around it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)
        self.seen: list[tuple[bool, bool, bool, int]] = []

    def forward(self, x):
        self.seen.append((torch.is_grad_enabled(), torch.is_inference_mode_enabled(), self.training, torch.get_num_threads()))
        return self.fc(x)


def _timed(dense: nn.Module, compressed: nn.Module, budget: float = 1.0, **kw):
    """One thread: on a loaded machine no thread waits for a descheduled sibling."""
    return speedup(dense, compressed, batch=BATCH, device=DEVICE, example=(1, WIDTH), config=LatencyConfig(budget_s=budget, threads=1, **kw))


def test_identical_models_give_an_interval_around_one():
    """A 95% interval misses the truth now and then by design: one of three measurements must hold 1.0
    (a bias, which would shift all three, still fails)."""
    layer = nn.Linear(WIDTH, WIDTH)
    tries = []
    for _ in range(3):
        s = _timed(Repeat(layer, 1), Repeat(copy.deepcopy(layer), 1))
        assert s.low <= s.ratio <= s.high
        assert s.rounds >= 6 and s.layouts == ("contiguous", "contiguous")  # 2-D inputs have one layout
        tries.append(s)
        if s.low <= 1.0 <= s.high:
            break
    assert tries[-1].low <= 1.0 <= tries[-1].high, tries


def test_twice_the_work_gives_an_interval_above_one():
    layer = nn.Linear(WIDTH, WIDTH)
    s = _timed(Repeat(layer, 2), Repeat(layer, 1))
    assert s.low <= s.ratio <= s.high
    assert 1.0 < s.low and 1.5 < s.ratio < 2.6, s  # 2x the MACs; allocations and calls cost a little
    assert s.dense_ms > s.compressed_ms > 0


@pytest.mark.parametrize("n", [1, 2, 5, 6, 7, 10, 31, 200])
def test_median_interval_holds_the_median_at_95_percent(n):
    values = [float(v) for v in range(n)]
    random.Random(n).shuffle(values)
    mid, low, high = median_interval(values)
    assert low <= mid <= high and mid == (n - 1) / 2
    k = int(low) + 1  # the interval is the k-th smallest to the k-th largest
    assert high == n - k
    if n >= 6:  # the binomial(n, 1/2) tail below rank k is at most 2.5%, and k is the largest such
        tail = sum(math.comb(n, i) for i in range(k)) / 2**n
        assert tail <= 0.025 < tail + math.comb(n, k) / 2**n or k == n // 2
    else:
        assert (low, high) == (0.0, n - 1.0)


def test_median_interval_of_nothing_is_an_error():
    with pytest.raises(SqueezeError, match="no values"):
        median_interval([])


def test_timing_runs_in_inference_mode_with_the_threads_it_reports_and_restores_them():
    spy = Spy().train()
    with cpu_threads(1):
        t = time_in_rounds({"spy": spy}, batch=4, example=(1, 16), config=LatencyConfig(budget_s=0.2, threads=2))
        assert torch.get_num_threads() == 1
    assert t.threads == 2 and t.rounds >= 6 and len(spy.seen) >= 6 + 3
    assert {s[:3] for s in spy.seen} == {(False, True, False)}  # no autograd, inference mode, eval mode
    assert {s[3] for s in spy.seen} == {2}
    assert spy.training  # its mode is restored


def test_the_models_are_left_as_they_were():
    dense = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 26 * 26, 10)).train()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    s = speedup(dense, copy.deepcopy(dense), batch=2, config=LatencyConfig(budget_s=0.3))
    assert set(s.layouts) <= {"contiguous", "channels_last"}
    assert dense.training and all(p.is_contiguous() and p.device.type == "cpu" for p in dense.parameters())
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())  # batch norm statistics too


def test_the_budget_caps_the_rounds():
    layer = nn.Linear(WIDTH, WIDTH)
    t0 = time.perf_counter()
    s = _timed(Repeat(layer, 1), Repeat(layer, 1), budget=0.3, resolution=0.0, max_rounds=100_000)
    assert s.rounds >= 6 and s.seconds < 0.3 + 2.0 and time.perf_counter() - t0 < 0.3 + 3.0
    exact = _timed(Repeat(layer, 1), Repeat(layer, 1), budget=None, min_rounds=7, max_rounds=7)
    assert exact.rounds == 7


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"budget_s": -1.0}, "budget_s=-1.0"),
        ({"threads": 0}, "threads=0"),
        ({"min_rounds": 0}, "min_rounds=0"),
        ({"min_rounds": 9, "max_rounds": 8}, "max_rounds=8"),
        ({"resolution": -0.1}, "resolution=-0.1"),
        ({"layouts": ("nhwc",)}, r"layouts=\['nhwc'\]"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_value(kw, message):
    with pytest.raises(SqueezeError, match=message) as info:
        LatencyConfig(**kw)
    assert "\n" not in str(info.value)


def test_the_report_carries_the_speed_up_with_its_interval_and_the_threads():
    device = DEVICE
    layer = nn.Linear(64, 64)
    lat = compare_latency_report(Repeat(layer, 2).to(device), Repeat(layer, 1).to(device), torch.zeros(1, 64), device=device, config=LatencyConfig(budget_s=0.5, threads=1))
    suffixes = ("", "_gpu") if device.type == "cuda" else ("",)
    for suffix in suffixes:
        for b in (1, 64):
            assert lat[f"speedup_b{b}{suffix}_low"] <= lat[f"speedup_b{b}{suffix}"] <= lat[f"speedup_b{b}{suffix}_high"]
            assert lat[f"dense_latency_ms_b{b}{suffix}"] > 0 and lat[f"latency_ms_b{b}{suffix}"] > 0
    assert lat["latency_threads"] == 1
    alone = compare_latency_report(None, Repeat(layer, 1), torch.zeros(1, 64), device=device, config=LatencyConfig(budget_s=0.2))
    assert set(alone) == {f"latency_ms_b{b}{s}" for b in (1, 64) for s in suffixes} | {"latency_threads"}


def test_the_summary_and_every_door_show_the_speed_up():
    lat = {
        "dense_latency_ms_b1": 2.0,
        "latency_ms_b1": 1.5,
        "speedup_b1": 1.33,
        "speedup_b1_low": 1.3,
        "speedup_b1_high": 1.36,
        "dense_latency_ms_b64": 40.0,
        "latency_ms_b64": 25.0,
        "speedup_b64": 1.6,
        "speedup_b64_low": 1.55,
        "speedup_b64_high": 1.62,
        "latency_threads": 2,
    }
    report = Report("t", {}, 0.9, 0.89, 1000, 100, [], [], 10, 5, 10, 5, latency=lat)
    assert Report.from_dict(report.to_dict()).latency == lat
    assert {"speedup_b64", "speedup_b64_low", "speedup_b64_high", "latency_threads"} <= set(report.outcome())
    on_gpu = Report("t", {}, 0.9, 0.89, 1000, 100, [], [], 10, 5, 10, 5, latency={**lat, "latency_ms_b1_gpu": 0.2, "latency_ms_b64_gpu": 0.4})
    assert on_gpu.outcome()["latency_ms_b1_gpu"] == 0.2 and on_gpu.outcome()["latency_ms_b64_gpu"] == 0.4  # a search's _gpu objectives
    assert report.metrics()["speedup_b1_high"] == 1.36
    text = format_summary(report, "m.sqz")
    assert "CPU latency, 2 threads: b1 2.00 -> 1.50 ms, speed-up 1.33x (95% interval 1.30-1.36); b64 40.00 -> 25.00 ms, speed-up 1.60x (95% interval 1.55-1.62)" in text
    old = Report("t", {}, 0.9, 0.89, 1000, 100, [], [], 10, 5, 10, 5, latency={k: lat[k] for k in ("dense_latency_ms_b1", "latency_ms_b1", "dense_latency_ms_b64", "latency_ms_b64")})
    assert "CPU latency: b1 2.00 -> 1.50 ms; b64 40.00 -> 25.00 ms" in format_summary(old, "m.sqz")  # a report written before speed-ups
