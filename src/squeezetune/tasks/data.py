"""Datasets of the built-in tasks, held in memory as tensors.

MNIST is read from standard idx files (plain or gzipped), as found in any torchvision-style
``raw`` folder. The protocol is fixed: of the official 10,000-image test split, the first 8,000
images train and the last 2,000 evaluate. scikit-learn's bundled digits (8x8) need no files;
they are scaled and padded into MNIST's 28x28 layout so the same networks run on them.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from squeezetune.errors import SqueezeError

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
MNIST_TRAIN, MNIST_EVAL = 8000, 2000
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Split:
    """Inputs and integer labels of one split, as tensors on the CPU."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def read_idx(path: Path) -> np.ndarray:
    """Read one idx file (``.gz`` or plain) into an array of its stored shape and type."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise SqueezeError(f"cannot read idx file {str(path)!r}: {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise SqueezeError(f"{str(path)!r} is not an idx file: expected magic 00 00 <type> <ndim>")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)) * dtype.itemsize:
        raise SqueezeError(f"{str(path)!r} holds {len(body)} data bytes, expected {int(np.prod(dims)) * dtype.itemsize} for shape {dims}")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find(data_dir: Path, stem: str) -> Path:
    for candidate in (data_dir / stem, data_dir / f"{stem}.gz", data_dir / "raw" / stem, data_dir / "raw" / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise SqueezeError(f"no {stem}[.gz] in data dir {str(data_dir)!r}: expected an MNIST raw folder")


def load_mnist(data_dir: str | Path | None) -> tuple[Split, Split]:
    """The MNIST protocol: first 8,000 test-split images train, last 2,000 evaluate.

    Inputs are normalised with MNIST's mean and std and shaped ``(N, 1, 28, 28)``.
    """
    if data_dir is None:
        raise SqueezeError("this task needs --data-dir: expected a folder with MNIST's t10k idx files")
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise SqueezeError(f"data dir {str(data_dir)!r} does not exist: expected a folder with MNIST's t10k idx files")
    images = read_idx(_find(data_dir, "t10k-images-idx3-ubyte"))
    labels = read_idx(_find(data_dir, "t10k-labels-idx1-ubyte"))
    if images.shape[0] != labels.shape[0] or images.shape[0] < MNIST_TRAIN + MNIST_EVAL or images.shape[1:] != (28, 28):
        raise SqueezeError(f"MNIST files in {str(data_dir)!r} hold images {images.shape} and labels {labels.shape}: expected at least {MNIST_TRAIN + MNIST_EVAL} 28x28 images with as many labels")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).sub_(MNIST_MEAN).div_(MNIST_STD).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    return Split(x[:MNIST_TRAIN], y[:MNIST_TRAIN]), Split(x[-MNIST_EVAL:], y[-MNIST_EVAL:])


def load_digits(data_dir: str | Path | None = None, seed: int = 0) -> tuple[Split, Split]:
    """scikit-learn's 1,797 bundled 8x8 digits, scaled to 20x20 and centred in 28x28 as MNIST is.

    A fixed-seed permutation puts 1,437 images in training and 360 in evaluation.
    """
    from sklearn.datasets import load_digits as _load

    bunch = _load()
    x = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False)
    x = torch.nn.functional.pad(x, (4, 4, 4, 4)).sub_(MNIST_MEAN).div_(MNIST_STD)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    order = torch.from_numpy(np.random.default_rng(seed).permutation(len(y)))
    n_eval = 360
    train, held = order[:-n_eval], order[-n_eval:]
    return Split(x[train], y[train]), Split(x[held], y[held])


def hold_out(train: Split, fraction: float = 0.125) -> tuple[Split, Split]:
    """``train`` split into what trials fine-tune on and a validation split they are selected on.

    The last ``round(fraction * len(train))`` items are held out (at least one, and one is left):
    of MNIST's 8,000 training images, 1,000 validate with the default ``fraction=0.125``. The
    evaluation split is never touched, so accuracy reported on it is not flattered by selection.

    >>> import torch
    >>> fit, val = hold_out(Split(torch.zeros(8000, 1), torch.zeros(8000, dtype=torch.long)))
    >>> len(fit), len(val)
    (7000, 1000)
    """
    n = len(train)
    if n < 2:
        raise SqueezeError(f"the training split holds {n} item(s): expected at least 2, to hold some out for validation")
    k = min(n - 1, max(1, round(fraction * n)))
    return Split(train.x[: n - k], train.y[: n - k]), Split(train.x[n - k :], train.y[n - k :])
