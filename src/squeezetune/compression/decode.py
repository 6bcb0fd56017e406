"""Decoding a container back into a runnable model of its task.

The container names its task; the decoder builds the task's architecture, applies the stored
architecture spec when a stage changed it (resized or replaced layers, built from an allow-list of
module types and refusing any size above the task's dense model), and
loads every tensor bit-exactly (:func:`~squeezetune.compression.coding.codec.decode_sections`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from squeezetune.compression.coding import codec
from squeezetune.compression.coding.container import read_container, unpack_sections
from squeezetune.errors import SqueezeError
from squeezetune.tasks import Task, builtin_task_names, get_task


def decode_bytes(data: bytes, *, task: Task | None = None) -> nn.Module:
    """Rebuild the model held in container bytes (the task is read from the file unless given)."""
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
    """Rebuild a container's architecture on the task's ``model``, refusing anything above its size.

    ``squeezetune.modules/1`` specs (replaced layers, see :mod:`squeezetune.compression.architecture`)
    and the older ``squeezetune.shrunk/1`` (resized layers only) both read.
    """
    from squeezetune.compression.architecture import ARCH_FORMAT, apply_architecture
    from squeezetune.compression.structured.shrink import apply_spec, shrunk_spec

    if isinstance(spec, dict) and spec.get("format") == ARCH_FORMAT:
        return apply_architecture(model, spec)

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
