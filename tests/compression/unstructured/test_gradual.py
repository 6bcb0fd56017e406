from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from squeezetune.compression.finetune import FinetuneConfig
from squeezetune.compression.stages import Context, EpochEvent, apply_stage
from squeezetune.compression.unstructured.gradual import GradualPruneConfig, IterativePruneConfig, cubic_keep
from squeezetune.compression.unstructured.pruning import LayerPrune, Mask, mask_of
from squeezetune.errors import SqueezeError
from squeezetune.tasks import Split


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 24), nn.ReLU(), nn.Linear(24, 3))


def _data(n: int = 96) -> Split:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 4, 4, generator=g)
    return Split(x, (x.flatten(1)[:, :3].argmax(1)))


def _ctx(model: nn.Module, data: Split, **kw) -> Context:
    return Context(teacher=copy.deepcopy(model).eval(), example=data.x[:1], train=data, eval=data, **kw)


def test_cubic_curve_ends_at_the_target():
    assert cubic_keep(0.0, final=0.05) == 1.0
    assert cubic_keep(1.0, final=0.05) == pytest.approx(0.05)
    values = [cubic_keep(p / 10, final=0.05) for p in range(11)]
    assert all(a > b for a, b in zip(values, values[1:]))  # falls steadily, fastest at first
    assert values[0] - values[1] > values[-2] - values[-1]


def test_gradual_sparsity_follows_the_cubic_curve_and_ends_at_the_target():
    model, data = _mlp(), _data(96)
    config = GradualPruneConfig(layers={"1": LayerPrune(keep=40)}, finetune=FinetuneConfig(epochs=4, batch_size=16, lr=0.05), ramp=0.75, every=1)
    seen: list[int] = []

    def on_epoch(event: EpochEvent) -> None:
        seen.append(int(mask_of(event.model[1]).sum()))

    apply_stage(model, config, _ctx(model, data, on_epoch=on_epoch))
    steps_per_epoch, total = 6, 24
    end = round(0.75 * total)
    expected = [round(cubic_keep(min(e * steps_per_epoch / end, 1.0), 40, 16 * 24)) for e in range(1, 5)]
    assert seen == expected
    mask = mask_of(model[1])
    assert type(model[1].parametrizations.weight[0]) is Mask  # a plain mask is left, as prune leaves
    assert int(mask.sum()) == 40 and int((model[1].weight != 0).sum()) == 40
    assert mask_of(model[3]) is None  # only the named layer is pruned


@pytest.mark.parametrize("regrow", [False, True])
def test_a_snapshot_mid_ramp_is_pruned_to_the_final_targets_and_leaves_the_training_alone(regrow):
    """What a search's rung measures: the model at its final size now, not the larger one still training."""
    model, data = _mlp(), _data(96)
    config = GradualPruneConfig(layers={"1": LayerPrune(keep=40)}, finetune=FinetuneConfig(epochs=4, batch_size=16, lr=0.05), ramp=0.75, every=1, regrow=regrow)
    seen: list[tuple[int, int, int]] = []

    def snapshot(m: nn.Module) -> tuple[nn.Module, int]:
        return m, 0

    def on_epoch(event: EpochEvent) -> None:
        shown, _ = event.snapshot()
        weight = shown[1].weight
        seen.append((int(mask_of(event.model[1]).sum()), int(mask_of(shown[1]).sum()), int((weight != 0).sum())))
        assert shown is not event.model

    apply_stage(model, config, _ctx(model, data, on_epoch=on_epoch, snapshot=snapshot))
    assert [s[1:] for s in seen] == [(40, 40)] * 4  # every snapshot at the final count
    assert seen[0][0] > 40  # while the model itself was still on the curve
    assert int(mask_of(model[1]).sum()) == 40
    unseen = _mlp()
    apply_stage(unseen, config, _ctx(unseen, data))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), unseen.state_dict().values()))  # the snapshots changed nothing


