"""RAdam (rectified Adam), as ``torch.optim.RAdam``."""

from __future__ import annotations

import math

import torch

from . import _check as C
from . import _ops
from .base import GradientTransformation, optimizer, weight_decayed


def radam(lr=1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
          decoupled_weight_decay: bool = False, *, maximize: bool = False) -> GradientTransformation:
    """Adam whose adaptive step is switched on only once the variance of its estimate is
    bounded (Liu et al., 2019), as ``torch.optim.RAdam``.

    ``m``, ``v`` as Adam's; ``rho_inf = 2 / (1 - b2) - 1``, ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)``.
    While ``rho_t <= 5`` the step is SGD with momentum, ``p -= lr m / (1 - b1^t)``; after,
    ``p -= lr r_t m / (1 - b1^t) * sqrt(1 - b2^t) / (sqrt(v) + eps)`` with the rectification
    ``r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))``.
    ``weight_decay`` adds ``wd p`` to the gradient, or with ``decoupled_weight_decay`` decays the
    params as AdamW does. State: ``exp_avg``, ``exp_avg_sq``. With the step count held as a
    tensor (compiled, on an accelerator) both cases are one formula and ``where`` picks (torch's
    ``capturable`` form)."""
    C.lr("radam", lr)
    C.betas("radam", betas)
    C.nonneg("radam", "eps", eps)
    C.nonneg("radam", "weight_decay", weight_decay)
    C.flag("radam", "decoupled_weight_decay", decoupled_weight_decay)
    C.flag("radam", "maximize", maximize)
    hp = {"lr": lr, "beta1": betas[0], "beta2": betas[1], "eps": eps}
    if weight_decay != 0:
        hp["weight_decay"] = weight_decay

    def slots(params):
        return {"exp_avg": [torch.zeros_like(p) for p in params],
                "exp_avg_sq": [torch.zeros_like(p) for p in params]}

    def step(ops, g, p, s, h, count):
        lr, b1, b2, wd = h["lr"], h["beta1"], h["beta2"], h.get("weight_decay")
        if decoupled_weight_decay and wd is not None and g and p[0] is None:
            raise ValueError("radam: weight_decay needs params: call update(grads, state, params)")
        g = weight_decayed(ops, g, p, None if decoupled_weight_decay else wd, maximize)
        m = ops.lerp(s["exp_avg"], g, 1 - b1)
        v = ops.addcmul_(ops.mul(s["exp_avg_sq"], b2), g, g, 1 - b2)
        bc1, bc2 = 1 - b1 ** count, 1 - b2 ** count
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * count * b2 ** count / bc2

        def rect_sq():  # r_t^2, meaningful where rho_t > 5
            return (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)

        if _ops.is_number(rho_t):
            if rho_t > 5.0:   # the adaptive step, rectified
                denom = ops.add_(ops.sqrt(v), h["eps"])
                updates = ops.div_(ops.mul(m, -lr * math.sqrt(rect_sq()) * math.sqrt(bc2) / bc1), denom)
            else:             # not yet: momentum SGD with the bias correction
                updates = ops.mul(m, -lr / bc1)
        else:  # torch's capturable/_foreach form: m * (1 / ((sqrt(v) + eps) / c_adaptive) + c_sgd)
            rectified = rho_t > 5.0
            rect = torch.where(rectified, torch.sqrt(torch.where(rectified, rect_sq(), 1.0)), 0.0)
            c_sgd = torch.where(rectified, 0.0, -lr / bc1)
            c_adaptive = -lr * rect * torch.sqrt(bc2) / bc1
            denom = ops.div_(ops.add_(ops.sqrt(v), h["eps"]), c_adaptive)   # +-inf where not rectified
            updates = ops.mul_(ops.add_(ops.reciprocal(denom), c_sgd), m)
        if decoupled_weight_decay and wd is not None:
            updates = ops.add(updates, p, alpha=-lr * wd)                      # p.mul_(1 - lr * wd), first
        return updates, {"exp_avg": m, "exp_avg_sq": v}

    return optimizer(hp, slots, step, "radam")
