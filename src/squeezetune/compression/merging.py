"""Data-free pruning by merging similar neurons (Srinivas & Babu 2015, "Data-free parameter pruning for deep neural networks").

Two neurons whose incoming weight vectors are equal compute the same activation, so one of them
can go and its outgoing weights be added onto the other's with no change to the network. For
neurons that are only similar the error of doing so is, to first order, the saliency
``s_ij = ||a_j||^2 * ||w_i - w_j||^2`` of removing ``j`` into ``i`` (``w``: incoming weights and
bias, ``a``: outgoing weights). Repeatedly take the pair of least saliency, remove ``j``, set
``a_i <- a_i + a_j`` and update the saliencies that changed. No data is read at all.

``score: distance`` ranks pairs by ``||w_i - w_j||^2`` alone (the plain similarity of incoming
weights). A layer can merge when it alone produces its channels and nothing but elementwise
operations (ReLU, ...) stand between it and the layers that read them: no BatchNorm, no residual
add. Channel groups come from DepGraph (:mod:`squeezetune.compression.structured._graph`), and the
removal is physical (:func:`~squeezetune.compression.structured.shrink.shrink`).

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
>>> with torch.no_grad():
...     model[0].weight[2] = model[0].weight[0]; model[0].bias[2] = model[0].bias[0]
>>> x = torch.randn(5, 4)
>>> small = merge_neurons(model, {"0": 1}, example=x[:1])
>>> small[0].out_features, bool(torch.allclose(small(x), model(x), atol=1e-6))
(2, True)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from enum import Enum
from typing import ClassVar, Mapping

import torch
from torch import nn

from squeezetune.compression.measure import DEFAULT_INPUT_SHAPE, Example
from squeezetune.compression.stages import Context, StageConfig, register_stage
from squeezetune.errors import SqueezeError


class Score(str, Enum):
    SALIENCY = "saliency"
    DISTANCE = "distance"


def merge_order(incoming: torch.Tensor, outgoing: torch.Tensor, count: int, score: Score | str = Score.SALIENCY) -> list[tuple[int, int]]:
    """The ``count`` merges ``(keep, remove)`` of neurons with ``incoming`` rows and ``outgoing`` rows, in order.

    ``incoming`` is ``n x d`` (weights and bias per neuron), ``outgoing`` ``n x m`` (every weight
    that reads the neuron). The greedy rule of the module doc; ties go to the lower indices.
    """
    score = Score(score)
    w = incoming.detach().double()
    a = outgoing.detach().double().clone()
    n = len(w)
    if not 0 <= count < n:
        raise SqueezeError(f"merging {count} of {n} neurons must leave at least one: expected a count in [0, {n - 1}]")
    dist = torch.cdist(w, w) ** 2
    dist.fill_diagonal_(float("inf"))
    out_norm = (a**2).sum(1)
    sal = dist * out_norm[None, :] if score is Score.SALIENCY else dist.clone()  # sal[i, j]: remove j into i
    merges = []
    for _ in range(count):
        flat = int(torch.argmin(sal))
        i, j = divmod(flat, n)
        merges.append((i, j))
        a[i] += a[j]
        sal[j, :] = float("inf")
        sal[:, j] = float("inf")
        if score is Score.SALIENCY:  # removing i into another neuron now moves a_i + a_j
            sal[:, i] = torch.where(torch.isfinite(sal[:, i]), dist[:, i] * float((a[i] ** 2).sum()), sal[:, i])
    return merges


def _mergeable(graph, name: str) -> str | None:
    """Why group ``name`` cannot merge (a phrase), or ``None``."""
    group = graph.groups[name]
    roles = [c.role for c in group.couplings]
    if "norm" in roles:
        return "a BatchNorm sits between it and the layers that read it (neurons would differ after the norm)"
    if "depthwise" in roles or roles.count("out") != 1:
        return "its channels are shared with other layers (a residual add or a depthwise convolution)"
    member = graph.get(group.members[0])
    if not isinstance(member, (nn.Linear, nn.Conv2d)) or (isinstance(member, nn.Conv2d) and member.groups != 1):
        return f"it is a {type(member).__name__} (expected a Linear or an ungrouped Conv2d)"
    for c in group.consumers:
        if not isinstance(graph.get(c), (nn.Linear, nn.Conv1d, nn.Conv2d)):
            return f"it feeds {c!r}, a {type(graph.get(c)).__name__} (expected Linear or Conv consumers)"
    return None


def _refusals(model: nn.Module, example: Example) -> str:
    """Why each convolution or linear layer of ``model`` cannot merge, as one phrase."""
    from squeezetune.compression.structured._graph import StructureGraph

    try:
        graph = StructureGraph(copy.deepcopy(model), example)
    except SqueezeError as exc:
        return str(exc)
    why = {name: _mergeable(graph, name) for name in graph.groups} | graph.unprunable
    return "; ".join(f"{name}: {reason}" for name, reason in why.items() if reason) or "it has no channel group"


def mergeable_layers(model: nn.Module, example: Example = DEFAULT_INPUT_SHAPE) -> dict[str, int]:
    """Every layer whose neurons can merge, with its neuron (channel) count, in module order."""
    from squeezetune.compression.structured._graph import StructureGraph

    graph = StructureGraph(copy.deepcopy(model), example)
    return {name: g.channels for name, g in graph.groups.items() if _mergeable(graph, name) is None}


def _columns(graph, name: str) -> list[tuple[str, dict[int, list[int]]]]:
    """Each consumer of group ``name`` and, per root channel, the input channels of it that read the channel."""
    out = []
    for c in graph.groups[name].couplings:
        if c.role == "in":
            by_root: dict[int, list[int]] = {}
            for idx, root in zip(c.idxs, c.root):
                by_root.setdefault(root, []).append(idx)
            out.append((c.module, by_root))
    return out


@torch.no_grad()
def merge_neurons(model: nn.Module, counts: Mapping[str, int], *, score: Score | str = Score.SALIENCY, example: Example = DEFAULT_INPUT_SHAPE) -> nn.Module:
    """A copy of ``model`` with ``counts[layer]`` neurons of each layer merged away (see the module doc)."""
    from squeezetune.compression.structured._graph import StructureGraph
    from squeezetune.compression.structured.shrink import shrink

    work = copy.deepcopy(model)
    graph = StructureGraph(copy.deepcopy(model), example)
    removals: dict[str, list[int]] = {}
    for layer, count in counts.items():
        name = graph.resolve(layer)
        why = _mergeable(graph, name)
        if why is not None:
            raise SqueezeError(f"layer {layer!r} cannot merge neurons: {why}")
        if count == 0:
            continue
        member = work.get_submodule(name)
        incoming = member.weight.detach().flatten(1)
        if member.bias is not None:
            incoming = torch.cat([incoming, member.bias.detach()[:, None]], 1)
        columns = _columns(graph, name)
        n = graph.groups[name].channels
        reads = [work.get_submodule(c).weight.detach().transpose(0, 1)[torch.tensor([cols[r] for r in range(n)])].flatten(1) for c, cols in columns]
        outgoing = torch.cat(reads, 1) if reads else torch.zeros(n, 1)
        merges = merge_order(incoming, outgoing, count, score)
        for c, cols in columns:
            w = work.get_submodule(c).weight
            for i, j in merges:
                w[:, cols[i]] += w[:, cols[j]]
        removals[name] = [j for _, j in merges]
    return shrink(work, removals, example=example) if removals else work


def _last_factor(model: nn.Module, name: str) -> str:
    """``name``, or the name of its last factor when a decomposition replaced it."""
    from squeezetune.compression.architecture import Factors

    try:
        m = model.get_submodule(name)
    except AttributeError:
        return name
    return f"{name}.{len(m) - 1}" if isinstance(m, Factors) else name


# -- the merge stage -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerMerge:
    """How many neurons of one layer merge away: a count (``remove``) or a fraction (``remove_fraction``)."""

    remove: int | None = None
    remove_fraction: float | None = None

    def __post_init__(self) -> None:
        if (self.remove is None) == (self.remove_fraction is None):
            raise SqueezeError(f"a layer's merge setting needs exactly one of remove, remove_fraction; got remove={self.remove!r} remove_fraction={self.remove_fraction!r}")
        if self.remove is not None and self.remove < 0:
            raise SqueezeError(f"remove={self.remove!r} neurons must be an integer >= 0")
        if self.remove_fraction is not None and not 0 <= self.remove_fraction < 1:
            raise SqueezeError(f"remove_fraction={self.remove_fraction!r} must be in [0, 1): a layer keeps at least one neuron")

    def count(self, n: int) -> int:
        return self.remove if self.remove is not None else min(n - 1, round(self.remove_fraction * n))


@dataclass(frozen=True)
class MergeConfig(StageConfig):
    """Data-free merging of similar neurons in the named layers, and in every other mergeable one by ``default``."""

    stage: ClassVar[str] = "merge"
    changes_architecture: ClassVar[bool] = True
    score: Score = Score.SALIENCY
    default: LayerMerge | None = None
    layers: dict[str, LayerMerge] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.default is None and not self.layers:
            raise SqueezeError("merge needs a default or per-layer settings in layers: got neither")
        if self.default is not None and self.default.remove is not None:
            raise SqueezeError(f"merge.default.remove={self.default.remove!r}: a default for every layer takes remove_fraction, not a count")

    def counts(self, model: nn.Module, layers: Mapping[str, int]) -> dict[str, int]:
        """Neurons to merge away per layer, for the mergeable ``layers`` of ``model`` and their neuron counts.

        A setting for a layer that a decomposition replaced covers its last factor (whose outputs are the layer's neurons).
        """
        named = {_last_factor(model, name): setting for name, setting in self.layers.items()}
        out = {}
        for name, n in layers.items():
            setting = named.get(name, self.default)
            if setting is not None:
                out[name] = setting.count(n)
        return out

    def validate(self, model: nn.Module, example: torch.Tensor, *, exact: bool = True) -> None:
        layers = mergeable_layers(model, example)
        for name, setting in self.layers.items():
            layer = _last_factor(model, name)
            if layer not in layers:
                from squeezetune.compression.structured._graph import StructureGraph

                graph = StructureGraph(copy.deepcopy(model), example)
                why = _mergeable(graph, graph.resolve(layer))
                raise SqueezeError(f"layer {name!r} in merge.layers cannot merge neurons: {why or 'it is not the first layer of its channel group'}; expected one of {list(layers)}")
            if exact and setting.remove is not None and not setting.remove < layers[layer]:
                raise SqueezeError(f"remove={setting.remove!r} for layer {name!r} must be in [0, {layers[layer] - 1}]: the layer has {layers[layer]} neurons")

    def preview(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        return merge_neurons(model, self.counts(model, mergeable_layers(model, example)), score=self.score, example=example)

    def needs_data(self) -> bool:
        return False


@register_stage(MergeConfig)
def merge(model: nn.Module, config: MergeConfig, ctx: Context) -> nn.Module:
    """Merge similar neurons away as ``config`` says, reading no data; returns the smaller model."""
    layers = mergeable_layers(model, ctx.example)
    counts = config.counts(model, layers)
    for name, count in counts.items():
        ctx.progress(f"{name}: merging {count} of {layers[name]} neurons by {config.score.value}")
    if not layers:
        ctx.progress(f"{ctx.label}: nothing merged, no layer can merge neurons ({_refusals(model, ctx.example)})")
    return merge_neurons(model, counts, score=config.score, example=ctx.example).to(ctx.device)


__all__ = ["LayerMerge", "MergeConfig", "Score", "merge_neurons", "merge_order", "mergeable_layers"]
