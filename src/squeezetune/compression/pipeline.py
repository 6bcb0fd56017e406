"""The compression pipeline: a recipe's stages in order, then encode, decode and measure.

``compress(task, recipe, out=...)`` runs a :class:`~squeezetune.compression.recipes.Recipe` on a
task's dense model: each stage (:mod:`squeezetune.compression.stages`) in turn, the model measured
after each one (accuracy, and the bytes its container would take); then it writes the container,
decodes it back from the file and measures the decoded model, so every accuracy and byte count
in the report is that of the real file. It returns the :class:`~squeezetune.compression.report.Report`
(also written beside the container as ``<out stem>.report.json``).

For example (it trains the dense baseline on first use, then fine-tunes: a minute or two)::

    from squeezetune.tasks import get_task

    report = compress(get_task("lenet300-digits"), "deep-compression", out="m.sqz")
    print(report.ratio, report.accuracy)
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

from squeezetune._io import atomic_write_text
from squeezetune.compression import measure
from squeezetune.compression.architecture import architecture_spec
from squeezetune.compression.baseline import chance_note, dense_bytes, dense_model
from squeezetune.compression.coding import codec
from squeezetune.compression.coding.container import write_container
from squeezetune.compression.decode import decode_file
from squeezetune.compression.finetune import evaluate, pick_device
from squeezetune.compression.latency import LatencyConfig, speedup, time_in_rounds
from squeezetune.compression.recipes import Recipe, load_recipe
from squeezetune.compression.report import Report, StageRecord, TensorRecord
from squeezetune.compression.stages import Context, EpochEvent, apply_stage
from squeezetune.compression.tensors import compressible, copy_model, kept_raw
from squeezetune.errors import SqueezeError
from squeezetune.tasks import Split, Task, example_input, get_task

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


class Encoder:
    """Encodes the model as the recipe's ``encode`` says, with the architecture spec it needs
    (:func:`~squeezetune.compression.architecture.architecture_spec`: every layer that differs from the task's)."""

    def __init__(self, task: Task, recipe: Recipe, dense: nn.Module) -> None:
        self.task, self.config = task.name, recipe.encode
        self.dense = copy.deepcopy(dense).cpu()

    def __call__(self, model: nn.Module) -> codec.Encoded:
        e = self.config
        spec = architecture_spec(model, self.dense)
        return codec.encode_model(model, task=self.task, index_bits=e.index_bits, coder=e.coder.value, float_bits=e.float_bits, spec=spec, positions=e.positions.value)


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
    on_epoch: Callable[[EpochEvent], None] | None = None,
    latency: bool | LatencyConfig = True,
    validation: Split | None = None,
) -> Report:
    """Run ``recipe`` on ``task``'s dense model, write ``out`` (.sqz) and its report; return the report.

    ``dense`` is a model, a safetensors path, or ``None`` (train once and cache). ``splits`` lets
    a caller that already holds the data (the search) skip loading it again. ``on_epoch`` receives
    every training epoch of every stage (see :class:`~squeezetune.compression.stages.Context`).
    ``latency`` is how the dense and the decoded model are timed (a
    :class:`~squeezetune.compression.latency.LatencyConfig`: time budget, CPU threads; ``True``: the
    defaults) or ``False``: not at all. With a ``validation`` split (one carved from
    the training data, as a search selects on), the report adds the dense and the decoded model's
    accuracy on it as ``dense_val_accuracy`` and ``val_accuracy``.

    A data-free recipe (:attr:`Recipe.data_free`: no stage reads training data, e.g.
    ``data-free-merge``) runs its stages with no data at all: they get neither split, the example
    input is the task's own or the first *evaluation* input (its shape and type only), and every
    accuracy is measured after the last stage. Give ``dense`` then, or the baseline is trained (or
    read from the cache) from the training split as usual.
    """
    started = time.perf_counter()
    task = get_task(task) if isinstance(task, str) else task
    device = pick_device(device)
    out = Path(out)
    if not out.parent.is_dir():
        raise SqueezeError(f"out={str(out)!r}: its folder {str(out.parent)!r} does not exist (checked before any training)")
    model = task.build_model()
    recipe = load_recipe(recipe, task.model, model)
    data_free = recipe.data_free
    if splits is None:
        splits = task.splits(data_dir, check_train=not (data_free and dense is not None))  # read only to train a baseline
    train_split, eval_split = splits
    example = example_input(task, eval_split if data_free else train_split)
    recipe.validate(model, example)
    teacher = dense if isinstance(dense, nn.Module) else dense_model(task, splits, dense=dense, device=device, seed=seed, progress=progress)
    teacher = teacher.to(device).eval()
    if not data_free:
        task.check_model(teacher, train_split)
    model.load_state_dict(teacher.state_dict())
    model.to(device)
    encode = Encoder(task, recipe, model)
    ctx = Context(
        teacher=teacher,
        example=example,
        train=None if data_free else train_split,
        eval=None if data_free else eval_split,
        device=device,
        seed=seed,
        progress=progress,
        on_epoch=on_epoch,
        latency=latency if isinstance(latency, LatencyConfig) else None,
    )
    pending: list[tuple[StageRecord, nn.Module]] = []  # data-free: models to measure after the last stage

    def record(stage: str, t0: float, size: int | None = None) -> StageRecord:
        size = size if size is not None else encode(model).file_bytes
        if data_free:
            rec = StageRecord(stage, float("nan"), size, round(time.perf_counter() - t0, 3))
            pending.append((rec, copy_model(model)))
            progress(f"{stage:<20} bytes {size:,} (accuracy measured after the last stage: data-free)")
            return rec
        acc = evaluate(model, eval_split, device=device)
        progress(f"{stage:<20} accuracy {acc:.4f}  bytes {size:,}")
        return StageRecord(stage, acc, size, round(time.perf_counter() - t0, 3))

    stages = [record("dense", time.perf_counter(), dense_bytes(model))]
    note = chance_note(stages[0].accuracy, eval_split)  # before the stages: a model that learnt nothing is worth no run
    if note:
        progress(note)
    dense_arch = _architecture(model, example)
    for i, step in enumerate(recipe.steps):
        if step.config.is_noop():
            continue
        t0 = time.perf_counter()
        ctx.label = step.label
        ctx.snapshot = functools.partial(_snapshot, rest=recipe.steps[i + 1 :], ctx=ctx, encode=encode, task=task, float_bits=recipe.encode.float_bits)
        model = apply_stage(model, step.config, ctx)
        stages.append(record(step.label, t0))
    for rec, snapshot in pending:
        rec.accuracy = evaluate(snapshot, eval_split, device=device)
        progress(f"{rec.stage:<20} accuracy {rec.accuracy:.4f}")
        note = chance_note(rec.accuracy, eval_split) if rec is stages[0] else None
        if note:
            progress(note)
    pending.clear()

    t0 = time.perf_counter()
    codec.round_floats(model, recipe.encode.float_bits)
    encoded = encode(model)
    file_bytes = write_container(out, encoded.sections)
    decoded = decode_file(out, task=task)
    accuracy = evaluate(decoded, eval_split, device=device)
    stages.append(StageRecord("encode", accuracy, file_bytes, round(time.perf_counter() - t0, 3)))
    progress(f"{'encode (decoded)':<20} accuracy {accuracy:.4f}  bytes {file_bytes:,}")

    arch = _architecture(decoded, example)
    report = Report(
        task=task.name,
        recipe=recipe.to_dict(),
        dense_accuracy=stages[0].accuracy,
        accuracy=accuracy,
        dense_bytes=stages[0].bytes,
        compressed_bytes=file_bytes,
        stages=stages,
        tensors=tensor_records(model, encoded.layers),
        dense_macs=dense_arch["macs"],
        macs=arch["macs"],
        dense_params=dense_arch["params"],
        params=arch["params"],
        latency=compare_latency_report(teacher, decoded, example, device=device, config=latency if isinstance(latency, LatencyConfig) else None) if latency else {},
        val_accuracy=evaluate(decoded, validation, device=device) if validation is not None else None,
        dense_val_accuracy=evaluate(teacher, validation, device=device) if validation is not None else None,
        raw_bytes=encoded.raw_bytes,
        meta_bytes=encoded.meta_bytes,
        device=str(device),
        seconds=round(time.perf_counter() - started, 3),
        container=str(out),
    )
    write_json(report_path(out), report.to_dict())
    return report


