"""Global average pooling in place of a large fully connected layer (Lin et al. 2014, "Network in network").

A ``Linear`` that reads a flattened C x H x W feature map (LeNet-5's ``fc1`` reads 50 x 4 x 4)
becomes ``Unflatten -> AdaptiveAvgPool2d(1) -> Flatten -> Linear(C, out)``: it sees each channel's
mean instead of every position, so its weights and MACs shrink H x W times. The layer's input
shape is found by tracing the model with ``torch.fx``.

Fitting, without data: each new weight is the sum of the old ones of its channel (exact when a
channel is constant over the map). With sampled activations: least squares from the pooled
features to the dense layer's outputs.

>>> from squeezetune.tasks.models import LeNet5
>>> model = LeNet5()
>>> technique = GlobalPool(map_shape(model, "fc1", (1, 1, 28, 28)))
>>> [type(m).__name__ for m in technique.fit(model.fc1, 0)]
['Unflatten', 'AdaptiveAvgPool2d', 'Flatten', 'Linear']
"""

from __future__ import annotations

import torch
from torch import nn

from squeezetune.compression._fit import least_squares
from squeezetune.compression.architecture import Factors
from squeezetune.compression.decomposition._base import Technique
from squeezetune.compression.measure import Example, as_example
from squeezetune.errors import SqueezeError

_FLATTENS = {torch.flatten, torch.reshape}
_FLATTEN_METHODS = {"flatten", "view", "reshape"}


def map_shape(model: nn.Module, name: str, example: Example) -> tuple[int, int, int] | str:
    """The ``(C, H, W)`` map that Linear ``name`` reads flattened, or why there is none (a phrase: "a layer ...")."""
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = torch.fx.symbolic_trace(model)
        ShapeProp(gm).propagate(as_example(example, next(model.parameters()).device))
    except Exception as exc:  # noqa: BLE001 - an untraceable model just has no pooling candidates
        return f"a layer of a model that torch.fx cannot trace ({type(exc).__name__})"
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == name]
    if len(calls) != 1 or not calls[0].args or not isinstance(calls[0].args[0], torch.fx.Node):
        return "a layer not called exactly once on one input"
    arg = calls[0].args[0]
    flattens = (
        (arg.op == "call_function" and arg.target in _FLATTENS)
        or (arg.op == "call_method" and arg.target in _FLATTEN_METHODS)
        or (arg.op == "call_module" and isinstance(gm.get_submodule(str(arg.target)), nn.Flatten))
    )
    source = arg.args[0] if arg.args else None
    if not flattens or not isinstance(source, torch.fx.Node) or "tensor_meta" not in source.meta:
        return "a layer whose input is not a flattened feature map"
    shape = tuple(source.meta["tensor_meta"].shape)
    if len(shape) != 4 or shape[2] * shape[3] < 2 or tuple(arg.meta["tensor_meta"].shape) != (shape[0], shape[1] * shape[2] * shape[3]):
        return f"a layer whose input is flattened from shape {shape}, not from a batch of C x H x W maps larger than 1 x 1"
    return int(shape[1]), int(shape[2]), int(shape[3])


class GlobalPool(Technique):
    """Global average pooling in front of a Linear that reads a ``shape = (C, H, W)`` map."""

    name = "pool"
    ranked = False

    def __init__(self, shape: tuple[int, int, int] | str) -> None:
        self.shape = shape

    def refuses(self, layer: nn.Module) -> str | None:
        from squeezetune.compression.decomposition.lowrank import _gathered

        if not isinstance(layer, nn.Linear) or _gathered(layer):
            return _gathered(layer) or f"a {type(layer).__name__} (expected a Linear that reads a flattened feature map)"
        if isinstance(self.shape, str):
            return self.shape
        return None

    def build(self, layer: nn.Module, rank: int = 0) -> Factors:
        if isinstance(self.shape, str):
            raise SqueezeError(f"global pooling cannot replace this layer: {self.shape}")
        c = self.shape[0]
        return Factors(nn.Unflatten(1, self.shape), nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c, layer.out_features, bias=layer.bias is not None))

    def fit(self, layer: nn.Module, rank: int = 0, scale: torch.Tensor | None = None) -> Factors:
        factors = self.build(layer).to(layer.weight.device)
        c = self.shape[0]
        with torch.no_grad():
            factors[3].weight.copy_(layer.weight.detach().reshape(layer.out_features, c, -1).sum(-1))
            if layer.bias is not None:
                factors[3].bias.copy_(layer.bias.detach())
        return factors

    def energy(self, layer: nn.Module, scale: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ones(1, dtype=torch.float64)

    def limit(self, layer: nn.Module) -> int:
        return 0

    def refit(self, factors: Factors, layer: nn.Module, inp: torch.Tensor, target: torch.Tensor, rows, scale: torch.Tensor | None = None) -> None:
        c = self.shape[0]
        pooled = inp.reshape(len(inp), c, -1).mean(-1)
        W, b = least_squares(pooled, target, intercept=layer.bias is not None)
        with torch.no_grad():
            factors[3].weight.copy_(W.to(factors[3].weight.dtype))
            if b is not None:
                factors[3].bias.copy_(b.to(factors[3].bias.dtype))
