"""Least squares on sampled activations: how a smaller layer is fitted to the layer it replaces.

Channel pruning's reconstruction, the decompositions and strided kernel sparsity all fit a layer
the same way: run ``images`` training inputs through the model being rebuilt (so that errors of
layers already replaced are corrected, not accumulated) and through the reference model (the
model as the stage found it), take the new layer's input patches and the reference layer's
outputs at ``points`` sampled positions per image, and solve the normal equations.

>>> import torch
>>> X = torch.randn(200, 5, dtype=torch.float64)
>>> W, b = least_squares(X, X @ torch.ones(5, 2, dtype=torch.float64) + 3.0, intercept=True)
>>> bool(torch.allclose(W, torch.ones(2, 5, dtype=torch.float64), atol=1e-6)), bool(torch.allclose(b, torch.full((2,), 3.0, dtype=torch.float64)))
(True, True)
"""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace
from typing import Any, Callable

import torch
from torch import nn

from squeezetune.compression.structured._sampling import patches, run_until, sample_rows
from squeezetune.errors import SqueezeError

CHECK_IMAGES = 64
"""Images held out of every fit, on which a least-squares refit must beat the start it refines."""
ROWS_PER_UNKNOWN = 4
"""A convolution's rows are sampled at ``points`` positions per image, or more (up to every position)
so that there are this many rows per weight of a patch: fewer rows over-fit the sample."""
RIDGE = 1e-8
"""Ridge on the column-normalised normal equations: scale-free, and well-posed for collinear inputs."""


def ridge_solve(AtA: torch.Tensor, AtT: torch.Tensor) -> torch.Tensor:
    """The solution ``w`` of ``AtA w = AtT``, with a tiny ridge on the column-normalised system."""
    norm = AtA.diagonal().clamp_min(1e-30).sqrt()
    scaled = AtA / norm[:, None] / norm[None, :] + RIDGE * torch.eye(len(AtA), dtype=AtA.dtype, device=AtA.device)
    return torch.linalg.solve(scaled, AtT / norm[:, None]) / norm[:, None]


