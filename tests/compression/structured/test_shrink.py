from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from squeezetune.compression.latency import compare_latency, latency_ms
from squeezetune.compression.measure import layer_macs, macs, params
from squeezetune.compression.structured._graph import StructureGraph
from squeezetune.compression.structured.shrink import apply_spec, channel_groups, plan_counts, shrink, shrunk_spec
from squeezetune.errors import SqueezeError
from squeezetune.tasks.cnn import MobileNetV2, ResNet20, VGGNet
from tests.compression._models import randomise_norms


def _zero_channels(model: nn.Module, layer: str, channels: list[int]) -> None:
    """Make ``channels`` of ``layer``'s group exactly zero wherever they are produced."""
    graph = StructureGraph(model)
    group = graph.group(layer)
    with torch.no_grad():
        for c in group.couplings:
            if c.role == "in":
                continue
            m = graph.get(c.module)
            for idx, root in zip(c.idxs, c.root):
                if root in channels:
                    m.weight[idx] = 0
                    if m.bias is not None:
                        m.bias[idx] = 0


@pytest.mark.parametrize(
    "factory,layer",
    [
        (ResNet20, "layer1.0.conv1"),  # inside a residual branch
        (ResNet20, "layer2.0.conv2"),  # a stage's residual stream: conv2s, projection shortcut, adds
        (VGGNet, "features.17"),  # last conv, read by the classifier through pooling + flatten
        (MobileNetV2, "features.4.conv.0"),  # expand conv coupled to a depthwise conv
        (MobileNetV2, "features.6.conv.6"),  # projections joined by an inverted-residual add
    ],
)
def test_removing_zeroed_channels_keeps_the_function(factory, layer):
    model = randomise_norms(factory())
    n = channel_groups(model)[StructureGraph(model).resolve(layer)].channels
    gone = list(range(1, n, 3))
    _zero_channels(model, layer, gone)
    x = torch.randn(4, 1, 28, 28)
    small = shrink(model, {layer: gone})
    with torch.no_grad():
        torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-5)
    assert params(small) < params(model)
    assert macs(small) < macs(model)


def test_shrink_makes_smaller_tensors_and_leaves_the_input_alone():
    dense = ResNet20()
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    small = shrink(dense, {"layer1.0.conv1": range(10)})
    assert small.layer1[0].conv1.weight.shape == (6, 16, 3, 3)
    assert small.layer1[0].bn1.weight.shape == (6,) and small.layer1[0].bn1.running_mean.shape == (6,)
    assert small.layer1[0].conv2.weight.shape == (16, 6, 3, 3)
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())
    assert params(dense) - params(small) == 10 * 16 * 9 + 2 * 10 + 16 * 10 * 9


def test_residual_partners_stay_consistent_on_resnet20():
    small = shrink(ResNet20(), {"layer2.0.conv2": [0, 5, 7, 31]})
    for block in small.layer2:
        assert block.conv2.out_channels == block.bn2.num_features == 28
        assert block.conv1.in_channels == 28 or block is small.layer2[0]
    assert small.layer2[0].shortcut[0].out_channels == small.layer2[0].shortcut[1].num_features == 28
    assert small.layer3[0].conv1.in_channels == small.layer3[0].shortcut[0].in_channels == 28
    assert small.layer2[0].conv1.in_channels == 16  # the previous stage is untouched
    assert small(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_depthwise_groups_stay_consistent_on_mobilenetv2():
    small = shrink(MobileNetV2(), {"features.5.conv.0": range(40)})
    expand, dw, project = small.features[5].conv[0], small.features[5].conv[3], small.features[5].conv[6]
    assert expand.out_channels == dw.in_channels == dw.out_channels == dw.groups == project.in_channels == 56
    assert dw.weight.shape == (56, 1, 3, 3)
    assert small(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("factory", [ResNet20, VGGNet, MobileNetV2])
def test_spec_round_trip_rebuilds_the_shrunk_model(factory):
    dense = randomise_norms(factory())
    keep = plan_counts(dense, 0.4)
    groups = channel_groups(dense)
    small = shrink(dense, {n: range(k, groups[n].channels) for n, k in keep.items()})
    spec = json.loads(json.dumps(shrunk_spec(small)))
    rebuilt = apply_spec(factory(), spec)
    rebuilt.load_state_dict(small.state_dict())
    rebuilt.eval()
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), small(x))
    assert shrunk_spec(rebuilt) == spec


def test_spec_lists_constructor_sizes():
    spec = shrunk_spec(shrink(MobileNetV2(), {"features.4.conv.0": range(8)}))
    assert spec["format"] == "squeezetune.shrunk/1"
    assert spec["modules"]["features.4.conv.3"] == {"type": "Conv2d", "in_channels": 56, "out_channels": 56, "groups": 56}
    assert spec["modules"]["features.4.conv.1"] == {"type": "BatchNorm2d", "num_features": 56}
    assert spec["modules"]["classifier"] == {"type": "Linear", "in_features": 128, "out_features": 10}


def test_apply_spec_rejects_bad_specs():
    spec = shrunk_spec(ResNet20())
    with pytest.raises(SqueezeError, match="format"):
        apply_spec(ResNet20(), {"modules": {}})
    with pytest.raises(SqueezeError, match="'layer9.conv'"):
        apply_spec(ResNet20(), {**spec, "modules": {"layer9.conv": spec["modules"]["conv1"]}})
    with pytest.raises(SqueezeError, match="'fc'.*'Linear'"):
        apply_spec(ResNet20(), {**spec, "modules": {"fc": spec["modules"]["conv1"]}})


