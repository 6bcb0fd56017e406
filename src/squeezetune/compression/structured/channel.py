"""Channel pruning by LASSO selection and least-squares reconstruction (He et al., ICCV 2017).

For each pruned layer (a channel group, see :mod:`squeezetune.compression.structured.shrink`) and each
*consumer* of its channels (the dense convs/linears that read them):

1. sample ``points`` output positions from each of ``images`` inputs; take the consumer's input
   patches from the **already-pruned** network and its target outputs from the **original**
   one, so that errors of earlier layers are corrected rather than accumulated;
2. split the consumer's output into per-channel contributions ``Z_c`` and solve a LASSO over
   channel coefficients ``beta`` (stacked over all consumers of the group); ``lam`` is given, or
   searched -- doubled, then bisected -- until exactly ``keep`` channels remain
   (:mod:`squeezetune.compression.structured._lasso`);
3. physically remove the other channels (DepGraph keeps BatchNorms, residual partners and
   depthwise convs consistent) and refit each consumer's remaining weights by least squares.

Residual blocks: when a consumer's output (through its BatchNorm) feeds an add, its target is
``Y2 + (Y1 - Y1')`` -- its own original output plus what the other operand (the shortcut) lost
by pruning -- so the add's output is what it was. Targets are expressed before the BatchNorm by
dividing by its scale ``gamma / sqrt(var + eps)`` (that is the BatchNorm folding); a fitted
intercept goes into the conv's bias, or into the BatchNorm's running mean when there is none.

``select="l1"`` ranks channels by filter L1 norm instead (as :func:`.filters.filter_prune`), so
both methods can be compared at equal counts with the same error measurement.

>>> import torch
>>> from squeezetune.tasks.cnn import VGGNet
>>> small, report = channel_prune(VGGNet().eval(), torch.randn(16, 1, 28, 28), ChannelPruneConfig(keep={"features.3": 16}, images=16))
>>> small.features[3].out_channels, report[0].kept, report[0].error_after <= report[0].error_before
(16, 16, True)
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Callable, Mapping

import numpy as np
import torch
from torch import nn

from squeezetune.compression._fit import as_conv2d, call_counts, check_zero_padding, ridge_solve, with_intercept
from squeezetune.compression.finetune import pick_device
from squeezetune.compression.measure import DEFAULT_INPUT_SHAPE, Example
from squeezetune.compression.structured import _lasso
from squeezetune.compression.structured._graph import StructureGraph
from squeezetune.compression.structured._sampling import (
    add_partner,
    patches,
    run_until,
    sample_rows,
    trace,
)
from squeezetune.compression.structured.filters import _scores
from squeezetune.compression.structured.shrink import check_keep
from squeezetune.errors import SqueezeError

__all__ = ["Selection", "ChannelPruneConfig", "ChannelReport", "channel_prune"]


class Selection(str, Enum):
    LASSO = "lasso"
    L1 = "l1"


@dataclass(frozen=True)
class ChannelPruneConfig:
    """What to prune and how.

    ``keep`` maps layers to channel counts (lambda is searched per layer to hit them); ``lam``
    maps layers to a fixed lambda (dimensionless, see :mod:`._lasso`). ``images`` inputs are used,
    ``points`` output positions sampled per image and consumer.
    """

    keep: Mapping[str, int] = field(default_factory=dict)
    lam: Mapping[str, float] = field(default_factory=dict)
    select: Selection = Selection.LASSO
    reconstruct: bool = True
    images: int = 256
    points: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "select", Selection(self.select))
        except ValueError:
            raise SqueezeError(f"select={self.select!r} is unknown: expected one of {[s.value for s in Selection]}") from None
        for layer, lam in self.lam.items():
            if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam) or lam < 0:
                raise SqueezeError(f"lam={lam!r} for layer {layer!r} must be a finite number >= 0")
        both = sorted(set(self.keep) & set(self.lam))
        if both:
            raise SqueezeError(f"layer {both[0]!r} has both a keep count and a lam: expected one of the two")
        if self.lam and self.select is not Selection.LASSO:
            raise SqueezeError(f"lam is given for select={self.select.value!r}: expected select='lasso'")
        for name in ("images", "points"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise SqueezeError(f"{name}={value!r} must be an integer >= 1")

    def to_dict(self) -> dict:
        return {**asdict(self), "keep": dict(self.keep), "lam": dict(self.lam), "select": self.select.value}

    @classmethod
    def from_dict(cls, data: Mapping) -> "ChannelPruneConfig":
        return cls(**data)


@dataclass(frozen=True)
class ChannelReport:
    """What pruning one layer did. Errors are relative: squared error of the consumers' outputs
    (before their BatchNorm) over those outputs' variance, on the sampled points."""

    layer: str
    channels: int
    kept: int
    lam: float | None
    consumers: tuple[str, ...]
    error_before: float  # channels dropped, remaining weights as they were
    error_after: float  # after least-squares reconstruction (== error_before without it)
    residual: tuple[str, ...]  # consumers reconstructed towards Y2 + (Y1 - Y1')
    kept_as_is: tuple[str, ...] = ()  # consumers run more than once a forward pass: the samples hold their first call only, so no reconstruction

    def to_dict(self) -> dict:
        return asdict(self)


