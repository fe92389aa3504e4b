"""``reduce_on_plateau``: ``ReduceLROnPlateau`` as a transformation that scales updates."""

from __future__ import annotations

import math

import torch

from .. import tree as T
from . import _ops
from .base import GradientTransformation


def reduce_on_plateau(factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
                      threshold_mode: str = "rel", cooldown: int = 0, min_scale: float = 0.0,
                      mode: str = "min", eps: float = 1e-8) -> GradientTransformation:
    """Multiplies the updates by a scale that drops by ``factor`` when the monitored value (pass
    ``update(..., value=loss)`` once per epoch, e.g. in a chain after the optimizer) has not
    improved for ``patience`` calls — ``ReduceLROnPlateau``'s rule, on a scale that starts at
    1 (so ``lr * scale`` is torch's lr; ``min_scale`` is ``min_lr / lr``). Calls without
    ``value`` apply the current scale and change nothing (per-step updates between epochs).
    The bookkeeping reads ``value`` on the host: use it eagerly, outside ``fn.jit``."""
    if mode not in ("min", "max") or threshold_mode not in ("rel", "abs"):
        raise ValueError("reduce_on_plateau: mode must be 'min'|'max', threshold_mode 'rel'|'abs'")

    def better(a: float, best: float) -> bool:
        if mode == "min":
            return a < (best * (1 - threshold) if threshold_mode == "rel" else best - threshold)
        return a > (best * (threshold + 1) if threshold_mode == "rel" else best + threshold)

    def init(params):
        worst = math.inf if mode == "min" else -math.inf
        return {"scale": torch.tensor(1.0, dtype=torch.float64), "best": torch.tensor(worst, dtype=torch.float64),
                "num_bad_epochs": torch.tensor(0), "cooldown_counter": torch.tensor(0)}

    def update(grads, state, params=None, value=None, **_):
        if value is not None:
            v = float(value)
            best, bad, cool = float(state["best"]), int(state["num_bad_epochs"]), int(state["cooldown_counter"])
            scale = float(state["scale"])
            if better(v, best):
                best, bad = v, 0
            else:
                bad += 1
            if cool > 0:
                cool -= 1
                bad = 0
            if bad > patience:
                new = max(scale * factor, min_scale)
                if scale - new > eps:
                    scale = new
                cool, bad = cooldown, 0
            state = {"scale": torch.tensor(scale, dtype=torch.float64), "best": torch.tensor(best, dtype=torch.float64),
                     "num_bad_epochs": torch.tensor(bad), "cooldown_counter": torch.tensor(cool)}
        flat, spec = T.flatten(grads)
        s = state["scale"].to(device=flat[0].device, dtype=flat[0].dtype) if flat else state["scale"]
        return T.unflatten(spec, _ops.mul(flat, s)), state

    return GradientTransformation(init, update)
