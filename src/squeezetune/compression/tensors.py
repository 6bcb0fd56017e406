"""Which tensors of a model the unstructured stages (prune, share, code) act on: any model's.

Every floating-point parameter with two or more dimensions is *compressible*: the weight of a
``Linear``, ``Conv1d/2d/3d``, ``ConvTranspose*`` or ``Embedding``, the ``in_proj_weight`` of a
``MultiheadAttention`` (and its ``out_proj.weight``), every ``weight_ih_l*``/``weight_hh_l*`` of an
``LSTM``/``GRU``/``RNN``, and any other module's weight matrix, through the same generic path.
One-dimensional parameters (biases, norm scales and shifts) and buffers are kept raw, as are
parameters tied to another module (one tensor under two names).

A tensor is named as a recipe names it: the module's name for its ``weight`` (``fc1``,
``layer1.0.conv1``), else ``<module>.<parameter>`` (``encoder.self_attn.in_proj_weight``,
``rnn.weight_hh_l0``). A tensor of a layer that a decomposition replaced by factors
(:class:`~squeezetune.compression.architecture.Factors`) also answers to the replaced layer's
name (:attr:`Target.replaced`): a setting for ``fc1`` covers ``fc1.0`` and ``fc1.1``, so a recipe or
search space written for the dense model still applies. Pruning masks and shared codebooks live on the tensor as
``torch.nn.utils.parametrize`` parametrizations, so any of them trains like a plain weight.

>>> from torch import nn
>>> model = nn.Sequential(nn.Embedding(50, 8), nn.LSTM(8, 16), nn.Linear(16, 4))
>>> list(compressible(model))
['0', '1.weight_ih_l0', '1.weight_hh_l0', '2']
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

__all__ = ["Target", "compressible", "copy_model", "kept_raw", "layer_names", "setting_key", "target_name"]


@dataclass(frozen=True)
class Target:
    """One compressible tensor: where it lives and what kind of layer holds it."""

    name: str
    """Its recipe name: the module's name for ``weight``, else ``module.attr``."""
    module_name: str
    attr: str
    module: nn.Module
    replaced: str = ""
    """The name of the layer this tensor is a factor of (a decomposition replaced it), else empty."""

    @property
    def key(self) -> str:
        """Its state-dict key."""
        return f"{self.module_name}.{self.attr}" if self.module_name else self.attr

    @property
    def kind(self) -> str:
        """The holding module's class name (``Linear``, ``Conv1d``, ``MultiheadAttention``, ...)."""
        return parametrize.type_before_parametrizations(self.module).__name__

    @property
    def tensor(self) -> torch.Tensor:
        """The tensor's current value (masked and shared where it is)."""
        return getattr(self.module, self.attr)

    @property
    def numel(self) -> int:
        return self.tensor.numel()

    @property
    def is_conv(self) -> bool:
        return self.tensor.dim() >= 3


def target_name(module_name: str, attr: str) -> str:
    return module_name if attr == "weight" and module_name else (f"{module_name}.{attr}" if module_name else attr)


def _in_parametrization(name: str) -> bool:
    return "parametrizations" in name.split(".")


def compressible(model: nn.Module) -> dict[str, Target]:
    """Every compressible tensor of ``model`` by recipe name, in module order (see the module doc)."""
    from squeezetune.compression.architecture import Factors

    out: dict[str, Target] = {}
    tied = _tied(model)
    factors_of = {f"{name}.{child}": name for name, m in model.named_modules() if isinstance(m, Factors) for child, _ in m.named_children()}
    for module_name, module in model.named_modules():
        if _in_parametrization(module_name):
            continue
        attrs = []
        if parametrize.is_parametrized(module):
            attrs += list(module.parametrizations.keys())
        for attr, p in module.named_parameters(recurse=False):
            if p.is_floating_point() and p.dim() >= 2 and id(p) not in tied:
                attrs.append(attr)
        # A stable order whether or not a tensor is parametrized yet: recurrent weights in their
        # layer order, any other module's tensors by name.
        order = {a: i for i, a in enumerate(getattr(module, "_flat_weights_names", ()))}
        for attr in sorted(dict.fromkeys(attrs), key=lambda a: (order.get(a, len(order)), a)):
            name = target_name(module_name, attr)
            out[name] = Target(name, module_name, attr, module, factors_of.get(module_name, "") if attr == "weight" else "")
    return out


def layer_names(targets: dict[str, Target]) -> list[str]:
    """The names a setting may use for ``targets``: each tensor's own, and each replaced layer's."""
    return list(dict.fromkeys([n for t in targets.values() for n in (t.name, t.replaced) if n]))


def setting_key(named, name: str, replaced: str = "") -> str | None:
    """The key of ``named`` (settings by layer name) that covers tensor ``name``: its own name, else
    ``replaced``, the layer it is a factor of (:attr:`Target.replaced`)."""
    for key in (name, replaced):
        if key and key in named:
            return key
    return None


def _tied(model: nn.Module) -> set[int]:
    """Ids of parameters reachable under more than one name."""
    seen: dict[int, int] = {}
    for _, module in model.named_modules():
        for _, p in module.named_parameters(recurse=False):
            seen[id(p)] = seen.get(id(p), 0) + 1
    return {i for i, n in seen.items() if n > 1}


def kept_raw(model: nn.Module) -> dict[str, str]:
    """Every parameter that no unstructured stage can touch, by state-dict key, with the reason."""
    targets = {t.key for t in compressible(model).values()}
    tied = _tied(model)
    out: dict[str, str] = {}
    for module_name, module in model.named_modules():
        if _in_parametrization(module_name):
            continue
        for attr, p in module.named_parameters(recurse=False):
            key = f"{module_name}.{attr}" if module_name else attr
            if key in targets:
                continue
            if id(p) in tied:
                out[key] = "tied to another module's parameter"
            elif not p.is_floating_point():
                out[key] = f"{p.dtype} is not floating point"
            else:
                out[key] = "1-D (bias or norm): kept raw" if p.dim() <= 1 else "kept raw"
    return out


def copy_model(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose masks and codebooks are its own.

    ``copy.deepcopy`` alone is not enough for parametrized modules: torch gives a parametrized
    module a class of its own, which the copy shares, and removing a parametrization from the
    copy (pruning it again, sharing it) would take the property off that class -- off the original
    too. Here each parametrized tensor of the copy is registered again, on a class of its own.
    A recurrent layer's cached weights (``_flat_weights``), which after a training pass are computed
    tensors that ``deepcopy`` refuses, are copied detached (the layer recomputes them on its next pass).
    """
    import copy

    memo = {id(w): w.detach().clone() for m in model.modules() if isinstance(m, nn.RNNBase) for w in m._flat_weights if w is not None and w.grad_fn is not None}
    work = copy.deepcopy(model, memo)
    for module in work.modules():
        if not parametrize.is_parametrized(module):
            continue
        plain_class = parametrize.type_before_parametrizations(module)
        chains = {attr: (chain.original, list(chain)) for attr, chain in module.parametrizations.items()}
        del module._modules["parametrizations"]
        module.__class__ = plain_class
        for attr, (original, steps) in chains.items():
            module.register_parameter(attr, original)
            for step in steps:
                parametrize.register_parametrization(module, attr, step, unsafe=True)
    return work
