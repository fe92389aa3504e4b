"""Averaged SGD, as ``torch.optim.ASGD``; the running average of the params is ``state["ax"]``."""

from __future__ import annotations

import torch

from . import _check as C
from . import _ops
from .base import GradientTransformation, optimizer, weight_decayed


def asgd(lr=1e-2, lambd: float = 1e-4, alpha: float = 0.75, t0: float = 1e6,
         weight_decay: float = 0.0, *, maximize: bool = False) -> GradientTransformation:
    """At step t: ``eta = lr / (1 + lambd lr (t - 1))^alpha``, ``mu = 1 / max(1, t - 1 - t0)``
    (torch's per-step ``eta`` and ``mu`` state, derived here from the count);
    ``p' = p (1 - lambd eta) - eta g``; ``ax += mu (p' - ax)`` (``ax = p'`` while ``mu == 1``).
    Evaluate with the averaged params ``state["ax"]`` (a tree like the params)."""
    if callable(lr):
        raise ValueError("asgd: lr enters eta's decay formula; it cannot be a schedule")
    C.lr("asgd", lr)
    C.nonneg("asgd", "lambd", lambd)
    C.number("asgd", "alpha", alpha)
    C.number("asgd", "t0", t0)
    C.nonneg("asgd", "weight_decay", weight_decay)
    C.flag("asgd", "maximize", maximize)
    hp = {"lr": lr, "lambd": lambd, "alpha": alpha, "t0": t0}
    if weight_decay != 0:
        hp["weight_decay"] = weight_decay

    def slots(params):
        return {"ax": [torch.zeros_like(p) for p in params]}

    def step(ops, g, p, s, h, count):
        if g and p[0] is None:
            raise ValueError("asgd needs params: call update(grads, state, params)")
        g = weight_decayed(ops, g, p, h.get("weight_decay"), maximize)
        lr, lambd = h["lr"], h["lambd"]
        t = count - 1
        eta = lr / (1 + lambd * lr * t) ** h["alpha"]
        mu = 1 / _ops.smax(t - h["t0"], 1)
        new_p = ops.add(ops.mul(p, 1 - lambd * eta), g, alpha=-eta)   # p.mul_(1 - lambd eta).add_(g, alpha=-eta)
        if isinstance(mu, torch.Tensor):
            ax = ops.add(s["ax"], ops.mul(ops.sub(new_p, s["ax"]), mu))  # torch's capturable form
        else:
            ax = new_p if mu == 1 else ops.add(s["ax"], ops.mul(ops.sub(new_p, s["ax"]), mu))
        return ops.sub(new_p, p), {"ax": ax}

    return optimizer(hp, slots, step, "asgd")
