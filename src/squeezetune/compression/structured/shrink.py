"""Structured pruning: make a network physically smaller by removing whole channels.

Removing a conv's output channels also removes the matching BatchNorm entries, the next layers'
input channels, residual-add partners, concat slices and depthwise groups; Torch-Pruning's
DepGraph finds those couplings (see :mod:`squeezetune.compression.structured._graph`). The result has
smaller weight tensors, fewer MACs and a lower latency -- no masks.

Which channels go is chosen elsewhere: by filter L1 norm (:mod:`.filters`) or by LASSO channel
selection with least-squares reconstruction (:mod:`.channel`). This module holds what they share:

* :func:`channel_groups` -- the channel groups, by name;
* :func:`shrink` -- remove given channels, returning a new, smaller model;
* :func:`shrunk_spec` / :func:`apply_spec` -- describe a shrunk architecture as JSON-able data and
  rebuild it from the task's factory without replaying the pruning;
* :func:`plan_counts` -- channels to keep per layer to reach a fraction of the dense MACs.

What the shrinking bought (MACs, parameters, latency) is measured by :mod:`squeezetune.compression.measure`.

Every function leaves its input model untouched. After shrinking, build a new optimizer: the
parameters are new tensors (``finetune.train`` builds its optimizer on every call).

>>> from squeezetune.tasks.cnn import ResNet20
>>> dense = ResNet20()
>>> small = shrink(dense, {"layer1.0.conv1": range(8)})
>>> small.layer1[0].conv1.weight.shape
torch.Size([8, 16, 3, 3])
"""

from __future__ import annotations

import copy
from typing import Iterable, Mapping

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.utils import parametrize

from squeezetune.compression.measure import DEFAULT_INPUT_SHAPE, Example
from squeezetune.compression.structured._graph import ChannelGroup, StructureGraph
from squeezetune.compression.structured._plan import plan_counts
from squeezetune.errors import SqueezeError

__all__ = [
    "ChannelGroup",
    "channel_groups",
    "shrink",
    "check_keep",
    "shrunk_spec",
    "apply_spec",
    "plan_counts",
    "SPEC_FORMAT",
]

SPEC_FORMAT = "squeezetune.shrunk/1"


# -- groups and shrinking ------------------------------------------------------------------------


def channel_groups(model: nn.Module, example: Example = DEFAULT_INPUT_SHAPE) -> dict[str, ChannelGroup]:
    """The model's prunable channel groups by name (the first member in module order).

    Each :class:`ChannelGroup` lists its ``members`` (layers whose filters go), ``consumers``
    (layers whose input channels go) and its current ``channels``. The classifier whose outputs
    are the model's outputs is not prunable.
    """
    return StructureGraph(copy.deepcopy(model), example).groups


def check_keep(groups: Mapping[str, ChannelGroup], keep: Mapping[str, int], graph: StructureGraph) -> dict[str, int]:
    """``keep`` with every layer name resolved to its group; :class:`SqueezeError` if invalid."""
    resolved: dict[str, int] = {}
    for layer, k in keep.items():
        name = graph.resolve(layer)
        n = groups[name].channels
        if isinstance(k, bool) or not isinstance(k, int):
            raise SqueezeError(f"keep={k!r} for layer {layer!r} must be an integer in [1, {n}]")
        if k < 1:
            raise SqueezeError(f"keep={k} for layer {layer!r} would remove every channel: expected an integer in [1, {n}]")
        if k > n:
            raise SqueezeError(f"keep={k} for layer {layer!r} must be in [1, {n}]: the layer has {n} channels")
        if name in resolved:
            raise SqueezeError(f"layer {layer!r} is in the same channel group as another listed layer ({name!r}): expected one count per group")
        resolved[name] = k
    return resolved


def shrink(model: nn.Module, remove: Mapping[str, Iterable[int]], *, example: Example = DEFAULT_INPUT_SHAPE) -> nn.Module:
    """A copy of ``model`` without the given output channels, and everything coupled to them.

    ``remove`` maps a layer (any member of a group) to channel indices in that group's first
    member's coordinates. Raises :class:`SqueezeError` for unknown or unprunable layers,
    out-of-range indices, removing every channel of a layer, or a layer whose removal breaks
    the forward pass (a dependency DepGraph cannot follow).
    """
    work = copy.deepcopy(model)
    graph = StructureGraph(work, example)
    plan: dict[str, list[int]] = {}
    for layer, idxs in remove.items():
        name = graph.resolve(layer)
        if name in plan:
            raise SqueezeError(f"layer {layer!r} is in the same channel group as another listed layer ({name!r}): expected one entry per group")
        plan[name] = sorted({int(i) for i in idxs})
    for name, idxs in plan.items():
        graph.prune(name, idxs, check=False)
    if graph.runs() is not None:  # find which layer broke it, checking after each one
        graph = StructureGraph(copy.deepcopy(model), example)
        for name, idxs in plan.items():
            graph.prune(name, idxs, check=True)
    return work


