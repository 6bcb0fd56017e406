"""The compression pipeline: prune -> fine-tune -> share -> fine-tune centroids -> encode.

``compress(task, recipe, out=...)`` runs a :class:`~squeezetune.compression.recipes.Recipe` on a
task's dense model, writes the container, decodes it back from the file and measures the decoded
model, so every accuracy and byte count in the report is that of the real file. It returns the
report (also written beside the container as ``<out stem>.report.json``).

>>> from squeezetune.tasks import get_task                      # doctest: +SKIP
>>> report = compress(get_task("lenet300-digits"), "deep-compression", out="m.sqz")  # doctest: +SKIP
>>> report["ratio"] > 20                                         # doctest: +SKIP
True
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from squeezetune.compression.coding import codec
from squeezetune.compression.coding.container import read_container, write_container
from squeezetune.compression.finetune import FinetuneConfig, evaluate, pick_device, train
from squeezetune.compression.unstructured.pruning import plain_state_dict, prunable_layers, prune_layer
from squeezetune.compression.recipes import Allocation, Recipe, StructuredConfig, StructuredMethod, load_recipe
from squeezetune.compression.unstructured.sharing import share_layer
from squeezetune.errors import SqueezeError
from squeezetune.tasks import Split, Task, builtin_task_names, get_task

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def dense_bytes(model: nn.Module) -> int:
    """fp32 bytes of every floating-point parameter and buffer that inference needs."""
    return sum(4 * t.numel() for t in plain_state_dict(model).values() if t.is_floating_point())


def _fingerprint(split: Split) -> str:
    h = hashlib.sha1(split.x.numpy().tobytes())
    h.update(split.y.numpy().tobytes())
    return h.hexdigest()[:12]


def default_cache_dir() -> Path:
    return Path(os.environ.get("SQUEEZETUNE_CACHE", Path.home() / ".cache" / "squeezetune"))


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``model``'s plain state dict as safetensors, atomically."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in plain_state_dict(model).items()}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_weights(task: Task, path: str | Path) -> nn.Module:
    """The task's model with weights from a safetensors file; a mismatch is a one-line error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise SqueezeError(f"weights file {str(path)!r} does not exist: expected a .safetensors file")
    try:
        state = load_file(path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise SqueezeError(f"{str(path)!r} is not a readable safetensors file: {exc}") from None
    model = task.build_model()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise SqueezeError(f"weights in {str(path)!r} do not fit task {task.name!r}: {first}") from None
    return model.eval()


def train_dense(task: Task, train_split: Split, *, device: torch.device | None = None, seed: int = 0, progress: Progress = _quiet) -> nn.Module:
    """Train the task's dense baseline from a fixed seed."""
    torch.manual_seed(seed)
    model = task.build_model()
    config = FinetuneConfig(epochs=task.epochs, lr=task.lr, batch_size=task.batch_size, weight_decay=task.weight_decay, seed=seed)
    return train(model, train_split, config, device=device, progress=lambda m: progress(f"dense {m}"))


def dense_model(
    task: Task,
    splits: tuple[Split, Split],
    *,
    dense: str | Path | None = None,
    cache_dir: str | Path | None = None,
    device: torch.device | None = None,
    seed: int = 0,
    progress: Progress = _quiet,
) -> nn.Module:
    """The dense baseline: loaded from ``dense``, else from the cache, else trained and cached."""
    if dense is not None:
        return load_weights(task, dense)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"{task.name.replace(':', '_').replace('/', '_')}-{_fingerprint(splits[0])}-s{seed}.safetensors"
    if path.is_file():
        progress(f"dense baseline from cache {path}")
        return load_weights(task, path)
    progress(f"training dense baseline for {task.name} ({task.epochs} epochs)")
    model = train_dense(task, splits[0], device=device, seed=seed, progress=progress)
    save_weights(model, path, metadata={"task": task.name})
    progress(f"dense baseline cached at {path}")
    return model


@dataclass
class Stage:
    stage: str
    accuracy: float
    bytes: int
    seconds: float


def validate_recipe(recipe: Recipe, model: nn.Module, input_shape: Sequence[int] | None = None) -> None:
    """Fail before any work if the recipe names a layer the model lacks or asks for impossible amounts.

    With ``input_shape`` (one example, batch dimension first) the structured stage's layers are
    checked too: each must head a channel group DepGraph can shrink, with a count that leaves a channel.
    """
    if input_shape is not None and recipe.structured is not None and recipe.structured.layers:
        from squeezetune.compression.structured._graph import StructureGraph
        from squeezetune.compression.structured.shrink import check_keep

        graph = StructureGraph(model, input_shape)
        config = recipe.structured.layers
        check_keep(graph.groups, {n: c.keep for n, c in config.items() if c.keep is not None}, graph)
        for name in (n for n, c in config.items() if c.lam is not None):
            graph.resolve(name)
    layers = prunable_layers(model)
    for name in sorted(recipe.layer_names()):
        if name not in layers:
            raise SqueezeError(f"unknown layer {name!r} in recipe {recipe.name!r}: expected one of {list(layers)}")
    for name, layer in layers.items():
        n = layer.weight.numel()
        alive = n
        setting = recipe.prune.for_layer(name) if recipe.prune is not None else None
        if setting is not None:
            amount = setting.resolve(n)
            keep = amount.get("keep")
            if keep is not None:
                if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= n:
                    raise SqueezeError(f"keep={keep!r} for layer {name!r} must be an integer in [1, {n}]")
                alive = keep
        share = recipe.share.for_layer(name) if recipe.share is not None else None
        if share is not None and (not isinstance(share.k, int) or not 2 <= share.k <= alive):
            raise SqueezeError(f"k={share.k!r} clusters for layer {name!r} must be an integer in [2, {alive}] (its surviving weights)")


def structured_prune(
    model: nn.Module,
    config: StructuredConfig,
    train_split: Split,
    eval_split: Split,
    *,
    device: torch.device,
    progress: Progress = _quiet,
) -> nn.Module:
    """Physically shrink ``model`` by channel pruning as ``config`` says; returns the smaller model."""
    from squeezetune.compression.structured.channel import ChannelPruneConfig, channel_prune
    from squeezetune.compression.structured.filters import filter_prune, sensitivity_analysis
    from squeezetune.compression.structured.shrink import plan_counts

    from squeezetune.compression.structured._graph import StructureGraph

    shape = (1, *train_split.x.shape[1:])
    graph = StructureGraph(copy.deepcopy(model), shape)  # the names the user gave, resolved to their groups
    keep = {graph.resolve(n): c.keep for n, c in config.layers.items() if c.keep is not None}
    lam = {graph.resolve(n): c.lam for n, c in config.layers.items() if c.lam is not None}
    if config.macs_target is not None:
        sensitivity = None
        if config.allocation is Allocation.SENSITIVITY:
            progress("sensitivity analysis (L1 filter pruning of each layer alone)")
            sensitivity = sensitivity_analysis(model, lambda m: evaluate(m, eval_split, device=device), input_shape=shape, progress=progress)
        planned = plan_counts(model, config.macs_target, config.allocation.value, sensitivity, round_to=config.round_to, input_shape=shape)
        keep = {**{n: k for n, k in planned.items() if n not in lam}, **keep}
    progress(f"{config.method.value} channel pruning of {len(keep) + len(lam)} layer groups")
    if config.method is StructuredMethod.L1:
        return filter_prune(model, keep, input_shape=shape).to(device)
    cfg = ChannelPruneConfig(keep=keep, lam=lam, reconstruct=config.reconstruct, images=config.images, points=config.points)
    pruned, reports = channel_prune(model, train_split.x, cfg, device=device, input_shape=shape, progress=progress)
    return pruned.to(device)


def compress(
    task: Task | str,
    recipe: Recipe | str,
    *,
    out: str | Path,
    data_dir: str | Path | None = None,
    dense: nn.Module | str | Path | None = None,
    splits: tuple[Split, Split] | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    progress: Progress = _quiet,
) -> dict[str, Any]:
    """Run ``recipe`` on ``task``'s dense model, write ``out`` (.sqz) and its report; return the report.

    ``dense`` is a model, a safetensors path, or ``None`` (train once and cache). ``splits`` lets
    a caller that already holds the data (the search) skip loading it again.
    """
    started = time.perf_counter()
    task = get_task(task) if isinstance(task, str) else task
    device = pick_device(device)
    out = Path(out)
    if splits is None:
        if task.needs_data_dir and data_dir is None:
            raise SqueezeError(f"task {task.name!r} needs --data-dir: expected a folder with MNIST idx files")
        splits = task.load_data(Path(data_dir) if data_dir is not None else None)
    train_split, eval_split = splits
    model = task.build_model()
    if isinstance(recipe, str):
        recipe = load_recipe(recipe, task.model, prunable_layers(model))
    validate_recipe(recipe, model, input_shape=(1, *train_split.x.shape[1:]))
    if isinstance(dense, nn.Module):
        teacher = dense
    else:
        teacher = dense_model(task, splits, dense=dense, device=device, seed=seed, progress=progress)
    teacher = teacher.to(device).eval()
    model.load_state_dict(teacher.state_dict())
    model.to(device)
    layers = prunable_layers(model)
    stages: list[Stage] = []

    spec: dict | None = None  # the shrunk architecture, once structured pruning has run

    def _encode(m: nn.Module) -> codec.Encoded:
        e = recipe.encode
        return codec.encode_model(m, task=task.name, index_bits=e.index_bits, coder=e.coder.value, float_bits=e.float_bits, spec=spec, positions=e.positions.value)

    def record(stage: str, t0: float) -> None:
        acc = evaluate(model, eval_split, device=device)
        size = dense_bytes(model) if stage == "dense" else _encode(model).file_bytes
        stages.append(Stage(stage, acc, size, round(time.perf_counter() - t0, 3)))
        progress(f"{stage:<20} accuracy {acc:.4f}  bytes {size:,}")

    def finetune(stage: str, config: FinetuneConfig | None, label: str) -> None:
        if config is not None and config.epochs:
            t0 = time.perf_counter()
            train(model, train_split, config, teacher=teacher, device=device, progress=lambda m: progress(f"{label} {m}"))
            record(stage, t0)

    record("dense", time.perf_counter())
    d_bytes = stages[0].bytes
    dense_arch = _architecture(model, train_split)

    if recipe.structured is not None:
        t0 = time.perf_counter()
        from squeezetune.compression.structured.shrink import shrunk_spec

        model = structured_prune(model, recipe.structured, train_split, eval_split, device=device, progress=progress)
        spec = shrunk_spec(model)
        layers = prunable_layers(model)
        validate_recipe(recipe, model)
        record("structured", t0)
        finetune("structured_finetune", recipe.structured.finetune, "structured finetune")

    if recipe.prune is not None:
        t0 = time.perf_counter()
        for name, layer in layers.items():
            setting = recipe.prune.for_layer(name)
            if setting is not None:
                prune_layer(layer, granularity=recipe.prune.granularity, name=name, **setting.resolve(layer.weight.numel()))
        record("prune", t0)
    finetune("finetune", recipe.finetune, "finetune")
    if recipe.share is not None:
        t0 = time.perf_counter()
        for name, layer in layers.items():
            setting = recipe.share.for_layer(name)
            if setting is not None:
                share_layer(layer, k=setting.k, init=recipe.share.init, max_iter=recipe.share.max_iter, seed=seed, name=name)
        record("share", t0)
        finetune("finetune_centroids", recipe.finetune_centroids, "centroids")

    t0 = time.perf_counter()
    codec.round_floats(model, recipe.encode.float_bits)
    encoded = _encode(model)
    file_bytes = write_container(out, encoded.sections)
    decoded = decode_file(out, task=task)
    accuracy = evaluate(decoded, eval_split, device=device)
    stages.append(Stage("encode", accuracy, file_bytes, round(time.perf_counter() - t0, 3)))
    progress(f"{'encode (decoded)':<20} accuracy {accuracy:.4f}  bytes {file_bytes:,}")

    arch = _architecture(decoded, train_split)
    latency = compare_latency_report(teacher, decoded, train_split, device=device)
    report = {
        "task": task.name,
        "recipe": recipe.to_dict(),
        "dense_accuracy": stages[0].accuracy,
        "accuracy": accuracy,
        "dense_bytes": d_bytes,
        "compressed_bytes": file_bytes,
        "ratio": d_bytes / file_bytes,
        "stages": [vars(s) for s in stages],
        "layers": [vars(r) for r in encoded.layers],
        "dense_macs": dense_arch["macs"],
        "macs": arch["macs"],
        "dense_params": dense_arch["params"],
        "params": arch["params"],
        **latency,
        "raw_bytes": encoded.raw_bytes,
        "meta_bytes": encoded.meta_bytes,
        "device": str(device),
        "seconds": round(time.perf_counter() - started, 3),
        "container": str(out),
    }
    write_json(report_path(out), report)
    return report


def report_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".report.json")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def decode_bytes(data: bytes, *, task: Task | None = None) -> nn.Module:
    """Rebuild the model held in container bytes (the task is read from the file unless given)."""
    from squeezetune.compression.coding.container import unpack_sections

    sections = unpack_sections(data)
    return _decode(sections, task)


