"""Tasks: a model factory paired with its data.

A task is named by a built-in name (``lenet300-mnist``, ``lenet5-mnist``, ``lenet300-digits``,
...) or by a ``module:factory`` string whose factory returns a :class:`Task`, so a user's own
model and data plug in without changing squeezetune::

    # mypkg/tasks.py
    def my_task() -> Task:
        return Task(name="mine", model="mynet", build_model=MyNet, load_data=my_loader)

    squeezetune compress --task mypkg.tasks:my_task ...
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import torch
from torch import nn

from squeezetune.errors import SqueezeError
from squeezetune.tasks.cnn import MobileNetV2, ResNet20, VGGNet
from squeezetune.tasks.data import Split, hold_out, load_digits, load_mnist
from squeezetune.tasks.models import LeNet5, LeNet300
from squeezetune.tasks.shapes import (
    Conv1dNet,
    RGBNet,
    RowLSTM,
    TinyTransformer,
    load_digits_1d,
    load_digits_rgb32,
    load_digits_rows,
    load_digits_tokens,
)

__all__ = ["Task", "Split", "get_task", "builtin_task_names", "example_input", "hold_out"]


@dataclass(frozen=True)
class Task:
    """A model architecture and the data it is trained and evaluated on.

    ``load_data(data_dir)`` returns ``(train, eval)`` splits; ``data_dir`` is ``None`` unless the
    user passed ``--data-dir``. ``model`` names the architecture; built-in recipes key on it.
    ``example`` is one batch-1 input (a tensor of any shape and dtype, e.g. token ids) or a
    callable returning one; without it the first training input is used (see :func:`example_input`).
    Tracing, MACs, latency and export run on it.
    """

    name: str
    model: str
    build_model: Callable[[], nn.Module]
    load_data: Callable[[Path | None], tuple[Split, Split]]
    needs_data_dir: bool = False
    epochs: int = 20
    lr: float = 0.05
    batch_size: int = 64
    weight_decay: float = 1e-4
    example: Union[torch.Tensor, Callable[[], torch.Tensor], None] = None

    def splits(self, data_dir: str | Path | None, *, check_train: bool = True) -> tuple[Split, Split]:
        """``load_data(data_dir)``, checked: the ``(train, eval)`` splits, or a one-line error.

        Every command reads a task's data through this, so a loader that needs a folder it was not
        given, raises, or returns anything but two :class:`Split` fails the same way everywhere. Each
        split's inputs and labels are checked (``check_train=False``: the eval split's alone), and
        labels of another integer dtype come back as int64.
        """
        if self.needs_data_dir and data_dir is None:
            raise SqueezeError(f"task {self.name!r} needs --data-dir: expected the folder its data is read from (MNIST idx files for the built-in MNIST tasks)")
        try:
            splits = self.load_data(Path(data_dir) if data_dir is not None else None)
        except SqueezeError:
            raise
        except Exception as exc:  # the user's loader failed
            raise SqueezeError(f"task {self.name!r}: load_data raised {type(exc).__name__}: {str(exc) or '(no message)'} (SQUEEZETUNE_DEBUG=1 shows the traceback)") from exc
        if not (isinstance(splits, (tuple, list)) and len(splits) == 2 and all(isinstance(s, Split) for s in splits)):
            raise SqueezeError(f"task {self.name!r}: load_data returned {_describe(splits)}: expected (train, eval), two squeezetune.tasks.Split(x, y)")
        train = _checked(self.name, "train", splits[0]) if check_train else splits[0]  # unchecked: never read (a data-free recipe)
        held = _checked(self.name, "eval", splits[1])
        if not check_train:
            return train, held
        if train.x.dim() != held.x.dim() or train.x.dtype.is_floating_point != held.x.dtype.is_floating_point:
            kinds = f"the train inputs are {train.x.dtype} with {train.x.dim()} dims and the eval inputs {held.x.dtype} with {held.x.dim()}"
            raise SqueezeError(f"task {self.name!r}: {kinds}: expected the same dims, and floats in both or integers in both")
        return train, held

    def check_model(self, model: nn.Module, *splits: Split) -> None:
        """One forward pass on two examples of each split (train, then eval): the model must return a
        tensor of class scores, one row per example, with a column for every label; else a one-line error."""
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        was_training = model.training
        model.eval()
        try:
            for which, split in zip(("train", "eval"), splits):
                if len(split) == 0:
                    continue
                x = split.x[:2].to(device)
                try:
                    with torch.no_grad():
                        out = model(x)
                except Exception as exc:  # the user's forward failed on the task's own data
                    raise SqueezeError(f"task {self.name!r}: the model fails on the {which} inputs ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no message'})") from None
                if not isinstance(out, torch.Tensor):
                    raise SqueezeError(f"task {self.name!r}: the model's forward returns {_describe(out)}: expected one tensor of class scores (logits), shape (batch, classes)")
                if out.dim() != 2 or len(out) != len(x):
                    raise SqueezeError(f"task {self.name!r}: the model returns shape {tuple(out.shape)} for {len(x)} examples: expected class scores of shape ({len(x)}, classes)")
                top = int(split.y.max())
                if top >= out.shape[1]:
                    raise SqueezeError(f"task {self.name!r}: the {which} split has label {top} but the model scores {out.shape[1]} classes: expected labels in [0, {out.shape[1]})")
        finally:
            model.train(was_training)


def _checked(task: str, which: str, split: Split) -> Split:
    """``split`` as training reads it (labels as int64), or a one-line error naming what is off."""
    x, y = split.x, split.y
    where = f"task {task!r}: the {which} split's"
    for name, t in (("x", x), ("y", y)):
        if not isinstance(t, torch.Tensor):
            raise SqueezeError(f"{where} {name} is {type(t).__name__}: expected a torch tensor (torch.as_tensor converts a numpy array)")
    if y.dim() != 1:
        raise SqueezeError(f"{where} labels have shape {tuple(y.shape)}: expected one class index per example, shape (n,) (one-hot labels: y.argmax(1))")
    if x.dim() < 1 or len(x) != len(y):
        raise SqueezeError(f"{where} x holds {len(x) if x.dim() else 0} examples and y {len(y)} labels: expected as many of each")
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise SqueezeError(f"{where} labels are {y.dtype}: expected integer class indices (y.long())")
    if len(y) and int(y.min()) < 0:
        raise SqueezeError(f"{where} labels include {int(y.min())}: expected class indices >= 0")
    if x.dtype == torch.float64:
        raise SqueezeError(f"{where} inputs are float64: expected float32, as the model's weights are (x.float())")
    return split if y.dtype == torch.int64 else Split(x, y.long())


def _describe(value) -> str:
    """A short name of what a loader returned, e.g. ``tuple of (TensorDataset, TensorDataset)``."""
    if isinstance(value, (tuple, list)):
        return f"{type(value).__name__} of ({', '.join(type(v).__name__ for v in value)})"
    return type(value).__name__


_BUILTIN: dict[str, Task] = {
    "lenet300-mnist": Task("lenet300-mnist", "lenet300", LeNet300, load_mnist, needs_data_dir=True),
    "lenet5-mnist": Task("lenet5-mnist", "lenet5", LeNet5, load_mnist, needs_data_dir=True, lr=0.01),
    "lenet300-digits": Task("lenet300-digits", "lenet300", LeNet300, load_digits),
    "lenet5-digits": Task("lenet5-digits", "lenet5", LeNet5, load_digits, lr=0.01),
    # Convolutional networks for structured (channel) pruning, see squeezetune.tasks.cnn.
    "resnet20-mnist": Task("resnet20-mnist", "resnet20", ResNet20, load_mnist, needs_data_dir=True, epochs=8, lr=0.1, weight_decay=5e-4),
    "vgg-mnist": Task("vgg-mnist", "vgg", VGGNet, load_mnist, needs_data_dir=True, epochs=8, lr=0.05, weight_decay=5e-4),
    "mobilenetv2-mnist": Task("mobilenetv2-mnist", "mobilenetv2", MobileNetV2, load_mnist, needs_data_dir=True, epochs=10, lr=0.1, weight_decay=4e-5),
    "resnet20-digits": Task("resnet20-digits", "resnet20", ResNet20, load_digits, epochs=20, lr=0.1, weight_decay=5e-4),
    "vgg-digits": Task("vgg-digits", "vgg", VGGNet, load_digits, epochs=20, lr=0.05, weight_decay=5e-4),
    "mobilenetv2-digits": Task("mobilenetv2-digits", "mobilenetv2", MobileNetV2, load_digits, epochs=25, lr=0.1, weight_decay=4e-5),
    # Other input shapes and layer types, see squeezetune.tasks.shapes.
    "conv1d-digits": Task("conv1d-digits", "conv1d", Conv1dNet, load_digits_1d, epochs=30, lr=0.05),
    "transformer-digits": Task("transformer-digits", "transformer", TinyTransformer, load_digits_tokens, epochs=30, lr=0.05),
    "lstm-digits": Task("lstm-digits", "lstm", RowLSTM, load_digits_rows, epochs=40, lr=0.1),
    "cnn32-digits": Task("cnn32-digits", "cnn32", RGBNet, load_digits_rgb32, epochs=20, lr=0.05),
}


def builtin_task_names() -> list[str]:
    return sorted(_BUILTIN)


def example_input(task: Task, train: Split | None = None) -> torch.Tensor:
    """The task's batch-1 example input: its own ``example``, else the first training input."""
    example = task.example() if callable(task.example) else task.example
    if example is None:
        if train is None or len(train) == 0:
            raise SqueezeError(f"task {task.name!r} has no example input and no training data to take one from: expected Task(example=...)")
        example = train.x[:1]
    if not isinstance(example, torch.Tensor) or example.dim() < 1 or len(example) < 1:
        raise SqueezeError(f"task {task.name!r}: example input is {type(example).__name__}: expected a tensor with a batch dimension")
    return example[:1].detach().cpu()