_CONVS = (nn.Conv1d, nn.Conv2d)
"""The convolutions whose input patches LASSO channel selection can sample."""


class _Pruner:
    def __init__(self, model: nn.Module, x: torch.Tensor, config: ChannelPruneConfig, device: torch.device, example: Example) -> None:
        self.config, self.device = config, device
        self.orig = copy.deepcopy(model).to(device).eval()
        self.work = copy.deepcopy(model).to(device).eval()
        self.graph = StructureGraph(self.work, example)
        self.orig_graph = StructureGraph(self.orig, example) if config.select is Selection.L1 else None
        self.gm_orig, self.gm_work = trace(self.orig), trace(self.work)
        gen = torch.Generator().manual_seed(config.seed)
        self.x = x[torch.randperm(len(x), generator=gen)[: config.images]].to(device)
        self.gen = gen
        self.kept_out: dict[str, list[int]] = {}
        self.cache: dict[str, torch.Tensor] = {}
        self.calls = call_counts(self.orig, self.x[:1], [n for n, m in self.orig.named_modules() if isinstance(m, (*_CONVS, nn.Linear))])

    @torch.no_grad()
    def remember(self, consumers: list[str], partners: dict[str, str]) -> None:
        """Run the original network once, keeping every consumer output and add partner needed."""
        run_until(self.gm_orig, self.orig, self.x, set(partners.values()), self.cache, consumers, inputs=False)

    def _kept(self, name: str) -> list[int]:
        m = self.orig.get_submodule(name)
        n = m.out_channels if isinstance(m, _CONVS) else m.out_features
        return self.kept_out.setdefault(name, list(range(n)))

    @torch.no_grad()
    def _collect(self, consumers: list[str], partners: dict[str, str]) -> dict[str, dict]:
        ins: dict[str, torch.Tensor] = {}
        run_until(self.gm_work, self.work, self.x, set(partners.values()), ins, consumers, inputs=True)
        data = {}
        for c in consumers:
            m = self.work.get_submodule(c)
            inp, out = ins[c], self.cache[c]
            extra = {}
            if isinstance(m, _CONVS):
                check_zero_padding(m, c)
                m, inp, out = as_conv2d(m, inp, out)
                B, L = out.shape[0], out.shape[2] * out.shape[3]
                pos = torch.randint(L, (B, self.config.points), generator=self.gen).to(self.device)
                X = patches(inp, m, (out.shape[2], out.shape[3]), pos)
                Y = sample_rows(out.flatten(2), pos)
                if c in partners:
                    extra = {k: sample_rows(v["fx:" + partners[c]].flatten(2), pos) for k, v in (("orig", self.cache), ("work", ins))}
            elif isinstance(m, nn.Linear):
                X, Y = inp.reshape(-1, inp.shape[-1]), out.reshape(-1, out.shape[-1])
                if c in partners:
                    extra = {k: v["fx:" + partners[c]].reshape(-1, out.shape[-1]) for k, v in (("orig", self.cache), ("work", ins))}
            else:
                raise SqueezeError(f"layer {c!r} is a {type(m).__name__}: channel pruning supports Conv1d, Conv2d and Linear consumers")
            data[c] = {"X": X.double(), "Y": Y.double(), **{k: v.double() for k, v in extra.items()}}
        return data

    def _target(self, c: str, d: dict, norm: str | None) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """Target ``T`` (pre-BatchNorm, mean-free), current offset ``c0`` and whether to fit an intercept."""
        m = self.work.get_submodule(c)
        S = torch.tensor(self._kept(c), device=self.device)
        T = d["Y"][:, S]
        bias = m.bias.detach().double() if m.bias is not None else torch.zeros(T.shape[1], dtype=torch.float64, device=self.device)
        corr = (d["orig"][:, S] - d["work"]) if "orig" in d else None
        if norm is None:
            return (T + corr if corr is not None else T), bias, m.bias is not None
        bn_w, bn_o = self.work.get_submodule(norm), self.orig.get_submodule(norm)
        T = T - bn_o.running_mean.double()[S]
        if corr is not None:
            scale = (bn_w.weight.detach().double() if bn_w.affine else torch.ones_like(bias)) / torch.sqrt(bn_w.running_var.double() + bn_w.eps)
            safe = scale.abs() > 1e-8
            T = T + torch.where(safe, corr / torch.where(safe, scale, torch.ones_like(scale)), torch.zeros_like(corr))
        return T, bias - bn_w.running_mean.double(), True

    def consumers(self, name: str) -> tuple[list[str], dict[str, str | None], dict[str, str]]:
        """A group's consumers, the BatchNorm after each, and the add partner of each that has one."""
        consumers = list(self.graph.groups[name].consumers)
        for c in consumers:
            if not isinstance(self.work.get_submodule(c), (*_CONVS, nn.Linear)):
                raise SqueezeError(f"layer {c!r} is a {type(self.work.get_submodule(c)).__name__}: channel pruning supports Conv1d, Conv2d and Linear consumers")
        norms = {c: self.graph.norm_after(c) for c in consumers}
        partners = {c: p for c in consumers if (p := add_partner(self.gm_work, c, norms[c])) is not None}
        return consumers, norms, partners

    def prune_layer(self, name: str, keep: int | None, lam: float | None) -> "ChannelReport":
        group = self.graph.groups[name]
        couplings = {c.module: c for c in group.couplings if c.role == "in"}
        consumers, norms, partners = self.consumers(name)
        data = self._collect(consumers, partners)
        G = group.channels
        gram = torch.zeros(G, G, dtype=torch.float64, device=self.device)
        xty = torch.zeros(G, dtype=torch.float64, device=self.device)
        yy = 0.0
        prepared = {}
        for c in consumers:
            m, d = self.work.get_submodule(c), data[c]
            T, c0, intercept = self._target(c, d, norms[c])
            n_out, c_in = m.weight.shape[0], m.weight.shape[1]
            X, Wf = d["X"], m.weight.detach().double().reshape(n_out, -1)
            kk = Wf.shape[1] // c_in
            cp = couplings[c]
            # P maps the consumer's input channels onto the group's root channels
            P = torch.zeros(G, c_in, dtype=torch.float64, device=self.device)
            P[torch.tensor(cp.root, device=self.device), torch.tensor(cp.idxs, device=self.device)] = 1.0
            outside = (P.sum(0) == 0).repeat_interleave(kk)
            rest = T - c0 - X[:, outside] @ Wf[:, outside].T
            # Z_c = X_c W_c^T; Gram and Z^T rest without forming Z (N x out x channels):
            # (Z^T Z)_gh = sum_kk' (X^T X)_{gk,hk'} (W^T W)_{gk,hk'}
            XX = X.T @ X
            gram_in = (XX * (Wf.T @ Wf)).reshape(c_in, kk, c_in, kk).sum((1, 3))
            xty_in = (X * (rest @ Wf)).reshape(len(X), c_in, kk).sum((0, 2))
            gram += P @ gram_in @ P.T
            xty += P @ xty_in
            yy += float((rest**2).sum())
            prepared[c] = (T, c0, intercept, X, XX, Wf, kk)
        if self.config.select is Selection.L1:
            assert self.orig_graph is not None
            scores = _scores(self.orig_graph, name).numpy()
            mask = np.zeros(G, dtype=bool)
            mask[np.argsort(-scores, kind="stable")[:keep]] = True
            used = None
        else:
            g, b = (gram / max(yy, 1e-30)).cpu().numpy(), (xty / max(yy, 1e-30)).cpu().numpy()
            if lam is None:
                assert keep is not None
                mask, used = _lasso.search(g, b, keep)
            else:
                mask, used = _lasso.lasso(g, b, lam) != 0, lam
                if not mask.any():
                    raise SqueezeError(f"lam={lam} for layer {name!r} keeps no channel: expected lam < {float(np.max(np.abs(b))):.4g}, where every channel goes")
        removed = self.graph.prune(name, np.flatnonzero(~mask).tolist())
        gone = {(r.module, r.role): set(r.idxs) for r in removed}
        for r in removed:
            if r.role in ("out", "depthwise"):
                kept = self._kept(r.module)
                self.kept_out[r.module] = [k for i, k in enumerate(kept) if i not in set(r.idxs)]
        sse_before = sse_after = denom = 0.0
        as_is = tuple(c for c in prepared if self.calls.get(c, 1) > 1)
        for c, (T, c0, intercept, X, XX, Wf, kk) in prepared.items():
            n_out, c_in = Wf.shape[0], Wf.shape[1] // kk
            keep_in = [i for i in range(c_in) if i not in gone.get((c, "in"), set())]
            keep_out = [i for i in range(n_out) if i not in gone.get((c, "out"), set())]
            cols = (torch.tensor(keep_in, device=self.device)[:, None] * kk + torch.arange(kk, device=self.device)).reshape(-1)
            T, c0 = T[:, keep_out], c0[keep_out]
            Xk = X[:, cols]
            before = ((T - Xk @ Wf[keep_out][:, cols].T - c0) ** 2).sum()
            denom += float(((T - T.mean(0)) ** 2).sum())
            sse_before += float(before)
            if not self.config.reconstruct or c in as_is:
                sse_after += float(before)
                continue
            AtA, AtT = XX[cols][:, cols], Xk.T @ T
            if intercept:
                AtA, AtT = with_intercept(AtA, AtT, Xk.sum(0), T.sum(0), len(Xk))
            sol = ridge_solve(AtA, AtT)
            pred = Xk @ sol[: len(cols)] + (sol[len(cols)] if intercept else 0.0)
            sse_after += float(((T - pred) ** 2).sum())
            self._write(c, sol, len(cols), intercept, norms[c])
        return ChannelReport(
            layer=name,
            channels=G,
            kept=int(mask.sum()),
            lam=used,
            consumers=tuple(consumers),
            error_before=sse_before / max(denom, 1e-30),
            error_after=sse_after / max(denom, 1e-30),
            residual=tuple(sorted(partners)),
            kept_as_is=as_is if self.config.reconstruct else (),
        )

    @torch.no_grad()
    def _write(self, c: str, sol: torch.Tensor, d_in: int, intercept: bool, norm: str | None) -> None:
        m = self.work.get_submodule(c)
        m.weight.copy_(sol[:d_in].T.reshape(m.weight.shape).to(m.weight.dtype))
        if not intercept:
            return
        offset = sol[d_in]
        if m.bias is not None:
            mean = self.work.get_submodule(norm).running_mean.double() if norm is not None else 0.0
            m.bias.copy_((offset + mean).to(m.bias.dtype))
        else:
            assert norm is not None
            self.work.get_submodule(norm).running_mean.copy_((-offset).to(m.weight.dtype))


