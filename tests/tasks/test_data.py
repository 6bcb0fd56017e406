from __future__ import annotations

import gzip

import pytest
import torch

from squeezetune.errors import SqueezeError
from squeezetune.tasks import Task, get_task
from squeezetune.tasks.data import load_digits, load_mnist, read_idx
from squeezetune.tasks.models import LeNet5, LeNet300


def test_mnist_protocol_splits_the_test_set(mnist_dir):
    train, held = load_mnist(mnist_dir)
    assert train.x.shape == (8000, 1, 28, 28) and held.x.shape == (2000, 1, 28, 28)
    assert train.y.dtype == torch.int64 and set(train.y.unique().tolist()) == set(range(10))
    raw = read_idx(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert held.y.tolist() == raw[-2000:].tolist() and train.y.tolist() == raw[:8000].tolist()


def test_raw_subfolder_and_plain_files(tmp_path, mnist_dir):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(gzip.decompress((mnist_dir / f"{name}.gz").read_bytes()))
    train, held = load_mnist(tmp_path)
    assert torch.equal(held.y, load_mnist(mnist_dir)[1].y)


@pytest.mark.parametrize(
    "content,message",
    [(b"PK\x03\x04 not idx", "is not an idx file"), (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "holds 3 data bytes, expected 5")],
)
def test_bad_idx_files(tmp_path, content, message):
    path = tmp_path / "t10k-labels-idx1-ubyte"
    path.write_bytes(content)
    with pytest.raises(SqueezeError, match=message):
        read_idx(path)


def test_missing_files_name_the_folder(tmp_path):
    with pytest.raises(SqueezeError, match=r"no t10k-images-idx3-ubyte\[.gz\] in data dir"):
        load_mnist(tmp_path)


def test_digits_fit_the_lenets():
    train, held = load_digits()
    assert train.x.shape[1:] == (1, 28, 28) and len(train) + len(held) == 1797
    assert LeNet300()(held.x).shape == (len(held), 10) and LeNet5()(held.x).shape == (len(held), 10)


def test_lenet_parameter_counts_match_the_paper():
    assert sum(p.numel() for p in LeNet300().parameters()) == 266_610
    assert sum(p.numel() for p in LeNet5().parameters()) == 431_080


def my_task() -> Task:
    return Task(name="mine", model="mine", build_model=LeNet300, load_data=load_digits)


def not_a_task():
    return 42


def test_user_task_by_module_factory():
    assert get_task("tests.tasks.test_data:my_task").name == "mine"
    with pytest.raises(SqueezeError, match="returned int: expected a squeezetune.tasks.Task"):
        get_task("tests.tasks.test_data:not_a_task")
    with pytest.raises(SqueezeError, match="cannot load task factory 'nosuchmodule:x'"):
        get_task("nosuchmodule:x")
