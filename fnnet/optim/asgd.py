"""Averaged SGD, as ``torch.optim.ASGD``; the running average of the params is ``state["ax"]``."""

from __future__ import annotations

import torch

from . import _ops
from .base import GradientTransformation, optimizer, weight_decayed


def asgd(lr=1e-2, lambd: float = 1e-4, alpha: float = 0.75, t0: float = 1e6,
         weight_decay: float = 0.0, *, maximize: bool = False) -> GradientTransformation:
    """At step t: ``eta = lr / (1 + lambd lr (t - 1))^alpha``, ``mu = 1 / max(1, t - 1 - t0)``
    (torch's per-step state, derived from the count); ``p' = p (1 - lambd eta) - eta g``;
    ``ax += mu (p' - ax)`` (``ax = p'`` while ``mu == 1``). Use ``state["ax"]`` to evaluate."""
    if callable(lr):
        raise ValueError("asgd: lr enters eta's decay formula; it cannot be a schedule")
    hp = {"lr": lr, "lambd": lambd, "alpha": alpha, "t0": t0, "weight_decay": weight_decay}

    def slots(params):
        return {"ax": [torch.zeros_like(p) for p in params]}

    def step(g, p, s, h, count):
        if p[0] is None:
            raise ValueError("asgd needs params: call update(grads, state, params)")
        g = weight_decayed(g, p, h["weight_decay"] if weight_decay != 0 else 0, maximize)
        lr, lambd = h["lr"], h["lambd"]
        t = count - 1
        eta = lr / (1 + lambd * lr * t) ** h["alpha"]
        mu = 1 / torch.clamp(t - h["t0"], min=1)
        new_p = _ops.sub(_ops.mul(p, 1 - lambd * eta), _ops.mul(g, eta))
        ax = [torch.where(mu == 1, q, a + (q - a) * mu) for q, a in zip(new_p, s["ax"])]
        return _ops.sub(new_p, p), {"ax": ax}

    return optimizer(hp, slots, step)
