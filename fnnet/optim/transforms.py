"""Stateless (or nearly) transformations to ``chain`` with an optimizer: clipping, scaling, L2
decay. The stateful building blocks (``scale_by_adam``, ``trace``, ...) are in ``blocks``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import _check
from .. import tree as T
from . import _check as C
from . import _ops
from .base import GradientTransformation, Mask, check_mask, leaf_mask, on_masked


def _stateless(f: Callable[[Any, Any], Any]) -> GradientTransformation:
    """A transformation without state from ``f(grads, params) -> updates``."""
    return GradientTransformation(lambda params: {}, lambda grads, state, params=None, **_: (f(grads, params), state))


def _map_leaves(f: Callable[[_ops.Ops, list], list], tree: Any) -> Any:
    flat, spec = T.flatten(tree)
    return T.unflatten(spec, f(_ops.for_leaves(flat), flat)) if flat else tree


def clip_by_global_norm(max_norm: float, norm_type: float = 2.0,
                        error_if_nonfinite: bool = False, *, eps: float = 1e-6) -> GradientTransformation:
    """Scale all gradients by ``max_norm / (total_norm + 1e-6)`` when that is below 1, exactly as
    ``torch.nn.utils.clip_grad_norm_`` (``norm_type`` may be ``inf``). ``error_if_nonfinite``
    raises on a NaN/inf total norm as torch does; the check reads the norm on the host, so with
    it on the step is not ``fn.jit``-able (leave it off there). The norm is
    ``tree.global_norm(wide=True)``: accumulated and kept in float32 at least, so float16
    gradients whose norm overflows float16 are still clipped by their true norm (torch's float16
    norm is then ``inf`` and its clipping zeroes them); otherwise torch's numbers.

    ``optax.clip_by_global_norm(max_norm)`` divides by the norm itself (``g / norm * max_norm``
    when ``norm >= max_norm``): ``eps=0`` is that rule (to rounding); the default ``1e-6`` is
    torch's, which clips by a factor smaller by ``1e-6 / norm`` relative."""
    C.nonneg("clip_by_global_norm", "max_norm", max_norm)
    _check.real("clip_by_global_norm", "norm_type", norm_type, 0, lo_open=True, finite=False,
                expected="a number > 0 or inf")
    C.flag("clip_by_global_norm", "error_if_nonfinite", error_if_nonfinite)
    C.nonneg("clip_by_global_norm", "eps", eps)
    max_norm, norm_type, eps = float(max_norm), float(norm_type), float(eps)

    def clip(grads, params):
        flat, spec = T.flatten(grads)
        if not flat:
            return grads
        ops = _ops.for_leaves(flat)
        total = T.global_norm(flat, norm_type, wide=True)     # torch: _foreach_norm, then the norm of norms
        if error_if_nonfinite and (torch.isnan(total) or torch.isinf(total)):
            raise RuntimeError(f"The total norm of order {norm_type} for gradients from `parameters` is "
                               "non-finite, so it cannot be clipped. To disable this error and scale the "
                               "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`")
        coef = torch.clamp(max_norm / (total + eps), max=1.0)
        return T.unflatten(spec, ops.mul(flat, coef))

    return _stateless(clip)


def clip_by_value(clip_value: float) -> GradientTransformation:
    """Clamp every gradient element to ``[-clip_value, clip_value]`` (``clip_grad_value_``)."""
    return _clamp("clip_by_value", "clip_value", clip_value)


def clip(max_delta: float) -> GradientTransformation:
    """Clamp every update element to ``[-max_delta, max_delta]`` (``optax.clip``; the same
    transformation as ``clip_by_value`` under optax's name)."""
    return _clamp("clip", "max_delta", max_delta)


def _clamp(owner: str, name: str, bound: float) -> GradientTransformation:
    C.nonneg(owner, name, bound)
    c = float(bound)
    return _stateless(lambda grads, params: _map_leaves(lambda ops, xs: ops.clamp(xs, -c, c), grads))


def scale(factor: float) -> GradientTransformation:
    """Multiply every update by ``factor``."""
    C.number("scale", "factor", factor)
    return _stateless(lambda grads, params: _map_leaves(lambda ops, xs: ops.mul(xs, factor), grads))


def scale_by_schedule(schedule: Callable[[Any], Any]) -> GradientTransformation:
    """Multiply by ``schedule(count)`` (count 0 for the first update); the state is the count."""
    if not callable(schedule):
        raise TypeError(f"scale_by_schedule: schedule must be a function of the step count, got "
                        f"{type(schedule).__name__}")

    def init(params):
        leaves = T.leaves(params)
        return {"count": torch.zeros((), dtype=torch.int64, device=leaves[0].device if leaves else None)}

    def update(grads, state, params=None, **_):
        count = state["count"]
        f = schedule(int(count) if _ops.host_scalars(count) else count)
        if isinstance(f, torch.Tensor):
            leaves = T.leaves(grads)
            f = f.to(leaves[0].dtype) if leaves and leaves[0].is_floating_point() else f
        return _map_leaves(lambda ops, xs: ops.mul(xs, f), grads), {"count": count + 1}

    return GradientTransformation(init, update)


def add_decayed_weights(weight_decay=0.0, mask: Mask = None) -> GradientTransformation:
    """``g + weight_decay * p`` (L2 decay, before an optimizer; decoupled decay when chained after
    one and before ``scale_by_learning_rate``, as optax's ``adamw``). ``weight_decay`` is a number
    or, as in optax, a schedule of the step count (then the state is the ``count``; else it is
    ``{}``). ``mask`` selects the leaves that decay (e.g. not biases): a tree of bools like the
    params (or, as optax, a prefix of it), ``f(path, leaf) -> bool``, or optax's
    ``f(params) -> bool tree``. grads, params and mask are paired by path."""
    scheduled = callable(weight_decay)
    check_mask("add_decayed_weights", mask)
    if not scheduled:
        C.nonneg("add_decayed_weights", "weight_decay", weight_decay)

    def init(params):
        if not scheduled:
            return {}
        leaves = T.leaves(params)
        return {"count": torch.zeros((), dtype=torch.int64, device=leaves[0].device if leaves else None)}

    def update(grads, state, params=None, **_):
        if params is None:
            raise ValueError("add_decayed_weights needs params: call update(grads, state, params)")
        if scheduled and not (isinstance(state, dict) and "count" in state):
            raise ValueError("add_decayed_weights: with a weight_decay schedule the state is {'count': ...} "
                             f"(from this transformation's init), got {state!r}")
        spec, (flat_g, flat_p) = T.match(grads, params, names=("grads", "params"), what="add_decayed_weights")
        keep = leaf_mask(mask, T.unflatten(spec, flat_p), "add_decayed_weights")
        wd = weight_decay
        if scheduled:
            count = state["count"]
            wd = weight_decay(int(count) if _ops.host_scalars(count) else count)
            state = {"count": count + 1}
            if isinstance(wd, torch.Tensor) and flat_g:
                wd = wd.to(flat_g[0].dtype)
        out = on_masked(keep, lambda gs, ps: _ops.for_leaves(gs, ps).add(gs, ps, alpha=wd), flat_g, flat_p)
        return T.unflatten(spec, out), state

    return GradientTransformation(init, update)
