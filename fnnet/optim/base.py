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


class HyperparamError(KeyError, ValueError):
    """``set_hyperparams`` was asked for a hyperparameter (or group) no state holds: a
    ``KeyError`` (a name not found) and a ``ValueError`` (a bad argument)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class GradientTransformation(NamedTuple):
    """``init(params) -> state``; ``update(grads, state, params=None) -> (updates, state)``."""

    init: Callable[[Any], Any]
    update: Callable[..., tuple[Any, Any]]


def apply_updates(params: Any, updates: Any) -> Any:
    """``params + updates`` leaf-wise, in one ``_foreach_add`` (updates cast to each param's
    dtype). Leaves are paired by path (``tree.match``): updates in another key order land on
    the right params; a missing or extra path, or a shape that differs, is a ``ValueError``
    naming the path (nothing is broadcast)."""
    spec, (flat_p, flat_u) = T.match(params, updates, names=("params", "updates"), what="apply_updates")
    flat_u = [u if u.dtype == p.dtype else u.to(p.dtype) for p, u in zip(flat_p, flat_u)]
    return T.unflatten(spec, _ops.for_leaves(flat_p, flat_u).add(flat_p, flat_u))


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply transformations in sequence; the state is the tuple of their states."""

    def init(params):
        return tuple(t.init(params) for t in transforms)

    def update(grads, state, params=None, **extra):
        if not isinstance(state, (tuple, list)) or len(state) != len(transforms):
            got = f"{len(state)} entries" if isinstance(state, (tuple, list)) else type(state).__name__
            raise ValueError(f"chain: the state must be the tuple of the {len(transforms)} transformations' "
                             f"states (from this chain's init), got {got}")
        new_state = []
        for t, s in zip(transforms, state):
            grads, s = t.update(grads, s, params, **extra)
            new_state.append(s)
        return grads, tuple(new_state)

    return GradientTransformation(init, update)


def identity() -> GradientTransformation:
    return GradientTransformation(lambda params: {}, lambda grads, state, params=None, **_: (grads, state))


def set_to_zero() -> GradientTransformation:
    """Zero updates and no state: a frozen subtree (see :func:`multi_transform`). The zeros are
    ``-0.0``: ``p + (-0.0)`` is ``p`` bit for bit, ``-0.0`` and NaN included (``p + 0.0`` is not
    for ``p = -0.0``)."""
    return GradientTransformation(lambda params: {},
                                  lambda grads, state, params=None, **_: (T.full_like(grads, -0.0), state))


def hyperparam_dtype(like: torch.Tensor | None) -> torch.dtype:
    """Hyperparameters are held at least in float32 (``0.999`` or ``1e-8`` in bfloat16/float16
    would not be themselves), in float64 for float64 params."""
    if like is None or not like.is_floating_point():
        return torch.get_default_dtype()
    return torch.promote_types(like.dtype, torch.float32)


def _scalar(x: Any, like: torch.Tensor | None) -> torch.Tensor:
    return torch.as_tensor(x, dtype=hyperparam_dtype(like), device=like.device if like is not None else None)


