"""Feature-map sampling for channel pruning: capture layer inputs/outputs, gather sampled patches.

A forward pass is stopped as soon as everything asked for has been captured. Values that are
not a module's input or output (the other operand of a residual add) come from running the
model's ``torch.fx`` trace; a model FX cannot trace simply gets no residual correction.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import nn


class _Stop(Exception):
    """Raised once everything a forward pass was run for has been captured."""


class _Capture(torch.fx.Interpreter):
    """Runs a traced model, keeping the values of the ``wanted`` nodes."""

    def __init__(self, gm: torch.fx.GraphModule, wanted: set[str], pending: set[str]) -> None:
        super().__init__(gm)
        self.wanted, self.pending, self.values = wanted, pending, {}

    def run_node(self, n: torch.fx.Node):
        out = super().run_node(n)
        if n.name in self.wanted:
            self.values["fx:" + n.name] = out.detach()
            self.pending.discard(n.name)
            if not self.pending:
                raise _Stop
        return out


def trace(model: nn.Module) -> torch.fx.GraphModule | None:
    """``torch.fx.symbolic_trace(model)``, or None when the model cannot be traced."""
    try:
        return torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - untraceable models just get no residual correction
        return None


_ADDS = {operator.add, operator.iadd, torch.add}


def add_partner(gm: torch.fx.GraphModule | None, layer: str, norm: str | None) -> str | None:
    """Name of the FX node added to ``layer``'s output (after BatchNorm ``norm``), if exactly one."""
    if gm is None:
        return None
    calls = [n for n in gm.graph.nodes if n.op == "call_module" and n.target == layer]
    if len(calls) != 1:
        return None
    node = calls[0]
    if norm is not None:
        users = [u for u in node.users if u.op == "call_module" and u.target == norm]
        if len(users) != 1:
            return None
        node = users[0]
    adds = [u for u in node.users if (u.op == "call_function" and u.target in _ADDS) or (u.op == "call_method" and u.target in ("add", "add_"))]
    if len(adds) != 1 or len(node.users) != 1:
        return None
    a, b = adds[0].args[:2]
    other = b if a is node else a
    return other.name if isinstance(other, torch.fx.Node) else None


def run_until(gm: torch.fx.GraphModule | None, model: nn.Module, x: torch.Tensor, wanted: set[str], store: dict, layers: list[str], *, inputs: bool) -> None:
    """One forward pass of ``x``, stopped once the ``layers``' tensors and ``wanted`` values are in.

    ``store`` receives each layer's input (``inputs=True``) or output by layer name, and the
    values of the ``wanted`` FX nodes of ``gm`` as ``"fx:" + node name``.
    """
    pending = {*layers, *wanted}

    def hook(name: str):
        def fn(m, args, output):
            store[name] = (args[0] if inputs else output).detach()
            pending.discard(name)
            if not pending:
                raise _Stop

        return fn

    handles = [model.get_submodule(name).register_forward_hook(hook(name)) for name in layers]
    cap = _Capture(gm, wanted, pending) if wanted and gm is not None else None
    try:
        cap.run(x) if cap is not None else model(x)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    if cap is not None:
        store.update(cap.values)


def sample_rows(t: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Rows ``(image, position)`` of a ``[B, C, L]`` tensor at ``pos`` ``[B, P]`` -> ``[B*P, C]``."""
    return t.gather(2, pos[:, None, :].expand(t.shape[0], t.shape[1], pos.shape[1])).permute(0, 2, 1).reshape(-1, t.shape[1])


def patches(inp: torch.Tensor, m: nn.Conv2d, out_hw: tuple[int, int], pos: torch.Tensor) -> torch.Tensor:
    """The input patches of conv ``m`` at output positions ``pos`` ``[B, P]``: ``[B*P, C*kh*kw]``.

    Same column order as ``F.unfold`` (channel, then kernel row, then column), but only the
    sampled patches are gathered, never the whole unfolded input.
    """
    (ph, pw), (sh, sw), (dh, dw), (kh, kw) = m.padding, m.stride, m.dilation, m.kernel_size
    B, C, H, W = inp.shape
    flat = F.pad(inp, (pw, pw, ph, ph)).flatten(2)
    oh, ow = pos // out_hw[1], pos % out_hw[1]
    cols = []
    for i in range(kh):
        for j in range(kw):
            idx = (oh * sh + i * dh) * (W + 2 * pw) + ow * sw + j * dw
            cols.append(flat.gather(2, idx[:, None, :].expand(B, C, idx.shape[1])))
    return torch.stack(cols, 2).permute(0, 3, 1, 2).reshape(B * pos.shape[1], C * kh * kw)
