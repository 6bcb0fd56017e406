"""Soft weight-sharing (Ullrich, Meeds & Welling 2017): clustering and pruning in one training objective.

The weights of every covered tensor train under a Gaussian-mixture prior whose first component
is fixed at zero with a large, fixed mixing proportion ``pi_zero``; the other ``components``
means, every variance and the other proportions are learnt with the network::

    loss = task loss + tau * (-log p(w)) / N_train
    p(w) = prod_i sum_j pi_j N(w_i | mu_j, sigma_j^2),   mu_0 = 0,  pi_0 = pi_zero

with the paper's Gamma hyperpriors on the precisions. At the end each weight goes to its most
probable component: weights of the zero component are pruned, every other weight takes its
component's mean. The result is the state the ``prune`` and ``share`` stages leave (a mask and a
:class:`~squeezetune.compression.unstructured.sharing.SharedWeight` codebook per tensor), so the
container codes it the same way and a ``finetune`` stage can train the means further.

Weights already pruned stay pruned and take no part in the prior; already shared tensors are left
alone. ``pi_zero`` is the paper's 0.99 for a dense start (most weights end at zero); after a
pruning stage, whose survivors should mostly stay, a small one (0.2-0.5) fits. The means start
evenly spread over the weights' range, each component's deviation half their spacing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from squeezetune.compression.finetune import FinetuneConfig, train_in
from squeezetune.compression.stages import Context, StageConfig, register_stage
from squeezetune.compression.tensors import Target, compressible
from squeezetune.compression.unstructured.pruning import mask_of
from squeezetune.compression.unstructured.sharing import SharedWeight, shared_of
from squeezetune.errors import SqueezeError

ZERO_GAMMA = (5e3, 2.0)
"""Gamma hyperprior (shape, rate) on the zero component's precision (the paper's values)."""
OTHER_GAMMA = (2.5e2, 0.1)
"""Gamma hyperprior (shape, rate) on every other component's precision."""


class MixturePrior(nn.Module):
    """A Gaussian mixture over weights with a fixed zero component (see the module doc)."""

    def __init__(self, span: float, components: int, pi_zero: float) -> None:
        super().__init__()
        self.pi_zero = pi_zero
        self.means = nn.Parameter(torch.linspace(-span, span, components))
        self.gammas = nn.Parameter(torch.full((components + 1,), -2.0 * math.log(span / components)))  # log precisions: sd = mean spacing / 2
        self.rhos = nn.Parameter(torch.zeros(components))

    def mixture(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Means, log precisions and log mixing proportions, the zero component first."""
        means = torch.cat([self.means.new_zeros(1), self.means])
        log_pi = torch.cat([self.means.new_tensor([math.log(self.pi_zero)]), math.log(1 - self.pi_zero) + torch.log_softmax(self.rhos, 0)])
        return means, self.gammas, log_pi

    def log_joint(self, w: torch.Tensor) -> torch.Tensor:
        """``log pi_j + log N(w_i | mu_j, sigma_j^2)`` for every weight (rows) and component (columns)."""
        means, gammas, log_pi = self.mixture()
        return log_pi + 0.5 * (gammas - math.log(2 * math.pi)) - 0.5 * torch.exp(gammas) * (w[:, None] - means) ** 2

    def nll(self, w: torch.Tensor) -> torch.Tensor:
        """``-log p(w)`` summed over the weights, plus the hyperpriors on the precisions."""
        out = -torch.logsumexp(self.log_joint(w), 1).sum()
        for gammas, (a, b) in ((self.gammas[:1], ZERO_GAMMA), (self.gammas[1:], OTHER_GAMMA)):
            out = out + ((1 - a) * gammas + b * torch.exp(gammas)).sum()
        return out

    @torch.no_grad()
    def assign(self, w: torch.Tensor) -> torch.Tensor:
        """Each weight's most probable component (0: the zero component)."""
        return self.log_joint(w).argmax(1)


@dataclass(frozen=True)
class SoftShareConfig(StageConfig):
    """Soft weight-sharing of every compressible tensor not yet shared (see the module doc)."""

    stage: ClassVar[str] = "soft_share"
    trains: ClassVar[bool] = True
    components: int = 16
    """Mixture components besides the one at zero."""
    pi_zero: float = 0.99
    tau: float = 0.005
    """Weight of the prior term, per training example."""
    prior_lr: float = 3e-3
    """Adam learning rate of the mixture's means, precisions and proportions."""
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(epochs=20, lr=0.01, distill=True))

    def __post_init__(self) -> None:
        if not 1 <= self.components <= 255:
            raise SqueezeError(f"soft_share.components={self.components!r} must be an integer in [1, 255]")
        if not 0 < self.pi_zero < 1:
            raise SqueezeError(f"soft_share.pi_zero={self.pi_zero!r} must be in (0, 1)")
        if not self.tau > 0:
            raise SqueezeError(f"soft_share.tau={self.tau!r} must be > 0")
        if not self.prior_lr > 0:
            raise SqueezeError(f"soft_share.prior_lr={self.prior_lr!r} must be > 0")


