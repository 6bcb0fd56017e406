"""Measuring a model: parameters and multiply-accumulates, on the task's example input.

Everything here takes an *example*: one batch-1 input of the task (images, token ids, any dtype)
or, for convenience, the shape of a float one. Nothing assumes 28x28 images.

* :func:`params` -- parameter count;
* :func:`input_shapes` -- the input shape of named layers;
* :func:`layer_macs` / :func:`macs` -- multiply-accumulates of one forward pass, per layer: linear
  and convolutional layers (transposed too), multi-head attention (projections and the two
  attention products), recurrent layers (every gate, every step); norms, activations, pooling,
  adds and embedding look-ups are not counted; any other module that has a
  ``count_macs(inputs, output)`` method counts itself (strided kernel sparsity's convolution);
* wall time of forward passes, and speed-ups with an interval: :mod:`squeezetune.compression.latency`.

>>> from squeezetune.tasks.cnn import ResNet20
>>> macs(ResNet20(), (1, 1, 28, 28)) > 30_000_000
True
"""

from __future__ import annotations

import math
from typing import Sequence, Union

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

DEFAULT_INPUT_SHAPE = (1, 1, 28, 28)

Example = Union[torch.Tensor, Sequence[int]]
"""A batch-1 example input of the model (a tensor of any dtype: images, token ids), or the shape of a
float one (zeros)."""


def as_example(example: Example, device: torch.device | str | None = None) -> torch.Tensor:
    """``example`` as a tensor on ``device`` (a shape becomes zeros of that shape)."""
    if isinstance(example, torch.Tensor):
        return example.detach().to(device) if device is not None else example.detach()
    return torch.zeros(tuple(int(d) for d in example), device=device)


def batch_of(example: Example, batch: int, device: torch.device | str | None = None) -> torch.Tensor:
    """A batch of ``batch`` inputs like ``example``: its first item repeated (a shape: random normal)."""
    if isinstance(example, torch.Tensor):
        one = example.detach()[:1].to(device)
        return one.expand(batch, *one.shape[1:]).contiguous()
    return torch.randn((batch, *tuple(example)[1:]), device=device)


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def params(model: nn.Module) -> int:
    """Number of parameters (every element of every parameter tensor; buffers not counted)."""
    return sum(p.numel() for p in model.parameters())


def input_shapes(model: nn.Module, names: list[str], example: Example) -> dict[str, tuple[int, ...]]:
    """The batch-1 input shape of each named layer on ``example``."""
    shapes: dict[str, tuple[int, ...]] = {}

    def keep(name: str):
        def hook(module: nn.Module, args: tuple, output) -> None:
            shapes.setdefault(name, tuple(args[0].shape))

        return hook

    hooks = [model.get_submodule(n).register_forward_hook(keep(n)) for n in names]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            p = next(model.parameters(), None)
            model(as_example(example, p.device if p is not None else None))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return shapes


def _rnn_macs(m: nn.RNNBase, inputs: tuple) -> int:
    x = inputs[0]
    if isinstance(x, nn.utils.rnn.PackedSequence):
        steps = int(x.data.shape[0])
    else:
        steps = int(x.numel() // x.shape[-1])  # time steps x batch
    gates = {"LSTM": 4, "GRU": 3}.get(m.mode, 1)
    hidden = m.proj_size or m.hidden_size
    dirs = 2 if m.bidirectional else 1
    total = 0
    for layer in range(m.num_layers):
        width = m.input_size if layer == 0 else hidden * dirs
        total += dirs * steps * gates * m.hidden_size * (width + hidden)
        if m.proj_size:
            total += dirs * steps * m.hidden_size * m.proj_size
    return total


def _attention_macs(m: nn.MultiheadAttention, inputs: tuple) -> int:
    q, k = inputs[0], inputs[1]
    e = m.embed_dim
    lq = q.numel() // q.shape[-1]  # query tokens x batch
    lk = k.numel() // k.shape[-1]
    seq_k = k.shape[1] if m.batch_first and k.dim() == 3 else k.shape[0]
    return lq * e * e + lk * (m.kdim + m.vdim) * e + 2 * lq * seq_k * e + lq * e * e


def layer_macs(model: nn.Module, example: Example = DEFAULT_INPUT_SHAPE) -> dict[str, int]:
    """Multiply-accumulates of each linear, convolutional, attention and recurrent layer for one
    forward pass of ``example``, by module name (see the module doc for what counts)."""
    counts: dict[str, int] = {}

    def hook(name: str):
        def fn(m: nn.Module, inputs, output) -> None:
            if isinstance(m, _ConvNd):
                kernel = math.prod(m.kernel_size)
                if m.transposed:  # every input element meets out_channels/groups x kernel weights
                    n = inputs[0].numel() * (m.out_channels // m.groups) * kernel
                else:
                    n = output.numel() * (m.in_channels // m.groups) * kernel
            elif isinstance(m, nn.Linear):
                n = output.numel() * m.in_features
            elif isinstance(m, nn.MultiheadAttention):
                n = _attention_macs(m, inputs)
            elif callable(getattr(m, "count_macs", None)):
                n = m.count_macs(inputs, output)
            else:
                n = _rnn_macs(m, inputs)
            counts[name] = counts.get(name, 0) + int(n)

        return fn

    kinds = (_ConvNd, nn.Linear, nn.MultiheadAttention, nn.RNNBase)
    handles = []
    for name, m in model.named_modules():
        counted = isinstance(m, kinds) or callable(getattr(m, "count_macs", None))
        if counted and not _inside_attention(name, model):
            handles.append(m.register_forward_hook(hook(name)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(as_example(example, _device_of(model)))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return counts


def _inside_attention(name: str, model: nn.Module) -> bool:
    """An attention's ``out_proj`` is counted with the attention (its forward never calls the module)."""
    parent, _, attr = name.rpartition(".")
    return attr == "out_proj" and isinstance(model.get_submodule(parent), nn.MultiheadAttention)


def macs(model: nn.Module, example: Example = DEFAULT_INPUT_SHAPE) -> int:
    """Multiply-accumulates of one forward pass of ``example`` (the sum of :func:`layer_macs`)."""
    return sum(layer_macs(model, example).values())
