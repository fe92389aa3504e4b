"""Rprop, as ``torch.optim.Rprop``: per-element step sizes adapted by the sign of g * g_prev."""

from __future__ import annotations

import torch

from . import _check as C
from .base import GradientTransformation, optimizer


def rprop(lr=1e-2, etas: tuple[float, float] = (0.5, 1.2),
          step_sizes: tuple[float, float] = (1e-6, 50.0), *, maximize: bool = False) -> GradientTransformation:
    """``lr`` is the initial step size of every element. Where ``g * g_prev > 0`` the step grows
    by ``etaplus``, where ``< 0`` it shrinks by ``etaminus`` and that element skips this step
    (its ``g`` is taken as 0); ``p -= sign(g) * step``, steps clamped to ``step_sizes``.
    State: ``prev``, ``step_size`` (per element, as torch). ``etas`` and ``step_sizes`` are fixed
    at construction (there is no lr to change: it only sets the initial step sizes)."""
    if callable(lr):
        raise ValueError("rprop: lr is the initial step size; it cannot be a schedule")
    C.lr("rprop", lr)
    for name, pair in (("etas", etas), ("step_sizes", step_sizes)):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise ValueError(f"rprop: {name} must be a pair, got {pair!r}")
        for i, v in enumerate(pair):
            C.number("rprop", f"{name}[{i}]", v)
    etaminus, etaplus = etas
    lo, hi = step_sizes
    if not 0.0 < etaminus < 1.0 < etaplus:
        raise ValueError(f"rprop: need 0 < etaminus < 1 < etaplus, got etas={etas}")
    if not 0.0 <= lo <= hi:
        raise ValueError(f"rprop: need 0 <= min step <= max step, got step_sizes={step_sizes}")
    C.flag("rprop", "maximize", maximize)

    def slots(params):
        return {"prev": [torch.zeros_like(p) for p in params],
                "step_size": [torch.full_like(p, lr) for p in params]}

    def step(ops, g, p, s, h, count):
        if maximize:
            g = ops.neg(g)
        sign = ops.sign(ops.mul(g, s["prev"]))               # sign(g * prev) in {-1, 0, 1}
        up, down = ops.clamp(sign, lo=0.0), ops.clamp(sign, hi=0.0)   # {0, 1} and {-1, 0}
        # torch's factor: etaplus where sign > 0, etaminus where < 0, 1 where 0; exactly, as powers
        factor = ops.mul(ops.rpow(etaplus, up), ops.rpow(etaminus, ops.neg(down)))
        size = ops.clamp(ops.mul(s["step_size"], factor), lo, hi)
        g = ops.mul(g, ops.add(down, 1.0))                    # grad[sign < 0] = 0
        return ops.neg(ops.mul(ops.sign(g), size)), {"prev": g, "step_size": size}

    return optimizer({}, slots, step, "rprop")
