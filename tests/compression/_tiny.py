"""Tiny models and data for the decomposition, strided and merging tests (seconds, not minutes)."""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from squeezetune.tasks import Split, Task


class TinyCNN(nn.Module):
    """Two 3 x 3 conv-BN-ReLU layers, a residual-free stack, pooled into a small classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(16 * 6 * 6, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.conv3(x))
        return self.fc2(torch.relu(self.fc1(torch.flatten(x, 1))))


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(144, 48)
        self.fc2 = nn.Linear(48, 24)
        self.fc3 = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(torch.relu(self.fc2(x)))


def images(n: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth 1 x 12 x 12 images (neighbouring pixels correlate, as in real ones) and 4 labels."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.randn(n, 1, 14, 14, generator=g), 3, 1)
    y = (x[:, 0, :6].mean((1, 2)) > 0).long() + 2 * (x[:, 0, :, :6].mean((1, 2)) > 0).long()
    return x, y


def splits(_=None) -> tuple[Split, Split]:
    x, y = images(300)
    return Split(x[:240], y[:240]), Split(x[240:], y[240:])


def trained(factory, epochs: int = 3) -> nn.Module:
    """``factory()`` trained a little on :func:`splits`, so its weights and norms are not random (a fresh copy each call)."""
    return copy.deepcopy(_trained(factory, epochs))


@functools.lru_cache(maxsize=None)
def _trained(factory, epochs: int) -> nn.Module:
    from squeezetune.compression.finetune import FinetuneConfig, train

    torch.manual_seed(0)
    model = factory()
    return train(model, splits()[0], FinetuneConfig(epochs=epochs, lr=0.05, batch_size=32)).eval()


CNN_TASK = Task(name="tiny-cnn", model="tiny-cnn", build_model=TinyCNN, load_data=splits, epochs=2, lr=0.05)
MLP_TASK = Task(name="tiny-mlp", model="tiny-mlp", build_model=TinyMLP, load_data=splits, epochs=2, lr=0.05)
