"""Strided kernel sparsity knobs: per convolution, the stride (and, if asked, the offset) of the kept kernel positions.

Used by :func:`~squeezetune.spaces.space.derive_space` when the user's space has a ``strided:``
entry (opt-in: it replaces convolutions)::

    space:
      strided:
        default: {stride: [1, 3]}           # every k x k convolution; 1 keeps the whole kernel
        layers:
          conv1: false                      # left whole
          layer1.0.conv1: {stride: [2, 4], offset: [0, 3]}   # offset read modulo the stride
        refit: true                         # least squares on sampled activations (false: data-free)

The values land in the recipe's ``strided`` stage as ``{layers: {name: {stride, offset}}}``; an
offset that is not searched is chosen per layer by weight energy.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from squeezetune.errors import SqueezeError
from squeezetune.spaces.knobs import Choice, IntRange, Knob, check_setting_keys, parse_domain, per_layer

STRIDE = (1, 3)
"""Default range of the kernel-position stride (1 keeps the kernel; 3 keeps a third of a 3 x 3 one)."""


def strided_knobs(model: nn.Module, cfg: Any, example: Any = None) -> list[Knob]:
    """The ``strided.*`` knobs of ``model`` for the user's ``space.strided`` entry."""
    from squeezetune.compression.structured.strided import refuses

    cfg = dict(cfg or {})
    check_setting_keys(cfg, ("default", "layers", "refit"), "space.strided")
    sizes = {name: math.prod(m.kernel_size) for name, m in model.named_modules() if refuses(m) is None}
    if not sizes:
        raise SqueezeError("space.strided: this model has no convolution with a kernel larger than 1 x 1")
    knobs = []
    if "refit" in cfg:
        knobs.append(Knob("strided.refit", parse_domain(cfg["refit"], Choice((True, False)), "space.strided.refit", (True, False)), ("strided", "refit")))
    for name, setting, where in per_layer(cfg, "strided", list(sizes), {}):
        check_setting_keys(setting, ("stride", "offset"), where)
        kk = sizes[name]
        stride = parse_domain(setting.get("stride", [STRIDE[0], min(STRIDE[1], kk)]), IntRange(*STRIDE), f"{where}.stride")
        lo, hi = Knob("_", stride).corners()
        if not 1 <= lo <= hi <= kk:
            raise SqueezeError(f"{where}.stride=[{lo}, {hi}] for layer {name!r} must lie in [1, {kk}]: its kernel has {kk} positions")
        knobs.append(Knob(f"strided.{name}.stride", stride, ("strided", "layers", name, "stride")))
        if "offset" in setting:
            offset = parse_domain(setting["offset"], IntRange(0, kk - 1), f"{where}.offset")
            lo, hi = Knob("_", offset).corners()
            if not 0 <= lo <= hi < kk:
                raise SqueezeError(f"{where}.offset=[{lo}, {hi}] for layer {name!r} must lie in [0, {kk - 1}]")
            knobs.append(Knob(f"strided.{name}.offset", offset, ("strided", "layers", name, "offset")))
    return knobs
