"""pick_device: the device asked for, or a one-line error when this machine lacks it."""

from __future__ import annotations

import pytest
import torch

from squeezetune.compression.finetune import pick_device
from squeezetune.errors import SqueezeError


def test_default_and_cpu():
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("name", ["tpu", "gpu", "CPU", "", "cuda:x", "meta"])
def test_malformed_or_unsupported_names_are_one_line_errors(name):
    with pytest.raises(SqueezeError, match="expected cpu, cuda, cuda:<index> or mps") as info:
        pick_device(name)
    assert repr(name) in str(info.value) and "\n" not in str(info.value)


def test_cuda_this_machine_lacks():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        with pytest.raises(SqueezeError, match="no CUDA GPU"):
            pick_device("cuda")
    else:
        assert pick_device("cuda").type == "cuda"
    with pytest.raises(SqueezeError, match="no CUDA GPU" if count == 0 else rf"has {count} CUDA GPU"):
        pick_device(f"cuda:{count}")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_mps_this_machine_lacks():
    with pytest.raises(SqueezeError, match="MPS is not available"):
        pick_device("mps")