def get_task(name: str, *, search_path: str | Path | None = None) -> Task:
    """A built-in task by name, or the :class:`Task` returned by a ``module:factory`` string.

    ``module`` is imported as Python would import it, and also from ``search_path`` (default: the
    working folder), so ``--task mytasks:make`` finds ``./mytasks.py`` from the console script as
    it would with ``python -m``. The folder is searched after the installed packages.
    """
    if name in _BUILTIN:
        return _BUILTIN[name]
    if ":" not in name:
        raise SqueezeError(f"unknown task {name!r}: expected one of {builtin_task_names()} or module:factory")
    module_name, _, attr = name.partition(":")
    folder = str(Path(search_path if search_path is not None else Path.cwd()).resolve())
    if folder not in sys.path:
        sys.path.append(folder)
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SqueezeError(f"cannot load task factory {name!r}: {exc} (searched the installed packages and {folder!r})") from None
    except Exception as exc:  # the user's module raised while importing
        raise SqueezeError(f"task module {module_name!r} raised {type(exc).__name__} on import: {exc}") from None
    try:
        task = factory()
    except Exception as exc:
        raise SqueezeError(f"task factory {name!r} raised {type(exc).__name__}: {exc}") from None
    if not isinstance(task, Task):
        raise SqueezeError(f"task factory {name!r} returned {type(task).__name__}: expected a squeezetune.tasks.Task")
    return task
