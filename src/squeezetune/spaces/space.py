"""The search space of a model: knobs derived from its layers, narrowed by the user's YAML.

Nothing here is written per model. :func:`derive_space` walks the model's compressible tensors
(:func:`~squeezetune.compression.tensors.compressible`: linear, convolutional, embedding, attention
and recurrent weights) and gives each one a kept fraction and a k-means cluster count; the recipe-level knobs (k-means init, coder, index bits,
fine-tune epochs and learning rate, distillation on/off) come once. Coder and index bits default to
``auto`` (every stream coded each way, the smallest kept), so they are searched only when asked. The user's ``space:`` mapping
fixes, narrows or excludes any of them::

    space:
      group: tensor                   # one knob per tensor; kind: one per layer type; block: one per block
      group_depth: 2                  # with group: block, the module-name parts that make a block
      prune:                          # false: no pruning stage at all
        granularity: weight
        default: {keep_fraction: [0.02, 0.6]}   # every layer not named below (of the layer as it is then)
        layers:
          fc1: {keep: [2000, 40000]}  # weights to keep (or keep_fraction: [a, b]); counts need no structured stage
          fc3: false                  # left dense
      finetune: {epochs: [1, 3], distill: [true, false], lr: 0.01}   # false: no fine-tune
      share:                          # false: no weight sharing
        init: [forgy, density, linear]
        default: {bits: [1, 8]}       # 2**bits clusters (1 bit on a pruned layer: ternary); or clusters: [3, 200]
        layers: {fc3: {bits: 6}}
      finetune_centroids: {epochs: [0, 2], lr: 0.002}
      encode: {coder: [huffman, ans, auto], index_bits: [3, 8], float_bits: 32}   # default: auto, auto, 16

A space is Optuna define-by-run: :meth:`Space.suggest` asks a trial for each searched knob, so the
number of parameters follows the model. :meth:`Space.recipe` turns the sampled values into a
:class:`~squeezetune.compression.recipes.Recipe`. Kept amounts are fractions of each tensor as it is
when pruning runs (after any structured pruning), and a tensor's cluster count is capped at its
kept weights (``bits: 8`` on a tensor keeping 100 weights gives 100 clusters: ``share.fit``).

>>> from squeezetune.tasks.models import LeNet300
>>> space = derive_space(LeNet300(), {"share": {"default": {"bits": [3, 5]}}})
>>> [k.name for k in space.knobs if k.name.endswith(".bits")]
['share.fc1.bits', 'share.fc2.bits', 'share.fc3.bits']
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, Callable, Mapping

from torch import nn

from squeezetune.compression.coding.codec import CoderChoice
from squeezetune.compression.finetune import FinetuneConfig
from squeezetune.compression.measure import DEFAULT_INPUT_SHAPE
from squeezetune.compression.recipes import Recipe
from squeezetune.compression.stages import stage_config
from squeezetune.compression.tensors import compressible
from squeezetune.compression.unstructured.kmeans import Init
from squeezetune.compression.unstructured.pruning import Granularity
from squeezetune.compression.unstructured.sensitivity import allocate
from squeezetune.errors import SqueezeError
from squeezetune.spaces.knobs import Choice, Fixed, FloatRange, IntRange, Knob, TrialLike, check_setting_keys, named_layers, parse_domain

KEEP_FRACTION = (0.001, 0.5)
"""Default range of the fraction of each layer's weights a trial keeps (log-scaled)."""
BITS = (1, 8)
"""Default range of k-means bits per layer (2**bits clusters; 1 bit on a pruned tensor gives ternary weights)."""

