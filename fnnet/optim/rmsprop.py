"""RMSprop (centered, with momentum), as ``torch.optim.RMSprop``."""

from __future__ import annotations

import torch

from . import _ops
from .base import GradientTransformation, optimizer, weight_decayed


def rmsprop(lr=1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
            momentum: float = 0.0, centered: bool = False, *, maximize: bool = False) -> GradientTransformation:
    """``v = a v + (1 - a) g^2``; centered: ``avg = sqrt(v - gbar^2) + eps`` with
    ``gbar = lerp(gbar, g, 1 - a)``, else ``sqrt(v) + eps``; momentum: ``b = m b + g / avg``,
    ``p -= lr b``; else ``p -= lr g / avg``."""
    hp = {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay, "momentum": momentum}

    def slots(params):
        s = {"square_avg": [torch.zeros_like(p) for p in params]}
        if centered:
            s["grad_avg"] = [torch.zeros_like(p) for p in params]
        if momentum > 0:
            s["momentum_buffer"] = [torch.zeros_like(p) for p in params]
        return s

    def step(g, p, s, h, count):
        a = h["alpha"]
        g = weight_decayed(g, p, h["weight_decay"] if weight_decay != 0 else 0, maximize)
        v = _ops.add(_ops.mul(s["square_avg"], a), _ops.mul(_ops.square(g), 1 - a))
        new = {"square_avg": v}
        if centered:
            gbar = _ops.add(s["grad_avg"], _ops.mul(_ops.sub(g, s["grad_avg"]), 1 - a))
            new["grad_avg"] = gbar
            v = _ops.sub(v, _ops.square(gbar))
        avg = _ops.add(_ops.sqrt(v), h["eps"])
        if momentum > 0:
            buf = _ops.add(_ops.mul(s["momentum_buffer"], h["momentum"]), _ops.div(g, avg))
            new["momentum_buffer"] = buf
            return _ops.mul(buf, -h["lr"]), new
        return _ops.mul(_ops.div(g, avg), -h["lr"]), new

    return optimizer(hp, slots, step)
