"""The dense baseline a compression starts from, and plain weight files.

:func:`dense_model` loads the baseline from a safetensors file, else from the cache
(``~/.cache/squeezetune`` or ``$SQUEEZETUNE_CACHE``, keyed by task, data, architecture, training
settings and seed), else trains it
once from a fixed seed and caches it. Weight files are safetensors, written atomically; no pickle.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from squeezetune._io import atomic_write_bytes
from squeezetune.compression.finetune import FinetuneConfig, train
from squeezetune.compression.unstructured.pruning import plain_state_dict
from squeezetune.errors import SqueezeError
from squeezetune.tasks import Split, Task

Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def dense_bytes(model: nn.Module) -> int:
    """fp32 bytes of every floating-point parameter and buffer that inference needs (a tensor
    tied to several layers counts once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for t in plain_state_dict(model).values():
        where = (t.untyped_storage().data_ptr(), t.storage_offset())
        if t.is_floating_point() and where not in seen:
            seen.add(where)
            total += 4 * t.numel()
    return total


def _fingerprint(split: Split) -> str:
    h = hashlib.sha1(split.x.numpy().tobytes())
    h.update(split.y.numpy().tobytes())
    return h.hexdigest()[:12]


def _recipe_key(task: Task) -> str:
    """What the cached baseline was trained as: the model's tensor names and shapes and the task's
    training settings, so editing either trains a new baseline instead of reusing a stale one."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):  # no weights, no draw from the global RNG
            model = task.build_model()
    except Exception:  # noqa: BLE001 - an __init__ that needs real values (.item(), .to("cpu")): build it for real
        with torch.random.fork_rng():
            model = task.build_model()
    h = hashlib.sha1(repr(sorted((k, _shape(v), str(v.dtype)) for k, v in model.state_dict().items())).encode())
    h.update(repr((task.epochs, task.lr, task.batch_size, task.weight_decay)).encode())
    return h.hexdigest()[:8]


def _shape(t: torch.Tensor) -> tuple[int, ...] | None:
    try:
        return tuple(t.shape)
    except Exception:  # noqa: BLE001 - a lazy layer's weight has no shape before its first call
        return None


def default_cache_dir() -> Path:
    return Path(os.environ.get("SQUEEZETUNE_CACHE", Path.home() / ".cache" / "squeezetune"))


def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write ``model``'s plain state dict as safetensors, atomically."""
    from safetensors.torch import save

    # a copy of each tensor: safetensors refuses tensors that share memory, as tied weights do
    state = {k: v.detach().cpu().clone().contiguous() for k, v in plain_state_dict(model).items()}
    atomic_write_bytes(path, save(state, metadata=metadata))


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


CHANCE_MARGIN = 0.02
"""A dense model within this much of always answering the most common label has learnt nothing
(within half the rest, for a split where one label holds over 96%)."""


def chance_note(accuracy: float, split: Split, *, what: str = "evaluation") -> str | None:
    """A one-line note when the dense model's ``accuracy`` on ``split`` is no better than always
    answering the split's most common label (a learning rate too high, too few epochs): compressing
    such a model, or searching over it, measures nothing. ``None`` for a model that learnt."""
    if len(split) == 0 or not accuracy == accuracy:
        return None
    counts = torch.bincount(split.y.long())
    rate = float(counts.max()) / len(split)
    if accuracy > rate + min(CHANCE_MARGIN, (1.0 - rate) / 2):
        return None
    return (
        f"note: the dense model reads {accuracy:.4f} on the {len(split):,} {what} items, no better than always answering label {int(counts.argmax())} ({rate:.4f}): "
        "it has learnt nothing to compress; check the task's lr, epochs and data"
    )


def train_dense(task: Task, train_split: Split, *, device: torch.device | None = None, seed: int = 0, progress: Progress = _quiet, eval_split: Split | None = None) -> nn.Module:
    """Train the task's dense baseline from a fixed seed (the model checked first on both splits)."""
    torch.manual_seed(seed)
    model = task.build_model()
    task.check_model(model.to(device) if device is not None else model, train_split, *([eval_split] if eval_split is not None else []))
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
        model = load_weights(task, dense)
        task.check_model(model, splits[1])  # the training split is checked where it is read
        return model
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"{task.name.replace(':', '_').replace('/', '_')}-{_fingerprint(splits[0])}-{_recipe_key(task)}-s{seed}.safetensors"
    if path.is_file():
        progress(f"dense baseline from cache {path}")
        model = load_weights(task, path)
        task.check_model(model, splits[1])
        return model
    progress(f"training dense baseline for {task.name} ({task.epochs} epochs)")
    model = train_dense(task, splits[0], device=device, seed=seed, progress=progress, eval_split=splits[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, path, metadata={"task": task.name})
    progress(f"dense baseline cached at {path}")
    return model