def optimizer(hyperparams: dict[str, Any], slots: Callable[[list], dict[str, list]],
              step: Callable[..., tuple[list, dict[str, list]]], name: str = "optimizer") -> GradientTransformation:
    """The one mechanism behind every optimizer here.

    ``hyperparams`` (``lr`` first) live in the state as 0-d tensors — ``set_hyperparams``
    changes them mid-run, and a compiled step does not recompile for it — except a schedule
    (a callable of the step count), which is evaluated at every update. ``slots(param_leaves)``
    gives the per-leaf buffers (``{"exp_avg": [...]}``) and
    ``step(ops, grads, params, slots, h, count)`` returns the per-leaf updates and new slots,
    on lists of leaves with ``ops`` arithmetic (``_ops``: ``_foreach`` or, under ``vmap``, leaf
    by leaf). ``count`` is the 1-based step number and ``h`` the hyperparameters: Python numbers
    when reading them is free (eager on the CPU, as torch.optim reads its step), else tensors
    (see ``_ops.host_scalars``); a step's scalar arithmetic works on either. grads, params and
    the slots are paired by path (``tree.match``); ``name`` goes into the errors.
    """
    schedules = {k: v for k, v in hyperparams.items() if callable(v)}
    fixed = {k: v for k, v in hyperparams.items() if not callable(v)}

    def init(params):
        flat, spec = T.flatten(params)
        like = flat[0] if flat else None
        state = {"count": torch.zeros((), dtype=torch.int64, device=like.device if like is not None else None),
                 "hyperparams": {k: _scalar(v, like).reshape(()) for k, v in fixed.items()}}
        for slot, leaves in slots(flat).items():
            state[slot] = T.unflatten(spec, leaves)
        return state

    def update(grads, state, params=None, **_):
        if not isinstance(state, dict) or "count" not in state or "hyperparams" not in state:
            keys = f" with keys {sorted(state)}" if isinstance(state, dict) else ""
            raise ValueError(f"{name} update: the state must be this optimizer's init(params), got "
                             f"{type(state).__name__}{keys}")
        slot_names = [k for k in state if k not in ("count", "hyperparams")]
        # grads, params and every per-leaf slot paired by path (in the grads' order), shapes equal
        trees, names = [grads], ["grads"]
        if params is not None:
            trees.append(params)
            names.append("params")
        trees += [state[k] for k in slot_names]
        names += [f"state[{k!r}]" for k in slot_names]
        spec, cols = T.match(*trees, names=tuple(names), what=f"{name} update")
        flat_g = cols[0]
        flat_p = cols[1] if params is not None else [None] * len(flat_g)
        slot_lists = dict(zip(slot_names, cols[-len(slot_names):] if slot_names else []))
        hp = state["hyperparams"]
        ops = _ops.for_leaves(flat_g, flat_p if params is not None else [], *slot_lists.values(), *hp.values())
        new_count = state["count"] + 1
        if _ops.host_scalars(state["count"]):
            count = int(state["count"])
            h = {k: v.item() for k, v in hp.items()}
            h.update({k: float(sched(count)) for k, sched in schedules.items()})
            count += 1
        else:
            like = flat_g[0] if flat_g else None
            h = dict(hp)
            h.update({k: _scalar(sched(state["count"]), like) for k, sched in schedules.items()})
            count = new_count
        updates, new_slots = step(ops, flat_g, flat_p, slot_lists, h, count)
        new_state = {"count": new_count, "hyperparams": hp}
        for k in slot_names:  # in the grads' structure (the same paths as before)
            new_state[k] = T.unflatten(spec, new_slots[k])
        return T.unflatten(spec, updates), new_state

    return GradientTransformation(init, update)


def set_hyperparams(state: Any, group: str | int | None = None, **values: Any) -> Any:
    """A new state with hyperparameters changed (``lr=1e-4``): the equivalent of
    ``param_group["lr"] = ...``. Searches chains and groups for the optimizer states holding them.

    ``group`` names where: a label of a ``multi_transform`` (or ``freeze``: ``"train"``), or a
    position in a ``chain``; only the states under it change. Without ``group``, a
    hyperparameter held by more than one state (two param groups, each with an ``lr``) is
    ambiguous and refused: name the group, once per group to change several.
    """
    held: dict[str, list[tuple]] = {}

    def visit(s, where: tuple, apply: bool):
        if isinstance(s, dict) and "hyperparams" in s and "count" in s:
            if group is not None and group not in where:
                return s
            hp = dict(s["hyperparams"])
            for k, v in values.items():
                if k in hp:  # keeps the held shape: a vmapped state may take one value per member
                    held.setdefault(k, []).append(where)
                    if apply:
                        new = torch.as_tensor(v, dtype=hp[k].dtype, device=hp[k].device)
                        hp[k] = new if new.shape == hp[k].shape else torch.broadcast_to(new, hp[k].shape).clone()
            return {**s, "hyperparams": hp}
        if isinstance(s, dict):
            return {k: visit(v, (*where, k), apply) for k, v in s.items()}
        if isinstance(s, (tuple, list)):
            return type(s)(visit(v, (*where, i), apply) for i, v in enumerate(s))
        return s

    visit(state, (), apply=False)
    missing = set(values) - set(held)
    if missing:
        scope = f" under group {group!r}" if group is not None else ""
        raise HyperparamError(f"set_hyperparams: no optimizer state{scope} holds {sorted(missing)}. A hyperparameter "
                       "given as a schedule is not stored, nor is one that decides which arithmetic "
                       "runs when it is 0 (weight_decay, momentum): build the optimizer with it nonzero")
    if group is None:
        for k, wheres in held.items():
            if len(wheres) > 1:
                raise ValueError(f"set_hyperparams: {k!r} is held by {len(wheres)} optimizer states (at "
                                 f"{', '.join('/'.join(map(str, w)) or '<root>' for w in wheres)}); name the "
                                 "one to change with group= (a multi_transform label or a chain position)")
    return visit(state, (), apply=True)


def weight_decayed(ops: _ops.Ops, grads: list, params: list, wd, maximize: bool) -> list:
    """torch.optim's first lines: ``g = -g if maximize``; ``g = g.add(p, alpha=wd)`` unless
    ``wd`` is ``None`` (the optimizer was built with ``weight_decay=0``)."""
    if maximize:
        grads = ops.neg(grads)
    if wd is not None:
        if grads and params[0] is None:
            raise ValueError("weight_decay needs params: call update(grads, state, params)")
        grads = ops.add(grads, params, alpha=wd)
    return grads