def _snapshot(model: nn.Module, *, rest, ctx: Context, encode: Encoder, task: Task, float_bits: int) -> tuple[nn.Module, int]:
    """``model`` as a file would hold it if the recipe's training ended now: a copy with the later
    stages that neither train nor reshape the model applied (sharing, say), rounded, coded and
    decoded from the bytes; and the file's size."""
    from squeezetune.compression.coding.container import pack_sections
    from squeezetune.compression.decode import decode_bytes

    work = copy_model(model)
    quiet = dataclasses.replace(ctx, on_epoch=None, progress=_quiet, snapshot=None)
    for step in rest:
        if not (step.config.trains or step.config.changes_architecture or step.config.is_noop()):
            work = apply_stage(work, step.config, quiet)
    codec.round_floats(work, float_bits)
    data = pack_sections(encode(work).sections)
    return decode_bytes(data, task=task).to(ctx.device), len(data)


def tensor_records(model: nn.Module, coded: list[TensorRecord]) -> list[TensorRecord]:
    """One record per parameter tensor of ``model``: the coded ones as the codec reports them,
    every other one as ``raw`` with the reason."""
    by_name = {t.name: t for t in coded}
    targets = {t.key: t for t in compressible(model).values()}
    raw = kept_raw(model)
    out = []
    for module_name, module in model.named_modules():
        if "parametrizations" in module_name.split("."):
            continue
        own = [t.attr for t in targets.values() if t.module is module]  # weights first, then biases and the rest
        for attr in dict.fromkeys(own + [a for a, _ in module.named_parameters(recurse=False)]):
            key = f"{module_name}.{attr}" if module_name else attr
            target = targets.get(key)
            tensor = getattr(module, attr)
            if target is not None and target.name in by_name:
                out.append(by_name[target.name])
                continue
            why = raw.get(key, "not pruned or shared by the recipe")
            kind = parametrize.type_before_parametrizations(module).__name__
            out.append(TensorRecord(name=target.name if target else key, kind=kind, shape=list(tensor.shape), action="raw", why=why, weights=tensor.numel(), kept=tensor.numel()))
    return out


