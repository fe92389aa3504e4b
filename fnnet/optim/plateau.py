"""``reduce_on_plateau``: ``ReduceLROnPlateau`` as a transformation that scales updates."""

from __future__ import annotations

import math

import torch

from .. import tree as T
from . import _check as C
from . import _ops
from .base import GradientTransformation


def _state(scale: float, best: float, bad: int, cool: int, device) -> dict:
    """Float64 like torch's Python floats (``best`` is compared at full precision), on the params' device."""
    f64 = {"dtype": torch.float64, "device": device}
    return {"scale": torch.tensor(scale, **f64), "best": torch.tensor(best, **f64),
            "num_bad_epochs": torch.tensor(bad, device=device), "cooldown_counter": torch.tensor(cool, device=device)}


def reduce_on_plateau(factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
                      threshold_mode: str = "rel", cooldown: int = 0, min_scale: float = 0.0,
                      mode: str = "min", eps: float = 1e-8) -> GradientTransformation:
    """Multiplies the updates by a scale that drops by ``factor`` when the monitored value (pass
    ``update(..., value=loss)`` once per epoch, e.g. in a chain after the optimizer) has not
    improved for ``patience`` calls — ``ReduceLROnPlateau``'s rule, on a scale that starts at
    1 (so ``lr * scale`` is torch's lr; ``min_scale`` and ``eps`` are in units of the scale:
    torch's ``min_lr / lr`` and ``eps / lr``). Calls without
    ``value`` apply the current scale and change nothing (per-step updates between epochs).
    The bookkeeping reads ``value`` on the host: use it eagerly, outside ``fn.jit``."""
    C.choice("reduce_on_plateau", "mode", mode, ("min", "max"))
    C.choice("reduce_on_plateau", "threshold_mode", threshold_mode, ("rel", "abs"))
    C.number("reduce_on_plateau", "factor", factor, lo=0.0, hi=1.0, hi_open=True)  # torch: factor < 1
    C.integer("reduce_on_plateau", "patience", patience, lo=0)
    C.nonneg("reduce_on_plateau", "threshold", threshold)
    C.integer("reduce_on_plateau", "cooldown", cooldown, lo=0)
    C.nonneg("reduce_on_plateau", "min_scale", min_scale)
    C.nonneg("reduce_on_plateau", "eps", eps)

    def better(a: float, best: float) -> bool:
        if mode == "min":
            return a < (best * (1 - threshold) if threshold_mode == "rel" else best - threshold)
        return a > (best * (threshold + 1) if threshold_mode == "rel" else best + threshold)

    def init(params):
        leaves = T.leaves(params)
        return _state(1.0, math.inf if mode == "min" else -math.inf, 0, 0, leaves[0].device if leaves else None)

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
            state = _state(scale, best, bad, cool, state["scale"].device)
        flat, spec = T.flatten(grads)
        if not flat:
            return grads, state
        s = state["scale"].to(dtype=flat[0].dtype) if flat[0].is_floating_point() else state["scale"]
        return T.unflatten(spec, _ops.for_leaves(flat, s).mul(flat, s)), state

    return GradientTransformation(init, update)
