"""Intra-kernel strided sparsity (Anwar et al. 2017, "Structured pruning of deep convolutional neural networks").

Inside every k x k kernel of a convolution keep only the positions on a stride ``m`` from an offset
``n`` (positions ``n, n + m, n + 2m, ...`` of the flattened kernel; ``m`` is a stride over kernel
positions, not the convolution's stride). Every kernel of the layer -- so every kernel that reads a
given input map -- keeps the same positions, so the im2col lowering of the convolution has
``C_in * |kept|`` rows instead of ``C_in * k^2``: fewer MACs, and a smaller dense computation.

The result is a :class:`StridedConv2d`, whose weight holds only the kept taps
(``out x in x taps``). It runs as plain convolutions with smaller, possibly dilated kernels, one
per rectangular grid of kept taps (:func:`grids`), each placed by its padding and an output offset
so that it reads what the full kernel read at those taps: ``m = 3`` on a 3 x 3 kernel keeps a
column (one 3 x 1 convolution), ``m = 2`` keeps the corners and the centre (a 2 x 2 convolution of
dilation 2 plus a 1 x 1). No masked zeros are multiplied and no input is copied.

Fitting: the kept taps start from the dense weights at those taps (``offset`` unset: the offset
that keeps the most weight energy, each output channel weighted by the BatchNorm after it); with
``refit`` they are fitted by least squares to the dense layer's outputs on sampled training
inputs, the inputs taken from the network rebuilt so far.

>>> import torch
>>> from torch import nn
>>> conv = nn.Conv2d(4, 8, 3, padding=1)
>>> sparse = strided_conv(conv, kept_taps((3, 3), 3, 1))   # the middle column
>>> sparse.taps, tuple(sparse.weight.shape)
((1, 4, 7), (8, 4, 3))
>>> sparse(torch.zeros(2, 4, 10, 10)).shape
torch.Size([2, 8, 10, 10])
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from functools import partial
from typing import ClassVar, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from squeezetune.compression.architecture import conv_fields, conv_geometry, register_module_type, replace_module
from squeezetune.compression.stages import Context, StageConfig, register_stage
from squeezetune.errors import SqueezeError


def kept_taps(kernel_size: Sequence[int], stride: int, offset: int) -> tuple[int, ...]:
    """The flattened kernel positions ``offset, offset + stride, ...`` below ``kh * kw``."""
    n = math.prod(kernel_size)
    return tuple(range(offset % stride, n, stride))


def _even_runs(values: Sequence[int]) -> list[tuple[int, ...]]:
    """``values`` (ascending) split, greedily, into runs with one step between neighbours."""
    runs: list[list[int]] = []
    for v in values:
        run = runs[-1] if runs else None
        if run is not None and (len(run) == 1 or v - run[-1] == run[1] - run[0]):
            run.append(v)
        else:
            runs.append([v])
    return [tuple(r) for r in runs]


def grids(taps: Sequence[int], kw: int) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """``taps`` (flattened ``y * kw + x``) as few rectangular grids ``(ys, xs)``, each evenly spaced.

    A grid is a plain (possibly dilated) convolution with a smaller kernel; the middle column of a
    3 x 3 kernel is one grid, its corners and centre are two (a dilated 2 x 2 and a 1 x 1).
    """
    rows: dict[int, list[int]] = {}
    for t in sorted(taps):
        rows.setdefault(t // kw, []).append(t % kw)
    by_xs: dict[tuple[int, ...], list[int]] = {}
    for y, xs in sorted(rows.items()):
        for run in _even_runs(xs):
            by_xs.setdefault(run, []).append(y)
    out = [(ys, xs) for xs, all_ys in by_xs.items() for ys in _even_runs(all_ys)]
    return sorted(out, key=lambda g: g[0][0] * kw + g[1][0])


class StridedConv2d(nn.Module):
    """A Conv2d that computes only the kernel positions ``taps`` (flattened ``y * kw + x``).

    ``weight`` is ``out x in x len(taps)``: the dense kernel's weights at those positions.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int],
        stride: Sequence[int] = (1, 1),
        padding: Sequence[int] = (0, 0),
        dilation: Sequence[int] = (1, 1),
        taps: Sequence[int] = (0,),
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = tuple(kernel_size), tuple(stride)
        self.padding, self.dilation = tuple(padding), tuple(dilation)
        self.taps = tuple(int(t) for t in taps)
        kk = math.prod(self.kernel_size)
        if not self.taps or len(set(self.taps)) != len(self.taps) or not all(0 <= t < kk for t in self.taps) or list(self.taps) != sorted(self.taps):
            raise ValueError(f"taps={list(self.taps)} must be distinct ascending kernel positions in [0, {kk})")
        if len(self.kernel_size) != 2 or len(self.stride) != 2 or len(self.padding) != 2 or len(self.dilation) != 2:
            raise ValueError("kernel_size, stride, padding and dilation must each give two values")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, len(self.taps)))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        kw = self.kernel_size[1]
        self._grids = grids(self.taps, kw)
        position = {t: i for i, t in enumerate(self.taps)}
        self._index = [[position[y * kw + x] for y in ys for x in xs] for ys, xs in self._grids]

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, taps={list(self.taps)}, stride={self.stride}, padding={self.padding}"

    def _out_size(self, h: int, w: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    @staticmethod
    def _placement(pad: int, first: int, step: int, count: int, stride: int, dilation: int, size: int, out: int) -> tuple[int, int]:
        """Symmetric padding and output offset that make a grid's convolution read what the full
        kernel read at its taps: the full kernel's tap ``first + i * step`` of output ``y`` reads
        input row ``y * stride + (first + i * step) * dilation - pad``."""
        before = pad - first * dilation
        after = (out - 1) * stride + step * dilation * (count - 1) + 1 - size - before
        skip = max(0, -(-(max(0, after) - before) // stride))
        return before + stride * skip, skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        h, w = x.shape[-2], x.shape[-1]
        ho, wo = self._out_size(h, w)
        out = None
        for index, (ys, xs) in zip(self._index, self._grids):
            gy, gx = (ys[1] - ys[0]) if len(ys) > 1 else 1, (xs[1] - xs[0]) if len(xs) > 1 else 1
            py, oy = self._placement(ph, ys[0], gy, len(ys), sh, dh, h, ho)
            px, ox = self._placement(pw, xs[0], gx, len(xs), sw, dw, w, wo)
            weight = self.weight[:, :, index].reshape(self.out_channels, self.in_channels, len(ys), len(xs))
            y = F.conv2d(x, weight, self.bias if out is None else None, (sh, sw), (py, px), (gy * dh, gx * dw))
            if y.shape[-2] != ho or y.shape[-1] != wo or oy or ox:
                y = y[:, :, oy : oy + ho, ox : ox + wo]
            out = y if out is None else out + y
        assert out is not None
        return out

    def count_macs(self, inputs: tuple, output: torch.Tensor) -> int:
        """Multiply-accumulates of one forward pass (read by :func:`squeezetune.compression.measure.layer_macs`)."""
        return output.numel() * self.in_channels * len(self.taps)


register_module_type(
    StridedConv2d,
    {**conv_fields(2), "padding": ("ints", 2, 0, 64), "taps": "taps", "bias": "bool"},
    lambda d: StridedConv2d(**d),
    lambda d: d["out_channels"] * (d["in_channels"] * len(d["taps"]) + d["bias"]),
    lambda m: {**conv_geometry(m), "taps": list(m.taps), "bias": m.bias is not None},
)


def refuses(layer: nn.Module) -> str | None:
    """Why strided sparsity cannot apply to ``layer`` (a phrase), or ``None``."""
    from squeezetune.compression._fit import plain_conv_refusal

    why = plain_conv_refusal(layer, (nn.Conv2d,))
    if why is None and math.prod(layer.kernel_size) < 2:
        return "a 1 x 1 convolution (no kernel positions to drop)"
    return why


def best_offset(conv: nn.Conv2d, stride: int, scale: torch.Tensor | None = None) -> int:
    """The offset whose kept taps hold the most (BatchNorm-weighted) weight energy."""
    w = conv.weight.detach().double().flatten(2)
    if scale is not None:
        w = w * scale.detach().double().to(w.device)[:, None, None]
    energy = (w**2).sum((0, 1))
    return max(range(stride), key=lambda n: (float(energy[list(kept_taps(conv.kernel_size, stride, n))].sum()), -n))


def strided_conv(conv: nn.Conv2d, taps: Sequence[int]) -> StridedConv2d:
    """A :class:`StridedConv2d` keeping ``conv``'s weights at ``taps``."""
    why = refuses(conv)
    if why is not None:
        raise SqueezeError(f"strided sparsity cannot apply to a convolution that is {why}")
    out = StridedConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, taps, conv.bias is not None)
    out = out.to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(conv.weight.detach().flatten(2)[:, :, list(taps)])
        if conv.bias is not None:
            out.bias.copy_(conv.bias.detach())
    return out


def refit(sparse: StridedConv2d, conv: nn.Conv2d, inp: torch.Tensor, target: torch.Tensor, rows) -> None:
    """Least squares of the kept taps' weights so that, on ``inp``, ``sparse`` gives ``target``."""
    from squeezetune.compression._fit import least_squares

    X, T = rows(conv, inp, target)  # patches: channel-major, then kernel position
    kk = math.prod(conv.kernel_size)
    cols = (torch.arange(conv.in_channels, device=X.device)[:, None] * kk + torch.tensor(sparse.taps, device=X.device)).reshape(-1)
    W, b = least_squares(X[:, cols], T, intercept=sparse.bias is not None)
    with torch.no_grad():
        sparse.weight.copy_(W.reshape(sparse.weight.shape).to(sparse.weight.dtype))
        if b is not None:
            sparse.bias.copy_(b.to(sparse.bias.dtype))


# -- the strided stage ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerStride:
    """One layer's kept kernel positions: every ``stride``-th from ``offset`` (unset: the best).

    ``stride`` 1 keeps the whole kernel (the layer is left as it is). An ``offset`` at or above the
    stride is read modulo the stride, so a search can sample the two independently.
    """

    stride: int = 1
    offset: int | None = None

    def __post_init__(self) -> None:
        if self.stride < 1:
            raise SqueezeError(f"strided stride={self.stride!r} must be an integer >= 1 (a stride over kernel positions)")
        if self.offset is not None and self.offset < 0:
            raise SqueezeError(f"strided offset={self.offset!r} must be an integer >= 0")


@dataclass(frozen=True)
class StridedConfig(StageConfig):
    """Intra-kernel strided sparsity of the named convolutions, and of every other one by ``default``."""

    stage: ClassVar[str] = "strided"
    changes_architecture: ClassVar[bool] = True
    default: LayerStride | None = None
    layers: dict[str, LayerStride] = field(default_factory=dict)
    refit: bool = True
    images: int = 256
    points: int = 10

    def __post_init__(self) -> None:
        if self.default is None and not self.layers:
            raise SqueezeError("strided needs a default or per-layer settings in layers: got neither")
        if self.images < 1 or self.points < 1:
            raise SqueezeError(f"strided.images={self.images!r} and points={self.points!r} must be integers >= 1")

    def covered(self, model: nn.Module) -> dict[str, LayerStride]:
        """The convolutions the stage thins (stride above 1), with their settings, in module order.

        A setting for a layer that a decomposition replaced (:class:`~squeezetune.compression.architecture.Factors`)
        covers each of its factors that has a kernel to thin, its stride capped at the factor's kernel size.
        """
        from squeezetune.compression.architecture import Factors

        factor_of = {f"{name}.{child}": name for name, m in model.named_modules() if isinstance(m, Factors) for child, _ in m.named_children()}
        out = {}
        for name, m in model.named_modules():
            if not name or refuses(m) is not None:
                continue
            setting = self.layers.get(name) or self.layers.get(factor_of.get(name, "")) or self.default
            if setting is not None and name in factor_of:
                setting = LayerStride(min(setting.stride, math.prod(m.kernel_size)), setting.offset)
            if setting is not None and setting.stride > 1:
                out[name] = setting
        return out

    def validate(self, model: nn.Module, example: torch.Tensor, *, exact: bool = True) -> None:
        from squeezetune.compression.architecture import Factors

        modules = dict(model.named_modules())
        for name, setting in self.layers.items():
            m = modules.get(name) if name else None
            if m is None:
                raise SqueezeError(f"unknown layer {name!r} in strided.layers: expected one of {[n for n, c in modules.items() if refuses(c) is None]}")
            if isinstance(m, Factors) or not exact:
                continue
            why = refuses(m)
            if why is not None:
                raise SqueezeError(f"strided.layers.{name}: layer {name!r} is {why}")
            kk = math.prod(m.kernel_size)
            if not 1 <= setting.stride <= kk:
                raise SqueezeError(f"stride={setting.stride!r} for layer {name!r} must be in [1, {kk}]: the kernel has {kk} positions")
        if exact and self.default is not None:
            for name, setting in self.covered(model).items():
                kk = math.prod(modules[name].kernel_size)
                if setting.stride > kk:
                    raise SqueezeError(f"strided.default.stride={setting.stride!r} must be at most {kk} for layer {name!r}: its kernel has {kk} positions")

    def preview(self, model: nn.Module, example: torch.Tensor) -> nn.Module:
        work = copy.deepcopy(model)
        for name, setting in self.covered(work).items():
            replace_module(work, name, strided_conv(work.get_submodule(name), self.taps(work.get_submodule(name), setting)))
        return work

    def needs_data(self) -> bool:
        return self.refit

    @staticmethod
    def taps(conv: nn.Conv2d, setting: LayerStride, scale: torch.Tensor | None = None) -> tuple[int, ...]:
        offset = setting.offset if setting.offset is not None else best_offset(conv, setting.stride, scale)
        return kept_taps(conv.kernel_size, setting.stride, offset)


@register_stage(StridedConfig)
def strided(model: nn.Module, config: StridedConfig, ctx: Context) -> nn.Module:
    """Keep every ``stride``-th kernel position of the covered convolutions; returns the new model."""
    from squeezetune.compression._fit import Samples, norm_scales

    covered = config.covered(model)
    scales = norm_scales(model, list(covered), ctx.example)
    train = ctx.need_train("strided (refit: true)") if config.refit else None
    samples = None
    if train is not None:
        samples = Samples(model, train.x, images=config.images, points=config.points, seed=ctx.seed, device=ctx.device)
    work = copy.deepcopy(model).eval()
    for name, setting in covered.items():
        conv = work.get_submodule(name)
        sparse = strided_conv(conv, config.taps(conv, setting, scales.get(name)))
        note = ""
        calls = samples.calls(name) if samples is not None else 1
        if calls > 1:
            note = f", kept weights as they are: the layer runs {calls} times a forward pass and least squares would fit its first call only"
        elif samples is not None:
            before, after = samples.refit(work, name, sparse, partial(refit, sparse, conv, rows=samples.rows))
            note = f", output error {before:.4f} (kept weights) -> {after:.4f} (least squares)" if after < before else f", output error {before:.4f} (kept weights; least squares did no better)"
        replace_module(work, name, sparse)
        ctx.progress(f"{name}: keeps kernel positions {list(sparse.taps)} of {math.prod(conv.kernel_size)}{note}")
    return work.to(ctx.device)


__all__ = ["LayerStride", "StridedConfig", "StridedConv2d", "best_offset", "kept_taps", "refit", "strided_conv"]
