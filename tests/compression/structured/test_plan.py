"""Planning channel counts by predicted latency: a monotone cost model, a plan that meets its target under it, timings read back from the cache."""

from __future__ import annotations

import copy

import pytest
import torch

from squeezetune.compression import Context, StructuredConfig, apply_stage, latency_model
from squeezetune.compression.latency_model import Cost, LayerTimes
from squeezetune.compression.measure import layer_macs
from squeezetune.compression.structured._graph import StructureGraph
from squeezetune.compression.structured._plan import LatencyModel, MacModel, latency_fraction
from squeezetune.compression.structured.shrink import channel_groups, plan_counts, shrink
from squeezetune.errors import SqueezeError
from squeezetune.tasks.cnn import ResNet20
from tests.compression._tiny import TinyCNN

EXAMPLE = (1, 1, 12, 12)


@pytest.fixture
def timer_calls(monkeypatch) -> list[int]:
    """One entry per layer size timed (the real timer still runs)."""
    calls: list[int] = []
    real = latency_model.time_layer

    def counted(*args, **kw):
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(latency_model, "time_layer", counted)
    return calls


def test_the_latency_model_is_monotone_in_channels(tmp_path):
    model = TinyCNN()
    graph = StructureGraph(copy.deepcopy(model), EXAMPLE)
    times = LayerTimes.open(model, EXAMPLE, batch=8, cache_dir=tmp_path)
    latency = LatencyModel(graph, graph.groups, times, round_to=1)
    for name, group in graph.groups.items():
        costs = [latency.cost({name: k}) for k in range(1, group.channels + 1)]
        assert costs == sorted(costs), name
        assert costs[-1] == pytest.approx(latency.cost({}))
    assert latency.cost({n: 1 for n in graph.groups}) < latency.cost({})


def test_a_latency_plan_of_resnet20_meets_its_target_and_the_second_plan_times_nothing(tmp_path, timer_calls):
    model = ResNet20()
    times = LayerTimes.open(model, (1, 1, 28, 28), batch=64, cache_dir=tmp_path)
    keep = plan_counts(model, 0.5, round_to=8, cost="latency", times=times, example=(1, 1, 28, 28))
    assert set(keep) == set(channel_groups(model))
    assert all(k % 8 == 0 for k in keep.values())
    timed = len(timer_calls)
    assert timed == times.timed > 0

    again = LayerTimes.open(ResNet20(), (1, 1, 28, 28), batch=64, cache_dir=tmp_path)
    assert plan_counts(model, 0.5, round_to=8, cost="latency", times=again, example=(1, 1, 28, 28)) == keep
    assert again.timed == 0 and len(timer_calls) == timed

    latency = LatencyModel(StructureGraph(copy.deepcopy(model), (1, 1, 28, 28)), keep, again, round_to=8)
    assert latency.cost(keep) <= 0.5 * latency.cost({}) * (1 + 1e-9)
    groups = channel_groups(model)
    small = shrink(model, {n: range(k, groups[n].channels) for n, k in keep.items()})
    assert latency_fraction(model, small, again, round_to=8, example=(1, 1, 28, 28)) == pytest.approx(latency.cost(keep) / latency.cost({}))
    assert again.timed == 0


def test_a_finer_plan_by_latency_meets_its_target_under_the_cost_model(tmp_path):
    model = TinyCNN()
    times = LayerTimes.open(model, EXAMPLE, batch=8, cache_dir=tmp_path)
    graph = StructureGraph(copy.deepcopy(model), EXAMPLE)
    latency = LatencyModel(graph, graph.groups, times, round_to=1)
    floor = latency.cost({n: 1 for n in graph.groups}) / latency.cost({})  # tiny layers: the per-call time stays
    for target in (floor + 0.3 * (1 - floor), floor + 0.7 * (1 - floor)):
        keep = plan_counts(model, target, cost="latency", times=times, example=EXAMPLE)
        assert latency.cost(keep) <= target * latency.cost({}) * (1 + 1e-9)


def test_the_default_cost_plans_by_macs_and_times_nothing(monkeypatch):
    def never(*args, **kw):
        raise AssertionError("a layer was timed")

    monkeypatch.setattr(latency_model, "time_layer", never)
    model = ResNet20()
    keep = plan_counts(model, 0.5, round_to=8)
    assert keep == plan_counts(model, 0.5, round_to=8, cost="macs")
    assert keep["layer3.0.conv1"] == 48 and keep["layer1.0.conv1"] == 8
    mac_model = MacModel(StructureGraph(copy.deepcopy(model)))
    assert mac_model.cost(keep) == mac_model.macs(keep) <= 0.5 * mac_model.macs({})
    assert StructuredConfig(macs_target=0.5).cost is Cost.MACS


def fake_ms(module, shape, *, batch, device, threads):
    """A stand-in timer, steady whatever the machine's load: MACs plus a fixed time per call."""
    return 1e-6 * batch * sum(layer_macs(module, tuple(shape)).values()) + 0.002


def test_the_stage_plans_by_latency_and_says_what_it_reached(cache_dir, monkeypatch):
    monkeypatch.setattr(latency_model, "time_layer", fake_ms)
    model = TinyCNN().eval()
    lines: list[str] = []
    config = StructuredConfig.from_dict({"method": "l1", "macs_target": 0.5, "round_to": 1, "cost": "latency", "latency_batch": 8})
    small = apply_stage(model, config, Context(teacher=model, example=torch.zeros(EXAMPLE), progress=lines.append))
    assert small.conv2.out_channels < 16
    assert any("timed in" in line for line in lines)
    last = lines[-1]
    assert "of the dense MACs and" in last and "of the predicted latency for macs_target=0.5 (cost: latency)" in last
    assert float(last.split(" and ")[1].split()[0]) <= 0.5 + 1e-6
    assert list((cache_dir / "latency").glob("*.json"))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: StructuredConfig.from_dict({"macs_target": 0.5, "cost": "speed"}), r"structured.cost='speed' is not known: expected one of \['macs', 'latency'\]"),
        (lambda: StructuredConfig.from_dict({"macs_target": 0.5, "latency_batch": 0}), r"structured.latency_batch=0 must be an integer >= 1"),
        (lambda: StructuredConfig.from_dict({"cost": "latency", "layers": {"conv1": {"keep": 4}}}), r"structured.cost='latency' plans counts to a macs_target"),
        (lambda: plan_counts(TinyCNN(), 0.5, cost="speed", example=EXAMPLE), r"cost='speed' is unknown: expected one of \['macs', 'latency'\]"),
    ],
)
def test_bad_cost_settings_are_one_line_errors(call, message):
    with pytest.raises(SqueezeError, match=message) as e:
        call()
    assert "\n" not in str(e.value)