_OPTIONS = ("group", "group_depth")
GROUPINGS = ("tensor", "kind", "block")
"""How per-tensor knobs are shared: one per ``tensor``, one per layer ``kind`` (``Conv2d``, ``Linear``,
``LSTM``, ...), or one per ``block`` (the first ``group_depth`` parts of the module name)."""
_FINETUNE_DEFAULTS = {
    "finetune": {"epochs": IntRange(1, 3), "distill": Choice((True, False)), "lr": FloatRange(0.01, 0.01, log=True)},
    "finetune_centroids": {"epochs": IntRange(0, 2), "lr": FloatRange(0.002, 0.002, log=True)},
    "finetune_recover": {"epochs": IntRange(2, 10), "distill": Choice((True,)), "lr": FloatRange(0.005, 0.01, log=True)},
}


@dataclass(frozen=True)
class Scope:
    """What a stage's knob deriver may look at: the model, its example input and its tensors."""

    model: nn.Module
    example: Any
    layers: dict[str, int]
    """Every compressible tensor and its weight count."""
    groups: dict[str, tuple[str, ...]]
    """The groups per-tensor knobs are shared by (empty: one knob per tensor)."""
    sensitivity: dict[str, list] | None = None


@dataclass(frozen=True)
class SpaceStage:
    """One stage a space can search: its ``space:`` key (also its recipe label), the recipe stage it
    configures, and the function that derives its knobs from the user's setting for it."""

    key: str
    stage: str
    knobs: Callable[[Scope, dict[str, Any]], list[Knob]]
    default_on: bool = True
    """In every space unless the user gives ``false``; otherwise only when the user names it."""
    keys: tuple[str, ...] = ()
    """The keys the user's setting may have (empty: the deriver checks them)."""


