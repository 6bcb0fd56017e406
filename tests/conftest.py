from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
MNIST_DIR = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def mnist_dir() -> Path:
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists():
        pytest.fail(f"MNIST test split not found at {MNIST_DIR}: expected ../shared/data/mnist beside the repo")
    return MNIST_DIR


@pytest.fixture
def cache_dir(tmp_path_factory, monkeypatch) -> Path:
    path = tmp_path_factory.getbasetemp() / "squeezetune-cache"
    monkeypatch.setenv("SQUEEZETUNE_CACHE", str(path))
    return path
