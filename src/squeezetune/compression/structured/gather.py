"""A linear layer that reads only some features of its input, so that unused inputs cost nothing.

When every weight of some columns of a linear layer is zero (input pixels no kept weight reads,
say), :func:`gather_unused_inputs` replaces the layer by a :class:`GatheredLinear`: the same
layer over the features it still reads, with a boolean ``inputs`` buffer naming them among the
original ones. The model still takes its original input; the columns are gone from the weight
tensor, from the container (their positions no longer need coding; the buffer costs about one
bit per original feature, entropy coded) and from the MACs.

A container describes such a layer as a ``GatheredLinear`` with its original input width
(``dense_features``; see :mod:`squeezetune.compression.architecture`), from which the decoder
rebuilds it. A layer is gathered only where the weights it drops take more memory than its ``inputs``
buffer (one byte per feature: a quarter of a float32 weight), so the rebuilt layer never
allocates more than the task's. :func:`ungather` turns it back into a plain linear layer with zero columns, which
DepGraph can trace.

>>> layer = nn.Linear(6, 2)
>>> with torch.no_grad():
...     layer.weight[:, [1, 4]] = 0
>>> small = GatheredLinear.from_linear(layer, layer.weight.abs().sum(0) > 0)
>>> small.weight.shape, bool(torch.allclose(small(torch.ones(1, 6)), layer(torch.ones(1, 6))))
(torch.Size([2, 4]), True)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from squeezetune.compression.architecture import register_module_type
from squeezetune.errors import SqueezeError


class GatheredLinear(nn.Linear):
    """``y = W x[..., inputs] + b``: a linear layer over the features of its input that ``inputs`` names."""

    def __init__(self, dense_features: int, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        if not 1 <= in_features <= dense_features:
            raise SqueezeError(f"a gathered linear layer reads {in_features} of {dense_features} features: expected 1 to {dense_features}")
        inputs = torch.zeros(dense_features, dtype=torch.bool, device=device)
        inputs[:in_features] = True
        self.register_buffer("inputs", inputs)
        self.register_buffer("index", torch.arange(in_features, device=device), persistent=False)

    @property
    def dense_features(self) -> int:
        return self.inputs.numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.index_select(-1, self.index), self.weight, self.bias)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        inputs = state_dict.get(prefix + "inputs")
        if inputs is not None:
            read = int(inputs.sum()) if inputs.dtype == torch.bool else -1
            if read != self.in_features or inputs.numel() != self.dense_features:
                raise SqueezeError(f"layer {prefix[:-1]!r} selects {read} of {inputs.numel()} input features: expected {self.in_features} of {self.dense_features}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.index = torch.nonzero(self.inputs).squeeze(1).to(self.inputs.device)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, of {self.dense_features} input features"

    @classmethod
    @torch.no_grad()
    def from_linear(cls, layer: nn.Linear, keep: torch.Tensor) -> "GatheredLinear":
        """``layer`` restricted to the input features where ``keep`` is true."""
        keep = keep.to(torch.bool).cpu()
        w = layer.weight
        out = cls(layer.in_features, int(keep.sum()), layer.out_features, bias=layer.bias is not None, device=w.device, dtype=w.dtype)
        out.inputs.copy_(keep.to(w.device))
        out.index = torch.nonzero(out.inputs).squeeze(1)
        out.weight.copy_(w[:, out.index])
        if layer.bias is not None:
            out.bias.copy_(layer.bias)
        return out

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """The same function as a plain linear layer over every input feature (zero columns where unread)."""
        w = self.weight
        out = nn.Linear(self.dense_features, self.out_features, bias=self.bias is not None, device=w.device, dtype=w.dtype)
        out.weight.zero_()
        out.weight[:, self.index] = w
        if self.bias is not None:
            out.bias.copy_(self.bias)
        return out


def _buffer_cost(features: int) -> int:
    """The ``inputs`` buffer in float32-sized elements (a bool takes a byte)."""
    return -(-features // 4)


register_module_type(
    GatheredLinear,
    {"dense_features": "size", "in_features": "size", "out_features": "size", "bias": "bool"},
    lambda d: GatheredLinear(**d),
    lambda d: d["out_features"] * (d["in_features"] + d["bias"]) + _buffer_cost(d["dense_features"]),
    lambda m: {"dense_features": m.dense_features, "in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
    lambda d, layer: (
        None
        if d["dense_features"] <= getattr(layer, "in_features", 0)
        else f"dense_features={d['dense_features']}: expected at most {getattr(layer, 'in_features', 0)}, the input width of the task's layer"
    ),
)


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def gather_unused_inputs(model: nn.Module, x: torch.Tensor | None = None) -> dict[str, tuple[int, int]]:
    """Replace every plain linear layer with all-zero input columns by a :class:`GatheredLinear`, in
    place, where the weights that go take more memory than the ``inputs`` buffer it adds.

    With inputs ``x``, a replacement stands only if the model still gives the same outputs on
    them (eval mode): a module that reads its layer's weight itself instead of calling it (as
    ``nn.TransformerEncoderLayer``'s fused inference path does) keeps the plain layer.

    Returns ``{layer: (features read, features before)}`` for each layer replaced. Layers must
    carry no parametrization (bake masks first).
    """
    before = eval_outputs(model, x) if x is not None else None
    done = {}
    for name, m in list(model.named_modules()):
        if type(m) is not nn.Linear or parametrize.is_parametrized(m):
            continue
        used = m.weight.detach().ne(0).any(0)
        if not bool(used.any()) or m.out_features * int((~used).sum()) < _buffer_cost(m.in_features):
            continue
        _replace(model, name, GatheredLinear.from_linear(m, used))
        if before is not None and not same_outputs(model, x, before):
            _replace(model, name, m)
            continue
        done[name] = (int(used.sum()), m.in_features)
    return done


def eval_outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` in eval mode, without autograd."""
    model.eval()
    with torch.no_grad():
        return model(x)


def same_outputs(model: nn.Module, x: torch.Tensor, before: torch.Tensor) -> bool:
    """Whether ``model`` still runs on ``x`` and gives ``before`` (up to float rounding)."""
    try:
        after = eval_outputs(model, x)
    except Exception:  # noqa: BLE001 - a layer some module reads past its forward: not gathered
        return False
    return after.shape == before.shape and float((after - before).abs().max()) <= 1e-4 * (1.0 + float(before.abs().max()))


def ungather(model: nn.Module) -> nn.Module:
    """Turn every :class:`GatheredLinear` back into a plain linear layer, in place; returns ``model``."""
    for name, m in list(model.named_modules()):
        if isinstance(m, GatheredLinear):
            _replace(model, name, m.to_linear())
    return model
