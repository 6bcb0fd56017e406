"""Training and fine-tuning, optionally by distillation from the uncompressed teacher.

Compression state lives in the model itself (pruning masks and shared-weight codebooks are
``torch.nn.utils.parametrize`` parametrizations, see :mod:`squeezetune.compression.unstructured.pruning` and
:mod:`squeezetune.compression.unstructured.sharing`), so this loop needs no special cases: pruned weights get
zero gradient and stay exactly zero, and a shared layer's centroids move by the sum of their
members' gradients.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from squeezetune.compression.stages import Context, StageConfig, register_stage
from squeezetune.compression.structured.group_lasso import GroupLasso, LassoGroups
from squeezetune.errors import SqueezeError
from squeezetune.tasks.data import Split

Progress = Callable[[str], None]


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: the one asked for, else CUDA when present, else the CPU.

    A device this machine does not have (``cuda`` without a CUDA GPU, ``cuda:3`` with two) or a
    malformed name is a one-line :class:`SqueezeError`, before any work starts.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if isinstance(device, torch.device):
        return device
    expected = "expected cpu, cuda, cuda:<index> or mps"
    try:
        picked = torch.device(device)
    except (RuntimeError, TypeError):
        raise SqueezeError(f"device {device!r} is not a device name: {expected}") from None
    if picked.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise SqueezeError(f"device {device!r}: this machine has no CUDA GPU that torch {torch.__version__} can use; expected cpu")
        if picked.index is not None and picked.index >= count:
            raise SqueezeError(f"device {device!r}: this machine has {count} CUDA GPU(s); expected an index in [0, {count - 1}]")
    elif picked.type == "mps":
        if not torch.backends.mps.is_available():
            raise SqueezeError(f"device {device!r}: MPS is not available on this machine; expected cpu")
    elif picked.type != "cpu":
        raise SqueezeError(f"device {device!r} is not supported: {expected}")
    return picked


@dataclass(frozen=True)
class FinetuneConfig(StageConfig):
    """SGD with momentum and a cosine learning-rate decay; ``distill`` adds a teacher's soft targets.

    With distillation the loss is ``alpha * T^2 * KL(student/T || teacher/T) + (1 - alpha) * CE``.
    The ``finetune`` stage trains whatever the model holds: pruned weights stay zero, shared
    weights move only through their centroids. ``group_lasso`` > 0 adds a group-lasso penalty of
    that strength on the rows and/or columns (``group_lasso_groups``) of every compressible tensor
    (:mod:`squeezetune.compression.structured.group_lasso`), so that survivors cluster into few
    neurons.
    """

    stage: ClassVar[str] = "finetune"
    trains: ClassVar[bool] = True
    epochs: int = 10
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    distill: bool = False
    temperature: float = 4.0
    alpha: float = 0.7
    seed: int = 0
    group_lasso: float = 0.0
    group_lasso_groups: LassoGroups = LassoGroups.BOTH

    def is_noop(self) -> bool:
        return self.epochs == 0

    def __post_init__(self) -> None:
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise SqueezeError(f"epochs={self.epochs!r} must be an integer >= 0")
        if not self.lr > 0:
            raise SqueezeError(f"lr={self.lr!r} must be > 0")
        if not 0 <= self.momentum < 1:
            raise SqueezeError(f"momentum={self.momentum!r} must be in [0, 1)")
        if not self.weight_decay >= 0:
            raise SqueezeError(f"weight_decay={self.weight_decay!r} must be >= 0")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise SqueezeError(f"batch_size={self.batch_size!r} must be an integer >= 1")
        if not self.temperature > 0:
            raise SqueezeError(f"temperature={self.temperature!r} must be > 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise SqueezeError(f"alpha={self.alpha!r} must be in [0, 1]")
        if not self.group_lasso >= 0:
            raise SqueezeError(f"group_lasso={self.group_lasso!r} must be >= 0 (the penalty's strength)")


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, device: torch.device | None = None, batch_size: int = 1000) -> torch.Tensor:
    """Logits of ``model`` on ``x``, computed in batches on ``device``; returned on the CPU."""
    device = pick_device(device)
    model.eval()
    return torch.cat([model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])


def evaluate(model: nn.Module, data: Split, *, device: torch.device | None = None, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on ``data`` as a fraction in [0, 1]."""
    logits = predict(model, data.x, device=device, batch_size=batch_size)
    return float((logits.argmax(1) == data.y).float().mean())


