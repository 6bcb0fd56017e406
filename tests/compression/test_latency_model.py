"""Per-layer timings: keyed by what a layer's time depends on, cached per model and machine, read back without timing."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from squeezetune.compression import latency_model
from squeezetune.compression.latency_model import Cost, LayerTimes, Table, grid, signature
from squeezetune.errors import SqueezeError
from tests.compression._tiny import TinyCNN

EXAMPLE = (1, 1, 12, 12)


@pytest.fixture
def timer_calls(monkeypatch) -> list[str]:
    """Every layer size timed, by signature (the real timer still runs)."""
    calls: list[str] = []
    real = latency_model.time_layer

    def counted(module, shape, **kw):
        calls.append(signature(module, shape))
        return real(module, shape, **kw)

    monkeypatch.setattr(latency_model, "time_layer", counted)
    return calls


def _layers() -> list[tuple[nn.Module, tuple[int, ...]]]:
    return [(nn.Conv2d(8, c, 3, padding=1), (1, 8, 12, 12)) for c in (4, 8, 16)]


def test_a_signature_names_sizes_and_input_but_not_weights():
    a, b = nn.Conv2d(8, 16, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
    assert signature(a, (1, 8, 12, 12)) == signature(b, (1, 8, 12, 12))
    assert signature(a, (1, 8, 12, 12)) != signature(a, (1, 8, 14, 14))
    assert signature(a, (1, 8, 12, 12)) != signature(nn.Conv2d(8, 16, 3, padding=1, bias=False), (1, 8, 12, 12))


def test_timings_are_cached_then_read_back_without_timing(tmp_path, timer_calls):
    model = TinyCNN()
    first = LayerTimes.open(model, EXAMPLE, batch=4, cache_dir=tmp_path)
    ms = first.ms(_layers() + _layers())  # each distinct size timed once
    assert first.timed == 3 and len(timer_calls) == 3 and all(t > 0 for t in ms)
    data = json.loads(first.path.read_text())
    assert data["format"] == latency_model.FORMAT and data["key"]["batch"] == 4 and data["key"]["threads"] == 1
    assert len(data["ms"]) == 3

    again = LayerTimes.open(TinyCNN(), EXAMPLE, batch=4, cache_dir=tmp_path)  # new weights, same architecture
    assert again.path == first.path
    assert again.ms(_layers()) == ms[:3]
    assert again.timed == 0 and len(timer_calls) == 3


def test_the_cache_key_changes_with_threads_batch_and_architecture(tmp_path):
    def path(model=None, **kw):
        return LayerTimes.open(model or TinyCNN(), EXAMPLE, cache_dir=tmp_path, **{"batch": 8, "threads": 1, **kw}).path

    base = path()
    assert path() == base
    assert path(threads=2) != base
    assert path(batch=16) != base
    wider = TinyCNN()
    wider.fc2 = nn.Linear(32, 5)
    assert path(wider) != base
    assert LayerTimes.open(TinyCNN(), EXAMPLE, cache_dir=tmp_path, batch=8, threads=None).key["threads"] == torch.get_num_threads()


def test_the_default_cache_folder_follows_squeezetune_cache(cache_dir):
    times = LayerTimes.open(TinyCNN(), EXAMPLE, batch=4)
    assert times.path.parent == cache_dir / "latency"


def test_an_unreadable_cache_file_is_timed_again_and_replaced(tmp_path, timer_calls):
    times = LayerTimes.open(TinyCNN(), EXAMPLE, batch=4, cache_dir=tmp_path)
    times.path.parent.mkdir(parents=True)
    times.path.write_text("{not json")
    again = LayerTimes.open(TinyCNN(), EXAMPLE, batch=4, cache_dir=tmp_path)
    again.ms(_layers())
    assert again.timed == 3 and json.loads(again.path.read_text())["format"] == latency_model.FORMAT


def test_a_table_is_monotone_even_where_the_timings_are_not():
    table = Table([8, 16, 32], [8, 16], [[1.0, 2.0], [0.5, 3.0], [4.0, 2.5]])  # noise: 16 inputs "faster" than 8
    sizes = [8, 10, 12, 16, 20, 24, 32]
    for out in (8, 12, 16):
        row = [table(i, out) for i in sizes]
        assert row == sorted(row)
    for inp in sizes:
        col = [table(inp, o) for o in (8, 10, 12, 14, 16)]
        assert col == sorted(col)
    assert table(8, 8) == 1.0 and table(32, 16) == 4.0


def test_the_grid_holds_the_smallest_size_and_multiples_of_the_groups():
    assert grid(16, 8) == [8, 16]
    assert grid(12, 1) == [1, 3, 6, 9, 12]
    assert all(s % 4 == 0 for s in grid(32, 1, multiple=4))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: LayerTimes.open(TinyCNN(), EXAMPLE, batch=0, cache_dir=None), r"latency batch=0 must be an integer >= 1"),
        (lambda: LayerTimes.open(TinyCNN(), EXAMPLE, threads=0, cache_dir=None), r"latency threads=0 must be an integer >= 1"),
        (lambda: Cost.read("speed", "structured.cost"), r"structured.cost='speed' is not known: expected one of \['macs', 'latency'\]"),
    ],
)
def test_bad_values_are_one_line_errors(call, message):
    with pytest.raises(SqueezeError, match=message) as e:
        call()
    assert "\n" not in str(e.value)


def test_a_cache_folder_that_cannot_be_written_costs_only_the_cache(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    said = []
    times = LayerTimes.open(nn.Sequential(nn.Linear(8, 8)), (1, 8), batch=2, cache_dir=blocked, progress=said.append)
    ms = times.ms([(nn.Linear(8, 4), (1, 8))])
    assert len(ms) == 1 and ms[0] > 0
    assert any("cannot cache" in line for line in said)
