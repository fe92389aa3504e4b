"""NAdam (Adam with Nesterov momentum) and its decoupled-decay variant NAdamW, as
``torch.optim.NAdam``."""

from __future__ import annotations

import torch

from . import _check as C
from . import _ops
from ._aux_state import optimizer_with_aux
from .base import GradientTransformation, hyperparam_dtype, weight_decayed


def nadam(lr=2e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
          momentum_decay: float = 4e-3, decoupled_weight_decay: bool = False, *,
          maximize: bool = False) -> GradientTransformation:
    """Adam whose momentum looks one step ahead (Dozat, 2016), as ``torch.optim.NAdam``.

    At step ``t``: ``mu_t = b1 (1 - 0.96^(t psi) / 2)`` with ``psi = momentum_decay``, and
    ``mu_product`` the product ``mu_1 ... mu_t`` (state, running as torch's does);
    ``m = lerp(m, g, 1 - b1)``, ``v = b2 v + (1 - b2) g^2``, ``denom = sqrt(v / (1 - b2^t)) + eps``;
    ``p -= lr (1 - mu_t) / (1 - mu_product) g / denom
          + lr mu_{t+1} / (1 - mu_product mu_{t+1}) m / denom``.
    ``weight_decay`` adds ``wd p`` to the gradient, or with ``decoupled_weight_decay`` decays the
    params as AdamW does (``p -= lr wd p``, NAdamW). State: ``exp_avg``, ``exp_avg_sq`` and the
    scalar ``mu_product`` (held like the hyperparameters: float64 for float64 params, else float32).
    """
    C.lr("nadam", lr)
    C.betas("nadam", betas)
    C.nonneg("nadam", "eps", eps)
    C.nonneg("nadam", "weight_decay", weight_decay)
    C.nonneg("nadam", "momentum_decay", momentum_decay)
    C.flag("nadam", "decoupled_weight_decay", decoupled_weight_decay)
    C.flag("nadam", "maximize", maximize)
    hp = {"lr": lr, "beta1": betas[0], "beta2": betas[1], "eps": eps, "momentum_decay": momentum_decay}
    if weight_decay != 0:
        hp["weight_decay"] = weight_decay

    def slots(params):
        return {"exp_avg": [torch.zeros_like(p) for p in params],
                "exp_avg_sq": [torch.zeros_like(p) for p in params]}

    def aux_init(leaves, paths):
        like = leaves[0] if leaves else None
        device = like.device if like is not None else None
        return {"mu_product": torch.ones((), dtype=hyperparam_dtype(like), device=device)}

    def step(ops, g, p, s, h, count, aux, paths):
        lr, b1, b2, psi, wd = h["lr"], h["beta1"], h["beta2"], h["momentum_decay"], h.get("weight_decay")
        if decoupled_weight_decay and wd is not None and g and p[0] is None:
            raise ValueError("nadam: weight_decay needs params: call update(grads, state, params)")
        g = weight_decayed(ops, g, p, None if decoupled_weight_decay else wd, maximize)
        m = ops.lerp(s["exp_avg"], g, 1 - b1)                                  # exp_avg.lerp_(grad, 1 - beta1)
        v = ops.addcmul_(ops.mul(s["exp_avg_sq"], b2), g, g, 1 - b2)
        denom = ops.add_(ops.sqrt(ops.div(v, 1 - b2 ** count)), h["eps"])     # (v / bc2).sqrt() + eps
        mu = b1 * (1.0 - 0.5 * 0.96 ** (count * psi))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((count + 1) * psi))
        if not isinstance(aux["mu_product"], torch.Tensor) or aux["mu_product"].shape != ():
            raise ValueError(f"nadam update: state['mu_product'] must be a 0-d tensor (from init), "
                             f"got {aux['mu_product']!r}")
        mu_product = aux["mu_product"] * mu                                    # torch: mu_product *= mu
        prod = mu_product.item() if _ops.is_number(count) else mu_product     # torch reads it back as a float
        c_grad = -lr * (1.0 - mu) / (1.0 - prod)
        c_avg = -lr * mu_next / (1.0 - prod * mu_next)
        updates = ops.div_(ops.add(ops.mul(g, c_grad), m, alpha=c_avg), denom)
        if decoupled_weight_decay and wd is not None:
            updates = ops.add(updates, p, alpha=-lr * wd)                      # p.mul_(1 - lr * wd), first
        return updates, {"exp_avg": m, "exp_avg_sq": v}, {"mu_product": mu_product}

    return optimizer_with_aux(hp, slots, ("mu_product",), aux_init, step, "nadam")
