"""Adam, AdamW and Adamax, as their ``torch.optim`` namesakes."""

from __future__ import annotations

import torch

from . import _ops
from .base import GradientTransformation, optimizer, weight_decayed


def _adam(lr, betas, eps, weight_decay, amsgrad, maximize, decoupled) -> GradientTransformation:
    hp = {"lr": lr, "beta1": betas[0], "beta2": betas[1], "eps": eps, "weight_decay": weight_decay}

    def slots(params):
        s = {"exp_avg": [torch.zeros_like(p) for p in params],
             "exp_avg_sq": [torch.zeros_like(p) for p in params]}
        if amsgrad:
            s["max_exp_avg_sq"] = [torch.zeros_like(p) for p in params]
        return s

    def step(g, p, s, h, count):
        lr, b1, b2 = h["lr"], h["beta1"], h["beta2"]
        g = weight_decayed(g, p, h["weight_decay"] if weight_decay != 0 and not decoupled else 0, maximize)
        m = _ops.add(s["exp_avg"], _ops.mul(_ops.sub(g, s["exp_avg"]), 1 - b1))  # lerp, as torch
        v = _ops.add(_ops.mul(s["exp_avg_sq"], b2), _ops.mul(_ops.square(g), 1 - b2))
        new = {"exp_avg": m, "exp_avg_sq": v}
        if amsgrad:
            v = new["max_exp_avg_sq"] = _ops.maximum(s["max_exp_avg_sq"], v)
        bc1 = 1 - b1 ** count
        bc2_sqrt = torch.sqrt(1 - b2 ** count)
        denom = _ops.add(_ops.mul(_ops.sqrt(v), 1 / bc2_sqrt), h["eps"])
        updates = _ops.mul(_ops.div(m, denom), -lr / bc1)
        if decoupled and weight_decay != 0:
            updates = _ops.axpy(-lr * h["weight_decay"], p, updates)
        return updates, new

    return optimizer(hp, slots, step)


def adam(lr=1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False) -> GradientTransformation:
    """Adam with L2 weight decay added to the gradient, optional AMSGrad, as ``torch.optim.Adam``."""
    return _adam(lr, betas, eps, weight_decay, amsgrad, maximize, decoupled=False)


def adamw(lr=1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False) -> GradientTransformation:
    """Adam with decoupled weight decay ``p -= lr * wd * p``, as ``torch.optim.AdamW``."""
    return _adam(lr, betas, eps, weight_decay, amsgrad, maximize, decoupled=True)


def adamax(lr=2e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
           weight_decay: float = 0.0, *, maximize: bool = False) -> GradientTransformation:
    """Adam with the infinity norm: ``u = max(b2 u, |g| + eps)``; ``p -= lr / (1 - b1^t) m / u``."""
    hp = {"lr": lr, "beta1": betas[0], "beta2": betas[1], "eps": eps, "weight_decay": weight_decay}

    def slots(params):
        return {"exp_avg": [torch.zeros_like(p) for p in params],
                "exp_inf": [torch.zeros_like(p) for p in params]}

    def step(g, p, s, h, count):
        g = weight_decayed(g, p, h["weight_decay"] if weight_decay != 0 else 0, maximize)
        m = _ops.add(s["exp_avg"], _ops.mul(_ops.sub(g, s["exp_avg"]), 1 - h["beta1"]))
        u = _ops.maximum(_ops.mul(s["exp_inf"], h["beta2"]), _ops.add(_ops.abs(g), h["eps"]))
        clr = h["lr"] / (1 - h["beta1"] ** count)
        return _ops.mul(_ops.div(m, u), -clr), {"exp_avg": m, "exp_inf": u}

    return optimizer(hp, slots, step)
