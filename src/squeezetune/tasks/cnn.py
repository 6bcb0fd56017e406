"""Convolutional networks for structured pruning, sized for 1x28x28 inputs (MNIST, padded digits).

Written here so that nothing is downloaded and every layer is a plain ``nn.Module`` (no
functional channel tricks), which is what dependency-aware channel removal needs:

* :class:`ResNet20` -- the CIFAR ResNet-20 of He et al. (2016): a 3x3 stem, three stages of
  three basic blocks at 16/32/64 channels, BatchNorm, residual adds, global average pooling.
  Shortcuts follow **option B**: identity where shapes match, a strided 1x1 convolution + BatchNorm
  (a projection) where a stage changes width. Option A (zero-padded, subsampled identity) has no
  module that owns the padded channels, so removing a channel from a stage could not be expressed
  as removing rows of a weight tensor; option B keeps every channel owned by a conv.
* :class:`VGGNet` -- conv-BN-ReLU stacks separated by max pools, then a two-layer classifier.
* :class:`MobileNetV2` -- inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 linear
  project) with ReLU6, a residual add where stride is 1 and widths match.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a residual add; a 1x1 projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, c_out, 3, stride)
        self.conv2, self.bn2 = _conv_bn(c_out, c_out, 3, 1)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20 (3 stages x 3 basic blocks, 16/32/64 channels), option-B shortcuts.

    >>> ResNet20()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64), blocks: int = 3) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, widths[0], 3, 1)
        layers, c_in = [], widths[0]
        for stage, width in enumerate(widths):
            stride = 1 if stage == 0 else 2
            stage_blocks = []
            for b in range(blocks):
                stage_blocks.append(BasicBlock(c_in, width, stride if b == 0 else 1))
                c_in = width
            layers.append(nn.Sequential(*stage_blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class VGGNet(nn.Module):
    """A small VGG: two conv-BN-ReLU layers per stage (32, 64, 128), max pools, FC 128-64-10.

    >>> VGGNet()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths: tuple[int | str, ...] = (32, 32, "M", 64, 64, "M", 128, 128), hidden: int = 64) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_channels
        for w in widths:
            if w == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            layers += [*_conv_bn(c_in, int(w)), nn.ReLU(inplace=True)]
            c_in = int(w)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand (skipped when ``expand == 1``), 3x3 depthwise, 1x1 project."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(c_in, hidden, 1), nn.ReLU6(inplace=True)]
        layers += [*_conv_bn(hidden, hidden, 3, stride, groups=hidden), nn.ReLU6(inplace=True)]
        layers += _conv_bn(hidden, c_out, 1)
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """A MobileNetV2 for 28x28: stem 16, blocks (t, c, n, s) below, 1x1 to 128, pool, FC.

    >>> MobileNetV2()(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    SETTINGS = ((1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 2), (4, 64, 2, 1))

    def __init__(self, in_channels: int = 1, num_classes: int = 10, last: int = 128) -> None:
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(in_channels, 16), nn.ReLU6(inplace=True)]
        c_in = 16
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(c_in, c, s if i == 0 else 1, t))
                c_in = c
        layers += [*_conv_bn(c_in, last, 1), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))
