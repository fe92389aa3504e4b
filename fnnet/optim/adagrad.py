"""Adagrad, as ``torch.optim.Adagrad``."""

from __future__ import annotations

import torch

from . import _ops
from .base import GradientTransformation, optimizer, weight_decayed


def adagrad(lr=1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
            initial_accumulator_value: float = 0.0, eps: float = 1e-10, *,
            maximize: bool = False) -> GradientTransformation:
    """``s += g^2``; ``p -= lr / (1 + (t - 1) lr_decay) * g / (sqrt(s) + eps)``."""
    hp = {"lr": lr, "lr_decay": lr_decay, "weight_decay": weight_decay, "eps": eps}

    def slots(params):
        return {"sum": [torch.full_like(p, initial_accumulator_value) for p in params]}

    def step(g, p, s, h, count):
        g = weight_decayed(g, p, h["weight_decay"] if weight_decay != 0 else 0, maximize)
        clr = h["lr"] / (1 + (count - 1) * h["lr_decay"])
        acc = _ops.add(s["sum"], _ops.square(g))
        std = _ops.add(_ops.sqrt(acc), h["eps"])
        return _ops.mul(_ops.div(g, std), -clr), {"sum": acc}

    return optimizer(hp, slots, step)