def _alive(t: Target) -> torch.Tensor:
    mask = mask_of(t.module, t.attr)
    return mask.bool() if mask is not None else torch.ones_like(t.tensor, dtype=torch.bool)


@torch.no_grad()
def quantize(targets: dict[str, Target], prior: MixturePrior) -> dict[str, int]:
    """Give each covered tensor its mask and codebook from the mixture; returns the kept weights per tensor."""
    means = prior.means.detach().float().cpu()
    kept = {}
    for name, t in targets.items():
        w = t.tensor.detach().float().cpu()
        alive = _alive(t).cpu()
        component = prior.assign(w.flatten().to(prior.means.device)).cpu().reshape(w.shape)
        mask = alive & (component > 0)
        if not bool(mask.any()):  # keep the tensor's largest weight rather than cut it off
            i = int((w.abs() * alive).argmax())
            mask.view(-1)[i] = True
            component.view(-1)[i] = int((means - w.view(-1)[i]).abs().argmin()) + 1
        labels = (component - 1).clamp_min(0) * mask
        if parametrize.is_parametrized(t.module, t.attr):
            parametrize.remove_parametrizations(t.module, t.attr, leave_parametrized=True)
        parametrize.register_parametrization(t.module, t.attr, SharedWeight(means, labels, mask.float()).to(t.tensor.device))
        kept[name] = int(mask.sum())
    return kept


@register_stage(SoftShareConfig)
def soft_share(model: nn.Module, config: SoftShareConfig, ctx: Context) -> nn.Module:
    """Train under the mixture prior, then prune and share every covered tensor by its components."""
    data = ctx.need_train("soft_share")
    targets = {n: t for n, t in compressible(model).items() if shared_of(t.module, t.attr) is None}
    if not targets:
        raise SqueezeError("soft_share found no tensor to share: every compressible tensor is shared already")
    alive = {n: _alive(t).to(ctx.device) for n, t in targets.items()}
    span = max(float(t.tensor.detach().abs().max()) for t in targets.values())
    prior = MixturePrior(span, config.components, config.pi_zero).to(ctx.device)
    optimizer = torch.optim.Adam(prior.parameters(), lr=config.prior_lr)
    scale = config.tau / max(len(data), 1)

    def penalty() -> torch.Tensor:
        return scale * prior.nll(torch.cat([t.tensor[alive[n]] for n, t in targets.items()]))

    def after_step() -> None:
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    model.to(ctx.device)
    train_in(ctx, model, config.finetune, after_step=after_step, penalty=penalty)
    kept = quantize(targets, prior)
    ctx.progress(f"{ctx.label}: {sum(kept.values()):,} of {sum(t.numel for t in targets.values()):,} weights kept on {config.components} shared values")
    return model
