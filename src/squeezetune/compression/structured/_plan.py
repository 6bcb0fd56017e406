"""How many channels each layer keeps to reach a fraction of the dense MACs, or of the dense latency.

MACs of a candidate plan are computed analytically from the channel groups (each conv's MACs
scale with its kept input and output channels), so a search over plans never builds a model.
With ``cost="latency"`` the cost of a plan is its predicted latency instead (:class:`LatencyModel`):
each conv and linear layer timed alone on this machine at a grid of kept input and output
channels (:mod:`squeezetune.compression.latency_model`, cached), interpolated bilinearly, summed.
"""

from __future__ import annotations

import copy
from typing import Iterable, Sequence

from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from squeezetune.compression import measure
from squeezetune.compression.latency_model import Cost, LayerTimes, Table, grid
from squeezetune.compression.measure import DEFAULT_INPUT_SHAPE, Example
from squeezetune.compression.structured._graph import StructureGraph
from squeezetune.compression.structured.stage import Allocation
from squeezetune.errors import SqueezeError

ALLOCATIONS = tuple(a.value for a in Allocation)
"""How :func:`plan_counts` spreads the cut (the structured stage's ``allocation``)."""

COSTS = tuple(c.value for c in Cost)
"""What :func:`plan_counts` holds to its target (the structured stage's ``cost``)."""


def layer_macs(model: nn.Module, example: Example = DEFAULT_INPUT_SHAPE) -> dict[str, int]:
    """Multiply-accumulates of each conv and linear layer (the ones channel pruning resizes)."""
    return {name: n for name, n in measure.layer_macs(model, example).items() if isinstance(model.get_submodule(name), (_ConvNd, nn.Linear))}


