"""The dense baseline's weight files and cache: tied weights, a model edited since it was cached."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from squeezetune.compression.baseline import dense_bytes, dense_model, load_weights, save_weights
from squeezetune.tasks import Split, Task


class Tied(nn.Module):
    """An embedding whose matrix is also the output layer's, as language models tie them."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, width)
        self.mix = nn.Linear(width, width)
        self.out = nn.Linear(width, 12)
        self.out.weight = self.emb.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.mix(self.emb(tokens).mean(1))))


def _task(width: int = 8, epochs: int = 2) -> Task:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, 12, (64, 5), generator=g), torch.randint(0, 12, (64,), generator=g)
    return Task("tied", "tied", lambda: Tied(width), lambda _: (Split(x, y), Split(x, y)), epochs=epochs)


def test_tied_weights_save_load_and_count_once(tmp_path):
    model = Tied()
    save_weights(model, tmp_path / "w.safetensors")
    back = load_weights(_task(), tmp_path / "w.safetensors")
    assert back.out.weight is back.emb.weight
    torch.testing.assert_close(back.emb.weight, model.emb.weight)
    assert dense_bytes(model) == 4 * (12 * 8 + 8 * 8 + 8 + 12)  # the tied matrix once


def test_an_edited_model_or_schedule_trains_a_new_baseline(tmp_path):
    task = _task()
    splits = task.splits(None)
    first = dense_model(task, splits, cache_dir=tmp_path)
    again = dense_model(task, splits, cache_dir=tmp_path)
    torch.testing.assert_close(again.mix.weight, first.mix.weight)
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    wider = _task(width=16)
    assert dense_model(wider, wider.splits(None), cache_dir=tmp_path).mix.weight.shape == (16, 16)
    longer = replace(task, epochs=3)
    dense_model(longer, splits, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3


class _NeedsValues(nn.Module):
    """An __init__ that reads a tensor's value, as stochastic-depth schedules do (no meta build)."""

    def __init__(self) -> None:
        super().__init__()
        self.rate = [x.item() for x in torch.linspace(0, 0.1, 2)][-1]
        self.emb = nn.Embedding(12, 8)
        self.out = nn.Linear(8, 12)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.out(self.emb(tokens).mean(1))


def test_a_model_that_needs_real_values_to_build_is_cached_without_touching_the_rng(tmp_path):
    task = replace(_task(), build_model=_NeedsValues)
    splits = task.splits(None)
    dense_model(task, splits, cache_dir=tmp_path)
    (cached,) = tmp_path.glob("*.safetensors")
    torch.manual_seed(3)
    load_weights(task, cached)
    drawn = torch.get_rng_state()
    torch.manual_seed(3)
    dense_model(task, splits, cache_dir=tmp_path)  # from the cache: the key's build adds no draw to the load's
    assert torch.equal(torch.get_rng_state(), drawn)


def test_a_dense_model_at_chance_is_flagged_and_one_that_learnt_is_not(tmp_path):
    from squeezetune.compression.baseline import chance_note
    from squeezetune.compression.finetune import evaluate

    split = Split(torch.zeros(10, 3), torch.tensor([1, 1, 1, 1, 1, 1, 0, 2, 2, 0]))
    note = chance_note(0.6, split)
    assert note is not None and "reads 0.6000 on the 10 evaluation items" in note and "always answering label 1 (0.6000)" in note
    assert chance_note(0.61, split) is not None and chance_note(0.7, split) is None
    rare = Split(torch.zeros(100, 3), torch.tensor([0] * 99 + [1]))  # one label holds 99%: a perfect model is no chance model
    assert chance_note(1.0, rare) is None and chance_note(0.99, rare) is not None

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 4, generator=g)
    y = (x[:, 0] > 0).long()
    task = Task(name="linear", model="mlp", build_model=lambda: nn.Linear(4, 2), load_data=lambda _: (Split(x[:200], y[:200]), Split(x[200:], y[200:])), epochs=3, lr=0.1)
    learnt = dense_model(task, task.splits(None), cache_dir=tmp_path)
    assert chance_note(evaluate(learnt, task.splits(None)[1]), task.splits(None)[1]) is None
