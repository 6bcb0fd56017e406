"""Torch-Pruning's DepGraph behind a small wrapper: a model's prunable channel groups, by name.

A *channel group* is a set of output channels that must go together: a conv's filters, its
BatchNorm entries, the next layers' input channels, every residual-add partner, concat slices,
depthwise groups. DepGraph (Fang et al., CVPR 2023) finds them by tracing one forward pass. A
group is named after its first member in ``model.named_modules()`` order; any member's name is
accepted as an alias. Indices of a group are in that first member's output-channel coordinates.

Torch-Pruning is imported here, inside :class:`StructureGraph`, so that
``squeezetune.compression`` imports with torch and numpy alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from squeezetune.compression.measure import DEFAULT_INPUT_SHAPE, Example, as_example
from squeezetune.errors import SqueezeError

MODEL_OUTPUTS = "its output channels are the model's outputs"


@dataclass(frozen=True)
class Coupling:
    """How one module takes part in a group: which of its channels follow which root channels.

    ``role`` is ``"out"`` (its output channels / filters), ``"in"`` (its input channels),
    ``"depthwise"`` (a depthwise conv: input and output together) or ``"norm"`` (BatchNorm).
    ``idxs[i]`` is the module's own channel index matching root channel ``root[i]``.
    """

    module: str
    role: str
    idxs: tuple[int, ...]
    root: tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable group: its name, its channel count and the modules it couples."""

    name: str
    channels: int
    couplings: tuple[Coupling, ...]

    @property
    def members(self) -> tuple[str, ...]:
        """Convs/linears whose output channels (filters) are this group's channels."""
        return tuple(c.module for c in self.couplings if c.role in ("out", "depthwise"))

    @property
    def consumers(self) -> tuple[str, ...]:
        """Dense convs/linears that read this group's channels (their input channels shrink)."""
        return tuple(c.module for c in self.couplings if c.role == "in")


def _line(exc: Exception) -> str:
    """An exception's message as one line (its first), or ``no message``."""
    return (str(exc).splitlines() or ["no message"])[0]


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, _ConvNd) and m.groups == m.out_channels and m.out_channels > 1


def _width(m: nn.Module, role: str) -> int:
    """How many channels ``m`` has on the side ``role`` couples."""
    if isinstance(m, _BatchNorm):
        return m.num_features
    if role == "in":
        return m.in_channels if isinstance(m, _ConvNd) else m.in_features
    return m.out_channels if isinstance(m, _ConvNd) else m.out_features


def check_plain(model: nn.Module) -> None:
    """Structured pruning rewrites weight tensors, so masks and codebooks must be baked first, and
    a layer must read all of its input (a gathered layer's columns are not its producer's channels)."""
    from squeezetune.compression.structured.gather import GatheredLinear
    from squeezetune.compression.structured.strided import StridedConv2d

    for name, m in model.named_modules():
        if isinstance(m, GatheredLinear):
            raise SqueezeError(
                f"layer {name!r} reads {m.in_features} of {m.dense_features} input features (the neurons stage made it): "
                "expected the stages that trace channels (structured, merge, decompose, strided) before neurons"
            )
        if isinstance(m, StridedConv2d):
            raise SqueezeError(f"layer {name!r} is a strided convolution (the strided stage made it): expected the stages that trace channels (structured, merge, neurons) before strided")
        if getattr(m, "parametrizations", None):
            raise SqueezeError(
                f"layer {name!r} carries a parametrization ({', '.join(m.parametrizations.keys())}): expected plain tensors; bake pruning masks / shared weights before structured pruning"
            )


