"""SGD with momentum, dampening, Nesterov and weight decay, as ``torch.optim.SGD``."""

from __future__ import annotations

import torch

from . import _check as C
from . import _ops
from .base import GradientTransformation, optimizer, weight_decayed


def sgd(lr=1e-3, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 0.0,
        nesterov: bool = False, *, maximize: bool = False) -> GradientTransformation:
    """``g += wd p``; ``b = m b + (1 - dampening) g`` (``b = g`` on the first step);
    ``g = g + m b`` (Nesterov) or ``b``; ``p -= lr g``. State: ``momentum_buffer``."""
    C.lr("sgd", lr)
    C.nonneg("sgd", "momentum", momentum)
    C.number("sgd", "dampening", dampening)
    C.nonneg("sgd", "weight_decay", weight_decay)
    C.flag("sgd", "nesterov", nesterov)
    C.flag("sgd", "maximize", maximize)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(f"sgd: Nesterov momentum requires a momentum and zero dampening (as torch), got "
                         f"momentum={momentum}, dampening={dampening}")
    hp = {"lr": lr}
    if momentum != 0:
        hp.update(momentum=momentum, dampening=dampening)
    if weight_decay != 0:
        hp["weight_decay"] = weight_decay

    def slots(params):
        return {"momentum_buffer": [torch.zeros_like(p) for p in params]} if momentum != 0 else {}

    def step(ops, g, p, s, h, count):
        g = weight_decayed(ops, g, p, h.get("weight_decay"), maximize)
        new = {}
        if momentum != 0:
            # torch starts the buffer as a copy of g; from zeros, a coefficient of 1 gives exactly that
            coef = _ops.select(count == 1, 1.0, 1 - h["dampening"])
            buf = ops.add(ops.mul(s["momentum_buffer"], h["momentum"]), g, alpha=coef)
            new["momentum_buffer"] = buf
            g = ops.add(g, buf, alpha=h["momentum"]) if nesterov else buf
        return ops.mul(g, -h["lr"]), new

    return optimizer(hp, slots, step, "sgd")
