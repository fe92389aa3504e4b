"""Dynamic loss scaling for float16 training, as ``torch.amp.GradScaler`` does it, as an
optimizer wrapper (the pure form of ``scaler.scale(loss)``, ``scaler.step(opt)``,
``scaler.update()``)::

    opt = optim.dynamic_loss_scale(optim.adam(1e-3))
    state = opt.init(params)
    loss, grads = fn.value_and_grad(lambda p: loss_fn(p) * state["scale"])(params)
    updates, state = opt.update(grads, state, params)   # unscaled inside; skipped on inf/NaN
    params = optim.apply_updates(params, updates)

The gradients of the scaled loss are multiplied by ``1 / scale`` (the reciprocal taken in
float64, as GradScaler). If any is not finite the step is skipped (zero updates, the inner
state unchanged) and the scale is multiplied by ``backoff_factor``; after ``growth_interval``
finite steps in a row it is multiplied by ``growth_factor`` (unless that overflows).
State: ``{"scale": float32 [], "growth_tracker": int32 [], "inner": inner state}``.
"""

from __future__ import annotations

import torch

from .. import tree as T
from . import _check, _ops
from .base import GradientTransformation


def dynamic_loss_scale(inner: GradientTransformation, init_scale: float = 2.0 ** 16,
                       growth_factor: float = 2.0, backoff_factor: float = 0.5,
                       growth_interval: int = 2000) -> GradientTransformation:
    """``inner`` run on the unscaled gradients of a loss multiplied by ``state["scale"]``;
    see the module docstring. Arguments and defaults are GradScaler's."""
    who = "dynamic_loss_scale"
    if not isinstance(inner, GradientTransformation):
        raise TypeError(f"{who}: inner must be a GradientTransformation (an optimizer), got "
                        f"{type(inner).__name__}")
    _check.number(who, "init_scale", init_scale, lo=0.0, lo_open=True)
    _check.number(who, "growth_factor", growth_factor, lo=1.0, lo_open=True)
    _check.number(who, "backoff_factor", backoff_factor, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    _check.integer(who, "growth_interval", growth_interval, lo=1)

    def init(params):
        leaves = T.leaves(params)
        device = leaves[0].device if leaves else None
        return {"scale": torch.tensor(float(init_scale), dtype=torch.float32, device=device),
                "growth_tracker": torch.zeros((), dtype=torch.int32, device=device),
                "inner": inner.init(params)}

    def update(grads, state, params=None, **extra):
        if not isinstance(state, dict) or set(state) != {"scale", "growth_tracker", "inner"}:
            raise ValueError(f"{who} update: the state must be this wrapper's init(params), got "
                             f"{type(state).__name__}")
        scale, tracker = state["scale"], state["growth_tracker"]
        inv = scale.double().reciprocal().float()
        flat, spec = T.flatten(grads)
        if all(g.dtype == torch.float32 for g in flat):
            flat = _ops.for_leaves(flat, inv).mul(flat, inv)  # one _foreach_mul
        else:  # half grads multiplied in float32, as GradScaler's kernel (1/2**25 is 0 in float16)
            flat = [g * inv.double() if g.dtype == torch.float64 else (g.float() * inv).to(g.dtype) for g in flat]
        found_inf = ~torch.stack([torch.isfinite(g).all() for g in flat]).all() if flat else \
            torch.zeros((), dtype=torch.bool, device=scale.device)
        unscaled = T.unflatten(spec, flat)
        if not torch.compiler.is_compiling() and not found_inf.is_cuda:
            # eager on the host: skip the inner step for real, as GradScaler.step does
            if bool(found_inf):
                updates, inner_state = T.full_like(unscaled, -0.0), state["inner"]
            else:
                updates, inner_state = inner.update(unscaled, state["inner"], params, **extra)
        else:  # no host sync: compute both, keep one (torch.where leaf by leaf)
            new_updates, new_inner = inner.update(unscaled, state["inner"], params, **extra)
            updates = T.map(lambda u: torch.where(found_inf, torch.full_like(u, -0.0), u), new_updates)
            inner_state = T.map(lambda new, old: torch.where(found_inf, old, new), new_inner, state["inner"])
        # torch._amp_update_scale_, written out (it mutates its arguments)
        grown = tracker + 1
        at_interval = grown == growth_interval
        bigger = scale * growth_factor
        new_scale = torch.where(found_inf, scale * backoff_factor,
                                torch.where(at_interval & torch.isfinite(bigger), bigger, scale))
        new_tracker = torch.where(found_inf | at_interval, torch.zeros_like(tracker), grown)
        return updates, {"scale": new_scale, "growth_tracker": new_tracker, "inner": inner_state}

    return GradientTransformation(init, update)
