"""Adam, AdamW and Adamax, as their ``torch.optim`` namesakes (single-tensor formulas)."""

from __future__ import annotations

import torch

from . import _check as C
from . import _ops
from .base import GradientTransformation, Mask, check_mask, on_masked, optimizer, weight_decayed


# the smallest |step size| folded into Adam's denominator: sqrt(v) / 1e-12 stays finite in float32
_FOLD_MIN = 1e-12


def _check(name, lr, betas, eps, weight_decay, maximize) -> None:
    """torch.optim.Adam's checks: lr, eps, weight_decay >= 0, betas in [0, 1)."""
    C.lr(name, lr)
    C.betas(name, betas)
    C.nonneg(name, "eps", eps)
    C.nonneg(name, "weight_decay", weight_decay)
    C.flag(name, "maximize", maximize)


def _adam(lr, betas, eps, weight_decay, amsgrad, maximize, decoupled, mask: Mask = None) -> GradientTransformation:
    _check("adamw" if decoupled else "adam", lr, betas, eps, weight_decay, maximize)
    check_mask("adamw", mask)
    C.flag("adamw" if decoupled else "adam", "amsgrad", amsgrad)
    hp = {"lr": lr, "beta1": betas[0], "beta2": betas[1], "eps": eps}
    if weight_decay != 0:
        hp["weight_decay"] = weight_decay

    def slots(params):
        s = {"exp_avg": [torch.zeros_like(p) for p in params],
             "exp_avg_sq": [torch.zeros_like(p) for p in params]}
        if amsgrad:
            s["max_exp_avg_sq"] = [torch.zeros_like(p) for p in params]
        return s

    def step(ops, g, p, s, h, count, masks=None):
        lr, b1, b2, wd = h["lr"], h["beta1"], h["beta2"], h.get("weight_decay")
        g = weight_decayed(ops, g, p, None if decoupled else wd, maximize)
        m = ops.lerp(s["exp_avg"], g, 1 - b1)                                # exp_avg.lerp_(grad, 1 - beta1)
        v = ops.addcmul_(ops.mul(s["exp_avg_sq"], b2), g, g, 1 - b2)          # .mul_(beta2).addcmul_(g, g, 1 - beta2)
        new = {"exp_avg": m, "exp_avg_sq": v}
        if amsgrad:
            v = new["max_exp_avg_sq"] = ops.maximum(s["max_exp_avg_sq"], v)
        # torch: denom = v.sqrt() / bc2_sqrt + eps; p.addcdiv_(m, denom, value=-step_size)
        neg_step = -lr / (1 - b1 ** count)
        bc2_sqrt = _ops.ssqrt(1 - b2 ** count)
        if _ops.is_number(neg_step) and abs(neg_step) >= _FOLD_MIN and not any(x.dtype == torch.float16 for x in v):
            # -step_size folded into denom first (as torch's capturable path does), saving a pass;
            # only for a step size far from 0, where dividing by it neither overflows nor is 0/0,
            # and not in float16, where sqrt(v) / step_size overflows already for |g| ~ 1e3
            denom = ops.add_(ops.div_(ops.sqrt(v), bc2_sqrt * neg_step), h["eps"] / neg_step)
            updates = ops.div(m, denom)
        else:  # torch's own order: exact for lr = 0 (a schedule at 0, a tensor lr under jit/vmap)
            denom = ops.add_(ops.div_(ops.sqrt(v), bc2_sqrt), h["eps"])
            updates = ops.mul_(ops.div(m, denom), neg_step)
        if decoupled and wd is not None:                                     # p.mul_(1 - lr * wd), first
            decay = lambda us, ps: ops.add(us, ps, alpha=-lr * wd)
            updates = decay(updates, p) if masks is None else on_masked(masks["weight_decay"], decay, updates, p)
        return updates, new

    leaf_masks = None if mask is None else {"weight_decay": mask}
    return optimizer(hp, slots, step, "adamw" if decoupled else "adam", masks=leaf_masks)


def adam(lr=1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0, amsgrad: bool = False, *, maximize: bool = False) -> GradientTransformation:
    """Adam with L2 weight decay added to the gradient, optional AMSGrad, as ``torch.optim.Adam``.
    State: ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq``), named as torch names them."""
    return _adam(lr, betas, eps, weight_decay, amsgrad, maximize, decoupled=False)


def adamw(lr=1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
          weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
          mask: Mask = None) -> GradientTransformation:
    """Adam with decoupled weight decay ``p -= lr * wd * p``, as ``torch.optim.AdamW``.

    ``mask`` (as ``optax.adamw``'s) selects the leaves that decay: a bool tree like the params
    (or a prefix of it), ``f(path, leaf) -> bool`` or ``f(params) -> bool tree``; the others
    take Adam's step alone (torch: a param group with ``weight_decay=0``), e.g.
    ``mask=lambda path, p: p.ndim > 1`` leaves biases and norms undecayed."""
    return _adam(lr, betas, eps, weight_decay, amsgrad, maximize, decoupled=True, mask=mask)


def adamax(lr=2e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
           weight_decay: float = 0.0, *, maximize: bool = False) -> GradientTransformation:
    """Adam with the infinity norm: ``u = max(b2 u, |g| + eps)``; ``p -= lr / (1 - b1^t) m / u``
    (``torch.optim.Adamax``)."""
    _check("adamax", lr, betas, eps, weight_decay, maximize)
    hp = {"lr": lr, "beta1": betas[0], "beta2": betas[1], "eps": eps}
    if weight_decay != 0:
        hp["weight_decay"] = weight_decay

    def slots(params):
        return {"exp_avg": [torch.zeros_like(p) for p in params],
                "exp_inf": [torch.zeros_like(p) for p in params]}

    def step(ops, g, p, s, h, count):
        g = weight_decayed(ops, g, p, h.get("weight_decay"), maximize)
        m = ops.lerp(s["exp_avg"], g, 1 - h["beta1"])
        u = ops.maximum(ops.mul(s["exp_inf"], h["beta2"]), ops.add(ops.abs(g), h["eps"]))
        clr = h["lr"] / (1 - h["beta1"] ** count)
        return ops.mul(ops.div(m, u), -clr), {"exp_avg": m, "exp_inf": u}

    return optimizer(hp, slots, step, "adamax")
