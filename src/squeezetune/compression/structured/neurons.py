"""The ``neurons`` stage: remove, structurally, the neurons, channels and input features that
pruning (or a group-lasso penalty) has left dead.

A channel (a hidden unit of a linear layer, a convolution's filter with its BatchNorm entry,
every partner DepGraph couples to it) is dead when

* *no outputs*: every weight that reads it is zero, so it changes nothing; or
* *no inputs*: every weight that writes it is zero, so its value is a constant (its bias, through
  the norm and activation that follow); the constant each reader sees is measured on a batch of
  training inputs and folded into that reader's bias (linear readers, and unpadded convolutions
  with a bias), so the outputs stay the same.

Dead channels are removed with :func:`~squeezetune.compression.structured.shrink.shrink`, again
until none is left (removing one unit can leave another without outputs); a group always keeps at
least one channel. Each removal is checked on the training batch: when the outputs move (a reader
DepGraph cannot see, such as a bare parameter in a matmul), that group stays whole. Then every
linear layer whose remaining input columns are all zero reads only the features it uses (:mod:`.gather`): input pixels that no kept weight reads cost neither
positions nor MACs, and the model still takes its original input. Pruning masks are carried over
(a tensor that was pruned is pruned again where its weights are zero), so unstructured pruning
continues inside what is left.

Shared (k-means) tensors cannot be cut: run this stage before ``share``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from squeezetune.compression.stages import Context, StageConfig, register_stage
from squeezetune.compression.structured._graph import MODEL_OUTPUTS, ChannelGroup, StructureGraph
from squeezetune.compression.structured.gather import eval_outputs, gather_unused_inputs, same_outputs, ungather
from squeezetune.compression.structured.shrink import shrink
from squeezetune.compression.tensors import compressible
from squeezetune.compression.unstructured.pruning import apply_mask, bake, mask_of
from squeezetune.compression.unstructured.sharing import shared_of
from squeezetune.errors import SqueezeError


@dataclass(frozen=True)
class NeuronsConfig(StageConfig):
    """Remove dead neurons, channels and (with ``inputs``) unread input features (see the module doc)."""

    stage: ClassVar[str] = "neurons"
    changes_architecture: ClassVar[bool] = True
    inputs: bool = True
    """Let linear layers read only the input features they use."""
    images: int = 256
    """Training inputs the constant values of input-less channels are measured on."""

    def __post_init__(self) -> None:
        if self.images < 1:
            raise SqueezeError(f"neurons.images={self.images!r} must be an integer >= 1")


def _zero(t: torch.Tensor) -> bool:
    return not bool(t.ne(0).any())


def _reader_inputs(model: nn.Module, names: set[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """What each module in ``names`` receives on ``x`` (one forward pass, eval mode)."""
    seen: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(n).register_forward_hook(lambda m, inputs, out, n=n: seen.__setitem__(n, inputs[0].detach())) for n in names]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return seen


def _constant(values: torch.Tensor) -> float | None:
    """The single value of ``values`` if they are all (numerically) equal, else ``None``."""
    lo, hi = float(values.min()), float(values.max())
    return (lo + hi) / 2 if hi - lo <= 1e-6 * (1.0 + abs(lo) + abs(hi)) else None


@torch.no_grad()
def _dead(graph: StructureGraph, group: ChannelGroup, seen: dict[str, torch.Tensor]) -> tuple[list[int], list[tuple[nn.Module, torch.Tensor]]]:
    """The dead root channels of ``group``, and the bias folds (reader, added bias) their removal needs."""
    readers = [(graph.get(c.module), c) for c in group.couplings if c.role == "in"]
    writers = [(graph.get(c.module), c) for c in group.couplings if c.role in ("out", "depthwise")]
    if not readers:
        return [], []
    silent: list[int] = []  # no outputs
    constant: dict[int, list[tuple[nn.Module, torch.Tensor]]] = {}  # no inputs, with the folds
    for j in range(group.channels):
        reads = [(m, c.module, [i for i, r in zip(c.idxs, c.root) if r == j]) for m, c in readers]
        if all(_zero(m.weight[:, idxs]) for m, _, idxs in reads):
            silent.append(j)
        elif all(_zero(m.weight[[i for i, r in zip(c.idxs, c.root) if r == j]]) for m, c in writers):
            folds = _folds(reads, seen)
            if folds is not None:
                constant[j] = folds
    dead = sorted(silent + list(constant))
    if len(dead) == group.channels:  # a group keeps one channel
        dead.remove(silent[0] if silent else dead[0])
    return dead, [f for j in dead for f in constant.get(j, [])]


def _folds(reads: list[tuple[nn.Module, str, list[int]]], seen: dict[str, torch.Tensor]) -> list[tuple[nn.Module, torch.Tensor]] | None:
    """What each reader's bias must gain to stand in for a constant channel; ``None`` if it cannot."""
    folds = []
    for m, name, idxs in reads:
        for i in idxs:
            value = _constant(seen[name][:, i])
            if value is None:
                return None
            if value == 0.0:
                continue
            if m.bias is None or (isinstance(m, _ConvNd) and (m.groups != 1 or any(p != 0 for p in _padding(m)))):
                return None
            w = m.weight[:, i]
            folds.append((m, value * (w.sum(dim=tuple(range(1, w.dim()))) if w.dim() > 1 else w)))
    return folds


