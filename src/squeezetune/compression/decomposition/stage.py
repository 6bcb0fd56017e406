"""The ``decompose`` stage: replace layers by cheaper factors, fitted to the layers they replace.

``method`` picks the factorisation of every layer the stage covers; ``layers`` may give a layer
its own ``method``, ``rank`` (or ``rank_fraction``, a fraction of the layer's rank limit) or
``method: none`` to leave it whole:

===========  ===================================================================  ==========
lowrank      Linear: two Linears of rank r; convolution: k x k to r channels,     :mod:`.lowrank`
             then 1 x 1
separable    depthwise k x k (``rank`` filters per input channel), then 1 x 1     :mod:`.separable`
asymmetric   k x 1 to r channels, then 1 x k                                      :mod:`.separable`
pool         global average pooling in front of a Linear that reads a             :mod:`.pooling`
             flattened map (no rank)
===========  ===================================================================  ==========

With ``macs_target`` (a fraction of the dense model's MACs, counting what earlier stages saved)
the ranks of every eligible layer without one are planned (:mod:`._plan`, ``allocation``
``energy`` or ``uniform``); ``default`` instead gives every eligible layer one setting. A rank may
not exceed the layer's limit: above it the factors hold more weights than the layer.

With ``cost: latency`` the target is a fraction of the dense model's predicted latency instead:
each conv and linear layer, and each planned layer's factors at a few ranks, timed alone on this
machine (on the stage's device, at batch ``latency_batch``, with the report's CPU thread count),
interpolated over the rank and summed; the timings are cached per model and machine
(:mod:`squeezetune.compression.latency_model`).

The factors start from the SVD of the dense weights (each output channel weighted by the scale of
the BatchNorm after it); with ``refit`` (default) they are then fitted by least squares to the
layer's outputs on ``images`` sampled training inputs, layer after layer, the inputs taken from
the network rebuilt so far. Follow the stage with a ``finetune`` stage (``distill: true``).

>>> DecomposeConfig.from_dict({"method": "lowrank", "macs_target": 0.5}).to_dict()["method"]
'lowrank'
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import Enum
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from squeezetune.compression.architecture import Factors, replace_module
from squeezetune.compression.decomposition._base import Technique
from squeezetune.compression.latency_model import Cost, LayerTimes
from squeezetune.compression.stages import Context, StageConfig, register_stage
from squeezetune.errors import SqueezeError


class Method(str, Enum):
    LOWRANK = "lowrank"
    SEPARABLE = "separable"
    ASYMMETRIC = "asymmetric"
    POOL = "pool"
    NONE = "none"


class Allocation(str, Enum):
    UNIFORM = "uniform"
    ENERGY = "energy"


@dataclass(frozen=True)
class LayerDecomposition:
    """One layer's decomposition: its ``method`` (default: the stage's) and ``rank`` or ``rank_fraction``.

    A rank is ignored for ``pool`` and ``none``. ``rank_fraction`` is a fraction of the layer's
    rank limit, rounded, at least 1.
    """

    method: Method | None = None
    rank: int | None = None
    rank_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.rank is not None and self.rank_fraction is not None:
            raise SqueezeError(f"a layer's decompose setting takes rank or rank_fraction, not both; got rank={self.rank!r} rank_fraction={self.rank_fraction!r}")
        if self.rank is not None and self.rank < 1:
            raise SqueezeError(f"rank={self.rank!r} must be an integer >= 1")
        if self.rank_fraction is not None and not 0 < self.rank_fraction <= 1:
            raise SqueezeError(f"rank_fraction={self.rank_fraction!r} must be in (0, 1]: a fraction of the layer's rank limit")

    @property
    def ranked(self) -> bool:
        return self.rank is not None or self.rank_fraction is not None

    def resolve(self, limit: int) -> int:
        """The rank for a layer whose limit is ``limit``."""
        if self.rank is not None:
            return self.rank
        assert self.rank_fraction is not None
        return max(1, round(self.rank_fraction * limit))


@dataclass(frozen=True)
class DecomposeConfig(StageConfig):
    """Replace layers by cheaper factors (see the module doc)."""

    stage: ClassVar[str] = "decompose"
    changes_architecture: ClassVar[bool] = True
    method: Method = Method.LOWRANK
    macs_target: float | None = None
    allocation: Allocation = Allocation.ENERGY
    default: LayerDecomposition | None = None
    layers: dict[str, LayerDecomposition] = field(default_factory=dict)
    refit: bool = True
    images: int = 256
    points: int = 10
    round_to: int = 8
    cost: Cost = Cost.MACS
    latency_batch: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "cost", Cost.read(self.cost, "decompose.cost"))
        if self.method is Method.NONE:
            raise SqueezeError("decompose.method='none' decomposes nothing: expected lowrank, separable, asymmetric or pool (none is for single layers)")
        if self.macs_target is not None and not 0 < self.macs_target <= 1:
            raise SqueezeError(f"decompose.macs_target={self.macs_target!r} must be in (0, 1]: the fraction of dense MACs to keep")
        if self.macs_target is not None and self.default is not None and self.default.ranked:
            raise SqueezeError("decompose gives both a default rank and a macs_target: expected one (the target plans the ranks)")
        if self.macs_target is None and self.default is None and not self.layers:
            raise SqueezeError("decompose needs macs_target, a default or per-layer settings in layers: got none")
        if self.round_to < 1:
            raise SqueezeError(f"decompose.round_to={self.round_to!r} must be an integer >= 1")
        if self.images < 1 or self.points < 1:
            raise SqueezeError(f"decompose.images={self.images!r} and points={self.points!r} must be integers >= 1")
        if self.latency_batch < 1:
            raise SqueezeError(f"decompose.latency_batch={self.latency_batch!r} must be an integer >= 1")
        if self.cost is Cost.LATENCY and self.macs_target is None:
            raise SqueezeError("decompose.cost='latency' plans ranks to a macs_target: expected a macs_target (the ranks are given by hand)")

    def method_of(self, name: str) -> Method:
        setting = self.layers.get(name) or self.default
        return (setting.method if setting is not None else None) or self.method

    def needs_data(self) -> bool:
        return self.refit

    def validate(self, model: nn.Module, example: torch.Tensor, *, exact: bool = True) -> None:
        modules = dict(model.named_modules())
        for name, setting in self.layers.items():
            if name not in modules or not name:
                layers = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
                raise SqueezeError(f"unknown layer {name!r} in decompose.layers: expected one of {layers}")
            method = self.method_of(name)
            if method is Method.NONE or not exact:
                continue
            technique = technique_for(method, model, name, example)
            why = technique.refuses(modules[name])
            if why is not None:
                raise SqueezeError(f"decompose.layers.{name}: {method.value} cannot replace layer {name!r}: it is {why}")
            if technique.ranked:
                check_rank(name, method, technique.limit(modules[name]), setting.rank if setting.rank is not None else None)
                if not setting.ranked and (self.default is None or not self.default.ranked) and self.macs_target is None:
                    raise SqueezeError(f"decompose.layers.{name} has no rank: give rank or rank_fraction, a default, or a macs_target")
        if exact:
            _settings(model, self, example)  # every default-covered layer fits its rank

    def preview(self, model: nn.Module, example: torch.Tensor) -> nn.Module | None:
        if self.cost is Cost.LATENCY and self.macs_target is not None:
            return None  # the ranks depend on timings, not known without timing
        work = copy.deepcopy(model)
        for name, technique, rank in targets(work, self, example):
            replace_module(work, name, technique.build(work.get_submodule(name), rank))
        return work


def check_rank(name: str, method: Method, limit: int, rank: int | None) -> None:
    if limit < 1:
        raise SqueezeError(f"layer {name!r} is too small for {method.value}: even rank 1 holds more weights than the layer")
    if rank is not None and not 1 <= rank <= limit:
        raise SqueezeError(f"rank={rank!r} for layer {name!r} ({method.value}) must be in [1, {limit}]: above {limit} the factors hold more weights than the layer")


def technique_for(method: Method, model: nn.Module, name: str, example: Any) -> Technique:
    from squeezetune.compression.decomposition.lowrank import LOWRANK
    from squeezetune.compression.decomposition.pooling import GlobalPool, map_shape
    from squeezetune.compression.decomposition.separable import ASYMMETRIC, SEPARABLE

    if method is Method.POOL:
        return GlobalPool(map_shape(model, name, example))
    return {Method.LOWRANK: LOWRANK, Method.SEPARABLE: SEPARABLE, Method.ASYMMETRIC: ASYMMETRIC}[method]


def _eligible(model: nn.Module, method: Method, example: Any) -> list[tuple[str, Technique]]:
    """Every layer ``method`` can replace with a saving, in module order (factors of an earlier decomposition excluded)."""
    inside = {f"{n}.{c}" for n, m in model.named_modules() if isinstance(m, Factors) for c, _ in m.named_modules() if c}
    out = []
    for name, m in model.named_modules():
        if not name or name in inside or not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            continue
        if method is Method.POOL and not isinstance(m, nn.Linear):
            continue
        technique = technique_for(method, model, name, example)
        if technique.refuses(m) is None and (not technique.ranked or technique.limit(m) >= 1):
            out.append((name, technique))
    return out


MIN_MAC_SHARE = 0.01
"""A planned target leaves whole the smallest layers that together hold less than this share of the
model's MACs (unless ``layers`` names them): cutting a classifier head to rank 1 or 2 saves a few
hundred MACs and can cost tens of accuracy points."""


def _settings(model: nn.Module, config: DecomposeConfig, example: Any, per_layer: dict[str, int] | None = None) -> tuple[dict[str, tuple[Technique, int]], dict[str, Technique]]:
    """The layers the stage replaces: those with a rank (or no rank to choose), checked against
    their limits, ``(technique, rank)`` by name; and those whose rank is to be planned, but for the
    smallest that together hold under :data:`MIN_MAC_SHARE` of the MACs (``per_layer``, measured
    when not given) and that ``layers`` does not name."""
    from squeezetune.compression.measure import layer_macs

    chosen: dict[str, tuple[Technique, int]] = {}
    to_plan: dict[str, Technique] = {}
    covered = {}
    if config.default is not None or config.macs_target is not None:
        method = (config.default.method if config.default is not None else None) or config.method
        if method is not Method.NONE:
            covered = {name: t for name, t in _eligible(model, method, example) if name not in config.layers}
    for name, setting in config.layers.items():
        method = setting.method or config.method
        if method is not Method.NONE:
            covered[name] = technique_for(method, model, name, example)
    for name, technique in covered.items():
        setting = config.layers.get(name) or config.default
        layer = model.get_submodule(name)
        if not technique.ranked:
            chosen[name] = (technique, 0)
        elif setting is not None and setting.ranked:
            limit = technique.limit(layer)
            rank = setting.resolve(limit)
            check_rank(name, Method(technique.name), limit, rank)
            chosen[name] = (technique, rank)
        else:
            to_plan[name] = technique
    if to_plan:
        per_layer = per_layer if per_layer is not None else layer_macs(model, example)
        allowance, small = MIN_MAC_SHARE * sum(per_layer.values()), set()
        for name in sorted((n for n in to_plan if n not in config.layers), key=lambda n: (per_layer.get(n, 0), n)):
            allowance -= per_layer.get(name, 0)
            if allowance <= 0:
                break
            small.add(name)
        to_plan = {n: t for n, t in to_plan.items() if n not in small}
    return chosen, to_plan


def targets(model: nn.Module, config: DecomposeConfig, example: Any) -> list[tuple[str, Technique, int]]:
    """``(layer, technique, rank)`` for every layer the stage replaces, in module order, planned by MACs
    (:func:`plan_targets`)."""
    return plan_targets(model, config, example)[0]


def plan_targets(
    model: nn.Module,
    config: DecomposeConfig,
    example: Any,
    *,
    dense_cost: float | None = None,
    scales: dict | None = None,
    progress=None,
    times: LayerTimes | None = None,
) -> tuple[list[tuple[str, Technique, int]], float | None]:
    """``(layer, technique, rank)`` for every layer the stage replaces, in module order; and the
    cost the plan reached as a fraction of ``dense_cost`` (``None`` when no rank was planned).

    The cost is MACs, or with ``times`` (a :class:`~squeezetune.compression.latency_model.LayerTimes`)
    the conv and linear layers' predicted milliseconds, summed. ``dense_cost`` (default:
    ``model``'s) is what ``macs_target`` is a fraction of.
    """
    from squeezetune.compression.decomposition._plan import candidate, plan, timed
    from squeezetune.compression.latency_model import timed_layers
    from squeezetune.compression.measure import input_shapes, layer_macs

    macs = layer_macs(model, example)
    chosen, to_plan = _settings(model, config, example, macs)
    reached_cost = None
    if to_plan:
        layers = timed_layers(model) if times is not None else {}
        shapes = input_shapes(model, list(dict.fromkeys([*to_plan, *chosen, *layers])), example)
        candidates = [candidate(n, model.get_submodule(n), t, shapes[n], macs.get(n, 0), (scales or {}).get(n)) for n, t in to_plan.items()]
        if times is None:
            per_layer = macs
            replaced = {n: t.macs(model.get_submodule(n), r, shapes[n]) for n, (t, r) in chosen.items()}
        else:
            names = [n for n in layers if n in shapes]
            built = [(t.build(model.get_submodule(n), r), shapes[n]) for n, (t, r) in chosen.items()]
            ms = times.ms([(layers[n], shapes[n]) for n in names] + built)
            per_layer, replaced = dict(zip(names, ms)), dict(zip(chosen, ms[len(names) :]))
            candidates = timed(candidates, {n: model.get_submodule(n) for n in to_plan}, shapes, times, config.round_to)
        rest = sum(per_layer.values()) - sum(per_layer.get(n, 0) - replaced[n] for n in chosen) - sum(c.cost(0) for c in candidates)
        dense = dense_cost if dense_cost is not None else sum(per_layer.values())
        budget = config.macs_target * dense - rest
        ranks, reached = plan(candidates, budget if times is not None else int(budget), config.allocation.value, config.round_to)
        if not reached and progress is not None:
            progress(f"decompose: macs_target={config.macs_target} is out of reach at the lowest ranks; every planned layer takes its lowest rank")
        chosen.update({n: (to_plan[n], r) for n, r in ranks.items() if r})
        reached_cost = (rest + sum(c.cost(ranks[c.name]) for c in candidates)) / dense if dense else 1.0
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return [(n, t, r) for n, (t, r) in sorted(chosen.items(), key=lambda kv: order[kv[0]])], reached_cost


@register_stage(DecomposeConfig)
def decompose(model: nn.Module, config: DecomposeConfig, ctx: Context) -> nn.Module:
    """Replace the layers ``config`` covers by factors fitted to them; returns the new model."""
    from squeezetune.compression._fit import Samples, norm_scales
    from squeezetune.compression.latency import LatencyConfig
    from squeezetune.compression.measure import macs

    example = ctx.example
    train = ctx.need_train("decompose (refit: true)") if config.refit else None
    candidates = [n for n, _ in _eligible(model, config.method, example)] + list(config.layers)
    scales = norm_scales(model, candidates, example)
    dense_macs = macs(ctx.teacher, example)
    times, dense_cost = None, dense_macs
    if config.cost is Cost.LATENCY:
        threads = (ctx.latency or LatencyConfig()).threads
        times = LayerTimes.open(model, example, batch=config.latency_batch, device=ctx.device, threads=threads, progress=ctx.progress)
        dense_cost = times.total(ctx.teacher, example)
    plan, predicted = plan_targets(model, config, example, dense_cost=dense_cost, scales=scales, progress=ctx.progress, times=times)
    work = copy.deepcopy(model).eval()
    samples = None
    if train is not None:
        samples = Samples(model, train.x, images=config.images, points=config.points, seed=ctx.seed, device=ctx.device, layers=[model.get_submodule(n) for n, _, _ in plan])
    for name, technique, rank in plan:
        layer = work.get_submodule(name)
        factors = technique.fit(layer, rank, scales.get(name))
        note = ""
        calls = samples.calls(name) if samples is not None else 1
        if calls > 1:
            note = f", SVD alone: the layer runs {calls} times a forward pass and least squares would fit its first call only"
        elif samples is not None:
            before, after = samples.refit(work, name, factors, partial(technique.refit, factors, layer, rows=samples.rows, scale=scales.get(name)))
            note = f", output error {before:.4f} (SVD) -> {after:.4f} (least squares)" if after < before else f", output error {before:.4f} (SVD; least squares did no better)"
        replace_module(work, name, factors)
        ctx.progress(f"{name}: {technique.name}{f' rank {rank}' if technique.ranked else ''}{note}")
    if config.macs_target is not None:
        now = macs(work, example) / dense_macs
        latency = f" and {predicted:.3f} of the predicted latency" if times is not None and predicted is not None else ""
        cost = " (cost: latency)" if times is not None else ""
        ctx.progress(f"decompose: {now:.3f} of the dense MACs{latency} for macs_target={config.macs_target}{cost}")
    return work.to(ctx.device)
