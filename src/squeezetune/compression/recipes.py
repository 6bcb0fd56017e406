"""Recipes: what the compression pipeline does, as data that round-trips through JSON and YAML.

A recipe is a YAML file or a built-in name. Every stage is optional::

    name: my-recipe
    prune:                        # magnitude pruning
      granularity: weight         # weight | vector | kernel | filter
      default: {keep_fraction: 0.1}
      layers:
        fc1: {keep: 18816}        # weights to keep, or keep_fraction, or quality (x std)
    finetune: {epochs: 10, lr: 0.01, distill: true}
    share:                        # per-layer k-means weight sharing
      init: linear                # forgy | density | linear
      default: {bits: 5}          # 2**bits clusters, or clusters: k
      layers: {conv1: {bits: 8}}
    finetune_centroids: {epochs: 4, lr: 0.001}
    encode: {index_bits: 5, coder: huffman, float_bits: 16}
    structured:                   # channel pruning first; the model really shrinks
      method: lasso               # lasso (He et al. 2017) | l1 (filter norms, Li et al. 2017)
      macs_target: 0.5            # keep this fraction of dense MACs ...
      allocation: uniform         # ... spread uniform-ly or by per-layer sensitivity
      round_to: 8                 # planned counts are multiples of this (fast kernels work in blocks of 8)
      layers: {layer1.0.conv1: {keep: 8}, layer2.0.conv1: {lambda: 0.3}}   # or by hand
      finetune: {epochs: 5, lr: 0.01}
    # coder: huffman | ans | raw | auto (smallest of the three per stream); index_bits: 1-16, or auto (per layer,
    # the width whose position stream codes smallest); float_bits: 32 | 16 for codebooks,
    # kept values of unshared layers, biases and other raw tensors; positions: auto (per layer, the smallest
    # of relative indices, row run lengths and an adaptive bitmask) | relative | runs | bitmask

Layers named in neither ``layers`` nor covered by ``default`` are left alone by that stage.

Built-in recipes (``builtin_recipe(name, model)``):

* ``deep-compression``: the paper's per-layer recipe (Han et al. 2016, Table 1/4). LeNet-300-100
  keeps 8%, 9%, 26% of fc1-fc3 with 6-bit weights; LeNet-5 keeps 66%, 12%, 8%, 19% of conv1,
  conv2, fc1, fc2 with 8-bit conv and 5-bit fc weights; both with 5-bit index diffs. Any other
  model gets the generic rule: convolutions keep 50% with 8-bit weights, fully connected layers
  keep 10% with 5-bit weights, the last layer keeps 25% with 5-bit weights, 5-bit index diffs.
  Fine-tuning distils from the dense teacher; each stream takes the smallest of its Huffman, ANS
  and fixed-width codes; codebooks and biases are stored as float16 (the decoded model is what is measured).
* ``filter-pruning`` and ``channel-pruning``: structured pruning alone, by L1 filter norms (Li et
  al. 2017) or by LASSO channel selection with least-squares reconstruction (He et al. 2017), to
  ``macs_target`` of the dense MACs (default 0.5) with per-layer counts spread ``uniform``-ly or by
  ``sensitivity``; then 3 epochs of fine-tuning distilled from the dense teacher. The shrunk model
  is stored with float32 weights, so the decoded model is exactly the fine-tuned one.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from enum import Enum
from pathlib import Path
from typing import Any, Mapping

from squeezetune.compression.finetune import FinetuneConfig
from squeezetune.compression.unstructured.kmeans import Init
from squeezetune.compression.unstructured.pruning import Granularity
from squeezetune.errors import SqueezeError


class CoderChoice(str, Enum):
    HUFFMAN = "huffman"
    ANS = "ans"
    RAW = "raw"
    AUTO = "auto"


class PositionChoice(str, Enum):
    """How kept positions are coded: one coding of :mod:`.coding.sparse` for every layer, or the smallest per layer."""

    AUTO = "auto"
    RELATIVE = "relative"
    RUNS = "runs"
    BITMASK = "bitmask"


def _check_keys(data: Mapping[str, Any], cls: type, where: str) -> None:
    if not isinstance(data, Mapping):
        raise SqueezeError(f"{where} is {type(data).__name__}: expected a mapping with keys {[f.name for f in fields(cls)]}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SqueezeError(f"unknown key {unknown[0]!r} in {where}: expected one of {sorted(known)}")


@dataclass(frozen=True)
class LayerPrune:
    """How much of one layer to keep: exactly one of a weight count, a fraction or a quality."""

    keep: int | None = None
    keep_fraction: float | None = None
    quality: float | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("keep", "keep_fraction", "quality") if getattr(self, k) is not None]
        if len(given) != 1:
            raise SqueezeError(f"a layer's prune setting needs exactly one of keep, keep_fraction, quality; got {given or 'none'}")
        if self.keep_fraction is not None and not 0 < self.keep_fraction <= 1:
            raise SqueezeError(f"keep_fraction={self.keep_fraction!r} must be in (0, 1]")

    def resolve(self, n: int) -> dict[str, Any]:
        """Arguments for :func:`~squeezetune.compression.unstructured.pruning.prune_layer` on a layer of ``n`` weights."""
        if self.keep_fraction is not None:
            return {"keep": max(1, round(self.keep_fraction * n))}
        return {"keep": self.keep} if self.keep is not None else {"quality": self.quality}


@dataclass(frozen=True)
class LayerShare:
    """The number of shared values of one layer: ``bits`` (2**bits clusters) or ``clusters``."""

    bits: int | None = None
    clusters: int | None = None

    def __post_init__(self) -> None:
        if (self.bits is None) == (self.clusters is None):
            raise SqueezeError(f"a layer's share setting needs exactly one of bits, clusters; got bits={self.bits!r} clusters={self.clusters!r}")
        if self.bits is not None and (not isinstance(self.bits, int) or not 1 <= self.bits <= 16):
            raise SqueezeError(f"bits={self.bits!r} must be an integer in [1, 16]")

    @property
    def k(self) -> int:
        return 2**self.bits if self.bits is not None else self.clusters


def _layer_map(raw: Any, cls: type, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SqueezeError(f"{where} is {type(raw).__name__}: expected a mapping of layer name to settings")
    out = {}
    for name, value in raw.items():
        _check_keys(value, cls, f"{where}.{name}")
        out[str(name)] = cls(**value)
    return out


@dataclass(frozen=True)
class PruneConfig:
    granularity: Granularity = Granularity.WEIGHT
    default: LayerPrune | None = None
    layers: dict[str, LayerPrune] = field(default_factory=dict)

    def for_layer(self, name: str) -> LayerPrune | None:
        return self.layers.get(name, self.default)


@dataclass(frozen=True)
class ShareConfig:
    init: Init = Init.LINEAR
    default: LayerShare | None = None
    layers: dict[str, LayerShare] = field(default_factory=dict)
    max_iter: int = 20

    def for_layer(self, name: str) -> LayerShare | None:
        return self.layers.get(name, self.default)


@dataclass(frozen=True)
class EncodeConfig:
    index_bits: int | str = 5
    """Width of a relative-index symbol, or ``"auto"``: per layer, the width whose stream codes smallest."""
    coder: CoderChoice = CoderChoice.AUTO
    float_bits: int = 32
    positions: PositionChoice = PositionChoice.AUTO

    def __post_init__(self) -> None:
        if self.index_bits != "auto" and (isinstance(self.index_bits, bool) or not isinstance(self.index_bits, int) or not 1 <= self.index_bits <= 16):
            raise SqueezeError(f"index_bits={self.index_bits!r} must be an integer in [1, 16] or 'auto'")
        if self.float_bits not in (16, 32):
            raise SqueezeError(f"float_bits={self.float_bits!r} must be 16 or 32")


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
        if self.keep is not None and (isinstance(self.keep, bool) or not isinstance(self.keep, int) or self.keep < 1):
            raise SqueezeError(f"keep={self.keep!r} channels must be an integer >= 1")
        if self.lam is not None and (isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not math.isfinite(self.lam) or self.lam < 0):
            raise SqueezeError(f"lambda={self.lam!r} must be a finite number >= 0")


@dataclass(frozen=True)
class StructuredConfig:
    """Channel pruning that physically shrinks the model, before the Deep Compression stages.

    ``method`` is ``l1`` (filter pruning by L1 norm, Li et al. 2017) or ``lasso`` (LASSO channel
    selection and least-squares reconstruction, He et al. 2017). Per-layer channel counts come
    from ``layers`` where given, else from ``macs_target`` (the fraction of dense MACs to keep)
    spread ``uniform``-ly or by per-layer ``sensitivity``, as multiples of ``round_to`` channels
    (default 8: oneDNN's CPU convolutions and GPU kernels work on blocks of 8 channels, so an
    odd count such as 45 runs no faster than 48 and often slower).
    """

    method: StructuredMethod = StructuredMethod.LASSO
    macs_target: float | None = None
    allocation: Allocation = Allocation.UNIFORM
    layers: dict[str, LayerChannels] = field(default_factory=dict)
    reconstruct: bool = True
    images: int = 256
    points: int = 10
    finetune: FinetuneConfig | None = None
    round_to: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.round_to, bool) or not isinstance(self.round_to, int) or self.round_to < 1:
            raise SqueezeError(f"structured.round_to={self.round_to!r} must be an integer >= 1")
        if self.macs_target is not None and not (isinstance(self.macs_target, (int, float)) and 0 < self.macs_target <= 1):
            raise SqueezeError(f"macs_target={self.macs_target!r} must be in (0, 1]: the fraction of dense MACs to keep")
        if self.macs_target is None and not self.layers:
            raise SqueezeError("structured needs macs_target or per-layer settings in layers: got neither")
        if self.method is StructuredMethod.L1 and any(c.lam is not None for c in self.layers.values()):
            raise SqueezeError("lambda is given for method='l1': expected method='lasso'")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StructuredConfig":
        _check_keys(data, cls, "structured")
        layers = {}
        for name, value in (data.get("layers") or {}).items():
            if not isinstance(value, Mapping):
                raise SqueezeError(f"structured.layers.{name} is {type(value).__name__}: expected a mapping with keep or lambda")
            unknown = sorted(set(value) - {"keep", "keep_channels", "lambda"})
            if unknown:
                raise SqueezeError(f"unknown key {unknown[0]!r} in structured.layers.{name}: expected keep (or keep_channels) or lambda")
            layers[str(name)] = LayerChannels(keep=value.get("keep", value.get("keep_channels")), lam=value.get("lambda"))
        finetune = data.get("finetune")
        if finetune is not None:
            _check_keys(finetune, FinetuneConfig, "structured.finetune")
        return cls(
            method=_enum(StructuredMethod, data.get("method", "lasso"), "structured.method"),
            macs_target=data.get("macs_target"),
            allocation=_enum(Allocation, data.get("allocation", "uniform"), "structured.allocation"),
            layers=layers,
            reconstruct=bool(data.get("reconstruct", True)),
            images=data.get("images", 256),
            points=data.get("points", 10),
            finetune=FinetuneConfig(**finetune) if finetune is not None else None,
            round_to=data.get("round_to", 8),
        )

    def to_dict(self) -> dict[str, Any]:
        out = {
            "method": self.method.value,
            "macs_target": self.macs_target,
            "allocation": self.allocation.value,
            "layers": {n: ({"keep": c.keep} if c.keep is not None else {"lambda": c.lam}) for n, c in self.layers.items()},
            "reconstruct": self.reconstruct,
            "images": self.images,
            "points": self.points,
            "finetune": self.finetune.to_dict() if self.finetune is not None else None,
            "round_to": self.round_to,
        }
        return _drop_none(out)


@dataclass(frozen=True)
class Recipe:
    name: str = "custom"
    prune: PruneConfig | None = None
    finetune: FinetuneConfig | None = None
    share: ShareConfig | None = None
    finetune_centroids: FinetuneConfig | None = None
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    structured: StructuredConfig | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Recipe":
        """Build and validate a recipe from plain data (parsed YAML or JSON)."""
        _check_keys(data, cls, "recipe")
        kw: dict[str, Any] = {"name": str(data.get("name", "custom"))}
        if data.get("prune") is not None:
            p = data["prune"]
            _check_keys(p, PruneConfig, "prune")
            kw["prune"] = PruneConfig(
                granularity=_enum(Granularity, p.get("granularity", "weight"), "prune.granularity"),
                default=_layer_map({"default": p["default"]}, LayerPrune, "prune")["default"] if p.get("default") else None,
                layers=_layer_map(p.get("layers"), LayerPrune, "prune.layers"),
            )
        if data.get("share") is not None:
            s = data["share"]
            _check_keys(s, ShareConfig, "share")
            kw["share"] = ShareConfig(
                init=_enum(Init, s.get("init", "linear"), "share.init"),
                default=_layer_map({"default": s["default"]}, LayerShare, "share")["default"] if s.get("default") else None,
                layers=_layer_map(s.get("layers"), LayerShare, "share.layers"),
                max_iter=int(s.get("max_iter", 20)),
            )
        for key in ("finetune", "finetune_centroids"):
            if data.get(key) is not None:
                _check_keys(data[key], FinetuneConfig, key)
                kw[key] = FinetuneConfig(**data[key])
        if data.get("encode") is not None:
            e = data["encode"]
            _check_keys(e, EncodeConfig, "encode")
            kw["encode"] = EncodeConfig(
                index_bits=e.get("index_bits", 5),
                coder=_enum(CoderChoice, e.get("coder", "auto"), "encode.coder"),
                float_bits=e.get("float_bits", 32),
                positions=_enum(PositionChoice, e.get("positions", "auto"), "encode.positions"),
            )
        if data.get("structured") is not None:
            kw["structured"] = StructuredConfig.from_dict(data["structured"])
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data; ``Recipe.from_dict(r.to_dict()) == r``."""
        plain = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "structured"}
        out = json.loads(json.dumps({k: (asdict(v) if hasattr(v, "__dataclass_fields__") else v) for k, v in plain.items()}, default=lambda v: v.value if isinstance(v, Enum) else str(v)), object_hook=_drop_none)
        if self.structured is not None:
            out["structured"] = self.structured.to_dict()
        return out

    def layer_names(self) -> set[str]:
        """Every layer the recipe names explicitly."""
        names: set[str] = set()
        for stage in (self.prune, self.share, self.structured):
            if stage is not None:
                names |= set(stage.layers)
        return names