def decode_file(path: str | Path, *, task: Task | None = None) -> nn.Module:
    """Rebuild the model held in a container file."""
    return _decode(read_container(path), task)


def _decode(sections: dict[str, bytes], task: Task | None) -> nn.Module:
    meta = codec.read_meta(sections)
    if task is None:
        if meta["task"] not in builtin_task_names():
            raise SqueezeError(f"container was made for task {meta['task']!r}, which is not built in: pass its task (--task module:factory)")
        task = get_task(meta["task"])
    model = task.build_model()
    if "spec" in meta:
        model = _apply_checked_spec(model, meta["spec"])
    return codec.decode_sections(sections, model)


def _apply_checked_spec(model: nn.Module, spec: Any) -> nn.Module:
    """Shrink ``model`` to a container's spec, refusing any size above the task's dense model."""
    from squeezetune.compression.structured.shrink import apply_spec, shrunk_spec

    current = shrunk_spec(model)["modules"]
    if not isinstance(spec, dict) or not isinstance(spec.get("modules"), dict):
        raise SqueezeError("container spec is malformed: expected a shrunk-model spec with a 'modules' table")
    for name, entry in spec["modules"].items():
        dense = current.get(name)
        if dense is None or not isinstance(entry, dict):
            raise SqueezeError(f"container spec names layer {name!r}, which the task's model does not have")
        for key, value in entry.items():
            if key != "type" and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= dense.get(key, 0)):
                raise SqueezeError(f"container spec gives layer {name!r} {key}={value!r}: expected an integer in [1, {dense.get(key)}]")
    return apply_spec(model, spec)


