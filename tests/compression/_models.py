"""Models for the structured-pruning tests."""

from __future__ import annotations

from torch import nn


def randomise_norms(model: nn.Module) -> nn.Module:
    """BatchNorm statistics as after training, so that eval-mode outputs are not trivial."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.2)
    return model.eval()