def with_intercept(AtA: torch.Tensor, AtT: torch.Tensor, x_sum: torch.Tensor, t_sum: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The normal equations with a constant column appended (``x_sum``: column sums of the inputs,
    ``t_sum``: of the targets, ``n``: rows); its solution's last row is the intercept."""
    x_sum = x_sum.reshape(1, -1)
    corner = torch.full((1, 1), float(n), dtype=AtA.dtype, device=AtA.device)
    AtA = torch.cat([torch.cat([AtA, x_sum.T], 1), torch.cat([x_sum, corner], 1)], 0)
    return AtA, torch.cat([AtT, t_sum.reshape(1, -1)], 0)


def least_squares(X: torch.Tensor, T: torch.Tensor, *, intercept: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``W`` (outputs x inputs) and intercept ``b`` minimising ``||X W^T + b - T||`` (float64)."""
    X, T = X.double(), T.double()
    AtA, AtT = X.T @ X, X.T @ T
    if intercept:
        AtA, AtT = with_intercept(AtA, AtT, X.sum(0), T.sum(0), len(X))
    sol = ridge_solve(AtA, AtT)
    return sol[: X.shape[1]].T, (sol[X.shape[1]] if intercept else None)


def relative_error(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Squared error over the targets' variance (0: exact; 1: no better than their mean)."""
    return float(((pred - target) ** 2).sum() / ((target - target.mean(0)) ** 2).sum().clamp_min(1e-30))


def channel_rows(t: torch.Tensor) -> torch.Tensor:
    """A layer's outputs (batch, channels, ...) as rows of channels, float64."""
    return t.double().movedim(1, -1).reshape(-1, t.shape[1])


def as_conv2d(m: nn.Module, inp: torch.Tensor, out: torch.Tensor):
    """A Conv1d seen as a Conv2d of height 1 (its geometry, input and output), for :func:`patches`."""
    if not isinstance(m, nn.Conv1d):
        return m, inp, out
    view = SimpleNamespace(padding=(0, m.padding[0]), stride=(1, m.stride[0]), dilation=(1, m.dilation[0]), kernel_size=(1, m.kernel_size[0]))
    return view, inp.unsqueeze(2), out.unsqueeze(2)


def plain_conv_refusal(layer: nn.Module, kinds: tuple[type[nn.Module], ...]) -> str | None:
    """Why ``layer`` is not an ungrouped, integer zero-padded convolution of ``kinds`` (a phrase), or ``None``."""
    if not isinstance(layer, kinds):
        return f"a {type(layer).__name__} (expected {' or '.join(k.__name__ for k in kinds)})"
    if layer.groups != 1:
        return f"a grouped convolution (groups={layer.groups})"
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        return f"padding={layer.padding!r} mode {layer.padding_mode!r} (expected integer zero padding)"
    return None


def check_zero_padding(m: nn.Module, name: str) -> None:
    padding = m.padding if isinstance(m.padding, tuple) else (m.padding,)
    if not all(isinstance(p, int) for p in padding) or m.padding_mode != "zeros":
        raise SqueezeError(f"layer {name!r} uses padding={m.padding!r} mode {m.padding_mode!r}: fitting on sampled patches expects integer zero padding")


@torch.no_grad()
def call_counts(model: nn.Module, x: torch.Tensor, names: list[str]) -> dict[str, int]:
    """How many times each layer of ``names`` runs in one forward pass of ``x`` through ``model``."""
    count = dict.fromkeys(names, 0)
    handles = [model.get_submodule(n).register_forward_hook(lambda *_, n=n: count.__setitem__(n, count[n] + 1)) for n in names]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return count


class Samples:
    """Sampled activations for fitting replacements of ``reference``'s layers.

    ``x`` holds training inputs; ``images`` of them are drawn with ``seed`` to fit on (more when a
    Linear to fit has more inputs than :data:`ROWS_PER_UNKNOWN` rows per weight would allow: each
    image is one row of a Linear, so ``layers`` names the layers to fit), and :data:`CHECK_IMAGES`
    others to check each fit on. :meth:`target` gives a reference layer's full output on them,
    :meth:`inputs` the input of the layer of the same name in the model being rebuilt, and
    :meth:`rows` turns a layer's input and target maps into regression rows at ``points`` random
    positions per image.
    """

    def __init__(self, reference: nn.Module, x: torch.Tensor, *, images: int, points: int, seed: int, device: torch.device, layers: list[nn.Module] = ()) -> None:
        self.reference = copy.deepcopy(reference).to(device).eval()
        self.points, self.device = points, device
        self.gen = torch.Generator().manual_seed(seed)
        widest = max([m.in_features for m in layers if isinstance(m, nn.Linear)], default=0)
        fit = max(images, ROWS_PER_UNKNOWN * widest)
        order = torch.randperm(len(x), generator=self.gen)
        check = min(CHECK_IMAGES, len(x) // 4)
        self.x = x[order[: max(1, min(fit, len(x) - check))]].to(device)
        self.x_check = x[order[len(x) - check :]].to(device) if check else self.x

    @torch.no_grad()
    def target(self, name: str, *, check: bool = False) -> torch.Tensor:
        store: dict[str, torch.Tensor] = {}
        run_until(None, self.reference, self.x_check if check else self.x, set(), store, [name], inputs=False)
        return store[name]

    @torch.no_grad()
    def inputs(self, model: nn.Module, name: str, *, check: bool = False) -> torch.Tensor:
        store: dict[str, torch.Tensor] = {}
        was_training = model.training
        model.eval()
        try:
            run_until(None, model, self.x_check if check else self.x, set(), store, [name], inputs=True)
        finally:
            model.train(was_training)
        return store[name]

    def calls(self, name: str) -> int:
        """How many times the reference's layer ``name`` runs in one forward pass. The samples hold
        a layer's first call only, so a layer called more than once is not refitted on them."""
        return call_counts(self.reference, self.x[:1], [name])[name]

    def refit(self, model: nn.Module, name: str, module: nn.Module, refit: Callable[[torch.Tensor, torch.Tensor], None]) -> tuple[float, float]:
        """Refit ``module`` (the replacement of ``model``'s layer ``name``) with ``refit(inp, target)``
        on the fitting images, and keep the refit only if the output error on the check images falls.

        Returns the check images' error before and after (after == before when the refit was undone).
        """
        start = copy.deepcopy(module.state_dict())
        inp, target = self.inputs(model, name, check=True), self.target(name, check=True)
        with torch.no_grad():
            before = relative_error(channel_rows(module(inp)), channel_rows(target))
        refit(self.inputs(model, name), self.target(name))
        with torch.no_grad():
            after = relative_error(channel_rows(module(inp)), channel_rows(target))
        if not after < before:  # the fit did not carry over to images it did not see
            module.load_state_dict(start)
            return before, before
        return before, after

    def rows(self, layer: nn.Module, inp: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X, T)``: ``layer``'s input patches and the target at sampled output positions (float64);
        see :data:`ROWS_PER_UNKNOWN`.

        ``layer`` is a Conv1d/Conv2d (anything with a conv's geometry) or a Linear; ``target``
        has the shape of its output.
        """
        if isinstance(layer, nn.Linear) or not hasattr(layer, "kernel_size"):
            return inp.reshape(-1, inp.shape[-1]).double(), target.reshape(-1, target.shape[-1]).double()
        layer, inp, target = as_conv2d(layer, inp, target)
        B, L = target.shape[0], target.shape[2] * target.shape[3]
        unknowns = inp.shape[1] * math.prod(layer.kernel_size)
        points = min(L, max(self.points, math.ceil(ROWS_PER_UNKNOWN * unknowns / B)))
        pos = torch.randint(L, (B, points), generator=self.gen).to(inp.device)
        X = patches(inp, layer, (target.shape[2], target.shape[3]), pos)
        return X.double(), sample_rows(target.flatten(2), pos).double()


def norm_scales(model: nn.Module, names: list[str], example: Any) -> dict[str, torch.Tensor]:
    """The scale ``gamma / sqrt(var + eps)`` of the BatchNorm right after each named layer, where there is one."""
    from squeezetune.compression.structured._graph import StructureGraph

    try:
        graph = StructureGraph(copy.deepcopy(model), example)
    except SqueezeError:
        return {}
    out = {}
    for name in names:
        try:
            norm = graph.norm_after(name)
        except (KeyError, AttributeError):
            norm = None
        if norm is not None:
            bn = model.get_submodule(norm)
            gamma = bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var)
            out[name] = gamma / torch.sqrt(bn.running_var + bn.eps)
    return out
