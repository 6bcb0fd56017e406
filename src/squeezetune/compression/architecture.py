"""A compressed model's architecture as plain data, rebuilt by the decoder from that data alone.

Stages that change a model's structure -- channel pruning resizes layers, a decomposition replaces
a layer by a few smaller ones (:class:`Factors`), strided kernel sparsity replaces a convolution
by one with fewer kernel taps -- leave a model that the task's factory no longer builds. The
container then stores :func:`architecture_spec`: for every layer of the task's model whose
replacement differs, the replacement described as JSON (module type and constructor arguments,
nested)::

    {"format": "squeezetune.modules/1",
     "modules": {"fc1": {"type": "Factors", "modules": [
         {"type": "Linear", "in_features": 784, "out_features": 32, "bias": false},
         {"type": "Linear", "in_features": 32, "out_features": 300, "bias": true}]}}}

:func:`apply_architecture` rebuilds it on the task's model. Nothing is unpickled and no class is
looked up by name: only the types of :data:`MODULE_TYPES` are built, every integer is range
checked, and a replacement may not hold more parameters and buffers than the layer it replaces
(:func:`cost`), so a hostile file cannot make the decoder allocate more than the dense model.

>>> from torch import nn
>>> dense = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2))
>>> small = nn.Sequential(Factors(nn.Linear(8, 2, bias=False), nn.Linear(2, 6)), nn.ReLU(), nn.Linear(6, 2))
>>> spec = architecture_spec(small, dense)
>>> [m["type"] for m in spec["modules"]["0"]["modules"]]
['Linear', 'Linear']
>>> rebuilt = apply_architecture(nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 2)), spec)
>>> architecture_spec(rebuilt, dense) == spec
True
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import parametrize

from squeezetune.errors import SqueezeError

__all__ = ["ARCH_FORMAT", "Factors", "MODULE_TYPES", "apply_architecture", "architecture_spec", "build", "cost", "describe", "register_module_type", "replace_module"]

ARCH_FORMAT = "squeezetune.modules/1"

MAX_DEPTH = 3
"""How deeply a replacement may nest :class:`Factors`."""
MAX_FACTORS = 8
"""How many modules one :class:`Factors` may hold."""
MAX_GEOMETRY = 64
"""The largest kernel extent, stride, padding, dilation or pooled size a spec may give."""
MAX_SIZE = 1 << 24
"""The largest channel or feature count a spec may give (the parameter bound is usually tighter)."""


class Factors(nn.Sequential):
    """A layer replaced by a sequence of smaller ones (a decomposition); runs them in order.

    Settings that name the replaced layer (``fc1``) apply to each of its factors (``fc1.0``,
    ``fc1.1``): see :func:`squeezetune.compression.tensors.compressible`.
    """


# -- module types ------------------------------------------------------------------------------
# Each type: the fields its description holds (name -> kind), how to build it from them, and
# what it allocates (parameters and buffers). A kind is "size" (a channel or feature count),
# "dim" (a tensor axis), "bool", "momentum", ("ints", n, lo, hi) (a list of n integers; n None:
# one to four), "padding" (such a list, or "same" / "valid"), "padding_mode", "taps" (kernel
# positions) or "modules" (nested descriptions).

_GEOM = {1: ("ints", 1, 1, MAX_GEOMETRY), 2: ("ints", 2, 1, MAX_GEOMETRY)}
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class _Type:
    def __init__(self, cls, fields, build, cost, read, fits=None) -> None:
        self.cls, self.fields, self.build, self.cost, self.read, self.fits = cls, dict(fields), build, cost, read, fits


MODULE_TYPES: dict[str, _Type] = {}
"""The module types a spec may name, by type name."""

_TYPE_MODULES = ("squeezetune.compression.structured.strided", "squeezetune.compression.structured.gather")
"""The package's modules that register types of their own: imported before any spec is read or written."""


def _load_types() -> None:
    import importlib

    for module in _TYPE_MODULES:
        importlib.import_module(module)