def train(
    model: nn.Module,
    data: Split,
    config: FinetuneConfig,
    *,
    teacher: nn.Module | None = None,
    device: torch.device | None = None,
    progress: Progress | None = None,
    after_step: Callable[[], None] | None = None,
    epoch_end: Callable[[int, float], None] | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
) -> nn.Module:
    """Train ``model`` in place on ``data``; returns it.

    ``teacher`` is needed when ``config.distill`` is set; its logits over the training set are
    computed once. ``after_step`` runs after every optimizer step (structured pruning uses it
    to hold zeroed channels); ``epoch_end(epoch, mean loss)`` after every epoch. ``penalty()``, when
    given, is added to every step's loss (soft weight-sharing's prior; the caller steps any
    parameters of its own in ``after_step``).

    A plain training (no ``after_step``, no ``penalty``) guards against divergence: an epoch whose
    mean loss is not finite or ends above :func:`diverged`'s bound over the loss the model started
    with (a centroid fine-tune of a 1-bit layer, where each centroid moves by the sum of thousands
    of gradients, can leap to chance level in one epoch) is run again from its start at half the
    learning rate, up to :data:`RETRIES` times, and then raises :class:`SqueezeError`. Training
    with hooks (pruning schedules, penalties), whose loss may rightly rise, raises it as soon as
    the loss becomes NaN or infinite.
    """
    if config.epochs == 0 or len(data) == 0:
        return model
    device = pick_device(device)
    model.to(device)
    soft = None
    if config.distill:
        if teacher is None:
            raise SqueezeError("distill=True needs a teacher model: expected the dense model to be given")
        soft = predict(teacher.to(device), data.x, device=device).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(config.seed)
    lasso = GroupLasso(model, config.group_lasso, config.group_lasso_groups) if config.group_lasso > 0 else None
    x_all, y_all = data.x.to(device), data.y.to(device)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        logits = model(x_all[idx])
        loss = F.cross_entropy(logits, y_all[idx])
        if soft is not None:
            t = config.temperature
            kd = F.kl_div(F.log_softmax(logits / t, 1), F.softmax(soft[idx] / t, 1), reduction="batchmean")
            loss = config.alpha * t * t * kd + (1.0 - config.alpha) * loss
        return loss

    guard = after_step is None and penalty is None
    if guard:
        model.eval()
        with torch.no_grad():
            start = float(batch_loss(torch.arange(min(len(data), 2048), device=device)))
    epoch, retries = 0, 0
    while epoch < config.epochs:
        saved = copy.deepcopy((model.state_dict(), opt.state_dict(), sched.state_dict())) if guard else None
        model.train()
        order = torch.randperm(len(data), generator=gen).to(device)
        total = 0.0
        for i in range(0, len(data), config.batch_size):
            idx = order[i : i + config.batch_size]
            loss = batch_loss(idx)
            if penalty is not None:
                loss = loss + penalty()
            if not torch.isfinite(loss):
                if guard:
                    total = math.inf
                    break
                raise SqueezeError(f"training loss became {loss.item()} in epoch {epoch + 1}: expected a finite loss (lower the lr={config.lr})")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if lasso is not None:
                lasso.step(opt.param_groups[0]["lr"] / (1.0 - config.momentum))  # momentum's effective step
            sched.step()
            if after_step is not None:
                after_step()
            total += loss.item() * len(idx)
        mean = total / len(data)
        if saved is not None and diverged(start, mean):
            model.load_state_dict(saved[0])
            opt.load_state_dict(saved[1])
            sched.load_state_dict(saved[2])
            if retries == RETRIES:
                raise SqueezeError(
                    f"training loss became {mean:.4g} in epoch {epoch + 1} (from {start:.4g}) at every learning rate down to {config.lr * 0.5**RETRIES:g}: expected a lower lr than {config.lr}"
                )
            retries += 1
            for group in opt.param_groups:
                group["lr"] *= 0.5  # the cosine schedule scales what it is given, so the rest of it halves too
            if progress is not None:
                progress(f"epoch {epoch + 1}/{config.epochs} loss {mean:.4f} from {start:.4f}: diverged; run again at half the learning rate")
            continue
        if progress is not None:
            progress(f"epoch {epoch + 1}/{config.epochs} loss {mean:.4f}")
        if epoch_end is not None:
            epoch_end(epoch + 1, mean)
        epoch += 1
    model.eval()
    return model


RETRIES = 4
"""How many times a diverged epoch is run again, each time at half the learning rate."""


def diverged(start: float, loss: float) -> bool:
    """Whether an epoch's mean ``loss`` says training diverged from a model whose loss was ``start``:
    not finite, or above ``3 * start + 1`` (a distilled classifier at chance level is near 20).

    >>> diverged(0.05, 0.2), diverged(0.05, 19.2), diverged(2.3, 2.0), diverged(0.1, float("nan"))
    (False, True, False, True)
    """
    return not math.isfinite(loss) or loss > 3.0 * start + 1.0


def train_in(
    ctx: Context,
    model: nn.Module,
    config: FinetuneConfig,
    *,
    after_step: Callable[[], None] | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
    epoch_offset: int = 0,
    epochs: int | None = None,
    note: Callable[[], str] | None = None,
) -> nn.Module:
    """:func:`train` as a stage runs it: the training split, teacher and device from ``ctx``, progress
    and every epoch reported through it (as epoch ``epoch_offset + e`` of ``epochs``, for a stage
    that trains more than once). ``note()`` is appended to each epoch's progress line."""
    total = epochs if epochs is not None else config.epochs
    return train(
        model,
        ctx.need_train(ctx.label or "finetune"),
        config,
        teacher=ctx.teacher,
        device=ctx.device,
        progress=lambda m: ctx.progress(f"{ctx.label} {m}{note() if note is not None else ''}"),
        after_step=after_step,
        epoch_end=lambda epoch, loss: ctx.epoch_end(model, epoch_offset + epoch, total, loss),
        penalty=penalty,
    )


@register_stage(FinetuneConfig)
def finetune(model: nn.Module, config: FinetuneConfig, ctx: Context) -> nn.Module:
    """Fine-tune ``model`` on the training split, distilling from the dense teacher if asked."""
    if config.epochs == 0:
        return model
    return train_in(ctx, model, config)
