"""Recipes: an ordered list of stages and how the result is coded, as data that round-trips
through JSON and YAML.

A recipe is a YAML file or a built-in name. Its ``stages`` run in order, each one a stage name
(see :func:`~squeezetune.compression.stages.known_stages`) and its settings; ``label`` names a
stage in the report (default: the stage name, ``_2``, ``_3`` for repeats)::

    name: my-recipe
    stages:
      - prune: {granularity: weight, default: {keep_fraction: 0.1}, layers: {fc1: {keep: 18816}}}
      - finetune: {epochs: 10, lr: 0.01, distill: true}
      - share: {init: linear, default: {bits: 5}, layers: {conv1: {bits: 8}}}
      - finetune: {epochs: 4, lr: 0.001}
        label: finetune_centroids
    encode: {index_bits: auto, coder: auto, float_bits: 16}

The classic form, one key per stage, still reads and means the fixed order
``structured``, ``structured.finetune`` (labelled ``structured_finetune``), ``prune``,
``finetune``, ``share``, ``finetune_centroids``::

    prune: {default: {keep_fraction: 0.1}}
    finetune: {epochs: 10}
    share: {default: {bits: 5}}
    finetune_centroids: {epochs: 4, lr: 0.001}
    encode: {coder: huffman}

Built-in recipes (:func:`builtin_recipe`):

* ``deep-compression``: the paper's per-layer recipe (Han et al. 2016, Table 1/4). LeNet-300-100
  keeps 8%, 9%, 26% of fc1-fc3 with 6-bit weights; LeNet-5 keeps 66%, 12%, 8%, 19% of conv1,
  conv2, fc1, fc2 with 8-bit conv and 5-bit fc weights; both with 5-bit index diffs. Any other
  model gets the generic rule over every compressible tensor: convolutions keep 50% with 8-bit
  weights, every other tensor (linear, embedding, attention, recurrent) keeps 10% with 5-bit
  weights from 100,000 weights up and more below (:func:`dense_keep`), the last one keeps 25%
  with 5-bit weights; cluster counts are capped at what each
  tensor keeps (``share.fit``), so small tensors never fail. Fine-tuning distils from the dense
  teacher; each stream takes the smallest of its Huffman, ANS and fixed-width codes; codebooks
  and biases are stored as float16 (the decoded model is what is measured).
* ``max-compression``: what measures best past the paper (BENCHMARKS.md). Pruning rises along a
  cubic schedule during distilled fine-tuning (``gradual_prune``) with a group-lasso penalty on
  rows and columns, so that survivors cluster; dead neurons, channels and unread input features
  are then removed from the architecture (``neurons``) and the rest recovers in a fine-tune without
  the penalty; the survivors are shared at 4-5 bits with centroid fine-tuning, and positions and
  weights take the smallest code. LeNet-300-100 and
  LeNet-5 have their tuned per-layer rates (:data:`MAX_RATES`); any other model gets the generic
  rule: one global budget (5% of the weights) split by per-layer sensitivity, 5-bit convolutions
  and 4-bit other tensors (5-bit classifier).
* ``filter-pruning`` and ``channel-pruning``: structured pruning alone, by L1 filter norms (Li et
  al. 2017) or by LASSO channel selection with least-squares reconstruction (He et al. 2017), to
  ``macs_target`` of the dense MACs (default 0.5) with per-layer counts spread ``uniform``-ly or by
  ``sensitivity``; then 3 epochs of fine-tuning distilled from the dense teacher. The shrunk model
  is stored with float32 weights, so the decoded model is exactly the fine-tuned one. With
  ``cost: latency`` (``--cost latency``) the target is a fraction of the dense model's predicted
  latency instead, from each layer timed alone on this machine (cached per model and machine).
* ``decomposition``: every layer that saves MACs by it replaced by low-rank factors (a Linear by two,
  a k x k convolution by a k x k one to r channels and a 1 x 1), the ranks planned by singular-value
  energy to ``macs_target`` of the dense MACs (default 0.5), fitted by SVD and least squares on
  sampled activations; then 3 epochs of fine-tuning distilled from the dense teacher; float32.
  ``cost: latency`` plans the ranks to a fraction of the predicted latency, as for structured pruning.
* ``data-free-merge``: a quarter of the neurons of every layer that can merge them (Linear or
  Conv2d layers with no BatchNorm or residual add after them) merged into their most similar
  neighbours (Srinivas & Babu 2015); no stage reads any data. Float32.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from squeezetune.compression.coding.codec import EncodeConfig
from squeezetune.compression.stages import StageConfig, stage_config
from squeezetune.compression.tensors import compressible
from squeezetune.errors import SqueezeError

CLASSIC_ORDER = ("structured", "prune", "finetune", "share", "finetune_centroids")
"""The stages of a classic (one key per stage) recipe, in the order they run."""


@dataclass(frozen=True)
class Step:
    """One stage of a recipe: its config and the label the report gives it."""

    label: str
    config: StageConfig

    @property
    def stage(self) -> str:
        return self.config.stage


@dataclass(frozen=True)
class Recipe:
    """An ordered list of stages and the final coding."""

    name: str = "custom"
    steps: tuple[Step, ...] = ()
    encode: EncodeConfig = field(default_factory=EncodeConfig)

    def __post_init__(self) -> None:
        labels = [s.label for s in self.steps]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise SqueezeError(f"recipe {self.name!r} has two stages labelled {repeated[0]!r}: expected unique labels")

    # -- reading and writing -----------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any) -> "Recipe":
        """Build and validate a recipe from plain data (parsed YAML or JSON), list or classic form."""
        if not isinstance(data, Mapping):
            raise SqueezeError(f"recipe is {type(data).__name__}: expected a mapping with name, stages and encode")
        name = data.get("name", "custom")
        if not isinstance(name, str) or not name:
            raise SqueezeError(f"recipe name={name!r}: expected a non-empty string")
        encode = EncodeConfig.from_dict(data.get("encode"), "encode")
        if "stages" in data:
            unknown = sorted(set(data) - {"name", "stages", "encode"})
            if unknown:
                raise SqueezeError(f"unknown key {unknown[0]!r} in recipe: a recipe with a stages list takes only name, stages, encode")
            return cls(name, _read_steps(data["stages"]), encode)
        unknown = sorted(set(data) - {"name", "encode", *CLASSIC_ORDER})
        if unknown:
            raise SqueezeError(f"unknown key {unknown[0]!r} in recipe: expected name, stages, encode or one of {list(CLASSIC_ORDER)}")
        return cls(name, _classic_steps(data), encode)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data in list form; ``Recipe.from_dict(r.to_dict()) == r``."""
        stages = []
        for step, default in zip(self.steps, _default_labels([s.stage for s in self.steps])):
            entry: dict[str, Any] = {step.stage: step.config.to_dict()}
            if step.label != default:
                entry["label"] = step.label
            stages.append(entry)
        return {"name": self.name, "stages": stages, "encode": self.encode.to_dict()}

    # -- questions ---------------------------------------------------------------------------

    def first(self, stage: str) -> StageConfig | None:
        """The config of the first stage named ``stage``, or ``None``."""
        return next((s.config for s in self.steps if s.stage == stage), None)

    def step(self, label: str) -> Step | None:
        return next((s for s in self.steps if s.label == label), None)

    def layer_names(self) -> set[str]:
        """Every layer the recipe names explicitly."""
        return set().union(*(s.config.layer_names() for s in self.steps)) if self.steps else set()

    def replace_stage(self, stage: str, **changes: Any) -> "Recipe":
        """The recipe with ``changes`` made to the first stage named ``stage``."""
        steps = list(self.steps)
        for i, s in enumerate(steps):
            if s.stage == stage:
                steps[i] = Step(s.label, replace(s.config, **changes))
                return replace(self, steps=tuple(steps))
        raise SqueezeError(f"recipe {self.name!r} has no {stage} stage")

    def validate(self, model: nn.Module, example: torch.Tensor) -> None:
        """Fail before any work if a stage cannot apply to ``model``.

        Stages are checked in order against a copy of the model that each stage's cheap
        :meth:`~squeezetune.compression.stages.StageConfig.preview` updates (pruning, so that
        sharing is checked against the weights it will keep; a decomposition, so that later stages
        see its factors). After a stage that changes the architecture and has no preview only names
        are checked: sizes depend on what that stage finds.
        """
        import copy

        work = copy.deepcopy(model)
        exact = True
        for step in self.steps:
            step.config.validate(work, example, exact=exact)
            if not exact:
                continue
            preview = step.config.preview(work, example)
            if preview is not None:
                work = preview
            elif step.config.changes_architecture:
                exact = False

    @property
    def data_free(self) -> bool:
        """True when no stage reads training data (see :meth:`StageConfig.needs_data`)."""
        return not any(s.config.needs_data() for s in self.steps if not s.config.is_noop())