class MacModel:
    """MACs of ``model`` as a function of channels kept per group."""

    def __init__(self, graph: StructureGraph) -> None:
        self.groups = graph.groups
        counts = layer_macs(graph.model, graph.example())
        self.layers: dict[str, dict] = {}
        for name, total in counts.items():
            m = graph.get(name)
            conv = isinstance(m, _ConvNd)
            n_out, n_in = (m.out_channels, m.in_channels) if conv else (m.out_features, m.in_features)
            self.layers[name] = {
                "per": total / (n_out * (n_in // m.groups if conv else n_in)),  # MACs per (out, in-per-group) pair
                "out": n_out,
                "in": n_in,
                "groups": m.groups if conv else 1,
                "depthwise": conv and m.groups == n_out and n_out > 1,
                "cuts": [],  # (group name, role, fraction of the group's channels this layer follows)
            }
        for g in self.groups.values():
            for c in g.couplings:
                if c.module in self.layers and c.role in ("out", "in", "depthwise"):
                    self.layers[c.module]["cuts"].append((g.name, c.role, len(c.idxs) / g.channels))

    def kept(self, name: str, keep: dict[str, int]) -> tuple[float, float]:
        """Output and input channels layer ``name`` keeps under the plan ``keep``."""
        layer = self.layers[name]
        out, inp = float(layer["out"]), float(layer["in"])
        for group, role, frac in layer["cuts"]:
            gone = (self.groups[group].channels - keep.get(group, self.groups[group].channels)) * frac
            if role in ("out", "depthwise"):
                out -= gone
            if role in ("in", "depthwise"):
                inp -= gone
        return out, inp

    def macs(self, keep: dict[str, int]) -> float:
        total = 0.0
        for name, layer in self.layers.items():
            out, inp = self.kept(name, keep)
            if layer["depthwise"]:
                total += layer["per"] * out
            else:
                total += layer["per"] * out * inp / layer["groups"]
        return total

    def cost(self, keep: dict[str, int]) -> float:
        """What the planner holds to its target: MACs here."""
        return self.macs(keep)


class LatencyModel(MacModel):
    """Predicted milliseconds of ``model``'s conv and linear layers as a function of channels kept
    per group: each layer timed alone (:class:`~squeezetune.compression.latency_model.LayerTimes`)
    at a :func:`~squeezetune.compression.latency_model.grid` of kept inputs and outputs along the
    axes the groups in ``names`` cut, interpolated bilinearly, summed."""

    def __init__(self, graph: StructureGraph, names: Iterable[str], times: LayerTimes, round_to: int) -> None:
        super().__init__(graph)
        cut = set(names)
        shapes = measure.input_shapes(graph.model, list(self.layers), graph.example())
        axes: dict[str, tuple[list[int], list[int]]] = {}
        jobs = []
        for name, layer in self.layers.items():
            m = graph.get(name)
            roles = {role for group, role, _ in layer["cuts"] if group in cut}
            multiple = 1 if layer["depthwise"] else layer["groups"]
            ins = grid(layer["in"], round_to, multiple=multiple) if roles & {"in", "depthwise"} else [layer["in"]]
            outs = grid(layer["out"], round_to, multiple=multiple) if roles & {"out", "depthwise"} else [layer["out"]]
            if layer["depthwise"]:
                ins = outs = sorted(set(ins) | set(outs))
            axes[name] = (ins, outs)
            for i in ins:
                for o in [i] if layer["depthwise"] else outs:
                    jobs.append((resized(m, i, o), _with_channels(shapes[name], i, isinstance(m, _ConvNd))))
        ms = iter(times.ms(jobs))
        self.tables: dict[str, Table] = {}
        for name, (ins, outs) in axes.items():
            if self.layers[name]["depthwise"]:
                line = [next(ms) for _ in ins]
                self.tables[name] = Table(ins, outs, [[v] * len(outs) for v in line])
            else:
                self.tables[name] = Table(ins, outs, [[next(ms) for _ in outs] for _ in ins])

    def layer_ms(self, name: str, out: float, inp: float) -> float:
        return self.tables[name](inp, out)

    def cost(self, keep: dict[str, int]) -> float:
        """Predicted milliseconds of the plan ``keep``: its layers' times, summed."""
        return sum(self.layer_ms(name, *self.kept(name, keep)) for name in self.layers)

    def predict(self, pruned: nn.Module) -> float:
        """Predicted milliseconds of ``pruned`` (this model with channels removed), read off its layers' sizes."""
        total = 0.0
        for name in self.layers:
            m = pruned.get_submodule(name)
            out, inp = (m.out_channels, m.in_channels) if isinstance(m, _ConvNd) else (m.out_features, m.in_features)
            total += self.layer_ms(name, out, inp)
        return total


def resized(layer: nn.Module, inp: int, out: int) -> nn.Module:
    """A fresh layer like ``layer`` (a conv or linear one, its weights unset) with ``inp`` input and
    ``out`` output channels; a depthwise conv keeps one group per channel."""
    if isinstance(layer, nn.Linear):
        return nn.Linear(inp, out, bias=layer.bias is not None, dtype=layer.weight.dtype)
    depthwise = layer.groups == layer.out_channels == layer.in_channels and layer.groups > 1
    kind = next(c for c in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d) if isinstance(layer, c))
    kw = dict(
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        groups=out if depthwise else layer.groups,
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
        dtype=layer.weight.dtype,
    )
    if isinstance(layer, _ConvTransposeNd):
        kw["output_padding"] = layer.output_padding
    return kind(inp, out, layer.kernel_size, **kw)


def _with_channels(shape: tuple[int, ...], channels: int, conv: bool) -> tuple[int, ...]:
    """``shape`` with its channel axis (1 for a conv's input, the last for a linear's) set to ``channels``."""
    axis = 1 if conv else len(shape) - 1
    return tuple(channels if i == axis else d for i, d in enumerate(shape))


def _round(x: float, n: int, round_to: int) -> int:
    return int(min(n, max(round_to, round(x / round_to) * round_to, 1)))


def _uniform(model: MacModel, names: list[str], budget: float, round_to: int) -> dict[str, int]:
    def plan(f: float) -> dict[str, int]:
        return {g: _round(f * model.groups[g].channels, model.groups[g].channels, round_to) for g in names}

    if model.cost(plan(0.0)) > budget:
        return {}
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if model.cost(plan(mid)) <= budget else (lo, mid)
    return plan(lo)


def _allowed_fraction(fractions: Sequence[float], accuracy: Sequence[float], base: float, tolerance: float) -> float:
    """Largest fraction pruned before the (piecewise-linear) accuracy curve drops below tolerance."""
    floor = base - tolerance
    f0, a0 = 0.0, base
    for f1, a1 in zip(fractions, accuracy):
        if a1 < floor:
            return f0 if a0 == a1 else f0 + (f1 - f0) * max(0.0, (a0 - floor) / (a0 - a1))
        f0, a0 = f1, a1
    return f0


def _by_sensitivity(model: MacModel, names: list[str], budget: float, sensitivity, curves: dict, round_to: int) -> dict[str, int]:
    fractions = [float(f) for f in sensitivity.fractions]

    def plan(t: float) -> dict[str, int]:
        out = {}
        for g in names:
            n = model.groups[g].channels
            f = _allowed_fraction(fractions, curves[g], sensitivity.base, t) if g in curves else 0.0
            out[g] = _round(n * (1.0 - f), n, round_to) if f > 0 else n
        return out

    if model.cost(plan(float("inf"))) > budget:
        return {}
    lo, hi = 0.0, 1.0
    while model.cost(plan(hi)) > budget:
        hi *= 2
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if model.cost(plan(mid)) <= budget else (mid, hi)
    return plan(hi)


def plan_counts(
    model: nn.Module,
    macs_target: float,
    method: str = "uniform",
    sensitivity=None,
    *,
    layers: Iterable[str] | None = None,
    round_to: int = 1,
    example: Example = DEFAULT_INPUT_SHAPE,
    cost: str = "macs",
    times: LayerTimes | None = None,
) -> dict[str, int]:
    """Channels to keep per layer so that MACs are at most ``macs_target`` x the model's MACs.

    ``method="uniform"`` keeps the same fraction of every layer (the largest that fits);
    ``method="sensitivity"`` takes a :class:`~squeezetune.compression.structured.filters.Sensitivity` and
    prunes each layer as far as its accuracy curve allows within one common accuracy tolerance,
    the smallest tolerance that meets the target (Li et al., 2017). ``layers`` restricts the plan
    to some groups (default: all prunable ones); ``round_to`` makes counts multiples of it.
    ``cost="latency"`` holds the plan's predicted latency (:class:`LatencyModel`, from ``times``;
    default: batch 64, one thread, on CUDA when present) to ``macs_target`` x the dense model's.

    >>> from squeezetune.tasks.cnn import ResNet20
    >>> keep = plan_counts(ResNet20(), 0.5)
    >>> keep["layer3.0.conv1"]
    45
    """
    if not isinstance(macs_target, (int, float)) or not 0.0 < macs_target <= 1.0:
        raise SqueezeError(f"macs_target={macs_target!r} must be a fraction of the dense MACs in (0, 1]")
    if method not in ALLOCATIONS:
        raise SqueezeError(f"method={method!r} is unknown: expected one of {list(ALLOCATIONS)}")
    if method == "sensitivity" and sensitivity is None:
        raise SqueezeError("method='sensitivity' needs the result of sensitivity_analysis: expected sensitivity=...")
    if not isinstance(round_to, int) or round_to < 1:
        raise SqueezeError(f"round_to={round_to!r} must be an integer >= 1")
    if cost not in COSTS:
        raise SqueezeError(f"cost={cost!r} is unknown: expected one of {list(COSTS)}")
    graph = StructureGraph(copy.deepcopy(model), example)
    names = list(graph.groups) if layers is None else list(dict.fromkeys(graph.resolve(layer) for layer in layers))
    if cost == Cost.LATENCY.value:
        mac_model: MacModel = LatencyModel(graph, names, times or LayerTimes.open(model, example), round_to)
    else:
        mac_model = MacModel(graph)
    dense = mac_model.cost({})
    budget = macs_target * dense * (1 + 1e-9)
    what = "" if cost == Cost.MACS.value else f" (of the predicted latency: cost={cost!r})"
    if method == "uniform":
        keep = _uniform(mac_model, names, budget, round_to)
    else:
        curves = {graph.resolve(layer): list(acc) for layer, acc in sensitivity.accuracy.items()}
        keep = _by_sensitivity(mac_model, names, budget, sensitivity, curves, round_to)
    if not keep:
        if method == "uniform":
            floor = mac_model.cost({g: _round(0.0, mac_model.groups[g].channels, round_to) for g in names}) / dense
            hint = f" (every layer at its smallest multiple of round_to={round_to}; a smaller round_to goes lower)" if round_to > 1 else ""
            raise SqueezeError(f"macs_target={macs_target}{what} is unreachable by pruning {len(names)} layers uniformly: the floor is {floor:.4f}{hint}")
        raise SqueezeError(f"macs_target={macs_target}{what} is unreachable by pruning {len(names)} layers by sensitivity: expected a target the measured fractions allow")
    return keep


def latency_fraction(model: nn.Module, pruned: nn.Module, times: LayerTimes, *, round_to: int = 1, example: Example = DEFAULT_INPUT_SHAPE) -> float:
    """``pruned``'s predicted latency as a fraction of ``model``'s (:class:`LatencyModel` over every
    group; what :func:`plan_counts` timed for the same ``times`` and ``round_to`` is not timed again)."""
    graph = StructureGraph(copy.deepcopy(model), example)
    latency = LatencyModel(graph, graph.groups, times, round_to)
    dense = latency.cost({})
    return latency.predict(pruned) / dense if dense else 1.0
