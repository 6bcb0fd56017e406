"""Strided kernel sparsity: only the kept taps are computed, exactly as the masked kernel would."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from squeezetune.compression import Context, Recipe, apply_stage
from squeezetune.compression._fit import Samples, channel_rows, relative_error
from squeezetune.compression.architecture import architecture_spec
from squeezetune.compression.coding import codec
from squeezetune.compression.coding.container import pack_sections
from squeezetune.compression.decode import decode_bytes
from squeezetune.compression.measure import macs
from squeezetune.compression.structured.strided import StridedConfig, StridedConv2d, best_offset, grids, kept_taps, refit, strided_conv
from squeezetune.errors import SqueezeError
from tests.compression._tiny import CNN_TASK, TinyCNN, images, splits, trained


@pytest.mark.parametrize("kernel,stride,padding,dilation", [(3, 1, 1, 1), (3, 2, 1, 1), (5, 1, 2, 1), (3, 1, 2, 2), (3, 2, 0, 1)])
def test_every_pattern_computes_what_the_masked_kernel_computes(kernel, stride, padding, dilation):
    conv = nn.Conv2d(3, 4, kernel, stride, padding, dilation)
    x = torch.randn(2, 3, 11, 12)
    for m in range(2, kernel * kernel + 1) if kernel == 3 else (2, 5, 7):
        for n in range(m):
            taps = kept_taps((kernel, kernel), m, n)
            mask = torch.zeros(kernel * kernel)
            mask[list(taps)] = 1
            expected = nn.functional.conv2d(x, conv.weight * mask.reshape(kernel, kernel), conv.bias, stride, padding, dilation)
            sparse = strided_conv(conv, taps)
            assert sparse.weight.shape == (4, 3, len(taps))
            assert torch.allclose(sparse(x), expected, atol=1e-5), (m, n)


def test_kept_taps_are_split_into_few_plain_convolutions():
    assert grids(kept_taps((3, 3), 3, 1), 3) == [((0, 1, 2), (1,))]  # the middle column: one 3 x 1 kernel
    assert grids(kept_taps((3, 3), 2, 0), 3) == [((0, 2), (0, 2)), ((1,), (1,))]  # corners (dilated 2 x 2) and centre
    assert grids(kept_taps((3, 3), 9, 4), 3) == [((1,), (1,))]


def test_macs_fall_with_the_kept_fraction():
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1))
    sparse = nn.Sequential(strided_conv(model[0], kept_taps((3, 3), 3, 1)))
    assert macs(sparse, (1, 4, 10, 10)) * 3 == macs(model, (1, 4, 10, 10))


def test_the_offset_keeps_the_most_energy_and_least_squares_lowers_the_error():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight[:, :, :, 2] *= 10  # the right column matters most
    assert kept_taps((3, 3), 3, best_offset(conv, 3)) == (2, 5, 8)
    first = nn.Conv2d(1, 8, 3, padding=1)
    x, _ = images(128)
    with torch.no_grad():
        inp = torch.relu(first(x))
        target = conv(inp)
    sparse = strided_conv(conv, kept_taps((3, 3), 3, 0))
    with torch.no_grad():
        before = relative_error(channel_rows(sparse(inp)), channel_rows(target))
    refit(sparse, conv, inp, target, Samples(nn.Sequential(conv), inp, images=128, points=10, seed=0, device=torch.device("cpu")).rows)
    with torch.no_grad():
        assert relative_error(channel_rows(sparse(inp)), channel_rows(target)) < 0.7 * before


def test_bad_settings_are_one_line_errors():
    model = TinyCNN()
    with pytest.raises(SqueezeError, match=r"stride=10 for layer 'conv2' must be in \[1, 9\]"):
        StridedConfig.from_dict({"layers": {"conv2": {"stride": 10}}}).validate(model, torch.zeros(1, 1, 12, 12))
    with pytest.raises(SqueezeError, match=r"layer 'fc1' is a Linear \(expected Conv2d\)"):
        StridedConfig.from_dict({"layers": {"fc1": {"stride": 2}}}).validate(model, torch.zeros(1, 1, 12, 12))
    with pytest.raises(SqueezeError, match="needs a default or per-layer settings"):
        StridedConfig.from_dict({})
    with pytest.raises(ValueError, match="taps"):
        StridedConv2d(2, 2, (3, 3), taps=(4, 4))


def test_the_stage_composes_with_pruning_and_sharing_and_decodes_bit_exactly():
    dense = trained(TinyCNN)
    train, held = splits()
    ctx = Context(teacher=dense, example=torch.zeros(1, 1, 12, 12), train=train, eval=held)
    strided = {"default": {"stride": 3}, "layers": {"conv1": {"stride": 1}}, "images": 64}
    recipe = Recipe.from_dict({"stages": [{"strided": strided}, {"prune": {"default": {"keep_fraction": 0.6}}}, {"share": {"default": {"bits": 4}, "fit": True}}]})
    recipe.validate(dense, ctx.example)
    model = dense
    for step in recipe.steps:
        model = apply_stage(model, step.config, ctx)
    assert isinstance(model.conv2, StridedConv2d) and isinstance(model.conv3, StridedConv2d) and isinstance(model.conv1, nn.Conv2d)
    encoded = codec.encode_model(model, task=CNN_TASK.name, spec=architecture_spec(model, TinyCNN()))
    decoded = decode_bytes(pack_sections(encoded.sections), task=CNN_TASK)
    with torch.no_grad():
        assert torch.equal(decoded(held.x[:16]), model.eval()(held.x[:16]))
