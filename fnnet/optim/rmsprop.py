"""RMSprop (centered, with momentum), as ``torch.optim.RMSprop``."""

from __future__ import annotations

import torch

from . import _check as C
from .base import GradientTransformation, optimizer, weight_decayed


def rmsprop(lr=1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
            momentum: float = 0.0, centered: bool = False, *, maximize: bool = False) -> GradientTransformation:
    """``v = a v + (1 - a) g^2``; centered: ``avg = sqrt(v - gbar^2) + eps`` with
    ``gbar = lerp(gbar, g, 1 - a)``, else ``sqrt(v) + eps``; momentum: ``b = m b + g / avg``,
    ``p -= lr b``; else ``p -= lr g / avg``. State: ``square_avg``, ``grad_avg``, ``momentum_buffer``."""
    C.lr("rmsprop", lr)
    for name, v in (("alpha", alpha), ("eps", eps), ("weight_decay", weight_decay), ("momentum", momentum)):
        C.nonneg("rmsprop", name, v)
    C.flag("rmsprop", "centered", centered)
    C.flag("rmsprop", "maximize", maximize)
    hp = {"lr": lr, "alpha": alpha, "eps": eps}
    if weight_decay != 0:
        hp["weight_decay"] = weight_decay
    if momentum > 0:
        hp["momentum"] = momentum

    def slots(params):
        s = {"square_avg": [torch.zeros_like(p) for p in params]}
        if centered:
            s["grad_avg"] = [torch.zeros_like(p) for p in params]
        if momentum > 0:
            s["momentum_buffer"] = [torch.zeros_like(p) for p in params]
        return s

    def step(ops, g, p, s, h, count):
        a = h["alpha"]
        g = weight_decayed(ops, g, p, h.get("weight_decay"), maximize)
        v = ops.addcmul(ops.mul(s["square_avg"], a), g, g, 1 - a)
        new = {"square_avg": v}
        if centered:
            gbar = new["grad_avg"] = ops.lerp(s["grad_avg"], g, 1 - a)
            v = ops.addcmul(v, gbar, gbar, -1.0)
        avg = ops.add(ops.sqrt(v), h["eps"])
        if momentum > 0:
            buf = new["momentum_buffer"] = ops.add(ops.mul(s["momentum_buffer"], h["momentum"]), ops.div(g, avg))
            return ops.mul(buf, -h["lr"]), new
        return ops.mul(ops.div(g, avg), -h["lr"]), new

    return optimizer(hp, slots, step, "rmsprop")
