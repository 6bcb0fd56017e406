"""The architecture spec: replaced layers as plain data, rebuilt from an allow-list, bounded by the dense model."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from squeezetune.compression.architecture import ARCH_FORMAT, Factors, apply_architecture, architecture_spec, build, describe
from squeezetune.compression.decode import _apply_checked_spec
from squeezetune.compression.structured.strided import StridedConv2d
from squeezetune.errors import SqueezeError
from tests.compression._tiny import TinyCNN


def _replaced() -> nn.Module:
    model = TinyCNN()
    model.conv2 = Factors(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.Conv2d(8, 16, 1, bias=False))
    model.conv3 = StridedConv2d(16, 16, (3, 3), (2, 2), (1, 1), (1, 1), taps=(1, 4, 7))
    model.fc1 = Factors(nn.Unflatten(1, (16, 6, 6)), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(16, 32))
    model.bn1 = nn.BatchNorm2d(8, momentum=None)
    return model


def test_a_spec_is_json_and_rebuilds_the_same_model():
    model = _replaced().eval()
    spec = json.loads(json.dumps(architecture_spec(model, TinyCNN())))
    assert spec["format"] == ARCH_FORMAT and sorted(spec["modules"]) == ["bn1", "conv2", "conv3", "fc1"]
    rebuilt = apply_architecture(TinyCNN(), spec)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 12, 12)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model(x))
    assert architecture_spec(rebuilt, TinyCNN()) == spec
    assert architecture_spec(TinyCNN(), TinyCNN()) is None


@pytest.mark.parametrize(
    "module",
    [nn.Conv1d(3, 4, 5, stride=2, padding=1, dilation=2, padding_mode="reflect"), nn.Linear(3, 4, bias=False), nn.BatchNorm1d(4, affine=False), nn.Identity(), nn.AdaptiveAvgPool1d(2)],
)
def test_every_allowed_type_round_trips(module):
    assert describe(build(json.loads(json.dumps(describe(module))))) == describe(module)


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"type": "Pickle", "modules": []}, r"module type 'Pickle': expected one of"),
        ({"type": "Linear", "in_features": 144, "out_features": 1 << 30, "bias": True}, r"out_features=1073741824: expected an integer in \[1, 16777216\]"),
        ({"type": "Linear", "in_features": 576, "out_features": 64, "bias": True}, r"a Linear of 36,928 parameters and buffers: expected at most 18,464"),
        ({"type": "Linear", "in_features": 576, "out_features": 32, "bias": "yes"}, r"bias='yes': expected true or false"),
        ({"type": "Linear", "in_features": 576}, r"has or lacks field 'bias'"),
        ({"type": "Factors", "modules": []}, r"expected a list of 1 to 8 modules"),
        ({"type": "Factors", "modules": [{"type": "Factors", "modules": [{"type": "Factors", "modules": [{"type": "Factors", "modules": [{"type": "Identity"}]}]}]}]}, "deeper than 3 levels"),
        ({"type": "Factors", "modules": [{"type": "Linear", "in_features": 576, "out_features": 32, "bias": True}] * 2}, r"expected at most 18,464"),
        ({"type": "Unflatten", "dim": 99, "unflattened_size": [1]}, r"dim=99: expected an integer in \[-8, 8\]"),
    ],
)
def test_hostile_entries_are_refused_before_anything_is_allocated(entry, message):
    with pytest.raises(SqueezeError, match=message):
        apply_architecture(TinyCNN(), {"format": ARCH_FORMAT, "modules": {"fc1": entry}})


def test_a_replaced_conv_may_not_ask_for_more_taps_or_kernel_than_allowed():
    conv = {"type": "StridedConv2d", "in_channels": 8, "out_channels": 16, "kernel_size": [3, 3], "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "bias": False}
    with pytest.raises(SqueezeError, match=r"taps=\[9\]"):
        apply_architecture(TinyCNN(), {"format": ARCH_FORMAT, "modules": {"conv2": {**conv, "taps": [9]}}})
    with pytest.raises(SqueezeError, match=r"kernel_size\[0\]=65: expected an integer in \[1, 64\]"):
        apply_architecture(TinyCNN(), {"format": ARCH_FORMAT, "modules": {"conv2": {**conv, "kernel_size": [65, 1], "taps": [0]}}})
    rank = {
        "type": "Factors",
        "modules": [
            {
                "type": "Conv2d",
                "in_channels": 8,
                "out_channels": 17,
                "kernel_size": [3, 3],
                "stride": [1, 1],
                "padding": [1, 1],
                "dilation": [1, 1],
                "groups": 1,
                "bias": False,
                "padding_mode": "zeros",
            },
            {
                "type": "Conv2d",
                "in_channels": 17,
                "out_channels": 16,
                "kernel_size": [1, 1],
                "stride": [1, 1],
                "padding": [0, 0],
                "dilation": [1, 1],
                "groups": 1,
                "bias": False,
                "padding_mode": "zeros",
            },
        ],
    }
    with pytest.raises(SqueezeError, match=r"conv2'.*1,496 parameters and buffers: expected at most 1,152"):
        apply_architecture(TinyCNN(), {"format": ARCH_FORMAT, "modules": {"conv2": rank}})


def test_only_layers_of_the_task_model_can_be_replaced():
    with pytest.raises(SqueezeError, match=r"layer 'fc9'"):
        apply_architecture(TinyCNN(), {"format": ARCH_FORMAT, "modules": {"fc9": {"type": "Identity"}}})
    with pytest.raises(SqueezeError, match="format"):
        apply_architecture(TinyCNN(), {"format": "squeezetune.modules/9", "modules": {}})


def test_the_decoder_reads_both_spec_formats():
    from squeezetune.compression.structured.shrink import shrunk_spec

    old = shrunk_spec(TinyCNN())
    old["modules"]["conv2"]["out_channels"] = 8
    assert _apply_checked_spec(TinyCNN(), old).conv2.out_channels == 8
    new = architecture_spec(_replaced(), TinyCNN())
    assert isinstance(_apply_checked_spec(TinyCNN(), new).conv3, StridedConv2d)


def test_an_unchanged_layer_of_a_type_outside_the_allow_list_needs_no_spec():
    from squeezetune.compression.tensors import compressible, copy_model
    from squeezetune.compression.unstructured.pruning import prune_layer
    from squeezetune.tasks import get_task

    dense = get_task("transformer-digits").build_model()  # attention's out_proj is a Linear subclass
    model = copy_model(dense)
    for name, t in compressible(model).items():
        prune_layer(t.module, keep=max(1, t.numel // 10), attr=t.attr, name=name)
    assert architecture_spec(model, dense) is None
