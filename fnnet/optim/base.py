"""Gradient transformations, optax-style: a pair of pure functions over pytrees.

    opt = optim.adam(1e-3)
    state = opt.init(params)
    updates, state = opt.update(grads, state, params)
    params = optim.apply_updates(params, updates)

``updates`` are what to add to the params (already scaled by ``-lr``). States are pytrees of
tensors (dicts, with the step ``count`` as an int64 tensor), so they save with ``fnnet.io``,
stack and ``vmap`` for ensembles, and compile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import tree as T
from . import _ops

Schedule = Callable[[Any], Any]


class GradientTransformation(NamedTuple):
    """``init(params) -> state``; ``update(grads, state, params=None) -> (updates, state)``."""

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]


def apply_updates(params: Any, updates: Any) -> Any:
    """``params + updates`` leaf-wise (``None`` updates leave a leaf as it is)."""
    flat_p, spec = T.flatten(params)
    flat_u = T.leaves(updates)
    if len(flat_u) != len(flat_p):
        raise ValueError(f"apply_updates: updates have {len(flat_u)} leaves, params {len(flat_p)}")
    return T.unflatten(spec, [p + u.to(p.dtype) for p, u in zip(flat_p, flat_u)])


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations in sequence; the state is the tuple of their states."""

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(grads, state, params=None, **extra):
        new_state = []
        for t, s in zip(transforms, state):
            grads, s = t.update(grads, s, params, **extra)
            new_state.append(s)
        return grads, tuple(new_state)

    return GradientTransformation(init, update)


def identity() -> GradientTransformation:
    return GradientTransformation(lambda params: {}, lambda grads, state, params=None, **_: (grads, state))


def set_to_zero() -> GradientTransformation:
    """Zero updates and no state: a frozen subtree (see :func:`multi_transform`)."""
    return GradientTransformation(lambda params: {},
                                  lambda grads, state, params=None, **_: (T.zeros_like(grads), state))


def _scalar(x: Any, like: torch.Tensor | None) -> torch.Tensor:
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.get_default_dtype()
    device = like.device if like is not None else None
    return torch.as_tensor(x, dtype=dtype, device=device)


def optimizer(hyperparams: dict[str, Any], slots: Callable[[list], dict[str, list]],
              step: Callable[..., tuple[list, dict[str, list]]]) -> GradientTransformation:
    """The one mechanism behind every optimizer here.

    ``hyperparams`` (``lr`` first) live in the state as 0-d tensors — ``set_hyperparams``
    changes them mid-run without recompiling — except a schedule (a callable of the step
    count), which is evaluated at every update. ``slots(params_leaves)`` gives the per-leaf
    buffers (``{"exp_avg": [...]}``) and ``step(grads, params, slots, h, count)`` returns the
    per-leaf updates and new slots, on lists of leaves (``_ops`` arithmetic); ``count`` is the
    1-based step number, ``h`` the hyperparameters as tensors.
    """
    schedules = {k: v for k, v in hyperparams.items() if callable(v)}
    fixed = {k: v for k, v in hyperparams.items() if not callable(v)}

    def init(params):
        flat, spec = T.flatten(params)
        like = flat[0] if flat else None
        state = {"count": torch.zeros((), dtype=torch.int64, device=like.device if like is not None else None),
                 "hyperparams": {k: _scalar(v, like) for k, v in fixed.items()}}
        for name, leaves in slots(flat).items():
            state[name] = T.unflatten(spec, leaves)
        return state

    def update(grads, state, params=None, **_):
        flat_g, spec = T.flatten(grads)
        flat_p = T.leaves(params) if params is not None else [None] * len(flat_g)
        if params is not None and len(flat_p) != len(flat_g):
            raise ValueError(f"optimizer update: params have {len(flat_p)} leaves, grads {len(flat_g)}")
        h = dict(state["hyperparams"])
        for k, sched in schedules.items():
            h[k] = _scalar(sched(state["count"]), flat_g[0] if flat_g else None)
        count = state["count"] + 1
        slot_names = [k for k in state if k not in ("count", "hyperparams")]
        slot_lists = {k: T.leaves(state[k]) for k in slot_names}
        updates, new_slots = step(flat_g, flat_p, slot_lists, h, count)
        new_state = {"count": count, "hyperparams": state["hyperparams"]}
        for k in slot_names:
            new_state[k] = T.unflatten(T.structure(state[k]), new_slots[k])
        return T.unflatten(spec, updates), new_state

    return GradientTransformation(init, update)


def set_hyperparams(state: Any, **values: Any) -> Any:
    """A new state with hyperparameters changed (``lr=1e-4``): the equivalent of
    ``param_group["lr"] = ...``. Searches chains and groups for every state holding them."""
    found = []

    def visit(s):
        if isinstance(s, dict) and "hyperparams" in s and "count" in s:
            hp = dict(s["hyperparams"])
            for k, v in values.items():
                if k in hp:
                    hp[k] = torch.as_tensor(v, dtype=hp[k].dtype, device=hp[k].device)
                    found.append(k)
            return {**s, "hyperparams": hp}
        if isinstance(s, dict):
            return {k: visit(v) for k, v in s.items()}
        if isinstance(s, tuple):
            return tuple(visit(v) for v in s)
        return s

    new = visit(state)
    missing = set(values) - set(found)
    if missing:
        raise KeyError(f"set_hyperparams: no optimizer state holds {sorted(missing)} "
                       "(a hyperparameter given as a schedule is not stored)")
    return new


def weight_decayed(grads: list, params: list, wd, maximize: bool) -> list:
    """torch.optim's first lines: ``g = -g if maximize``; ``g = g + wd * p``."""
    if maximize:
        grads = _ops.neg(grads)
    if isinstance(wd, torch.Tensor) or wd != 0:
        if params[0] is None and grads:
            raise ValueError("weight_decay needs params: call update(grads, state, params)")
        grads = _ops.axpy(wd, params, grads)
    return grads
