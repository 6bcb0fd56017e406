"""The decompose stage: checked before any work, planned to a MAC target, stored in the container, composing with the other stages."""

from __future__ import annotations

import pytest
import torch

from squeezetune.compression import Context, Recipe, apply_stage, compress, decode_file, latency_model
from squeezetune.compression.architecture import Factors
from squeezetune.compression.coding import codec
from squeezetune.compression.coding.container import pack_sections
from squeezetune.compression.decode import decode_bytes
from squeezetune.compression.decomposition import DecomposeConfig
from squeezetune.compression.decomposition.stage import plan_targets, targets
from squeezetune.compression.latency_model import LayerTimes
from squeezetune.compression.measure import layer_macs, macs
from squeezetune.errors import SqueezeError
from squeezetune.tasks.cnn import ResNet20
from tests.compression._tiny import CNN_TASK, TinyCNN, splits, trained

EXAMPLE = torch.zeros(1, 1, 12, 12)


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"layers": {"conv9": {"rank": 2}}}, r"unknown layer 'conv9' in decompose.layers"),
        ({"layers": {"conv2": {"rank": 50}}}, r"rank=50 for layer 'conv2' \(lowrank\) must be in \[1, 13\]: above 13 the factors hold more weights than the layer"),
        ({"layers": {"fc2": {"method": "separable", "rank": 1}}}, r"separable cannot replace layer 'fc2': it is a Linear \(expected Conv2d\)"),
        ({"layers": {"fc2": {"method": "pool"}}}, r"pool cannot replace layer 'fc2': it is a layer whose input is not a flattened feature map"),
        ({"layers": {"conv2": {}}}, r"decompose.layers.conv2 has no rank"),
        ({"macs_target": 0.5, "default": {"rank": 2}}, "both a default rank and a macs_target"),
        ({"macs_target": 1.5}, r"macs_target=1.5 must be in \(0, 1\]"),
        ({"macs_target": 0.5, "cost": "speed"}, r"decompose.cost='speed' is not known: expected one of \['macs', 'latency'\]"),
        ({"cost": "latency", "default": {"rank": 2}}, r"decompose.cost='latency' plans ranks to a macs_target"),
        ({"macs_target": 0.5, "latency_batch": 0}, r"decompose.latency_batch=0 must be an integer >= 1"),
    ],
)
def test_bad_settings_are_one_line_errors_before_any_work(settings, message):
    with pytest.raises(SqueezeError, match=message):
        Recipe.from_dict({"stages": [{"decompose": settings}]}).validate(TinyCNN(), EXAMPLE)


@pytest.mark.parametrize("allocation", ["energy", "uniform"])
def test_a_macs_target_plans_ranks_that_reach_it(allocation):
    model = ResNet20(blocks=1).eval()
    config = DecomposeConfig.from_dict({"method": "lowrank", "macs_target": 0.5, "allocation": allocation})
    small = config.preview(model, torch.zeros(1, 1, 28, 28))
    ratio = macs(small, (1, 1, 28, 28)) / macs(model, (1, 1, 28, 28))
    assert 0.4 < ratio <= 0.5
    ranks = [m[0].weight.shape[0] for m in small.modules() if isinstance(m, Factors)]
    assert ranks and all(r % 8 == 0 or r < 8 for r in ranks)  # multiples of round_to where the layer allows