@dataclass(frozen=True)
class Space:
    """The knobs of one model's search space, in a stable order.

    ``layers`` maps every compressible tensor to its weight count; ``stages`` lists the recipe stages
    the space turns on.
    """

    knobs: tuple[Knob, ...]
    layers: dict[str, int]
    stages: tuple[str, ...]
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """With ``group: kind`` or ``block``: each group's name (``@Conv2d``, ``@layer1.0``) and its tensors."""
    sensitivity: dict[str, list] | None = field(default=None, compare=False)
    """Per-tensor pruning sensitivity curves (see :mod:`squeezetune.compression.unstructured.sensitivity`)
    that spread a global ``prune.budget`` over the tensors."""

    def __post_init__(self) -> None:
        names = [k.name for k in self.knobs]
        if len(set(names)) != len(names):
            raise SqueezeError(f"knob names repeat in the space: {names}")

    @property
    def searched(self) -> list[Knob]:
        return [k for k in self.knobs if k.searched]

    def knob(self, name: str) -> Knob:
        for k in self.knobs:
            if k.name == name:
                return k
        raise SqueezeError(f"unknown knob {name!r}: expected one of {[k.name for k in self.knobs]}")

    def suggest(self, trial: TrialLike) -> dict[str, Any]:
        """Every knob's value for one trial (define-by-run; fixed knobs are not sampled)."""
        return {k.name: k.suggest(trial) for k in self.knobs}

    def __call__(self, trial: TrialLike) -> dict[str, Any]:
        return self.suggest(trial)

    def corner(self, **overrides: Any) -> dict[str, Any]:
        """Every knob at its low end (a categorical at its first choice), then ``overrides``.

        With no overrides this is the most compressed configuration per layer: fewest kept
        weights, fewest clusters.
        """
        params = {k.name: k.corners()[0] for k in self.knobs}
        for name, value in overrides.items():
            self.knob(name)
            params[name] = value
        return params

    def project(self, recipe: Recipe) -> dict[str, Any]:
        """The values of this space's knobs nearest to ``recipe`` (e.g. a hand recipe, to warm-start a search).

        Each knob takes the recipe's value at its place, converted (keep fractions to counts,
        bits to clusters) and clipped into its domain; a knob the recipe does not set keeps its
        low end (a categorical: its first choice), except a channel count, which keeps its high
        end: a recipe that prunes no channels of a group is nearest to keeping them all.
        """
        data: dict[str, Any] = {step.label: step.config.to_dict() for step in recipe.steps}
        data["encode"] = recipe.encode.to_dict()
        self._budget_as_layers(data)
        params = self.corner()
        for k in self.knobs:
            value = self._lookup(data, k.target)
            if value is not None:
                params[k.name] = clip(value, k)
            elif k.target[0] == "structured" and k.target[-1] == "keep_channels":
                params[k.name] = k.corners()[1]
        return params

    def _budget_as_layers(self, data: dict[str, Any]) -> None:
        """A recipe's global budget (``prune`` or ``gradual_prune``) as per-tensor kept fractions, in
        place, for a space whose knobs for that stage are per tensor: split by the space's sensitivity
        curves when it has them, else the same fraction for every tensor (never below the budget's
        floor). The recipe itself splits it when it runs, by what it measures then, so this is the
        nearest point the space holds, not the same split."""
        for key in ("prune", "gradual_prune"):
            stage = data.get(key)
            budget = stage.get("budget") if isinstance(stage, Mapping) else None
            if not isinstance(budget, Mapping) or not any(k.target[:2] == (key, "layers") for k in self.knobs):
                continue
            named = stage.get("layers") or {}
            sizes = {n: size for n, size in self.layers.items() if n not in named}
            floor = budget.get("min_keep_fraction") or 0.0
            if self.sensitivity and budget.get("allocation", "sensitivity") == "sensitivity":
                fractions = allocate(self.sensitivity, sizes, budget["keep_fraction"], floor=floor)
            else:
                fractions = dict.fromkeys(sizes, max(budget["keep_fraction"], floor))
            stage["layers"] = {**named, **{n: {"keep_fraction": f} for n, f in fractions.items()}}

    def _lookup(self, data: Mapping[str, Any], target: tuple[str, ...]) -> Any:
        """The recipe's value for a knob; for a group's knob, the mean over the group's tensors; for
        the global budget, the fraction of all weights the recipe keeps."""
        if target == ("prune", "budget", "keep_fraction"):
            kept = [_lookup(data, ("prune", "layers", n, "keep_fraction"), self.layers) for n in self.layers]
            if any(k is None for k in kept):
                return None
            return sum(k * n for k, n in zip(kept, self.layers.values())) / sum(self.layers.values())
        members = self.groups.get(target[2]) if len(target) == 4 else None
        if not members:
            return _lookup(data, target, self.layers)
        values = [v for m in members if isinstance(v := _lookup(data, (*target[:2], m, target[3]), self.layers), (int, float))]
        return sum(values) / len(values) if values else None

    def contains(self, params: Mapping[str, Any]) -> bool:
        return set(params) == {k.name for k in self.knobs} and all(k.domain.contains(params[k.name]) for k in self.knobs)

    def recipe_dict(self, params: Mapping[str, Any], name: str = "search-trial") -> dict[str, Any]:
        """The recipe (plain data) that ``params`` describe."""
        missing = [k.name for k in self.knobs if k.name not in params]
        if missing:
            raise SqueezeError(f"params lack knob {missing[0]!r}: expected values for {[k.name for k in self.knobs]}")
        data: dict[str, Any] = {key: {} for key in (*self.stages, "encode")}
        for k in self.knobs:
            node = data
            for part in k.target[:-1]:
                node = node.setdefault(part, {})
            node[k.target[-1]] = _plain(params[k.name])
        if "budget" in data.get("prune", {}):
            self._spread_budget(data["prune"])
        for settings in data.values():  # a group's knob applies to each of its tensors
            layers = settings.get("layers", {})
            for group in [g for g in layers if g in self.groups]:
                setting = layers.pop(group)
                for member in self.groups[group]:
                    layers.setdefault(member, dict(setting))
        if "share" in data:
            data["share"]["fit"] = True
        kinds = {s.key: s.stage for s in SPACE_STAGES}
        stages = [{kinds[key]: data[key], "label": key} for key in self.stages]
        return {"name": name, "stages": stages, "encode": data["encode"]}

    def _spread_budget(self, prune: dict[str, Any]) -> None:
        """Replace ``prune.budget`` by per-tensor kept fractions (for the tensors not named in the space)."""
        budget = prune.pop("budget")["keep_fraction"]
        how = prune.pop("allocation", "sensitivity")
        layers = prune.setdefault("layers", {})
        sizes = {n: size for n, size in self.layers.items() if n not in layers}
        if how == "uniform" or not sizes:
            fractions = dict.fromkeys(sizes, budget)
        else:
            if self.sensitivity is None:
                raise SqueezeError("space.prune.budget with allocation 'sensitivity' needs the model's sensitivity curves: expected derive_space(..., sensitivity=...)")
            fractions = allocate(self.sensitivity, sizes, budget)
        for n, f in fractions.items():
            layers[n] = {"keep_fraction": min(1.0, max(f, 1.0 / sizes[n]))}

    def recipe(self, params: Mapping[str, Any], name: str = "search-trial") -> Recipe:
        """The :class:`Recipe` that ``params`` describe."""
        return Recipe.from_dict(self.recipe_dict(params, name))

    def table(self) -> str:
        """The knobs as text: name and domain, searched ones first."""
        rows = sorted(self.knobs, key=lambda k: not k.searched)
        width = max(len(k.name) for k in rows)
        return "\n".join(f"{k.name:<{width}}  {'search' if k.searched else 'fixed ':<6}  {k.describe()}" for k in rows)


