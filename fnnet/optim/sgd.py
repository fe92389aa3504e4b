"""SGD with momentum, dampening, Nesterov and weight decay, as ``torch.optim.SGD``."""

from __future__ import annotations

import torch

from . import _ops
from .base import GradientTransformation, optimizer, weight_decayed


def sgd(lr=1e-3, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
        nesterov: bool = False, *, maximize: bool = False) -> GradientTransformation:
    """``g += wd p``; ``b = m b + (1 - dampening) g`` (``b = g`` on the first step);
    ``g = g + m b`` (Nesterov) or ``b``; ``p -= lr g``."""
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("sgd: Nesterov momentum requires a momentum and zero dampening (as torch)")
    hp = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay}

    def slots(params):
        return {"momentum_buffer": [torch.zeros_like(p) for p in params]} if momentum != 0 else {}

    def step(g, p, s, h, count):
        g = weight_decayed(g, p, h["weight_decay"] if weight_decay != 0 else 0, maximize)
        new = {}
        if momentum != 0:
            # the buffer starts at zero, so a coefficient of 1 on the first step gives b = g
            coef = torch.where(count == 1, torch.ones_like(h["dampening"]), 1 - h["dampening"])
            buf = _ops.add(_ops.mul(s["momentum_buffer"], h["momentum"]), _ops.mul(g, coef))
            new["momentum_buffer"] = buf
            g = _ops.axpy(h["momentum"], buf, g) if nesterov else buf
        return _ops.mul(g, -h["lr"]), new

    return optimizer(hp, slots, step)