def _architecture(model: nn.Module, split: Split) -> dict[str, int]:
    from squeezetune.compression.structured.shrink import macs, params

    return {"macs": macs(model, (1, *split.x.shape[1:])), "params": params(model)}


def compare_latency_report(dense: nn.Module, compressed: nn.Module, split: Split, *, device: torch.device, repeats: int = 20) -> dict[str, float]:
    """Median forward-pass latency of the dense and the decoded model, timed in turns in this process.

    CPU figures always; the same figures on the GPU as ``*_gpu`` keys when ``device`` is CUDA.
    """
    from squeezetune.compression.structured.shrink import compare_latency

    shape = tuple(split.x.shape[1:])
    out: dict[str, float] = {}
    devices = [torch.device("cpu")] + ([device] if device.type == "cuda" else [])
    for dev in devices:
        suffix = "" if dev.type == "cpu" else "_gpu"
        for batch in (1, 64):
            times = compare_latency({"dense": dense, "compressed": compressed}, batch=batch, device=dev, repeats=repeats, input_shape=shape)
            out[f"dense_latency_ms_b{batch}{suffix}"] = round(times["dense"], 4)
            out[f"latency_ms_b{batch}{suffix}"] = round(times["compressed"], 4)
    dense.to(device)
    compressed.to(device)
    return out
