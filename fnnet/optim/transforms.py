"""Stateless (or nearly) transformations to ``chain`` with an optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import tree as T
from . import _ops
from .base import GradientTransformation


def clip_by_global_norm(max_norm: float, norm_type: float = 2.0,
                        error_if_nonfinite: bool = False) -> GradientTransformation:
    """Scale all gradients by ``max_norm / (total_norm + 1e-6)`` when that is below 1, exactly as
    ``torch.nn.utils.clip_grad_norm_``. ``error_if_nonfinite`` raises on a NaN/inf norm (this
    check reads the norm on the host, so it is an eager-mode check)."""

    def update(grads, state, params=None, **_):
        flat, spec = T.flatten(grads)
        if not flat:
            return grads, state
        norms = [torch.linalg.vector_norm(g, norm_type) for g in flat]
        total = torch.linalg.vector_norm(torch.stack(norms), norm_type)
        if error_if_nonfinite and not bool(torch.isfinite(total)):
            raise FloatingPointError(f"clip_by_global_norm: the total norm of order {norm_type} of "
                                     "the gradients is non-finite, so it cannot be clipped")
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        return T.unflatten(spec, _ops.mul(flat, coef)), state

    return GradientTransformation(lambda params: {}, update)


def clip_by_value(clip_value: float) -> GradientTransformation:
    """Clamp every gradient element to ``[-clip_value, clip_value]`` (``clip_grad_value_``)."""
    return GradientTransformation(
        lambda params: {},
        lambda grads, state, params=None, **_: (T.map(lambda g: g.clamp(-clip_value, clip_value), grads), state))


def scale(factor: float) -> GradientTransformation:
    return GradientTransformation(
        lambda params: {},
        lambda grads, state, params=None, **_: (T.unflatten(T.structure(grads), _ops.mul(T.leaves(grads), factor)),
                                               state))


def scale_by_schedule(schedule: Callable[[torch.Tensor], Any]) -> GradientTransformation:
    """Multiply by ``schedule(count)``; the state is the step count."""

    def init(params):
        leaves = T.leaves(params)
        return {"count": torch.zeros((), dtype=torch.int64, device=leaves[0].device if leaves else None)}

    def update(grads, state, params=None, **_):
        f = schedule(state["count"])
        return T.unflatten(T.structure(grads), _ops.mul(T.leaves(grads), f)), {"count": state["count"] + 1}

    return GradientTransformation(init, update)


def add_decayed_weights(weight_decay: float, mask: Any = None) -> GradientTransformation:
    """``g + weight_decay * p`` (L2 decay before an optimizer); ``mask`` (a tree of bools like
    the params, or ``f(path, leaf) -> bool``) selects the leaves that decay — e.g. not biases."""

    def update(grads, state, params=None, **_):
        if params is None:
            raise ValueError("add_decayed_weights needs params: call update(grads, state, params)")
        if mask is None:
            keep = [True] * len(T.leaves(grads))
        elif callable(mask):
            keep = [bool(mask(path, p)) for path, p in T.flatten_with_paths(params)]
        else:
            keep = [bool(m) for m in T.leaves(mask)]
        flat_g, spec = T.flatten(grads)
        out = [g + weight_decay * p if k else g for g, p, k in zip(flat_g, T.leaves(params), keep)]
        return T.unflatten(spec, out), state

    return GradientTransformation(lambda params: {}, update)