class StructureGraph:
    """The channel groups of ``model`` (modified in place by :meth:`prune`).

    >>> from squeezetune.tasks.cnn import ResNet20
    >>> g = StructureGraph(ResNet20())
    >>> g.group("layer1.0.conv1").consumers
    ('layer1.0.conv2',)
    """

    def __init__(self, model: nn.Module, example: Example = DEFAULT_INPUT_SHAPE) -> None:
        import torch_pruning as tp

        check_plain(model)
        self.model = model
        self.example_input = as_example(example, "cpu")
        self.names = {m: n for n, m in model.named_modules()}
        self.order = {n: i for i, n in enumerate(self.names.values())}
        self._tp = tp
        was_training = model.training
        try:
            with torch.enable_grad():
                self.dg = tp.DependencyGraph().build_dependency(model, self.example(), verbose=False)
        except Exception as exc:  # noqa: BLE001 - any tracing failure is reported as one line
            raise SqueezeError(f"cannot trace the model for structural pruning ({type(exc).__name__}: {_line(exc)}): expected a model DepGraph can follow") from None
        finally:
            model.train(was_training)
        self._groups: dict[str, ChannelGroup] | None = None
        self._unprunable: dict[str, str] = {}

    def example(self) -> torch.Tensor:
        p = next(self.model.parameters(), None)
        return self.example_input.to(p.device if p is not None else "cpu")

    # -- groups -------------------------------------------------------------------------------

    def _couplings(self, group) -> tuple[tuple[Coupling, ...], str | None]:
        dg = self.dg
        out: list[Coupling] = []
        problem = None
        for item in group:
            dep, idxs = item.dep, item.idxs
            m = dep.target.module
            if dep.target.type == self._tp.ops.OPTYPE.OUTPUT:
                problem = MODEL_OUTPUTS
                continue
            if m not in self.names:
                continue
            name = self.names[m]
            root = tuple(int(r) for r in (item.root_idxs if item.root_idxs is not None else idxs))
            idxs = tuple(int(i) for i in idxs)
            if isinstance(m, _BatchNorm):
                role = "norm"
            elif _is_depthwise(m):
                role = "depthwise"
            elif isinstance(m, (_ConvNd, nn.Linear)):
                if isinstance(m, _ConvNd) and m.transposed:
                    problem = f"{name!r} is a transposed convolution ({type(m).__name__}), which squeezetune cannot shrink"
                elif isinstance(m, _ConvNd) and m.groups > 1:
                    problem = f"{name!r} is a grouped convolution (groups={m.groups}), which is not supported"
                role = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
                if role == "out" and not dep.target.outputs:
                    problem = MODEL_OUTPUTS
            else:
                problem = f"{name!r} ({type(m).__name__}) has channels that squeezetune cannot shrink"
                continue
            width = _width(m, role)
            if any(not 0 <= i < width for i in idxs):
                problem = f"DepGraph traced channel indices up to {max(idxs)} for {name!r}, which has {width} {'input' if role == 'in' else 'output'} channels (a dependency it cannot follow)"
            out.append(Coupling(name, role, idxs, root))
        return tuple(out), problem

    def _scan(self) -> None:
        groups: dict[str, ChannelGroup] = {}
        self._unprunable = {}
        for g in self._all_groups():
            couplings, problem = self._couplings(g)
            members = sorted({c.module for c in couplings if c.role in ("out", "depthwise")}, key=self.order.__getitem__)
            if not members:
                continue
            first = self.get(members[0])
            channels = first.out_channels if isinstance(first, _ConvNd) else first.out_features
            # re-express every index in the first member's coordinates
            if problem is None and self.names[g[0].dep.target.module] != members[0]:
                try:
                    couplings, problem = self._couplings(self._full_group(members[0], channels))
                except Exception as exc:  # noqa: BLE001 - DepGraph failed on the re-rooted group
                    problem = f"DepGraph cannot group its channels ({type(exc).__name__}: {_line(exc)})"
            if problem is not None:
                for m in members:
                    self._unprunable[m] = problem
                continue
            groups[members[0]] = ChannelGroup(members[0], channels, couplings)
        self._groups = dict(sorted(groups.items(), key=lambda kv: self.order[kv[0]]))
        for g in self._groups.values():  # a failed root that another root's group took in is shrinkable
            for m in g.members:
                self._unprunable.pop(m, None)

    def _all_groups(self):
        """Torch-Pruning's ``get_all_groups`` (one group per conv/linear root, each module in at most
        one group as an output), except that a root whose group DepGraph fails to build is recorded
        in ``_unprunable`` with the reason, and the other groups are still found."""
        dg, visited = self.dg, set()
        for m in list(dg.module2node):
            if m in dg.IGNORED_LAYERS_IN_TRACING or not isinstance(m, (_ConvNd, nn.Linear)) or m in visited:
                continue
            pruner = dg.get_pruner_of_module(m)
            channels = pruner.get_out_channels(m) if pruner is not None else None
            if channels is None:
                continue
            try:
                group = dg.get_pruning_group(m, pruner.prune_out_channels, list(range(channels)))
            except Exception as exc:  # noqa: BLE001 - DepGraph's own bookkeeping failed on this layer
                if m in self.names:
                    self._unprunable[self.names[m]] = f"DepGraph cannot group its channels ({type(exc).__name__}: {_line(exc)})"
                continue
            visited.update(dep.target.module for dep, _ in group if dg.is_out_channel_pruning_fn(dep.handler))
            yield group

    def _full_group(self, name: str, channels: int):
        m = self.get(name)
        return self.dg.get_pruning_group(m, self.dg.get_pruner_of_module(m).prune_out_channels, list(range(channels)))

    @property
    def groups(self) -> dict[str, ChannelGroup]:
        """Prunable groups by name, in module order."""
        if self._groups is None:
            self._scan()
        assert self._groups is not None
        return self._groups

    @property
    def unprunable(self) -> dict[str, str]:
        """Convs/linears that are in no group, each with the reason (e.g. a dependency DepGraph cannot follow)."""
        self.groups  # noqa: B018 - the scan fills the reasons
        return dict(self._unprunable)

    def no_groups(self, where: str) -> SqueezeError:
        """The one-line error for a model with no shrinkable group, naming each layer's reason."""
        why = "; ".join(f"{name}: {problem}" for name, problem in self.unprunable.items())
        return SqueezeError(f"{where}: this model has no channel group DepGraph can shrink{f' ({why})' if why else ''}: expected convolutions or linear layers that feed other layers")

    def get(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def resolve(self, layer: str) -> str:
        """The name of the group ``layer`` belongs to; :class:`SqueezeError` if there is none."""
        groups = self.groups
        if layer in groups:
            return layer
        for g in groups.values():
            if layer in g.members:
                return g.name
        if layer in self._unprunable:
            raise SqueezeError(f"layer {layer!r} cannot be pruned structurally: {self._unprunable[layer]}")
        if layer not in self.order:
            raise SqueezeError(f"no layer {layer!r} in the model: expected one of {list(groups)}")
        raise SqueezeError(f"layer {layer!r} cannot be pruned structurally: expected a Conv2d or Linear whose filters DepGraph can remove, one of {list(groups)}")

    def group(self, layer: str) -> ChannelGroup:
        return self.groups[self.resolve(layer)]

    def norm_after(self, name: str) -> str | None:
        """The BatchNorm that directly and solely follows layer ``name``, if any."""
        node = self.dg.module2node.get(self.get(name))
        if node is None or len(node.outputs) != 1:
            return None
        nxt = node.outputs[0]
        if isinstance(nxt.module, _BatchNorm) and nxt.module in self.names and len(nxt.inputs) == 1 and nxt.module.track_running_stats:
            return self.names[nxt.module]
        return None

    # -- pruning ------------------------------------------------------------------------------

    def prune(self, layer: str, remove: Sequence[int], *, check: bool = True) -> tuple[Coupling, ...]:
        """Physically remove root channels ``remove`` of ``layer``'s group; returns what went.

        Each returned :class:`Coupling` lists the removed indices of one module in that module's
        coordinates before the removal. ``check`` runs the model once afterwards so that a
        dependency DepGraph missed is reported naming this layer (see :meth:`runs`).
        """
        group = self.group(layer)
        remove = sorted({int(i) for i in remove})
        if any(not 0 <= i < group.channels for i in remove):
            raise SqueezeError(f"channel indices {remove} for layer {group.name!r} must be in [0, {group.channels})")
        if len(remove) >= group.channels:
            raise SqueezeError(f"removing {len(remove)} of {group.channels} channels of layer {group.name!r} leaves none: expected to keep at least 1")
        if not remove:
            return ()
        m = self.get(group.name)
        tp_group = self.dg.get_pruning_group(m, self.dg.get_pruner_of_module(m).prune_out_channels, remove)
        removed, _ = self._couplings(tp_group)
        tp_group.prune()
        self._groups = None
        if check:
            failure = self.runs()
            if failure is not None:
                raise SqueezeError(f"removing channels of layer {group.name!r} broke the model's forward pass ({failure}): DepGraph could not follow a dependency of this layer")
        return removed

    def runs(self) -> str | None:
        """None if the model still runs on the example input, else the error as one line."""
        was_training = self.model.training
        try:
            self.model.eval()
            with torch.no_grad():
                self.model(self.example())
        except Exception as exc:  # noqa: BLE001
            return f"{type(exc).__name__}: {exc}"
        finally:
            self.model.train(was_training)
        return None