def channel_prune(
    model: nn.Module,
    x: torch.Tensor,
    config: ChannelPruneConfig,
    *,
    device: str | torch.device | None = None,
    example: Example = DEFAULT_INPUT_SHAPE,
    progress: Callable[[str], None] | None = None,
) -> tuple[nn.Module, list[ChannelReport]]:
    """A channel-pruned copy of ``model`` and one :class:`ChannelReport` per pruned layer.

    ``x`` holds input images (e.g. the training split's); ``config.images`` of them are drawn
    with ``config.seed``. Layers are pruned one after another in module order. The input model
    is left as it was; the returned one is on the same device as the input model.
    """
    p = next(model.parameters(), None)
    home = p.device if p is not None else torch.device("cpu")
    device = pick_device(device)
    pruner = _Pruner(model, x, config, device, example)
    keep = check_keep(pruner.graph.groups, config.keep, pruner.graph)
    lams = {pruner.graph.resolve(layer): float(v) for layer, v in config.lam.items()}
    overlap = sorted(set(keep) & set(lams))
    if overlap:
        raise SqueezeError(f"layer {overlap[0]!r} has both a keep count and a lam (through an alias): expected one of the two")
    names = sorted({**keep, **lams}, key=pruner.graph.order.__getitem__)
    needed = [pruner.consumers(name) for name in names]
    pruner.remember(list(dict.fromkeys(c for cons, _, _ in needed for c in cons)), {k: v for _, _, p in needed for k, v in p.items()})
    reports = []
    for name in names:
        report = pruner.prune_layer(name, keep.get(name), lams.get(name))
        reports.append(report)
        if progress is not None:
            twice = f"; {', '.join(report.kept_as_is)} not reconstructed: run more than once a forward pass, sampled on the first call only" if report.kept_as_is else ""
            progress(f"{name}: kept {report.kept}/{report.channels}, error {report.error_before:.4f} -> {report.error_after:.4f}{twice}")
    return pruner.work.to(home), reports