def register_module_type(
    cls: type[nn.Module],
    fields: Mapping[str, Any],
    build: Callable[[dict], nn.Module],
    cost: Callable[[dict], int],
    read: Callable[[nn.Module], dict],
    fits: Callable[[dict, nn.Module], str | None] | None = None,
) -> None:
    """Allow ``cls`` in architecture specs (the package's own small modules register themselves).

    ``fields`` maps each constructor argument to its kind (see above), ``build`` makes the module
    from checked arguments, ``cost`` counts what it allocates from them, ``read`` describes one;
    ``fits`` (optional) says what is wrong with a description as the replacement of a given layer
    of the task's model, or ``None`` when it fits.
    """
    MODULE_TYPES[cls.__name__] = _Type(cls, fields, build, cost, read, fits)


def conv_fields(dims: int) -> dict[str, Any]:
    """The description fields of a ``dims``-D convolution's geometry."""
    return {"in_channels": "size", "out_channels": "size", "kernel_size": _GEOM[dims], "stride": _GEOM[dims], "padding": ("padding", dims), "dilation": _GEOM[dims]}


def conv_geometry(m: nn.Module) -> dict[str, Any]:
    """A convolution's geometry as :func:`conv_fields` describes it."""
    padding = m.padding if isinstance(m.padding, str) else list(m.padding)
    return {"in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": list(m.kernel_size), "stride": list(m.stride), "padding": padding, "dilation": list(m.dilation)}


def _conv_cost(d: dict) -> int:
    return d["out_channels"] * (d["in_channels"] // d["groups"]) * math.prod(d["kernel_size"]) + d["out_channels"] * d["bias"]


for _cls, _dims in ((nn.Conv1d, 1), (nn.Conv2d, 2)):
    register_module_type(
        _cls,
        {**conv_fields(_dims), "groups": "size", "bias": "bool", "padding_mode": "padding_mode"},
        lambda d, c=_cls: c(**d),
        _conv_cost,
        lambda m: {**conv_geometry(m), "groups": m.groups, "bias": m.bias is not None, "padding_mode": m.padding_mode},
    )
register_module_type(
    nn.Linear,
    {"in_features": "size", "out_features": "size", "bias": "bool"},
    lambda d: nn.Linear(**d),
    lambda d: d["out_features"] * (d["in_features"] + d["bias"]),
    lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
)
for _cls in (nn.BatchNorm1d, nn.BatchNorm2d):
    register_module_type(
        _cls,
        {"num_features": "size", "eps": "momentum", "momentum": "momentum", "affine": "bool", "track_running_stats": "bool"},
        lambda d, c=_cls: c(**d),
        lambda d: d["num_features"] * (2 * d["affine"] + 2 * d["track_running_stats"]),
        lambda m: {"num_features": m.num_features, "eps": m.eps, "momentum": m.momentum, "affine": m.affine, "track_running_stats": m.track_running_stats},
    )
register_module_type(nn.Identity, {}, lambda d: nn.Identity(), lambda d: 0, lambda m: {})
register_module_type(nn.Flatten, {"start_dim": "dim", "end_dim": "dim"}, lambda d: nn.Flatten(**d), lambda d: 0, lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim})
register_module_type(
    nn.Unflatten,
    {"dim": "dim", "unflattened_size": ("ints", None, 1, MAX_SIZE)},
    lambda d: nn.Unflatten(d["dim"], tuple(d["unflattened_size"])),
    lambda d: 0,
    lambda m: {"dim": m.dim, "unflattened_size": list(m.unflattened_size)},
)
for _cls, _dims in ((nn.AdaptiveAvgPool1d, 1), (nn.AdaptiveAvgPool2d, 2)):
    register_module_type(
        _cls,
        {"output_size": _GEOM[_dims]},
        lambda d, c=_cls: c(tuple(d["output_size"]) if len(d["output_size"]) > 1 else d["output_size"][0]),
        lambda d: 0,
        lambda m, n=_dims: {"output_size": list(m.output_size) if isinstance(m.output_size, (tuple, list)) else [m.output_size] * n},
    )
register_module_type(Factors, {"modules": "modules"}, lambda d: Factors(*d["modules"]), lambda d: sum(d["_costs"]), lambda m: {"modules": [describe(c) for c in m]})


# -- describe / build --------------------------------------------------------------------------


