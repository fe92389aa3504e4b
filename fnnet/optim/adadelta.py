"""Adadelta, as ``torch.optim.Adadelta``."""

from __future__ import annotations

import torch

from . import _check as C
from .base import GradientTransformation, optimizer, weight_decayed


def adadelta(lr=1.0, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0, *,
             maximize: bool = False) -> GradientTransformation:
    """Steps whose units match the params' (Zeiler, 2012): the gradient is rescaled by the ratio
    of two running RMS, of past steps and of past gradients.

    ``v = rho v + (1 - rho) g^2``; ``delta = sqrt(u + eps) / sqrt(v + eps) * g``;
    ``u = rho u + (1 - rho) delta^2``; ``p -= lr delta`` (``g += wd p`` first with weight decay).
    State: ``square_avg`` (``v``) and ``acc_delta`` (``u``), named as torch names them."""
    C.lr("adadelta", lr)
    C.number("adadelta", "rho", rho, lo=0.0, hi=1.0)
    C.nonneg("adadelta", "eps", eps)
    C.nonneg("adadelta", "weight_decay", weight_decay)
    C.flag("adadelta", "maximize", maximize)
    hp = {"lr": lr, "rho": rho, "eps": eps}
    if weight_decay != 0:
        hp["weight_decay"] = weight_decay

    def slots(params):
        return {"square_avg": [torch.zeros_like(p) for p in params],
                "acc_delta": [torch.zeros_like(p) for p in params]}

    def step(ops, g, p, s, h, count):
        rho, eps = h["rho"], h["eps"]
        g = weight_decayed(ops, g, p, h.get("weight_decay"), maximize)
        v = ops.addcmul_(ops.mul(s["square_avg"], rho), g, g, 1 - rho)
        std = ops.sqrt(ops.add(v, eps))
        delta = ops.mul_(ops.div_(ops.sqrt(ops.add(s["acc_delta"], eps)), std), g)
        u = ops.addcmul_(ops.mul(s["acc_delta"], rho), delta, delta, 1 - rho)
        return ops.mul_(delta, -h["lr"]), {"square_avg": v, "acc_delta": u}

    return optimizer(hp, slots, step, "adadelta")
