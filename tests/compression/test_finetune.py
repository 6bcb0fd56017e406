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


def _diverging_setup():
    from torch import nn

    from squeezetune.tasks import Split

    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 20, generator=g)
    y = (x[:, :5].sum(1) > 0).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 2))
    return model, Split(x, y)


def test_a_diverging_epoch_is_run_again_at_half_the_learning_rate():
    from squeezetune.compression.finetune import RETRIES, FinetuneConfig, evaluate, train

    model, data = _diverging_setup()
    lines: list[str] = []
    train(model, data, FinetuneConfig(epochs=3, lr=40.0), progress=lines.append)  # lr 40 blows up at once
    assert any("diverged; run again at half the learning rate" in line for line in lines)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert sum("diverged" in line for line in lines) <= RETRIES + 1
    assert evaluate(model, data) > 0.5


def test_training_with_hooks_still_refuses_a_non_finite_loss():
    from squeezetune.compression.finetune import FinetuneConfig, train

    model, data = _diverging_setup()
    with pytest.raises(SqueezeError, match="finite loss"):
        train(model, data, FinetuneConfig(epochs=3, lr=1e6), after_step=lambda: None)


def test_training_that_diverges_at_every_halving_fails_naming_the_learning_rate():
    from squeezetune.compression.finetune import FinetuneConfig, train

    model, data = _diverging_setup()
    with pytest.raises(SqueezeError, match=r"loss became .* at every learning rate down to .*: expected a lower lr than 1e\+20"):
        train(model, data, FinetuneConfig(epochs=2, lr=1e20))