class HeadedCNN(torch.nn.Module):
    """Convolutions beside a small hidden Linear and a 10-class head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 16, 3, padding=1)
        self.c2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.c3 = torch.nn.Conv2d(32, 32, 3, padding=1)
        self.fc = torch.nn.Linear(32, 32)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.c2(torch.relu(self.c1(x)))), 2)
        return self.head(torch.relu(self.fc(torch.relu(self.c3(x)).mean((2, 3)))))


@pytest.mark.parametrize("allocation", ["energy", "uniform"])
def test_a_planned_target_leaves_layers_with_a_tiny_share_of_the_macs_whole(allocation):
    """The head and the hidden Linear hold under 1% of the MACs: cut to rank 3 they saved a few
    hundred MACs and cost accuracy. Named in ``layers``, a small layer is still planned."""
    torch.manual_seed(0)
    model = HeadedCNN().eval()
    config = DecomposeConfig.from_dict({"method": "lowrank", "macs_target": 0.5, "allocation": allocation})
    planned, reached = plan_targets(model, config, torch.zeros(1, 1, 28, 28))
    assert reached <= 0.5 and {name for name, _, _ in planned} == {"c1", "c2", "c3"}
    named = DecomposeConfig.from_dict({"method": "lowrank", "macs_target": 0.5, "allocation": allocation, "layers": {"head": {}}})
    assert "head" in {name for name, _, _ in plan_targets(model, named, torch.zeros(1, 1, 28, 28))[0]}


def test_a_deep_model_of_small_layers_is_still_planned():
    """Each of 120 layers holds under 1% of the MACs; only the smallest that together stay under 1%
    are left whole, not every one of them."""
    model = torch.nn.Sequential(*[torch.nn.Linear(32, 32) for _ in range(120)]).eval()
    config = DecomposeConfig.from_dict({"method": "lowrank", "macs_target": 0.5})
    planned, reached = plan_targets(model, config, torch.zeros(1, 32))
    assert len(planned) == 119 and reached < 0.51  # rank 8 is each layer's one step: the layer left whole overshoots by 1/240


def fake_ms(module, shape, *, batch, device, threads):
    """A stand-in timer, steady whatever the machine's load: MACs plus a fixed time per layer."""
    return 1e-6 * batch * sum(layer_macs(module, tuple(shape)).values()) + 0.002 * sum(1 for m in module.modules() if not list(m.children()))