def report_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".report.json")


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temp file, then rename)."""
    atomic_write_text(path, json.dumps(data, indent=2))


def _architecture(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    return {"macs": measure.macs(model, example), "params": measure.params(model)}


def compare_latency_report(
    dense: nn.Module | None,
    compressed: nn.Module,
    example: torch.Tensor,
    *,
    device: torch.device,
    config: LatencyConfig | None = None,
) -> dict[str, float]:
    """The report's latency figures: the dense and the decoded model timed in rounds in this process
    (:func:`~squeezetune.compression.latency.speedup`) at batch 1 and 64.

    ``dense_latency_ms_b1``, ``latency_ms_b1`` (median milliseconds per pass), ``speedup_b1`` with
    its ~95% interval ``speedup_b1_low``, ``speedup_b1_high``, the same for ``b64``, on the CPU
    always and as ``..._gpu`` figures (``speedup_b64_gpu_low``) when ``device`` is CUDA; and
    ``latency_threads``, the CPU threads used. ``config.budget_s`` caps the whole, spread over the
    measurements. Without ``dense`` only ``compressed`` is timed (``latency_ms_*``, no speed-ups).
    """
    config = config or LatencyConfig()
    devices = [torch.device("cpu")] + ([device] if device.type == "cuda" else [])
    plan = [(dev, batch) for dev in devices for batch in (1, 64)]
    out: dict[str, float] = {}
    start = time.perf_counter()
    for i, (dev, batch) in enumerate(plan):
        suffix = "" if dev.type == "cpu" else "_gpu"
        share = config.budget_s if config.budget_s is None else max(0.0, config.budget_s - (time.perf_counter() - start)) / (len(plan) - i)
        part = dataclasses.replace(config, budget_s=share)
        if dense is None:
            t = time_in_rounds({"compressed": compressed}, batch=batch, device=dev, example=example, config=part)
            out[f"latency_ms_b{batch}{suffix}"] = round(t.median("compressed"), 4)
            threads = t.threads
            continue
        s = speedup(dense, compressed, batch=batch, device=dev, example=example, config=part)
        out[f"dense_latency_ms_b{batch}{suffix}"] = round(s.dense_ms, 4)
        out[f"latency_ms_b{batch}{suffix}"] = round(s.compressed_ms, 4)
        out[f"speedup_b{batch}{suffix}"] = round(s.ratio, 4)
        out[f"speedup_b{batch}{suffix}_low"] = round(s.low, 4)
        out[f"speedup_b{batch}{suffix}_high"] = round(s.high, 4)
        threads = s.threads
    out["latency_threads"] = threads
    return out
