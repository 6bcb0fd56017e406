from __future__ import annotations

import pytest
import torch
from torch import nn

from squeezetune.tasks import builtin_task_names, get_task
from squeezetune.tasks.cnn import MobileNetV2, ResNet20, VGGNet

CNN_TASKS = ["resnet20-mnist", "vgg-mnist", "mobilenetv2-mnist", "resnet20-digits", "vgg-digits", "mobilenetv2-digits"]


@pytest.mark.parametrize("factory", [ResNet20, VGGNet, MobileNetV2])
def test_models_take_one_channel_28x28_and_give_ten_logits(factory):
    assert factory()(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_resnet20_has_three_stages_of_three_blocks_and_option_b_shortcuts():
    m = ResNet20()
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert len([c for c in convs if c.kernel_size == (3, 3)]) == 19  # stem + 3 x 3 x 2: 20 layers with the fc
    for stage, width in zip((m.layer1, m.layer2, m.layer3), (16, 32, 64)):
        assert len(stage) == 3
        assert all(block.conv2.out_channels == width for block in stage)
    assert isinstance(m.layer1[0].shortcut, nn.Identity)
    for stage in (m.layer2, m.layer3):
        proj = stage[0].shortcut
        assert isinstance(proj[0], nn.Conv2d) and proj[0].kernel_size == (1, 1) and proj[0].stride == (2, 2)
        assert isinstance(proj[1], nn.BatchNorm2d)
        assert all(isinstance(b.shortcut, nn.Identity) for b in stage[1:])


def test_mobilenetv2_uses_depthwise_convolutions_and_residual_adds():
    m = MobileNetV2()
    depthwise = [c for c in m.modules() if isinstance(c, nn.Conv2d) and c.groups > 1]
    assert depthwise and all(c.groups == c.in_channels == c.out_channels for c in depthwise)
    assert any(getattr(b, "use_residual", False) for b in m.modules())


@pytest.mark.parametrize("name", CNN_TASKS)
def test_cnn_tasks_are_registered(name):
    task = get_task(name)
    assert name in builtin_task_names()
    assert task.needs_data_dir == name.endswith("-mnist")
    assert task.epochs >= 1 and task.lr > 0
    assert task.build_model()(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_digits_inputs_fit_the_cnns():
    train, held = get_task("resnet20-digits").load_data(None)
    assert train.x.shape[1:] == (1, 28, 28) and held.x.shape[1:] == (1, 28, 28)