def _lookup(data: Mapping[str, Any], target: tuple[str, ...], layers: Mapping[str, int]) -> Any:
    """The recipe's value for a knob target, converting keep_fraction and bits where needed."""
    node: Any = data
    for part in target[:-1]:
        if not isinstance(node, Mapping) or part not in node:
            if len(target) == 4 and target[1] == "layers" and isinstance(node, Mapping) and "default" in node:
                node = node["default"]  # a stage default covers the layer
                continue
            return None
        node = node[part]
    if not isinstance(node, Mapping):
        return None
    key = target[-1]
    if key in node:
        return node[key]
    if key == "keep_channels" and "keep" in node:  # a recipe's structured count
        return node["keep"]
    if key == "keep_fraction" and "keep" in node:
        return node["keep"] / layers[target[2]]
    if key == "keep" and "keep_fraction" in node:
        return max(1, round(node["keep_fraction"] * layers[target[2]]))
    if key == "clusters" and "bits" in node:
        return 2 ** node["bits"]
    if key == "bits" and "clusters" in node:
        return max(1, int(node["clusters"] - 1).bit_length())
    return None


def clip(value: Any, knob: Knob) -> Any:
    """``value`` made a member of ``knob``'s domain: a number clipped into its range (rounded for an
    integer one), anything else its low end or first choice; a fixed knob's own value."""
    d = knob.domain
    if isinstance(d, (IntRange, FloatRange)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return d.low
        v = min(max(value, d.low), d.high)
        return int(round(v)) if isinstance(d, IntRange) else float(v)
    if isinstance(d, Choice):
        return value if d.contains(value) else d.choices[0]
    return d.value


def _plain(value: Any) -> Any:
    return value.value if hasattr(value, "value") and not isinstance(value, (int, float, str, bool)) else value


def derive_space(model: nn.Module, config: Mapping[str, Any] | None = None, example: Any = None, *, sensitivity: Mapping[str, list] | None = None) -> Space:
    """The search space of ``model``, with the user's ``space:`` settings applied.

    ``example`` is the task's batch-1 example input (see :func:`squeezetune.tasks.example_input`),
    which the structured knobs trace the model with. ``sensitivity`` holds the per-tensor curves
    (:func:`~squeezetune.compression.unstructured.sensitivity.sensitivity_curves`) a ``prune.budget``
    with ``allocation: sensitivity`` spreads the budget by (see :func:`needs_sensitivity`).

    Raises a one-line :class:`SqueezeError` for an unknown stage, knob or layer, an empty range,
    or a value outside what the model allows (e.g. ``keep`` above a layer's weight count).
    """
    keys = [st.key for st in SPACE_STAGES] + ["encode", *_OPTIONS]
    if config is not None and not isinstance(config, Mapping):
        raise SqueezeError(f"space is {type(config).__name__}: expected a mapping with keys {keys}")
    config = dict(config or {})
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise SqueezeError(f"unknown key {unknown[0]!r} in space: expected one of {keys}")
    targets = compressible(model)
    layers = {name: t.numel for name, t in targets.items()}
    groups = _groups(targets, config.get("group", "tensor"), config.get("group_depth", 2))
    scope = Scope(model, example, layers, groups, dict(sensitivity) if sensitivity is not None else None)
    knobs: list[Knob] = []
    stages: list[str] = []
    reshaped = None  # the first stage in the space that changes the architecture
    for st in SPACE_STAGES:
        if st.key not in config and not st.default_on:
            continue
        setting = _stage(config, st.key, st.keys) if st.keys else _opt_in(config, st.key)
        if setting is None:
            continue
        stage_knobs = st.knobs(scope, setting)
        if reshaped is not None:
            counts = [k.name for k in stage_knobs if k.target[-1] == "keep"]
            if counts:
                raise SqueezeError(f"space knob {counts[0]!r} counts weights of the dense layer, but {reshaped} runs first and reshapes it: give keep_fraction instead")
        if stage_config(st.stage).changes_architecture and reshaped is None:
            reshaped = f"{st.key} pruning" if st.key == "structured" else st.key
        stages.append(st.key)
        knobs += stage_knobs
    knobs += _encode_knobs(_stage(config, "encode", ("coder", "index_bits", "float_bits"), allow_off=False))
    return Space(tuple(knobs), layers, tuple(stages), groups, scope.sensitivity)


def needs_sensitivity(config: Mapping[str, Any] | None) -> bool:
    """Whether a space config spreads a global pruning budget by sensitivity (computed once by the caller)."""
    prune = (config or {}).get("prune")
    return isinstance(prune, Mapping) and "budget" in prune and prune.get("allocation", "sensitivity") == "sensitivity"


def _opt_in(config: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    raw = config.get(key)
    if raw is None or raw is False:
        return None
    if raw is True:
        return {}
    if not isinstance(raw, Mapping):
        raise SqueezeError(f"space.{key}={raw!r}: expected a mapping (or true for the defaults)")
    return dict(raw)


def _prune_knobs(scope: Scope, prune: dict[str, Any]) -> list[Knob]:
    granularity = _recipe_knob("prune.granularity", prune.get("granularity"), Fixed(Granularity.WEIGHT.value), ("prune", "granularity"), tuple(g.value for g in Granularity))
    if "budget" not in prune:
        if "allocation" in prune:
            raise SqueezeError("space.prune.allocation spreads a budget: expected space.prune.budget beside it")
        return [granularity, *_layer_knobs("prune", prune, scope.layers, _keep_domain, scope.groups)]
    # one global kept fraction, spread over the tensors by sensitivity (or uniformly); named layers keep their own knobs
    budget = prune["budget"]
    if not isinstance(budget, Mapping) or set(budget) != {"keep_fraction"}:
        raise SqueezeError(f"space.prune.budget={budget!r}: expected {{keep_fraction: [low, high]}}, the fraction of all weights kept")
    frac = parse_domain(budget["keep_fraction"], FloatRange(*KEEP_FRACTION, log=True), "space.prune.budget.keep_fraction")
    for f in _corners(frac):
        if not 0 < f <= 1:
            raise SqueezeError(f"space.prune.budget.keep_fraction={f!r} must be in (0, 1]")
    how = prune.get("allocation", "sensitivity")
    if how not in ("sensitivity", "uniform"):
        raise SqueezeError(f"space.prune.allocation={how!r} is not known: expected sensitivity or uniform")
    if "default" in prune:
        raise SqueezeError("space.prune.default and space.prune.budget both cover the unnamed layers: expected one of them")
    knobs = [granularity, Knob("prune.budget.keep_fraction", frac, ("prune", "budget", "keep_fraction")), Knob("prune.allocation", Fixed(how), ("prune", "allocation"))]
    named = {"layers": prune.get("layers") or {}, "default": False}
    return knobs + _layer_knobs("prune", named, scope.layers, _keep_domain, scope.groups)


def _finetune_knobs(key: str) -> Callable[[Scope, dict[str, Any]], list[Knob]]:
    def knobs(scope: Scope, ft: dict[str, Any]) -> list[Knob]:
        return finetune_knobs((key,), ft, _FINETUNE_DEFAULTS[key])

    return knobs


def finetune_knobs(where: tuple[str, ...], ft: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[Knob]:
    """Knobs of the :class:`FinetuneConfig` fields at ``where`` in the recipe: those in ``defaults``
    and those the user's ``ft`` names (each fixed at its dataclass default unless given)."""
    out = []
    for f in fields(FinetuneConfig):
        base = defaults.get(f.name)
        if f.name not in ft and base is None:
            continue
        allowed: tuple = ()
        if base is None:
            v = f.default
            if isinstance(v, Enum):
                allowed = tuple(m.value for m in type(v))
                base = Choice((v.value,))
            else:
                base = Choice((v,)) if isinstance(v, bool) else IntRange(v, v) if isinstance(v, int) else FloatRange(v, v, log=v > 0)
        if isinstance(f.default, bool):
            allowed = (True, False)
        out.append(_recipe_knob(".".join((*where, f.name)), ft.get(f.name), base, (*where, f.name), allowed))
    return out


def _share_knobs(scope: Scope, share: dict[str, Any]) -> list[Knob]:
    out = [_recipe_knob("share.init", share.get("init"), Choice(tuple(i.value for i in Init)), ("share", "init"), tuple(i.value for i in Init))]
    if "max_iter" in share:
        out.append(_recipe_knob("share.max_iter", share["max_iter"], IntRange(20, 20), ("share", "max_iter")))
    return out + _layer_knobs("share", share, scope.layers, _share_domain, scope.groups)


def _encode_knobs(encode: dict[str, Any]) -> list[Knob]:
    # Both default to "auto", which codes each stream every way and keeps the smallest: searching
    # them would spend trials on choices "auto" already dominates.
    coders = tuple(c.value for c in CoderChoice)
    out = [_recipe_knob("encode.coder", encode.get("coder", "auto"), Choice(("huffman", "ans", "auto")), ("encode", "coder"), coders)]
    index_bits = encode.get("index_bits", "auto")
    if index_bits == "auto":
        out.append(Knob("encode.index_bits", Fixed("auto"), ("encode", "index_bits")))
    else:
        out.append(_recipe_knob("encode.index_bits", index_bits, IntRange(3, 8), ("encode", "index_bits")))
    # float16 codebooks, biases and raw tensors, as the built-in recipes store them (32: full precision)
    out.append(_recipe_knob("encode.float_bits", encode.get("float_bits"), Fixed(16), ("encode", "float_bits"), (16, 32)))
    return out


def _structured_knobs(scope: Scope, cfg: dict[str, Any]) -> list[Knob]:
    from squeezetune.spaces.structured import structured_knobs

    return structured_knobs(scope.model, cfg, scope.example)


def _decompose_knobs(scope: Scope, cfg: dict[str, Any]) -> list[Knob]:
    from squeezetune.spaces.decomposition import decompose_knobs

    return decompose_knobs(scope.model, cfg, scope.example if scope.example is not None else DEFAULT_INPUT_SHAPE)


def _strided_knobs(scope: Scope, cfg: dict[str, Any]) -> list[Knob]:
    from squeezetune.spaces.strided import strided_knobs

    return strided_knobs(scope.model, cfg, scope.example)


def _merge_knobs(scope: Scope, cfg: dict[str, Any]) -> list[Knob]:
    from squeezetune.spaces.merging import merge_knobs

    return merge_knobs(scope.model, cfg, scope.example)


def _gradual_knobs(scope: Scope, cfg: dict[str, Any]) -> list[Knob]:
    from squeezetune.spaces.gradual import gradual_knobs

    return gradual_knobs(scope, cfg)


def _neuron_knobs(scope: Scope, cfg: dict[str, Any]) -> list[Knob]:
    from squeezetune.spaces.neurons import neuron_knobs

    return neuron_knobs(cfg)


def _soft_share_knobs(scope: Scope, cfg: dict[str, Any]) -> list[Knob]:
    from squeezetune.spaces.soft_sharing import soft_share_knobs

    return soft_share_knobs(cfg)


SPACE_STAGES: tuple[SpaceStage, ...] = (
    SpaceStage("structured", "structured", _structured_knobs, default_on=False),
    SpaceStage("merge", "merge", _merge_knobs, default_on=False),
    SpaceStage("decompose", "decompose", _decompose_knobs, default_on=False),
    SpaceStage("strided", "strided", _strided_knobs, default_on=False),
    SpaceStage("gradual_prune", "gradual_prune", _gradual_knobs, default_on=False),
    SpaceStage("prune", "prune", _prune_knobs, keys=("granularity", "default", "layers", "budget", "allocation")),
    SpaceStage("finetune", "finetune", _finetune_knobs("finetune"), keys=tuple(f.name for f in fields(FinetuneConfig))),
    SpaceStage("neurons", "neurons", _neuron_knobs, default_on=False),
    SpaceStage("finetune_recover", "finetune", _finetune_knobs("finetune_recover"), default_on=False, keys=tuple(f.name for f in fields(FinetuneConfig))),
    SpaceStage("soft_share", "soft_share", _soft_share_knobs, default_on=False),
    SpaceStage("share", "share", _share_knobs, keys=("init", "default", "layers", "max_iter")),
    SpaceStage("finetune_centroids", "finetune", _finetune_knobs("finetune_centroids"), keys=tuple(f.name for f in fields(FinetuneConfig))),
)
"""The stages a space can search, in the order their recipe runs them. A new technique adds its
entry here, with its knob deriver beside it (as :mod:`squeezetune.spaces.structured` does)."""


def _groups(targets: Mapping[str, Any], by: Any, depth: Any) -> dict[str, tuple[str, ...]]:
    """The tensors sharing each knob, by group name; empty for one knob per tensor."""
    if by not in GROUPINGS:
        raise SqueezeError(f"space.group={by!r} is not known: expected one of {list(GROUPINGS)}")
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise SqueezeError(f"space.group_depth={depth!r}: expected an integer >= 1 (module-name parts that make a block)")
    if by == "tensor":
        return {}
    out: dict[str, list[str]] = {}
    for name, t in targets.items():
        key = t.kind if by == "kind" else ".".join(t.module_name.split(".")[:depth]) or t.name
        out.setdefault(f"@{key}", []).append(name)
    return {g: tuple(members) for g, members in out.items()}


def _stage(config: Mapping[str, Any], stage: str, keys: tuple[str, ...], allow_off: bool = True) -> dict[str, Any] | None:
    raw = config.get(stage, {})
    if raw is False and allow_off:
        return None
    if raw is None or raw is True:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SqueezeError(f"space.{stage}={raw!r}: expected a mapping with keys {list(keys)}, true{' or false' if allow_off else ''}")
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise SqueezeError(f"unknown knob {unknown[0]!r} in space.{stage}: expected one of {list(keys)}")
    return dict(raw)


def _recipe_knob(name: str, raw: Any, default, target: tuple[str, ...], allowed: tuple = ()) -> Knob:
    domain = default if raw is None else parse_domain(raw, default, f"space.{name}", allowed)
    return Knob(name, domain, target)


def _layer_knobs(stage: str, cfg: Mapping[str, Any], layers: Mapping[str, int], domain_of, groups: Mapping[str, tuple[str, ...]]) -> list[Knob]:
    named = named_layers(cfg, stage, list(layers))
    default = cfg.get("default")
    if default is not None and default is not False and not isinstance(default, Mapping):
        raise SqueezeError(f"space.{stage}.default={default!r}: expected a mapping, or false to leave unnamed layers alone")
    # a named layer has its own knob; every other one shares its group's (or has its own, ungrouped)
    units: dict[str, int] = {name: n for name, n in layers.items() if name in named or not groups}
    for group, members in groups.items():
        rest = [m for m in members if m not in named]
        if rest:
            units[group] = sum(layers[m] for m in rest)
    knobs = []
    for name, n in units.items():
        setting = named.get(name, default if default is not None else {})
        if setting is False:
            continue
        if setting is None:
            setting = {}
        if not isinstance(setting, Mapping):
            raise SqueezeError(f"space.{stage}.layers.{name}={setting!r}: expected a mapping or false")
        knobs.append(domain_of(name, n, dict(setting), named.get(name) is None))
    return knobs


def _keep_domain(name: str, n: int, setting: dict, from_default: bool, stage: str = "prune", default: tuple[float, float] = KEEP_FRACTION) -> Knob:
    """A tensor's kept fraction (of the tensor as pruning finds it), or a count of weights if the user asks."""
    where = f"space.{stage}.{'default' if from_default else 'layers.' + name}"
    check_setting_keys(setting, ("keep", "keep_fraction"), where)
    if len(setting) > 1:
        raise SqueezeError(f"{where} gives both keep and keep_fraction: expected one")
    if from_default and "keep" in setting:
        raise SqueezeError(f"{where}.keep: a default for every layer takes keep_fraction, not a weight count")
    if "keep" in setting:
        domain = parse_domain(setting["keep"], IntRange(1, n, log=True), f"{where}.keep")
        lo, hi = _corners(domain)
        for v in (lo, hi):
            if not 1 <= v <= n:
                raise SqueezeError(f"{where}.keep={v!r} for layer {name!r} must be in [1, {n}]")
        return Knob(f"{stage}.{name}.keep", domain, (stage, "layers", name, "keep"))
    frac = parse_domain(setting.get("keep_fraction", list(default)), FloatRange(*default, log=True), f"{where}.keep_fraction")
    for f in _corners(frac):
        if not 0 < f <= 1:
            raise SqueezeError(f"{where}.keep_fraction={f!r} must be in (0, 1]")
    return Knob(f"{stage}.{name}.keep_fraction", frac, (stage, "layers", name, "keep_fraction"))


def _share_domain(name: str, n: int, setting: dict, from_default: bool) -> Knob:
    where = f"space.share.{'default' if from_default else 'layers.' + name}"
    check_setting_keys(setting, ("bits", "clusters"), where)
    if len(setting) > 1:
        raise SqueezeError(f"{where} gives both bits and clusters: expected one")
    if "clusters" in setting:
        domain = parse_domain(setting["clusters"], IntRange(2 ** BITS[0], 2 ** BITS[1], log=True), f"{where}.clusters")
        lo, hi = _corners(domain)
        if lo < 2 or hi > 2**16:
            raise SqueezeError(f"{where}.clusters=[{lo}, {hi}] must lie in [2, 65536]")
        return Knob(f"share.{name}.clusters", domain, ("share", "layers", name, "clusters"))
    domain = parse_domain(setting.get("bits", list(BITS)), IntRange(*BITS), f"{where}.bits")
    lo, hi = _corners(domain)
    if lo < 1 or hi > 16:
        raise SqueezeError(f"{where}.bits=[{lo}, {hi}] must lie in [1, 16]")
    return Knob(f"share.{name}.bits", domain, ("share", "layers", name, "bits"))


def _corners(domain) -> tuple[Any, Any]:
    return Knob("_", domain).corners()
