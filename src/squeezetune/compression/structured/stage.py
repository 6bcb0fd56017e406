"""The ``structured`` stage: channel pruning that physically shrinks the model.

``method`` is ``l1`` (filter pruning by L1 norm, Li et al. 2017, :mod:`.filters`) or ``lasso``
(LASSO channel selection and least-squares reconstruction, He et al. 2017, :mod:`.channel`).
Per-layer channel counts come from ``layers`` where given, else from ``macs_target`` (the fraction
of dense MACs to keep) spread ``uniform``-ly or by per-layer ``sensitivity``, as multiples of
``round_to`` channels (default 8: oneDNN's CPU convolutions and GPU kernels work on blocks of 8
channels, so an odd count such as 45 runs no faster than 48 and often slower).

``cost`` says what ``macs_target`` is a fraction of: ``macs`` (default), or ``latency``: the dense
model's predicted latency, each conv and linear layer timed alone on this machine (on the stage's
device, at batch ``latency_batch``, with the report's CPU thread count) at a grid of kept input and
output channels, interpolated and summed (:class:`~._plan.LatencyModel`). The timings are cached
per model and machine (:mod:`squeezetune.compression.latency_model`), so only the first plan
waits for them (a few seconds for ResNet-20).

A layer's LASSO ``lambda`` is dimensionless: the L1 weight on its channel coefficients in
``||Y - sum_c beta_c Z_c||^2 / (2 ||Y||^2) + lambda * ||beta||_1``, with the error measured
relative to the layer's own output ``Y`` (:mod:`._lasso`). Every channel goes at
``lambda >= max_c |Z_c . Y| / ||Y||^2``, a limit that depends on the layer and is often small: on
the built-in ResNet-20 about 0.06 for most layers. A lambda that removes every channel is a
one-line error naming that limit. Prefer ``keep`` counts, which LASSO reaches by searching
lambda itself.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from squeezetune.compression.latency_model import Cost
from squeezetune.compression.stages import (
    Context,
    StageConfig,
    placed,
    read_value,
    register_stage,
)
from squeezetune.errors import SqueezeError


class StructuredMethod(str, Enum):
    L1 = "l1"
    LASSO = "lasso"


class Allocation(str, Enum):
    UNIFORM = "uniform"
    SENSITIVITY = "sensitivity"


@dataclass(frozen=True)
class LayerChannels:
    """One layer's channel pruning: channels to ``keep``, or a fixed LASSO ``lam`` (``lambda`` in YAML)."""

    keep: int | None = None
    lam: float | None = None

    def __post_init__(self) -> None:
        if (self.keep is None) == (self.lam is None):
            raise SqueezeError(f"a layer's structured setting needs exactly one of keep, lambda; got keep={self.keep!r} lambda={self.lam!r}")
        if self.keep is not None and self.keep < 1:
            raise SqueezeError(f"keep={self.keep!r} channels must be an integer >= 1")
        if self.lam is not None and self.lam < 0:
            raise SqueezeError(f"lambda={self.lam!r} must be a finite number >= 0")

    @classmethod
    def from_dict(cls, data: Any, where: str = "structured.layers") -> "LayerChannels":
        if not isinstance(data, Mapping):
            raise SqueezeError(f"{where} is {type(data).__name__}: expected a mapping with keep or lambda")
        unknown = sorted(set(data) - {"keep", "keep_channels", "lambda"})
        if unknown:
            raise SqueezeError(f"unknown key {unknown[0]!r} in {where}: expected keep (or keep_channels) or lambda")
        keep = data.get("keep", data.get("keep_channels"))
        lam = data.get("lambda")
        try:
            return cls(
                keep=read_value(int, keep, f"{where}.keep") if keep is not None else None,
                lam=read_value(float, lam, f"{where}.lambda") if lam is not None else None,
            )
        except SqueezeError as exc:  # a range check: say which layer
            raise placed(exc, where, ("keep", "lambda")) from None

    def to_dict(self) -> dict[str, Any]:
        return {"keep": self.keep} if self.keep is not None else {"lambda": self.lam}


