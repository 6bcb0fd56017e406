"""Built-in models for inputs other than 1x28x28 images, and their data, with nothing to download.

Each reads scikit-learn's bundled 8x8 digits in another form, so the accuracy is real:

* :class:`Conv1dNet` on ``digits-1d`` -- the 64 pixels as a 1-channel signal of length 64:
  three ``Conv1d``-BatchNorm-ReLU layers, global average pooling, a ``Linear`` head;
* :class:`TinyTransformer` on ``digits-tokens`` -- the 64 pixel intensities (0-16) as token ids:
  an ``Embedding``, a learned positional table (a bare ``Parameter``), two
  ``nn.TransformerEncoderLayer`` blocks (multi-head attention and feed-forward), mean pooling and a
  ``Linear`` head;
* :class:`RowLSTM` on ``digits-rows`` -- the 8 image rows as 8 time steps of 8 features: a
  two-layer ``LSTM`` and a ``Linear`` head on its last output;
* :class:`RGBNet` on ``digits-rgb32`` -- each digit scaled to 32x32 and tinted with a random
  colour into 3x32x32: a small VGG-style ``Conv2d`` stack and a two-layer classifier.

>>> TinyTransformer()(torch.zeros(2, 64, dtype=torch.long)).shape
torch.Size([2, 10])
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from squeezetune.tasks.data import Split

_EVAL = 360


class Conv1dNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((1, 32), (32, 64), (64, 64)):
            layers += [nn.Conv1d(c_in, c_out, 5, padding=2, bias=False), nn.BatchNorm1d(c_out), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(2))


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = 17, length: int = 64, width: int = 32, heads: int = 4, layers: int = 2, num_classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(length, width))  # on the embeddings' scale, or position is drowned out
        block = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position[: tokens.shape[1]]
        return self.head(self.encoder(x).mean(1))


class RowLSTM(nn.Module):
    def __init__(self, features: int = 8, hidden: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class RGBNet(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((3, 16), (16, 32), (32, 64)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 1,797 bundled digits (8x8, values 0-16), labels, and the fixed train/eval permutation."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(seed).permutation(len(bunch.target))
    return bunch.images, bunch.target.astype(np.int64), order


def _split(x: torch.Tensor, y: np.ndarray, order: np.ndarray) -> tuple[Split, Split]:
    yt = torch.from_numpy(y)
    train, held = torch.from_numpy(order[:-_EVAL]), torch.from_numpy(order[-_EVAL:])
    return Split(x[train], yt[train]), Split(x[held], yt[held])


def load_digits_1d(data_dir=None) -> tuple[Split, Split]:
    images, y, order = _digits()
    x = torch.from_numpy((images.reshape(-1, 1, 64) / 16.0 - 0.3).astype(np.float32))
    return _split(x, y, order)


def load_digits_tokens(data_dir=None) -> tuple[Split, Split]:
    images, y, order = _digits()
    return _split(torch.from_numpy(images.reshape(-1, 64).astype(np.int64)), y, order)


def load_digits_rows(data_dir=None) -> tuple[Split, Split]:
    images, y, order = _digits()
    return _split(torch.from_numpy((images / 16.0 - 0.3).astype(np.float32)), y, order)


def load_digits_rgb32(data_dir=None) -> tuple[Split, Split]:
    images, y, order = _digits()
    x = torch.nn.functional.interpolate(torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1), size=(32, 32), mode="bilinear", align_corners=False)
    tint = torch.from_numpy(np.random.default_rng(1).uniform(0.3, 1.0, size=(len(y), 3, 1, 1)).astype(np.float32))
    return _split((x * tint - 0.25) / 0.3, y, order)