def test_a_latency_target_plans_ranks_that_reach_it_and_the_second_plan_times_nothing(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(latency_model, "time_layer", lambda *a, **kw: calls.append(1) or fake_ms(*a, **kw))
    model, example = ResNet20(blocks=1).eval(), torch.zeros(1, 1, 28, 28)
    config = DecomposeConfig.from_dict({"method": "lowrank", "macs_target": 0.5, "cost": "latency", "allocation": "uniform"})
    assert config.preview(model, example) is None  # the ranks depend on timings
    times = LayerTimes.open(model, example, cache_dir=tmp_path)
    planned, reached = plan_targets(model, config, example, times=times)
    assert planned and reached <= 0.5 and calls and times.timed == len(calls)
    again = LayerTimes.open(ResNet20(blocks=1), example, cache_dir=tmp_path)
    assert plan_targets(model, config, example, times=again) == (planned, reached)
    assert again.timed == 0 and len(calls) == times.timed
    by_macs = DecomposeConfig.from_dict({"method": "lowrank", "macs_target": 0.5, "allocation": "uniform"})
    assert targets(model, by_macs, example) == targets(model, DecomposeConfig.from_dict({**by_macs.to_dict(), "cost": "macs"}), example)


def test_the_stage_plans_by_latency_and_says_what_it_reached(cache_dir, monkeypatch):
    monkeypatch.setattr(latency_model, "time_layer", fake_ms)
    model = ResNet20(blocks=1).eval()
    lines: list[str] = []
    config = DecomposeConfig.from_dict({"method": "lowrank", "macs_target": 0.6, "cost": "latency", "latency_batch": 8, "refit": False})
    small = apply_stage(model, config, Context(teacher=model, example=torch.zeros(1, 1, 28, 28), progress=lines.append))
    assert any(isinstance(m, Factors) for m in small.modules())
    assert "of the dense MACs and" in lines[-1] and "of the predicted latency for macs_target=0.6 (cost: latency)" in lines[-1]
    assert float(lines[-1].split(" and ")[1].split()[0]) <= 0.6


def test_the_stage_fits_each_layer_and_the_container_rebuilds_it_bit_exactly():
    dense = trained(TinyCNN)
    train, held = splits()
    ctx = Context(teacher=dense, example=EXAMPLE, train=train, eval=held)
    layers = {"conv2": {"method": "separable", "rank": 1}, "conv3": {"method": "asymmetric", "rank": 4}, "fc1": {"method": "pool"}, "fc2": {"rank": 2}}
    config = DecomposeConfig.from_dict({"layers": layers, "images": 64})
    Recipe.from_dict({"stages": [{"decompose": config.to_dict()}]}).validate(dense, EXAMPLE)
    model = apply_stage(dense, config, ctx)
    assert isinstance(model.conv2, Factors) and model.conv2[0].groups == 8
    assert model.conv3[0].kernel_size == (3, 1) and model.fc1[3].in_features == 16 and model.fc2[0].out_features == 2
    assert macs(model, EXAMPLE) < macs(dense, EXAMPLE)
    for stage in ({"prune": {"default": {"keep_fraction": 0.5}, "layers": {"conv2": {"keep_fraction": 0.8}}}}, {"share": {"default": {"bits": 4}, "fit": True}}):
        config = Recipe.from_dict({"stages": [stage]}).steps[0].config
        model = apply_stage(model, config, ctx)
    assert model.conv2[0].parametrizations.weight[0].mask.mean() == pytest.approx(0.8, abs=0.05)  # the replaced layer's name covers its factors
    from squeezetune.compression.architecture import architecture_spec

    encoded = codec.encode_model(model, task=CNN_TASK.name, spec=architecture_spec(model, TinyCNN()))
    decoded = decode_bytes(pack_sections(encoded.sections), task=CNN_TASK)
    x = held.x[:16]
    with torch.no_grad():
        assert torch.equal(decoded(x), model.eval()(x))


def test_a_decomposition_recipe_runs_through_compress(tmp_path, cache_dir):
    recipe = Recipe.from_dict({"stages": [{"decompose": {"method": "lowrank", "macs_target": 0.6, "round_to": 2, "images": 32}}, {"finetune": {"epochs": 1, "distill": True}}]})
    report = compress(CNN_TASK, recipe, out=tmp_path / "d.sqz", dense=trained(TinyCNN), latency=False)
    decoded = decode_file(tmp_path / "d.sqz", task=CNN_TASK)
    assert any(isinstance(m, Factors) for m in decoded.modules())
    assert report.macs <= 0.6 * report.dense_macs and report.params == sum(p.numel() for p in decoded.parameters())
    assert [s.stage for s in report.stages] == ["dense", "decompose", "finetune", "encode"]


class _Twice(torch.nn.Module):
    """One conv applied twice: the samples hold its first call only."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.same = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.same(torch.relu(self.same(torch.relu(self.stem(x))))))
        return self.head(h.mean((2, 3)))


def test_a_layer_called_twice_keeps_its_svd_factors_and_says_why():
    torch.manual_seed(0)
    dense = _Twice().eval()
    train, held = splits()
    said: list[str] = []
    ctx = Context(teacher=dense, example=EXAMPLE, train=train, eval=held, progress=said.append)
    layers = {"same": {"rank": 2}, "stem": {"rank": 2}}
    model = apply_stage(dense, DecomposeConfig.from_dict({"layers": layers, "images": 32}), ctx)
    svd = DecomposeConfig.from_dict({"layers": layers, "refit": False})
    plain = apply_stage(dense, svd, Context(teacher=dense, example=EXAMPLE))
    torch.testing.assert_close(model.same.state_dict(), plain.same.state_dict())
    assert any(line.startswith("same: lowrank rank 2, SVD alone: the layer runs 2 times a forward pass") for line in said), said
    assert any(line.startswith("stem: lowrank rank 2, output error") for line in said), said
