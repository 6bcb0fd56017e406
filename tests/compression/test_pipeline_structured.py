"""Structured pruning inside the compression pipeline: the decoded model is physically smaller."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from squeezetune.compression import Recipe, compress, decode_file
from squeezetune.errors import SqueezeError
from squeezetune.tasks import Split, Task


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, stride=2, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        x = x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(torch.relu(x).mean((2, 3)))


def _data(_):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 1, 12, 12, generator=g)
    y = (x[:, 0, :6].mean((1, 2)) > 0).long() + 2 * (x[:, 0, :, :6].mean((1, 2)) > 0).long()
    return Split(x[:240], y[:240]), Split(x[240:], y[240:])


TASK = Task(name="tiny-resnet", model="tiny", build_model=TinyResNet, load_data=_data, epochs=3, lr=0.05)


@pytest.mark.parametrize("method", ["l1", "lasso"])
def test_structured_recipe_shrinks_the_decoded_model(tmp_path, cache_dir, method):
    recipe = Recipe.from_dict(
        {
            "structured": {"method": method, "layers": {"conv1": {"keep": 6}}, "images": 32, "finetune": {"epochs": 1}},
            "prune": {"layers": {"conv2": {"keep_fraction": 0.5}}},
            "share": {"layers": {"conv2": {"bits": 4}}},
            "encode": {"coder": "auto", "float_bits": 16},
        }
    )
    out = tmp_path / "tiny.sqz"
    report = compress(TASK, recipe, out=out)
    decoded = decode_file(out, task=TASK)
    assert decoded.conv1.weight.shape == (6, 8, 3, 3) and decoded.bn1.num_features == 6
    assert decoded.conv2.weight.shape == (8, 6, 3, 3)
    assert report.params < report.dense_params and report.macs < report.dense_macs
    assert report.params == sum(p.numel() for p in decoded.parameters())
    for key in ("dense_latency_ms_b1", "dense_latency_ms_b64", "latency_ms_b1", "latency_ms_b64"):
        assert report.latency[key] > 0
    assert [s.stage for s in report.stages][:3] == ["dense", "structured", "structured_finetune"]
    assert json.loads(out.with_name("tiny.report.json").read_text())["macs"] == report.macs


def test_removing_every_channel_is_a_one_line_error(tmp_path, cache_dir):
    recipe = Recipe.from_dict({"structured": {"method": "l1", "layers": {"conv1": {"keep": 17}}}})
    with pytest.raises(SqueezeError, match="conv1"):
        compress(TASK, recipe, out=tmp_path / "bad.sqz")
    assert not (tmp_path / "bad.sqz").exists()


def test_container_spec_cannot_grow_the_model(tmp_path, cache_dir):
    from squeezetune.compression.decode import _apply_checked_spec
    from squeezetune.compression.structured.shrink import shrunk_spec

    spec = shrunk_spec(TinyResNet())
    spec["modules"]["conv1"]["out_channels"] = 1 << 30
    with pytest.raises(SqueezeError, match=r"out_channels=1073741824: expected an integer in \[1, 16\]"):
        _apply_checked_spec(TinyResNet(), spec)


def test_a_group_named_by_any_member_merges_with_a_macs_target():
    """``conv2`` shares its output channels with ``stem`` (the residual add): one group, named by either."""
    from squeezetune.compression import Context, StructuredConfig, apply_stage

    torch.manual_seed(0)
    model = TinyResNet().eval()
    train, evaluate_on = _data(None)
    config = StructuredConfig.from_dict({"method": "l1", "macs_target": 0.7, "round_to": 1, "layers": {"conv2": {"keep": 5}}})
    small = apply_stage(model, config, Context(teacher=model, example=train.x[:1], train=train, eval=evaluate_on))
    assert small.stem.out_channels == small.conv2.out_channels == 5  # the hand count won over the plan
    assert small.conv1.out_channels < 16  # the plan pruned the rest