def _drop_none(d: dict) -> dict:
    return {k: v for k, v in d.items() if v is not None and v != {}}


def _enum(cls: type[Enum], value: Any, where: str) -> Enum:
    try:
        return cls(value)
    except ValueError:
        raise SqueezeError(f"{where}={value!r} is not known: expected one of {[m.value for m in cls]}") from None


_PAPER = {
    "lenet300": {
        "prune": {"layers": {"fc1": {"keep_fraction": 0.08}, "fc2": {"keep_fraction": 0.09}, "fc3": {"keep_fraction": 0.26}}},
        "share": {"layers": {"fc1": {"bits": 6}, "fc2": {"bits": 6}, "fc3": {"bits": 6}}},
    },
    "lenet5": {
        "prune": {
            "layers": {
                "conv1": {"keep_fraction": 0.66},
                "conv2": {"keep_fraction": 0.12},
                "fc1": {"keep_fraction": 0.08},
                "fc2": {"keep_fraction": 0.19},
            }
        },
        "share": {"layers": {"conv1": {"bits": 8}, "conv2": {"bits": 8}, "fc1": {"bits": 5}, "fc2": {"bits": 5}}},
    },
}


def deep_compression(model_name: str, layers: Mapping[str, Any]) -> Recipe:
    """The ``deep-compression`` recipe for a model: the paper's table where it has one, else the generic rule.

    ``layers`` maps each prunable layer name to its module (see ``prunable_layers``).
    """
    import torch.nn as nn

    if model_name in _PAPER:
        per_layer = _PAPER[model_name]
    else:
        names = list(layers)
        prune, share = {}, {}
        for name, module in layers.items():
            if name == names[-1]:
                prune[name], share[name] = {"keep_fraction": 0.25}, {"bits": 5}
            elif isinstance(module, nn.Conv2d):
                prune[name], share[name] = {"keep_fraction": 0.5}, {"bits": 8}
            else:
                prune[name], share[name] = {"keep_fraction": 0.1}, {"bits": 5}
        per_layer = {"prune": {"layers": prune}, "share": {"layers": share}}
    return Recipe.from_dict(
        {
            "name": "deep-compression",
            "prune": {"granularity": "weight", **per_layer["prune"]},
            "finetune": {"epochs": 20, "lr": 0.01, "weight_decay": 1e-5, "distill": True},
            "share": {"init": "linear", **per_layer["share"]},
            "finetune_centroids": {"epochs": 4, "lr": 0.001, "distill": True},
            "encode": {"index_bits": 5, "coder": "auto", "float_bits": 16},
        }
    )