def describe(module: nn.Module) -> dict[str, Any]:
    """``module`` as plain data: ``{"type": ..., <constructor arguments>}`` (see the module doc)."""
    _load_types()
    cls = parametrize.type_before_parametrizations(module)
    kind = MODULE_TYPES.get(cls.__name__)
    if kind is None or kind.cls is not cls:
        raise SqueezeError(f"module type {cls.__name__} cannot be stored in a container: expected one of {sorted(MODULE_TYPES)}")
    return {"type": cls.__name__, **kind.read(module)}


def _int(value: Any, lo: int, hi: int, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SqueezeError(f"container spec gives {where}={value!r}: expected an integer in [{lo}, {hi}]")
    return value


def _read_field(kind: Any, value: Any, where: str, depth: int) -> Any:
    if kind == "size":
        return _int(value, 1, MAX_SIZE, where)
    if kind == "dim":
        return _int(value, -8, 8, where)
    if kind == "bool":
        if not isinstance(value, bool):
            raise SqueezeError(f"container spec gives {where}={value!r}: expected true or false")
        return value
    if kind == "momentum":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
            raise SqueezeError(f"container spec gives {where}={value!r}: expected a number in [0, 1]")
        return float(value)
    if kind == "padding_mode":
        if value not in _PADDING_MODES:
            raise SqueezeError(f"container spec gives {where}={value!r}: expected one of {list(_PADDING_MODES)}")
        return value
    if kind == "taps":
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_GEOMETRY:
            raise SqueezeError(f"container spec gives {where}={value!r}: expected a list of 1 to {MAX_GEOMETRY} kernel positions")
        return [_int(v, 0, MAX_GEOMETRY * MAX_GEOMETRY - 1, f"{where}[{i}]") for i, v in enumerate(value)]
    if kind == "modules":
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_FACTORS:
            raise SqueezeError(f"container spec gives {where} as {type(value).__name__}: expected a list of 1 to {MAX_FACTORS} modules")
        if depth >= MAX_DEPTH:
            raise SqueezeError(f"container spec nests modules deeper than {MAX_DEPTH} levels at {where}")
        return [_checked(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if kind[0] == "padding":
        if value in ("same", "valid"):
            return value
        kind = ("ints", kind[1], 0, MAX_GEOMETRY)
    _, n, lo, hi = kind
    if not isinstance(value, list) or not (len(value) == n if n else 1 <= len(value) <= 4):
        raise SqueezeError(f"container spec gives {where}={value!r}: expected a list of {n or 'one to four'} integers")
    return [_int(v, lo, hi, f"{where}[{i}]") for i, v in enumerate(value)]


def _checked(desc: Any, where: str, depth: int = 0) -> dict[str, Any]:
    """``desc`` with every field read and range checked; nested modules become checked dicts."""
    if not isinstance(desc, Mapping) or not isinstance(desc.get("type"), str):
        raise SqueezeError(f"container spec entry {where} is {type(desc).__name__}: expected a mapping with a module 'type'")
    kind = MODULE_TYPES.get(desc["type"])
    if kind is None:
        raise SqueezeError(f"container spec entry {where} has module type {desc['type']!r}: expected one of {sorted(MODULE_TYPES)}")
    keys = set(desc) - {"type"}
    if keys != set(kind.fields):
        wrong = sorted(keys ^ set(kind.fields))
        raise SqueezeError(f"container spec entry {where} ({desc['type']}) has or lacks field {wrong[0]!r}: expected exactly {sorted(kind.fields)}")
    out: dict[str, Any] = {"type": desc["type"]}
    for name, field_kind in kind.fields.items():
        out[name] = _read_field(field_kind, desc[name], f"{where}.{name}", depth)
    return out


def cost(desc: Mapping[str, Any]) -> int:
    """Parameters and buffers that building the (checked) description ``desc`` allocates."""
    kind = MODULE_TYPES[desc["type"]]
    args = dict(desc)
    if "modules" in args:
        args["_costs"] = [cost(m) for m in args["modules"]]
    return kind.cost(args)


def _module_cost(module: nn.Module) -> int:
    return sum(t.numel() for t in module.state_dict().values())


def build(desc: Mapping[str, Any], where: str = "module") -> nn.Module:
    """The module a description holds, built from the allow-list only (checked first)."""
    return _build(_checked(desc, where), where)


def _build(desc: dict[str, Any], where: str) -> nn.Module:
    kind = MODULE_TYPES[desc["type"]]
    args = {k: v for k, v in desc.items() if k != "type"}
    if "modules" in args:
        args["modules"] = [_build(m, f"{where}.modules[{i}]") for i, m in enumerate(args["modules"])]
    try:
        return kind.build(args)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SqueezeError(f"container spec entry {where} ({desc['type']}) cannot be built: {exc}") from None


def replace_module(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` in place of ``model``'s submodule ``name``."""
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, module)


# -- specs ---------------------------------------------------------------------------------------


def _leaves(model: nn.Module) -> dict[str, nn.Module]:
    """The layers a spec may replace: every conv, linear and BatchNorm, by name."""
    kinds = (nn.Conv1d, nn.Conv2d, nn.Linear, _BatchNorm)
    return {name: m for name, m in model.named_modules() if name and "parametrizations" not in name.split(".") and isinstance(m, kinds)}


_GEOMETRY = ("in_features", "out_features", "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "num_features")


def _same_layer(now: nn.Module, dense: nn.Module) -> bool:
    """Whether ``now`` is still ``dense``'s kind of layer with its sizes and tensor shapes."""
    if parametrize.type_before_parametrizations(now) is not parametrize.type_before_parametrizations(dense):
        return False
    if any(getattr(now, k, None) != getattr(dense, k, None) for k in _GEOMETRY):
        return False
    shapes = {k: tuple(v.shape) for k, v in dense.named_parameters(recurse=False)}
    return all(isinstance(getattr(now, k, None), torch.Tensor) and tuple(getattr(now, k).shape) == shape for k, shape in shapes.items())


def architecture_spec(model: nn.Module, dense: nn.Module) -> dict[str, Any] | None:
    """The layers of ``model`` that differ from ``dense`` (the task's model), described; ``None`` if none do."""
    modules = {}
    for name, m in _leaves(dense).items():
        try:
            now = model.get_submodule(name)
        except AttributeError:
            raise SqueezeError(f"layer {name!r} of the task's model is gone from the compressed model: expected every layer to stay or be replaced") from None
        kind = MODULE_TYPES.get(parametrize.type_before_parametrizations(m).__name__)
        if (kind is None or kind.cls is not parametrize.type_before_parametrizations(m)) and _same_layer(now, m):
            continue  # a type the allow-list does not name (attention's out_proj), unchanged
        described = describe(now)
        if described != describe(m):
            modules[name] = described
    return {"format": ARCH_FORMAT, "modules": modules} if modules else None


def apply_architecture(model: nn.Module, spec: Any) -> nn.Module:
    """Replace ``model``'s layers (the task's dense model) as ``spec`` says; returns the model.

    Each entry must name a conv, linear or BatchNorm of ``model``, describe only allowed module
    types within range, and allocate no more than the layer it replaces. New layers are freshly
    initialised: load the weights next.
    """
    _load_types()
    if not isinstance(spec, Mapping) or spec.get("format") != ARCH_FORMAT or not isinstance(spec.get("modules"), Mapping):
        raise SqueezeError(f"container spec is malformed: expected format {ARCH_FORMAT!r} with a 'modules' table")
    leaves = _leaves(model)
    replacements = {}
    for name, desc in spec["modules"].items():
        dense = leaves.get(name) if isinstance(name, str) else None
        if dense is None:
            raise SqueezeError(f"container spec names layer {name!r}, which the task's model does not have as a conv, linear or BatchNorm")
        checked = _checked(desc, repr(name))
        wrong = MODULE_TYPES[checked["type"]].fits
        wrong = wrong(checked, dense) if wrong is not None else None
        if wrong:
            raise SqueezeError(f"container spec gives layer {name!r} {wrong}")
        allowed = _module_cost(dense)
        if cost(checked) > allowed:
            raise SqueezeError(f"container spec gives layer {name!r} a {checked['type']} of {cost(checked):,} parameters and buffers: expected at most {allowed:,}, the task's layer")
        replacements[name] = checked
    p = next(model.parameters(), None)
    for name, checked in replacements.items():
        new = _build(checked, repr(name))
        replace_module(model, name, new.to(device=p.device, dtype=p.dtype) if p is not None else new)
    return model
