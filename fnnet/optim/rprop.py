"""Rprop, as ``torch.optim.Rprop``: per-element step sizes adapted by the sign of g * g_prev."""

from __future__ import annotations

import torch

from .base import GradientTransformation, optimizer


def rprop(lr=1e-2, etas: tuple[float, float] = (0.5, 1.2),
          step_sizes: tuple[float, float] = (1e-6, 50.0), *, maximize: bool = False) -> GradientTransformation:
    """``lr`` is the initial step size of every element. Where ``g * g_prev > 0`` the step grows
    by ``etaplus``, where ``< 0`` it shrinks by ``etaminus`` and that element skips this step
    (its ``g`` is taken as 0); ``p -= sign(g) * step``, steps clamped to ``step_sizes``."""
    etaminus, etaplus = etas
    lo, hi = step_sizes

    def slots(params):
        return {"prev": [torch.zeros_like(p) for p in params],
                "step_size": [torch.full_like(p, lr) for p in params]}

    def step(g, p, s, h, count):
        updates, prev, sizes = [], [], []
        for gi, pi, si in zip(g, s["prev"], s["step_size"]):  # elementwise selects: no _foreach form
            gi = -gi if maximize else gi
            sign = torch.sign(gi * pi)
            factor = torch.where(sign > 0, etaplus, torch.where(sign < 0, etaminus, 1.0)).to(gi.dtype)
            size = (si * factor).clamp(lo, hi)
            gi = torch.where(factor == etaminus, torch.zeros_like(gi), gi)
            updates.append(-torch.sign(gi) * size)
            prev.append(gi)
            sizes.append(size)
        return updates, {"prev": prev, "step_size": sizes}

    if callable(lr):
        raise ValueError("rprop: lr is the initial step size; it cannot be a schedule")
    return optimizer({}, slots, step)