def structured_pruning(method: str, macs_target: float = 0.5, allocation: str = "uniform") -> Recipe:
    """The ``filter-pruning`` (``method="l1"``) or ``channel-pruning`` (``"lasso"``) recipe."""
    return Recipe.from_dict(
        {
            "name": "filter-pruning" if method == "l1" else "channel-pruning",
            "structured": {
                "method": method,
                "macs_target": macs_target,
                "allocation": allocation,
                "finetune": {"epochs": 3, "lr": 0.01, "distill": True},
            },
            "encode": {"coder": "auto", "float_bits": 32},
        }
    )


_STRUCTURED_BUILTINS = {"filter-pruning": "l1", "channel-pruning": "lasso"}
BUILTIN_RECIPES = ("deep-compression", *_STRUCTURED_BUILTINS)


def load_recipe(
    spec: str | Path,
    model_name: str,
    layers: Mapping[str, Any],
    *,
    macs_target: float | None = None,
    allocation: str | None = None,
) -> Recipe:
    """A built-in recipe by name, or a YAML/JSON recipe file.

    ``macs_target`` and ``allocation``, when given, replace those of the recipe's structured stage
    (``--macs-target`` on the command line); a recipe without one is an error.
    """
    if str(spec) == "deep-compression":
        recipe = deep_compression(model_name, layers)
    elif str(spec) in _STRUCTURED_BUILTINS:
        recipe = structured_pruning(_STRUCTURED_BUILTINS[str(spec)])
    else:
        path = Path(spec)
        if not path.is_file():
            raise SqueezeError(f"recipe {str(spec)!r} is neither a built-in ({', '.join(BUILTIN_RECIPES)}) nor an existing YAML file")
        from squeezetune._yaml import load_mapping

        recipe = Recipe.from_dict(load_mapping(path, "recipe file"))
    if macs_target is None and allocation is None:
        return recipe
    if recipe.structured is None:
        raise SqueezeError(
            f"recipe {recipe.name!r} has no structured stage for --macs-target/--allocation: expected filter-pruning, channel-pruning or a recipe with structured"
        )
    changes: dict[str, Any] = {}
    if macs_target is not None:
        changes["macs_target"] = macs_target
    if allocation is not None:
        if changes.get("macs_target", recipe.structured.macs_target) is None:
            raise SqueezeError(f"--allocation {allocation!r} needs a macs_target: recipe {recipe.name!r} sets its structured counts by hand")
        changes["allocation"] = _enum(Allocation, allocation, "structured.allocation")
    return replace(recipe, structured=replace(recipe.structured, **changes))
