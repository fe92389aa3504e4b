"""Stateless (or nearly) transformations to ``chain`` with an optimizer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import tree as T
from . import _ops
from .base import GradientTransformation


def _stateless(f: Callable[[Any, Any], Any]) -> GradientTransformation:
    """A transformation without state from ``f(grads, params) -> updates``."""
    return GradientTransformation(lambda params: {}, lambda grads, state, params=None, **_: (f(grads, params), state))


def _map_leaves(f: Callable[[_ops.Ops, list], list], tree: Any) -> Any:
    flat, spec = T.flatten(tree)
    return T.unflatten(spec, f(_ops.for_leaves(flat), flat)) if flat else tree


def clip_by_global_norm(max_norm: float, norm_type: float = 2.0,
                        error_if_nonfinite: bool = False) -> GradientTransformation:
    """Scale all gradients by ``max_norm / (total_norm + 1e-6)`` when that is below 1, exactly as
    ``torch.nn.utils.clip_grad_norm_`` (``norm_type`` may be ``inf``). ``error_if_nonfinite``
    raises on a NaN/inf total norm as torch does; the check reads the norm on the host, so with
    it on the step is not ``fn.jit``-able (leave it off there)."""
    max_norm, norm_type = float(max_norm), float(norm_type)

    def clip(grads, params):
        flat, spec = T.flatten(grads)
        if not flat:
            return grads
        ops = _ops.for_leaves(flat)
        norms = ops.norms(flat, norm_type)                    # torch: _foreach_norm, then the norm of norms
        total = torch.linalg.vector_norm(torch.stack(norms), norm_type)
        if error_if_nonfinite and (torch.isnan(total) or torch.isinf(total)):
            raise RuntimeError(f"The total norm of order {norm_type} for gradients from `parameters` is "
                               "non-finite, so it cannot be clipped. To disable this error and scale the "
                               "gradients by the non-finite norm anyway, set `error_if_nonfinite=False`")
        coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        return T.unflatten(spec, ops.mul(flat, coef))

    return _stateless(clip)


def clip_by_value(clip_value: float) -> GradientTransformation:
    """Clamp every gradient element to ``[-clip_value, clip_value]`` (``clip_grad_value_``)."""
    c = float(clip_value)
    return _stateless(lambda grads, params: _map_leaves(lambda ops, xs: ops.clamp(xs, -c, c), grads))


def scale(factor: float) -> GradientTransformation:
    """Multiply every update by ``factor``."""
    return _stateless(lambda grads, params: _map_leaves(lambda ops, xs: ops.mul(xs, factor), grads))


def scale_by_schedule(schedule: Callable[[Any], Any]) -> GradientTransformation:
    """Multiply by ``schedule(count)`` (count 0 for the first update); the state is the count."""

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


def add_decayed_weights(weight_decay: float, mask: Any = None) -> GradientTransformation:
    """``g + weight_decay * p`` (L2 decay, before an optimizer); ``mask`` — a tree of bools like
    the params, or ``f(path, leaf) -> bool`` — selects the leaves that decay (e.g. not biases)."""

    def decay(grads, params):
        if params is None:
            raise ValueError("add_decayed_weights needs params: call update(grads, state, params)")
        flat_g, spec = T.flatten(grads)
        flat_p = T.leaves(params)
        if mask is None:
            keep = [True] * len(flat_g)
        elif callable(mask):
            keep = [bool(mask(path, p)) for path, p in T.flatten_with_paths(params)]
        else:
            keep = [bool(m) for m in T.leaves(mask)]
        if len(keep) != len(flat_g) or len(flat_p) != len(flat_g):
            raise ValueError(f"add_decayed_weights: grads have {len(flat_g)} leaves, params {len(flat_p)}, "
                             f"mask {len(keep)}")
        idx = [i for i, k in enumerate(keep) if k]
        out = list(flat_g)
        if idx:
            gs, ps = [flat_g[i] for i in idx], [flat_p[i] for i in idx]
            for i, d in zip(idx, _ops.for_leaves(gs, ps).add(gs, ps, alpha=weight_decay)):
                out[i] = d
        return T.unflatten(spec, out)

    return _stateless(decay)