def test_a_snapshot_reestimates_batchnorm_statistics_for_the_pruned_model():
    """Pruned at once to the final targets, a convolution's outputs shrink; the snapshot's
    BatchNorm holds their statistics, not those of the larger model still training."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(128, 3))
    data = _data(96)
    config = GradualPruneConfig(layers={"0": LayerPrune(keep=8)}, finetune=FinetuneConfig(epochs=2, batch_size=16, lr=0.01), ramp=1.0, every=1)
    checked: list[bool] = []

    def on_epoch(event: EpochEvent) -> None:
        shown, _ = event.snapshot()
        assert not shown.training
        with torch.no_grad():
            out = shown[0](data.x)
        torch.testing.assert_close(shown[1].running_mean, out.mean((0, 2, 3)), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(shown[1].running_var, out.var((0, 2, 3)), atol=1e-4, rtol=1e-2)
        checked.append(not torch.allclose(shown[1].running_mean, event.model[1].running_mean))

    apply_stage(model, config, _ctx(model, data, on_epoch=on_epoch, snapshot=lambda m: (m, 0)))
    assert checked == [True, True]  # the training model's own statistics differ and were left alone


def test_gradual_one_shot_with_no_epochs_prunes_to_the_target():
    model, data = _mlp(), _data()
    apply_stage(model, GradualPruneConfig(default=LayerPrune(keep_fraction=0.25), finetune=FinetuneConfig(epochs=0)), _ctx(model, data))
    assert int(mask_of(model[1]).sum()) == 96 and int(mask_of(model[3]).sum()) == 18


def test_regrown_weights_come_back():
    # The label is decided by input 0 alone; the layer starts with tiny weights there, so the first
    # (magnitude) pruning removes them. With regrowth they keep their gradient and come back.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 1, 8, generator=g)
    data = Split(x, (x[:, 0, 0, 0] > 0).long())
    results = {}
    for regrow in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(8, 2))
        with torch.no_grad():
            model[1].weight.uniform_(0.3, 0.5)
            model[1].weight[:, 0] = 1e-4
        config = GradualPruneConfig(layers={"1": LayerPrune(keep=4)}, finetune=FinetuneConfig(epochs=3, lr=0.1, batch_size=32), ramp=0.05, every=1, regrow=regrow)
        apply_stage(model, config, _ctx(model, data))
        results[regrow] = mask_of(model[1])[:, 0]
        assert int(mask_of(model[1]).sum()) == 4
    assert not results[False].any()  # without regrowth they stay pruned
    assert results[True].all()  # with it, both come back


def test_iterative_reaches_the_target_without_a_floor():
    model, data = _mlp(), _data()
    config = IterativePruneConfig(default=LayerPrune(keep_fraction=0.1), steps=3, finetune=FinetuneConfig(epochs=1, batch_size=32))
    apply_stage(model, config, _ctx(model, data))
    assert int(mask_of(model[1]).sum()) == round(0.1 * 16 * 24)
    assert int(mask_of(model[3]).sum()) == round(0.1 * 24 * 3)


def test_iterative_stops_at_the_floor_and_keeps_the_last_good_step():
    model, data = _mlp(), _data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    messages: list[str] = []
    config = IterativePruneConfig(default=LayerPrune(keep_fraction=0.1), steps=3, finetune=FinetuneConfig(epochs=1, batch_size=32), floor=1.0)
    apply_stage(model, config, _ctx(model, data, progress=messages.append))
    assert any("below the floor at step 1" in m for m in messages)
    assert int(mask_of(model[1]).sum()) == 16 * 24  # step 0: nothing pruned, weights as they were
    torch.testing.assert_close(model[1].weight.detach(), before["1.weight"])


def test_iterative_max_drop_counts_from_the_teacher():
    model, data = _mlp(), _data()
    messages: list[str] = []
    config = IterativePruneConfig(default=LayerPrune(keep_fraction=0.5), steps=2, finetune=FinetuneConfig(epochs=1, batch_size=32), max_drop=100.0)
    apply_stage(model, config, _ctx(model, data, progress=messages.append))
    assert not any("below the floor" in m for m in messages)
    assert int(mask_of(model[1]).sum()) == 192


@pytest.mark.parametrize(
    "data,message",
    [
        ({}, r"gradual_prune needs a target: expected default, budget or layers"),
        ({"default": {"keep_fraction": 0.1}, "budget": {"keep_fraction": 0.1}}, r"gives both default and budget"),
        ({"default": {"keep_fraction": 0.1}, "ramp": 1.5}, r"gradual_prune.ramp=1.5 must be in \(0, 1.0\]"),
        ({"default": {"keep_fraction": 0.1}, "every": 0}, r"gradual_prune.every=0 must be an integer >= 1"),
        ({"budget": {"keep_fraction": 0}}, r"budget.keep_fraction=0.0 must be in \(0, 1\]"),
    ],
)
def test_bad_gradual_settings_say_what_is_wrong(data, message):
    with pytest.raises(SqueezeError, match=message):
        GradualPruneConfig.from_dict(data)


def test_iterative_floor_is_checked():
    with pytest.raises(SqueezeError, match=r"iterative_prune.floor=1.5 must be an accuracy in \[0, 1\]"):
        IterativePruneConfig.from_dict({"default": {"keep_fraction": 0.1}, "floor": 1.5})


def test_gradual_validates_layer_names_and_counts():
    model = _mlp()
    with pytest.raises(SqueezeError, match=r"unknown layer 'fc9' in gradual_prune.layers"):
        GradualPruneConfig.from_dict({"layers": {"fc9": {"keep": 3}}}).validate(model, torch.zeros(1, 1, 4, 4))
    with pytest.raises(SqueezeError, match=r"keep=999 for layer '3' must be an integer in \[1, 72\]"):
        GradualPruneConfig.from_dict({"layers": {"3": {"keep": 999}}}).validate(model, torch.zeros(1, 1, 4, 4))


def test_budget_splits_one_global_fraction():
    model, data = _mlp(), _data()
    config = GradualPruneConfig.from_dict({"budget": {"keep_fraction": 0.2, "allocation": "magnitude"}, "finetune": {"epochs": 0}})
    apply_stage(model, config, _ctx(model, data))
    kept = int(mask_of(model[1]).sum()) + int(mask_of(model[3]).sum())
    assert math.isclose(kept, 0.2 * (16 * 24 + 24 * 3), abs_tol=2)


def test_the_stages_that_train_say_so_and_a_replaced_layer_name_covers_its_factors():
    from squeezetune.compression.decomposition.stage import DecomposeConfig
    from squeezetune.compression.unstructured.soft_sharing import SoftShareConfig

    assert GradualPruneConfig.trains and IterativePruneConfig.trains and SoftShareConfig.trains  # snapshots skip them
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
    x = torch.randn(4, 1, 4, 4)
    config = DecomposeConfig.from_dict({"layers": {"1": {"rank": 2}}, "refit": False})
    model = apply_stage(model, config, Context(teacher=model, example=x[:1]))
    gradual = GradualPruneConfig.from_dict({"layers": {"1": {"keep_fraction": 0.5}}})
    assert sorted(gradual.covered(model)) == ["1.0", "1.1"]