def _padding(m: _ConvNd) -> tuple[int, ...]:
    if isinstance(m.padding, str):
        return (0,) if m.padding == "valid" else (1,)
    return tuple(m.padding)


def remove_dead(model: nn.Module, x: torch.Tensor, example: torch.Tensor, untraced: dict[str, str] | None = None) -> tuple[nn.Module, dict[str, int]]:
    """``model`` (plain tensors) without its dead channels, folding constants into the readers' biases.

    Returns the new model and the channels removed per group. ``untraced``, when given, receives
    the convs/linears whose channels stay whole because DepGraph cannot shrink them, with the reason.
    """
    removed: dict[str, int] = {}
    whole: set[str] = set()  # groups whose removal would change the outputs
    for step in range(16):
        try:
            graph = StructureGraph(model, example)
        except SqueezeError as exc:  # DepGraph cannot trace this model at all: every channel stays
            if step == 0 and untraced is not None:
                untraced["every layer"] = str(exc)
            break
        if step == 0 and untraced is not None:
            untraced.update((name, why) for name, why in graph.unprunable.items() if why != MODEL_OUTPUTS)
        readers = {c.module for g in graph.groups.values() for c in g.couplings if c.role == "in"}
        seen = _reader_inputs(model, readers, x)
        plan: dict[str, list[int]] = {}
        folds: dict[str, list[tuple[nn.Module, torch.Tensor]]] = {}
        for name, group in graph.groups.items():
            if name not in whole:
                plan[name], folds[name] = _dead(graph, group, seen)
        plan = {name: dead for name, dead in plan.items() if dead}
        if not plan:
            break
        before = eval_outputs(model, x)
        smaller = _without(model, graph, plan, folds, example)
        if smaller is None or not same_outputs(smaller, x, before):
            # a reader DepGraph did not see (a bare parameter, an op it cannot trace): find the
            # groups whose removal keeps the outputs, one at a time; the others stay whole
            accepted: dict[str, list[int]] = {}
            for name, dead in plan.items():
                trial = _without(model, graph, {**accepted, name: dead}, folds, example)
                if trial is not None and same_outputs(trial, x, before):
                    accepted[name], smaller = dead, trial
                else:
                    whole.add(name)
            if not accepted:
                break
            plan = accepted
        for name, dead in plan.items():
            removed[name] = removed.get(name, 0) + len(dead)
        model = smaller
    return model, removed


def _without(model: nn.Module, graph: StructureGraph, plan: dict[str, list[int]], folds: dict, example: torch.Tensor) -> nn.Module | None:
    """A copy of ``model`` with the channels in ``plan`` removed and their constants folded; ``None`` if that breaks it."""
    work = copy.deepcopy(model)
    with torch.no_grad():
        for name in plan:
            for m, extra in folds[name]:
                work.get_submodule(graph.names[m]).bias.add_(extra)
    try:
        return shrink(work, plan, example=example)
    except SqueezeError:
        return None


@register_stage(NeuronsConfig)
def neurons(model: nn.Module, config: NeuronsConfig, ctx: Context) -> nn.Module:
    """Remove dead neurons, channels and unread input features; returns the smaller model."""
    targets = compressible(model)
    shared = [n for n, t in targets.items() if shared_of(t.module, t.attr) is not None]
    if shared:
        raise SqueezeError(f"neurons cannot cut shared tensor {shared[0]!r}: expected the neurons stage before share")
    pruned = {n for n, t in targets.items() if mask_of(t.module, t.attr) is not None}
    work = ungather(copy.deepcopy(bake(model))).cpu()  # masks come back below, from the zeros
    x = ctx.train.x[: config.images] if ctx.train is not None else ctx.example
    untraced: dict[str, str] = {}
    work, removed = remove_dead(work, x.cpu(), ctx.example, untraced)
    gathered = gather_unused_inputs(work, x.cpu()) if config.inputs else {}
    for name, t in compressible(work).items():
        if name in pruned:
            apply_mask(t.module, t.tensor.detach().ne(0).float(), t.attr)
    parts = [f"{name} -{n}" for name, n in removed.items()] + [f"{name} reads {k} of {n} inputs" for name, (k, n) in gathered.items()]
    ctx.progress(f"{ctx.label}: " + (", ".join(parts) if parts else "nothing dead to remove"))
    for name, why in untraced.items():
        ctx.progress(f"{ctx.label}: {name} keeps all {'its ' if name != 'every layer' else ''}channels: {why}")
    return work.to(ctx.device)
