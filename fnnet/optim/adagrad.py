"""Adagrad, as ``torch.optim.Adagrad``."""

from __future__ import annotations

import torch

from . import _check as C
from .base import GradientTransformation, optimizer, weight_decayed


def adagrad(lr=1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
            initial_accumulator_value: float = 0.0, eps: float = 1e-10, *,
            maximize: bool = False) -> GradientTransformation:
    """``s += g^2``; ``p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(s) + eps)``. State: ``sum``."""
    C.lr("adagrad", lr)
    for name, v in (("lr_decay", lr_decay), ("weight_decay", weight_decay),
                    ("initial_accumulator_value", initial_accumulator_value), ("eps", eps)):
        C.nonneg("adagrad", name, v)
    C.flag("adagrad", "maximize", maximize)
    hp = {"lr": lr, "lr_decay": lr_decay, "eps": eps}
    if weight_decay != 0:
        hp["weight_decay"] = weight_decay

    def slots(params):
        return {"sum": [torch.full_like(p, initial_accumulator_value) for p in params]}

    def step(ops, g, p, s, h, count):
        g = weight_decayed(ops, g, p, h.get("weight_decay"), maximize)
        clr = h["lr"] / (1 + (count - 1) * h["lr_decay"])
        acc = ops.addcmul(s["sum"], g, g, 1.0)
        std = ops.add(ops.sqrt(acc), h["eps"])
        return ops.mul(ops.div(g, std), -clr), {"sum": acc}

    return optimizer(hp, slots, step, "adagrad")