# -- spec: the shrunk architecture as plain data -----------------------------------------------------


def shrunk_spec(model: nn.Module) -> dict:
    """Every conv, linear and BatchNorm's sizes, as JSON-able data.

    ``{"format": "squeezetune.shrunk/1", "modules": {name: {...}}}`` where a conv's entry is
    ``{"type": "Conv2d", "in_channels": i, "out_channels": o, "groups": g}``, a linear's is
    ``{"type": "Linear", "in_features": i, "out_features": o}`` and a BatchNorm's is
    ``{"type": "BatchNorm2d", "num_features": n}``. :func:`apply_spec` rebuilds the shapes.
    """
    modules: dict[str, dict] = {}
    for name, m in model.named_modules():
        if isinstance(m, _ConvNd):
            modules[name] = {"type": parametrize.type_before_parametrizations(m).__name__, "in_channels": m.in_channels, "out_channels": m.out_channels, "groups": m.groups}
        elif isinstance(m, nn.Linear):
            modules[name] = {"type": parametrize.type_before_parametrizations(m).__name__, "in_features": m.in_features, "out_features": m.out_features}
        elif isinstance(m, _BatchNorm):
            modules[name] = {"type": parametrize.type_before_parametrizations(m).__name__, "num_features": m.num_features}
    return {"format": SPEC_FORMAT, "modules": modules}


def _resized(m: nn.Module, entry: dict, name: str) -> nn.Module:
    p = next(m.parameters(), None)
    factory = {"device": p.device if p is not None else None, "dtype": p.dtype if p is not None else None}
    try:
        if isinstance(m, _ConvNd):
            if m.transposed:
                raise SqueezeError(f"layer {name!r} is a transposed convolution: expected Conv1d/2d/3d")
            args = (entry["in_channels"], entry["out_channels"], m.kernel_size, m.stride, m.padding, m.dilation, entry["groups"])
            return type(m)(*args, bias=m.bias is not None, padding_mode=m.padding_mode, **factory)
        if isinstance(m, nn.Linear):
            return type(m)(entry["in_features"], entry["out_features"], bias=m.bias is not None, **factory)
        return type(m)(entry["num_features"], m.eps, m.momentum, m.affine, m.track_running_stats, **factory)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, SqueezeError):
            raise
        raise SqueezeError(f"spec entry {entry!r} for layer {name!r} is invalid ({exc}): expected the fields shrunk_spec writes") from None


def apply_spec(model: nn.Module, spec: Mapping) -> nn.Module:
    """Resize ``model``'s layers in place to ``spec`` (from :func:`shrunk_spec`); returns it.

    Layers whose sizes differ are replaced by freshly initialised ones, so the usual next step is
    ``load_state_dict`` of the shrunk weights::

        small = apply_spec(task.build_model(), spec)
        small.load_state_dict(weights)
    """
    if not isinstance(spec, Mapping) or spec.get("format") != SPEC_FORMAT or not isinstance(spec.get("modules"), Mapping):
        raise SqueezeError(
            f"spec format {spec.get('format') if isinstance(spec, Mapping) else type(spec).__name__!r} is not a shrunk-model spec: expected format {SPEC_FORMAT!r} with a 'modules' table"
        )
    current = shrunk_spec(model)["modules"]
    for name, entry in spec["modules"].items():
        if name not in current:
            raise SqueezeError(f"spec names layer {name!r}, which the model does not have as a conv, linear or BatchNorm")
        if not isinstance(entry, Mapping) or entry.get("type") != current[name]["type"]:
            raise SqueezeError(f"spec entry for layer {name!r} is {entry!r}: expected type {current[name]['type']!r}")
        if dict(entry) == current[name]:
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attr, _resized(model.get_submodule(name), dict(entry), name))
    return model