@dataclass(frozen=True)
class StructuredConfig(StageConfig):
    """Channel pruning that physically shrinks the model (see the module doc)."""

    stage: ClassVar[str] = "structured"
    changes_architecture: ClassVar[bool] = True
    method: StructuredMethod = StructuredMethod.LASSO
    macs_target: float | None = None
    allocation: Allocation = Allocation.UNIFORM
    layers: dict[str, LayerChannels] = field(default_factory=dict)
    reconstruct: bool = True
    images: int = 256
    points: int = 10
    round_to: int = 8
    cost: Cost = Cost.MACS
    latency_batch: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "cost", Cost.read(self.cost, "structured.cost"))
        if self.round_to < 1:
            raise SqueezeError(f"structured.round_to={self.round_to!r} must be an integer >= 1")
        if self.latency_batch < 1:
            raise SqueezeError(f"structured.latency_batch={self.latency_batch!r} must be an integer >= 1")
        if self.cost is Cost.LATENCY and self.macs_target is None:
            raise SqueezeError("structured.cost='latency' plans counts to a macs_target: expected a macs_target (the layers' counts are given by hand)")
        if self.images < 1 or self.points < 1:
            raise SqueezeError(f"structured.images={self.images!r} and points={self.points!r} must be integers >= 1")
        if self.macs_target is not None and not 0 < self.macs_target <= 1:
            raise SqueezeError(f"macs_target={self.macs_target!r} must be in (0, 1]: the fraction of dense MACs to keep")
        if self.macs_target is None and not self.layers:
            raise SqueezeError("structured needs macs_target or per-layer settings in layers: got neither")
        if self.method is StructuredMethod.L1 and any(c.lam is not None for c in self.layers.values()):
            raise SqueezeError("lambda is given for method='l1': expected method='lasso'")

    def needs_data(self) -> bool:
        return self.method is StructuredMethod.LASSO or (self.macs_target is not None and self.allocation is Allocation.SENSITIVITY)

    def validate(self, model: nn.Module, example: torch.Tensor, *, exact: bool = True) -> None:
        from squeezetune.compression.structured._graph import StructureGraph
        from squeezetune.compression.structured.shrink import check_keep

        graph = StructureGraph(copy.deepcopy(model), example)
        if self.method is StructuredMethod.LASSO:
            _check_lasso_layers(graph)
        if not graph.groups:
            raise graph.no_groups("structured")
        if exact:
            check_keep(graph.groups, {n: c.keep for n, c in self.layers.items() if c.keep is not None}, graph)
        for name in (n for n, c in self.layers.items() if c.lam is not None or not exact):
            graph.resolve(name)


def _check_lasso_layers(graph) -> None:
    """LASSO samples its consumers' input patches, written for Conv1d, Conv2d and Linear layers."""
    for g in graph.groups.values():
        for name in g.consumers:
            m = graph.get(name)
            if not isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                raise SqueezeError(f"structured.method='lasso' cannot reconstruct layer {name!r} ({type(m).__name__}): expected Conv1d, Conv2d or Linear consumers; use method: l1")


@register_stage(StructuredConfig)
def structured(model: nn.Module, config: StructuredConfig, ctx: Context) -> nn.Module:
    """Physically shrink ``model`` by channel pruning as ``config`` says; returns the smaller model."""
    from squeezetune.compression.finetune import evaluate
    from squeezetune.compression.latency import LatencyConfig
    from squeezetune.compression.latency_model import LayerTimes
    from squeezetune.compression.measure import macs
    from squeezetune.compression.structured._graph import StructureGraph
    from squeezetune.compression.structured._plan import latency_fraction
    from squeezetune.compression.structured.channel import (
        ChannelPruneConfig,
        channel_prune,
    )
    from squeezetune.compression.structured.filters import (
        filter_prune,
        sensitivity_analysis,
    )
    from squeezetune.compression.structured.shrink import plan_counts

    example = ctx.example
    times = None
    if config.cost is Cost.LATENCY:
        threads = (ctx.latency or LatencyConfig()).threads
        times = LayerTimes.open(model, example, batch=config.latency_batch, device=ctx.device, threads=threads, progress=ctx.progress)
    graph = StructureGraph(copy.deepcopy(model), example)  # the names the user gave, resolved to their groups
    keep = {graph.resolve(n): c.keep for n, c in config.layers.items() if c.keep is not None}
    lam = {graph.resolve(n): c.lam for n, c in config.layers.items() if c.lam is not None}
    if config.macs_target is not None:
        sensitivity = None
        if config.allocation is Allocation.SENSITIVITY:
            if ctx.eval is None:
                raise SqueezeError("structured.allocation='sensitivity' needs an evaluation split: expected a task with data")
            ctx.progress("sensitivity analysis (L1 filter pruning of each layer alone)")
            sensitivity = sensitivity_analysis(model, lambda m: evaluate(m, ctx.eval, device=ctx.device), example=example, progress=ctx.progress)
        planned = plan_counts(model, config.macs_target, config.allocation.value, sensitivity, round_to=config.round_to, example=example, cost=config.cost.value, times=times)
        keep = {**{n: k for n, k in planned.items() if n not in lam}, **keep}
    ctx.progress(f"{config.method.value} channel pruning of {len(keep) + len(lam)} layer groups")
    if config.method is StructuredMethod.L1:
        pruned = filter_prune(model, keep, example=example)
    else:
        train = ctx.need_train("structured")
        cfg = ChannelPruneConfig(keep=keep, lam=lam, reconstruct=config.reconstruct, images=config.images, points=config.points)
        pruned, _ = channel_prune(model, train.x, cfg, device=ctx.device, example=example, progress=ctx.progress)
    if config.macs_target is not None:
        dense, now = macs(model, example), macs(pruned, example)
        reached = now / dense if dense else 1.0
        latency, cost, held = "", "", reached  # held: what the target is a fraction of
        if times is not None:
            held = latency_fraction(model, pruned, times, round_to=config.round_to, example=example)
            latency, cost = f" and {held:.3f} of the predicted latency", " (cost: latency)"
        blocks = f"the counts are multiples of round_to={config.round_to}, so a small layer's count drops by a whole block at once"
        note = "" if held >= 0.8 * config.macs_target else f" -- well below the target: {blocks} (a smaller round_to or per-layer keep counts come closer)"
        ctx.progress(f"structured: {reached:.3f} of the dense MACs{latency} for macs_target={config.macs_target}{cost}{note}")
    return pruned.to(ctx.device)