def test_macs_counts_convs_and_linears():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 28 * 28, 10))
    assert layer_macs(model) == {"0": 28 * 28 * 4 * 9, "2": 4 * 28 * 28 * 10}
    assert macs(model) == 28 * 28 * 4 * 9 + 4 * 28 * 28 * 10
    assert params(model) == 4 * 9 + 4 + 4 * 28 * 28 * 10 + 10


@pytest.mark.parametrize("factory,target,round_to", [(ResNet20, 0.5, 1), (ResNet20, 0.25, 1), (ResNet20, 0.5, 8), (MobileNetV2, 0.5, 1)])
def test_plan_counts_hits_the_macs_target(factory, target, round_to):
    dense = factory()
    keep = plan_counts(dense, target, round_to=round_to)
    groups = channel_groups(dense)
    assert set(keep) == set(groups)
    if round_to > 1:
        assert all(k % round_to == 0 or k == groups[n].channels for n, k in keep.items())
    small = shrink(dense, {n: range(k, groups[n].channels) for n, k in keep.items()})
    ratio = macs(small) / macs(dense)
    assert ratio <= target
    assert ratio > target - (0.08 if round_to == 1 else 0.2)


def test_plan_counts_by_sensitivity_spares_the_sensitive_layer():
    from squeezetune.compression.structured.filters import Sensitivity

    dense = VGGNet()
    names = list(channel_groups(dense))
    fractions = (0.25, 0.5, 0.75)
    accuracy = {n: (0.99, 0.98, 0.97) for n in names}
    accuracy["features.14"] = (0.6, 0.3, 0.1)
    sens = Sensitivity(0.99, fractions, accuracy)
    keep = plan_counts(dense, 0.5, "sensitivity", sens)
    assert keep["features.14"] > keep["features.10"] * 2  # 128 vs 64 channels: spared more than its size
    groups = channel_groups(dense)
    small = shrink(dense, {n: range(k, groups[n].channels) for n, k in keep.items()})
    assert macs(small) <= 0.5 * macs(dense)


def test_latency_is_a_positive_median():
    model = VGGNet()
    assert latency_ms(model, batch=2, repeats=3, warmup=1) > 0
    times = compare_latency({"a": model, "b": shrink(model, {"features.0": range(16)})}, batch=2, repeats=3, warmup=1)
    assert set(times) == {"a", "b"} and all(t > 0 for t in times.values())


def test_latency_layouts_leave_the_models_alone():
    model = VGGNet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for layouts in (("contiguous",), ("channels_last",), ("contiguous", "channels_last")):
        assert compare_latency({"m": model}, batch=2, repeats=2, warmup=1, layouts=layouts)["m"] > 0
    assert all(p.is_contiguous() for p in model.parameters())  # the NHWC run used a copy
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(SqueezeError, match=r"layouts=\['nhwc'\]: expected some of \['contiguous', 'channels_last'\]"):
        compare_latency({"m": model}, layouts=("nhwc",))


class _ViewsNCHW(nn.Module):
    """Flattens with ``view``, which channels_last memory refuses."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 26 * 26, 10)

    def forward(self, x):
        y = self.conv(x)
        return self.fc(y.view(y.size(0), -1))


def test_latency_skips_a_layout_the_model_cannot_run_in():
    times = compare_latency({"m": _ViewsNCHW()}, batch=2, repeats=2, warmup=1)
    assert times["m"] > 0
    with pytest.raises(RuntimeError):
        compare_latency({"m": _ViewsNCHW()}, batch=2, repeats=2, warmup=1, layouts=("channels_last",))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda m: shrink(m, {"fc": [0]}), "layer 'fc' cannot be pruned structurally"),
        (lambda m: shrink(m, {"nope": [0]}), "no layer 'nope'"),
        (lambda m: shrink(m, {"layer1.0.bn1": [0]}), "layer 'layer1.0.bn1' cannot be pruned structurally"),
        (lambda m: shrink(m, {"layer1.0.conv1": range(16)}), "removing 16 of 16 channels of layer 'layer1.0.conv1'"),
        (lambda m: shrink(m, {"layer1.0.conv1": [16]}), r"\[16\] for layer 'layer1.0.conv1' must be in \[0, 16\)"),
        (lambda m: shrink(m, {"conv1": [0], "layer1.0.conv2": [1]}), "same channel group"),
        (lambda m: plan_counts(m, 0.0), "macs_target=0.0"),
        (lambda m: plan_counts(m, 1.5), "macs_target=1.5"),
        (lambda m: plan_counts(m, 0.5, "magic"), "method='magic'"),
        (lambda m: plan_counts(m, 0.5, "sensitivity"), "sensitivity"),
        (lambda m: plan_counts(m, 0.0001), "macs_target=0.0001 is unreachable"),
        (lambda m: latency_ms(m, batch=0), "batch=0"),
    ],
)
def test_bad_input_is_one_line_naming_the_value(call, message):
    with pytest.raises(SqueezeError, match=message) as info:
        call(ResNet20())
    assert "\n" not in str(info.value)


class _ChannelFold(nn.Module):
    """Sums the two halves of its channels with a view: DepGraph cannot map channels through it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = y.view(y.shape[0], 2, 4, *y.shape[2:]).sum(1)
        return self.fc(self.head(y).mean((2, 3)))


def test_a_model_depgraph_cannot_follow_gives_an_error_naming_the_layer():
    with pytest.raises(SqueezeError, match="'conv'") as info:
        shrink(_ChannelFold(), {"conv": [0]})
    assert "\n" not in str(info.value)


def test_parametrized_layers_must_be_baked_first():
    model = VGGNet()
    torch.nn.utils.parametrize.register_parametrization(model.features[0], "weight", nn.Identity())
    with pytest.raises(SqueezeError, match="'features.0' carries a parametrization"):
        shrink(model, {"features.3": [0]})