def _default_labels(stages: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for s in stages:
        seen[s] = seen.get(s, 0) + 1
        out.append(s if seen[s] == 1 else f"{s}_{seen[s]}")
    return out


def _read_steps(raw: Any) -> tuple[Step, ...]:
    if not isinstance(raw, (list, tuple)):
        raise SqueezeError(f"recipe stages is {type(raw).__name__}: expected a list of {{stage: settings}} entries")
    names, configs, labels = [], [], []
    for i, entry in enumerate(raw):
        where = f"stages[{i}]"
        if not isinstance(entry, Mapping):
            raise SqueezeError(f"{where} is {type(entry).__name__}: expected a mapping {{stage: settings}}")
        keys = [k for k in entry if k != "label"]
        if len(keys) != 1:
            raise SqueezeError(f"{where} names {len(keys)} stages {keys}: expected exactly one stage and an optional label")
        stage = str(keys[0])
        if stage == "encode":
            raise SqueezeError(f"{where} is encode: put encode at the recipe's top level, it always runs last")
        settings, finetune = entry[stage], None
        if stage == "structured" and isinstance(settings, Mapping) and "finetune" in settings:  # as the classic form's structured.finetune
            settings = dict(settings)
            finetune = settings.pop("finetune")
        config = stage_config(stage).from_dict(settings, f"{where}.{stage}")
        label = entry.get("label")
        if label is not None and (not isinstance(label, str) or not label):
            raise SqueezeError(f"{where}.label={label!r}: expected a non-empty string")
        names.append(stage)
        configs.append(config)
        labels.append(label)
        if finetune is not None:  # labelled as in the classic form
            names.append("structured_finetune")
            configs.append(stage_config("finetune").from_dict(finetune, f"{where}.structured.finetune"))
            labels.append(f"{label}_finetune" if label else None)
    defaults = _default_labels(names)
    return tuple(Step(label or default, config) for label, default, config in zip(labels, defaults, configs))


def _classic_steps(data: Mapping[str, Any]) -> tuple[Step, ...]:
    steps: list[Step] = []
    for key in CLASSIC_ORDER:
        raw = data.get(key)
        if raw is None:
            continue
        if key == "structured":
            raw = dict(raw) if isinstance(raw, Mapping) else raw
            finetune = raw.pop("finetune", None) if isinstance(raw, dict) else None
            steps.append(Step("structured", stage_config("structured").from_dict(raw, "structured")))
            if finetune is not None:
                steps.append(Step("structured_finetune", stage_config("finetune").from_dict(finetune, "structured.finetune")))
            continue
        kind = "finetune" if key == "finetune_centroids" else key
        steps.append(Step(key, stage_config(kind).from_dict(raw, key)))
    return tuple(steps)


# -- built-in recipes ----------------------------------------------------------------------------

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


def dense_keep(numel: int) -> float:
    """Kept fraction of a non-convolution tensor under the generic rule: 10% from 100,000 weights
    up (the paper's fc layers), more for a smaller tensor, which has less to spare.

    >>> [dense_keep(n) for n in (400_000, 100_000, 12_500, 1_563, 10)]
    [0.1, 0.1, 0.168, 0.283, 0.5]
    """
    return round(min(0.5, 0.1 * (100_000 / max(numel, 1)) ** 0.25) if numel < 100_000 else 0.1, 3)


def generic_layer_rule(model: nn.Module) -> dict[str, dict[str, dict[str, Any]]]:
    """The generic Deep Compression settings for every compressible tensor of ``model``.

    Convolution kernels keep 50% at 8 bits, every other tensor :func:`dense_keep` at 5 bits, the last tensor
    (the classifier) 25% at 5 bits.
    """
    targets = compressible(model)
    names = list(targets)
    prune, share = {}, {}
    for name, t in targets.items():
        if name == names[-1]:
            prune[name], share[name] = {"keep_fraction": 0.25}, {"bits": 5}
        elif t.is_conv:
            prune[name], share[name] = {"keep_fraction": 0.5}, {"bits": 8}
        else:
            prune[name], share[name] = {"keep_fraction": dense_keep(t.numel)}, {"bits": 5}
    return {"prune": {"layers": prune}, "share": {"layers": share, "fit": True}}


def deep_compression(model_name: str, model: nn.Module) -> Recipe:
    """The ``deep-compression`` recipe for a model: the paper's table where it has one, else the generic rule."""
    per_layer = _PAPER.get(model_name) or generic_layer_rule(model)
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


MAX_RATES: dict[str, dict[str, Any]] = {
    "lenet300": {
        "keep": {"fc1": 0.016, "fc2": 0.04, "fc3": 0.2},
        "bits": {"fc1": 4, "fc2": 4, "fc3": 5},
        "prune": {"epochs": 30, "lr": 0.02, "group_lasso": 1e-5},
        "recover": {"epochs": 10, "lr": 0.01},
        "centroids": {"epochs": 4, "lr": 0.002},
    },
    "lenet5": {
        "keep": {"conv1": 0.5, "conv2": 0.04, "fc1": 0.004, "fc2": 0.08},
        "bits": {"conv1": 5, "conv2": 5, "fc1": 4, "fc2": 4},
        "prune": {"epochs": 24, "lr": 0.01, "group_lasso": 1e-5},
        "recover": {"epochs": 6, "lr": 0.005},
        "centroids": {"epochs": 4, "lr": 0.002},
    },
}
"""The ``max-compression`` settings of the built-in MNIST networks: final kept fraction and shared
bits per layer, the fine-tune that prunes (with its group-lasso strength), the one that recovers
after the neurons are removed, and the centroid fine-tune."""

GENERIC_BUDGET = 0.05
"""The ``max-compression`` generic rule's global kept fraction from 250,000 weights up, split by sensitivity."""


def generic_budget(numel: int) -> float:
    """The ``max-compression`` generic rule's global kept fraction for a model of ``numel``
    compressible weights: :data:`GENERIC_BUDGET` from 250,000 weights up (LeNet-300-100's size),
    more for a smaller model, which has less to spare (at 5% a 31,520-weight conv net lost 5 pt
    where 15% lost 0.8).

    >>> [generic_budget(n) for n in (430_500, 250_000, 62_500, 31_520, 1_000)]
    [0.05, 0.05, 0.1, 0.141, 0.5]
    """
    return round(min(0.5, GENERIC_BUDGET * (250_000 / max(numel, 1)) ** 0.5) if numel < 250_000 else GENERIC_BUDGET, 3)


GENERIC_SCHEDULE = {"prune": {"epochs": 24, "lr": 0.01, "group_lasso": 1e-5}, "recover": {"epochs": 6, "lr": 0.005}, "centroids": {"epochs": 4, "lr": 0.002}}


def max_compression(model_name: str, model: nn.Module) -> Recipe:
    """The ``max-compression`` recipe for a model: tuned rates where :data:`MAX_RATES` has them, else the generic rule.

    Stages: ``gradual_prune`` (the cubic schedule over 80% of a distilled fine-tune with a
    row/column group lasso), ``neurons``, a distilled fine-tune without the penalty
    (``finetune_recover``), ``share``, and the centroid fine-tune (``finetune_centroids``).
    """
    rates = MAX_RATES.get(model_name)
    if rates is not None:
        targets: dict[str, Any] = {"layers": {n: {"keep_fraction": f} for n, f in rates["keep"].items()}}
        share: dict[str, Any] = {"layers": {n: {"bits": b} for n, b in rates["bits"].items()}}
        schedule = rates
    else:
        tensors = compressible(model)
        targets = {"budget": {"keep_fraction": generic_budget(sum(t.numel for t in tensors.values())), "allocation": "sensitivity", "min_keep_fraction": 0.01}}
        last = list(tensors)[-1] if tensors else None
        share = {"layers": {n: {"bits": 5 if t.is_conv or n == last else 4} for n, t in tensors.items()}}
        schedule = GENERIC_SCHEDULE
    return Recipe.from_dict(
        {
            "name": "max-compression",
            "stages": [
                {"gradual_prune": {**targets, "finetune": {**schedule["prune"], "distill": True}, "ramp": 0.8}},
                {"neurons": {}},
                {"finetune": {**schedule["recover"], "distill": True}, "label": "finetune_recover"},
                {"share": {"init": "linear", **share, "fit": True}},
                {"finetune": {**schedule["centroids"], "distill": True}, "label": "finetune_centroids"},
            ],
            "encode": {"index_bits": "auto", "coder": "auto", "float_bits": 16},
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


def decomposition(macs_target: float = 0.5) -> Recipe:
    """The ``decomposition`` recipe: low-rank factors planned to ``macs_target``, then a distilled fine-tune."""
    return Recipe.from_dict(
        {
            "name": "decomposition",
            "stages": [
                {"decompose": {"method": "lowrank", "macs_target": macs_target, "allocation": "energy"}},
                {"finetune": {"epochs": 3, "lr": 0.01, "distill": True}},
            ],
            "encode": {"coder": "auto", "float_bits": 32},
        }
    )


def data_free_merge(remove_fraction: float = 0.25) -> Recipe:
    """The ``data-free-merge`` recipe: merge ``remove_fraction`` of every mergeable layer's neurons, reading no data."""
    return Recipe.from_dict(
        {
            "name": "data-free-merge",
            "stages": [{"merge": {"score": "saliency", "default": {"remove_fraction": remove_fraction}}}],
            "encode": {"coder": "auto", "float_bits": 32},
        }
    )


BUILTIN_RECIPES: dict[str, Callable[[str, nn.Module], Recipe]] = {
    "deep-compression": deep_compression,
    "max-compression": max_compression,
    "filter-pruning": lambda name, model: structured_pruning("l1"),
    "channel-pruning": lambda name, model: structured_pruning("lasso"),
    "decomposition": lambda name, model: decomposition(),
    "data-free-merge": lambda name, model: data_free_merge(),
}


def load_recipe(
    spec: str | Path | Recipe,
    model_name: str,
    model: nn.Module,
    *,
    macs_target: float | None = None,
    allocation: str | None = None,
    cost: str | None = None,
) -> Recipe:
    """A built-in recipe by name, or a YAML/JSON recipe file, for a model (``model_name`` keys the paper's tables).

    ``macs_target``, ``allocation`` and ``cost``, when given, replace those of the recipe's last
    stage that plans to a MAC target (``structured`` or ``decompose``; ``--macs-target`` on the
    command line); a recipe without one is an error. Both stages read the target as a fraction of
    the dense model's MACs (or with ``cost="latency"`` of its predicted latency), so the last one
    decides where the model ends.
    """
    if isinstance(spec, Recipe):
        recipe = spec
    elif str(spec) in BUILTIN_RECIPES:
        recipe = BUILTIN_RECIPES[str(spec)](model_name, model)
    else:
        path = Path(spec)
        if not path.is_file():
            raise SqueezeError(f"recipe {str(spec)!r} is neither a built-in ({', '.join(BUILTIN_RECIPES)}) nor an existing YAML file")
        from squeezetune._yaml import load_mapping

        recipe = Recipe.from_dict(load_mapping(path, "recipe file"))
    if macs_target is None and allocation is None and cost is None:
        return recipe
    targeted = [s for s in recipe.steps if "macs_target" in {f.name for f in fields(s.config)}]
    if not targeted:
        raise SqueezeError(
            f"recipe {recipe.name!r} has no structured stage (nor a decompose stage) for --macs-target/--allocation/--cost: "
            "expected filter-pruning, channel-pruning, decomposition or a recipe with a structured or decompose stage"
        )
    step = targeted[-1]
    from squeezetune.compression.stages import read_value

    changes: dict[str, Any] = {}
    if macs_target is not None:
        changes["macs_target"] = macs_target
    if allocation is not None:
        if changes.get("macs_target", step.config.macs_target) is None:
            raise SqueezeError(f"--allocation {allocation!r} needs a macs_target: recipe {recipe.name!r} sets its {step.stage} stage by hand")
        changes["allocation"] = read_value(typing.get_type_hints(type(step.config))["allocation"], allocation, "--allocation")
    if cost is not None:
        if changes.get("macs_target", step.config.macs_target) is None:
            raise SqueezeError(f"--cost {cost!r} needs a macs_target: recipe {recipe.name!r} sets its {step.stage} stage by hand")
        changes["cost"] = read_value(typing.get_type_hints(type(step.config))["cost"], cost, "--cost")
    steps = tuple(Step(s.label, replace(s.config, **changes)) if s is step else s for s in recipe.steps)
    return replace(recipe, steps=steps)


__all__ = [
    "BUILTIN_RECIPES",
    "CLASSIC_ORDER",
    "MAX_RATES",
    "Recipe",
    "Step",
    "data_free_merge",
    "decomposition",
    "deep_compression",
    "dense_keep",
    "generic_layer_rule",
    "load_recipe",
    "max_compression",
    "structured_pruning",
]
