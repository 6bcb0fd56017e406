"""Filter pruning by L1 norm (Li et al., "Pruning Filters for Efficient ConvNets", ICLR 2017).

Each layer keeps its filters of largest L1 norm (sum of absolute weights). Where DepGraph couples
several layers' filters (the convs feeding one residual add, a depthwise conv and its expand
conv), a channel's score is the sum of its filters' norms across those layers. The removal is
physical: see :mod:`squeezetune.compression.structured.shrink`.

Per-layer sensitivity analysis prunes one layer at a time by growing fractions and records the
accuracy; :func:`sensitivity_table` and :func:`plot_sensitivity` present the result, and
:func:`~squeezetune.compression.structured.shrink.plan_counts` can turn it into per-layer counts.

>>> from squeezetune.tasks.cnn import VGGNet
>>> small = filter_prune(VGGNet(), {"features.0": 16})
>>> small.features[0].weight.shape
torch.Size([16, 1, 3, 3])
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from squeezetune.compression.measure import DEFAULT_INPUT_SHAPE, Example
from squeezetune.compression.structured._graph import StructureGraph
from squeezetune.compression.structured.shrink import check_keep, shrink
from squeezetune.errors import SqueezeError

__all__ = ["filter_scores", "filter_prune", "l1_removals", "Sensitivity", "sensitivity_analysis", "sensitivity_table", "plot_sensitivity"]


def _scores(graph: StructureGraph, name: str) -> torch.Tensor:
    group = graph.groups[name]
    score = torch.zeros(group.channels, dtype=torch.float64)
    for c in group.couplings:
        if c.role not in ("out", "depthwise"):
            continue
        w = graph.get(c.module).weight.detach()
        norms = w.abs().flatten(1).sum(1).double().cpu()
        score.index_add_(0, torch.tensor(c.root), norms[list(c.idxs)])
    return score


def filter_scores(model: nn.Module, layer: str, *, example: Example = DEFAULT_INPUT_SHAPE) -> torch.Tensor:
    """L1 norm of each output channel of ``layer``'s group (summed over coupled layers)."""
    graph = StructureGraph(copy.deepcopy(model), example)
    return _scores(graph, graph.resolve(layer))


def l1_removals(model: nn.Module, keep: Mapping[str, int], *, example: Example = DEFAULT_INPUT_SHAPE) -> dict[str, list[int]]:
    """Per layer, the channels L1 filter pruning removes to keep ``keep[layer]``.

    Li et al.'s "independent" strategy: every score is taken from the unpruned model.
    """
    graph = StructureGraph(copy.deepcopy(model), example)
    keep = check_keep(graph.groups, keep, graph)
    removals = {}
    for name, k in keep.items():
        order = torch.argsort(-_scores(graph, name), stable=True)  # strongest first
        removals[name] = sorted(order[k:].tolist())
    return removals


def filter_prune(model: nn.Module, keep: Mapping[str, int], *, example: Example = DEFAULT_INPUT_SHAPE) -> nn.Module:
    """A smaller copy of ``model`` keeping, per layer, the ``keep[layer]`` filters of largest L1 norm.

    ``keep`` maps a layer name (any member of a channel group) to the number of output channels
    to keep, in ``[1, channels]``; :func:`~squeezetune.compression.structured.shrink.plan_counts`
    produces such a mapping. Layers not listed are untouched.
    """
    return shrink(model, l1_removals(model, keep, example=example), example=example)


# -- sensitivity ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sensitivity:
    """Accuracy after pruning each layer alone by each fraction of its channels.

    ``accuracy[layer][i]`` is the accuracy with ``fractions[i]`` of ``layer``'s channels removed
    (by L1 norm), every other layer dense; ``base`` is the dense accuracy.
    """

    base: float
    fractions: tuple[float, ...]
    accuracy: dict[str, tuple[float, ...]] = field(default_factory=dict)
    channels: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"base": self.base, "fractions": list(self.fractions), "accuracy": {k: list(v) for k, v in self.accuracy.items()}, "channels": dict(self.channels)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Sensitivity":
        try:
            return cls(
                float(data["base"]),
                tuple(float(f) for f in data["fractions"]),
                {k: tuple(float(a) for a in v) for k, v in data["accuracy"].items()},
                {k: int(v) for k, v in data.get("channels", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SqueezeError(f"sensitivity data is invalid ({exc}): expected base, fractions and accuracy as written by Sensitivity.to_dict") from None


def sensitivity_analysis(
    model: nn.Module,
    evaluate: Callable[[nn.Module], float],
    fractions: Sequence[float] = (0.25, 0.5, 0.75, 0.9),
    layers: Iterable[str] | None = None,
    *,
    example: Example = DEFAULT_INPUT_SHAPE,
    progress: Callable[[str], None] | None = None,
) -> Sensitivity:
    """Prune each layer alone by each fraction (L1 filter pruning, no fine-tuning) and evaluate.

    ``evaluate(model) -> accuracy`` is called on each pruned copy, e.g.
    ``lambda m: finetune.evaluate(m, eval_split)``. ``layers`` defaults to every prunable group.
    A fraction removes ``round(fraction * channels)`` channels, at most all but one.
    """
    fractions = tuple(float(f) for f in fractions)
    if not fractions or any(not 0.0 < f < 1.0 for f in fractions) or list(fractions) != sorted(set(fractions)):
        raise SqueezeError(f"fractions={list(fractions)} must be increasing, distinct and each in (0, 1)")
    graph = StructureGraph(copy.deepcopy(model), example)
    names = list(graph.groups) if layers is None else list(dict.fromkeys(graph.resolve(layer) for layer in layers))
    base = float(evaluate(model))
    accuracy: dict[str, tuple[float, ...]] = {}
    channels = {n: graph.groups[n].channels for n in names}
    for name in names:
        n = channels[name]
        row = []
        for f in fractions:
            removed = min(n - 1, round(f * n))
            row.append(base if removed == 0 else float(evaluate(filter_prune(model, {name: n - removed}, example=example))))
        accuracy[name] = tuple(row)
        if progress is not None:
            progress(f"sensitivity {name}: " + " ".join(f"{f:.2f}->{a:.4f}" for f, a in zip(fractions, row)))
    return Sensitivity(base, fractions, accuracy, channels)


def sensitivity_table(result: Sensitivity) -> str:
    """A markdown table: one row per layer, one column per fraction pruned (accuracy in %)."""
    head = "| layer | channels | " + " | ".join(f"{f:.0%} pruned" for f in result.fractions) + " |"
    lines = [f"dense accuracy {100 * result.base:.2f}%", "", head, "|" + "---|" * (len(result.fractions) + 2)]
    for name, row in result.accuracy.items():
        lines.append(f"| {name} | {result.channels.get(name, '')} | " + " | ".join(f"{100 * a:.2f}" for a in row) + " |")
    return "\n".join(lines)


def plot_sensitivity(result: Sensitivity, path: str | Path) -> Path:
    """Accuracy against fraction pruned, one line per layer, saved to ``path`` (PNG, SVG, ...)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    xs = [0.0, *result.fractions]
    for name, row in result.accuracy.items():
        ax.plot(xs, [100 * result.base, *(100 * a for a in row)], marker="o", label=name)
    ax.set_xlabel("fraction of the layer's channels pruned (L1 norm)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Per-layer pruning sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path
