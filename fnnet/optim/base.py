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

import inspect

import torch

from .. import tree as T
from . import _ops

Schedule = Callable[[Any], Any]
Mask = Any  # None (every leaf), a bool tree like the params (or a prefix of it), f(path, leaf) -> bool,
            # or f(params) -> such a bool tree (optax's form)


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
              step: Callable[..., tuple[list, dict[str, list]]], name: str = "optimizer",
              masks: dict[str, Mask] | None = None) -> GradientTransformation:
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

    ``masks`` (``{"weight_decay": mask}``, each a :data:`Mask`) select leaves for a part of the
    step (AdamW's decay only where the mask says, as optax's ``adamw(mask=)``): each is
    resolved by path at every update (at trace time under ``fn.jit``) to one bool per leaf,
    passed as ``step(..., masks={"weight_decay": [bool, ...]})``; without ``masks`` the step is
    called without that argument.
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
        if params is not None:
            _same_dtypes(name, spec, flat_g, flat_p)
        slot_lists = dict(zip(slot_names, cols[-len(slot_names):] if slot_names else []))
        hp = state["hyperparams"]
        if not flat_g:  # no leaves (a param group or a masked selection left empty): only the count moves
            return T.unflatten(spec, []), {"count": state["count"] + 1, "hyperparams": hp,
                                           **{k: state[k] for k in slot_names}}
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
        if masks is None:
            updates, new_slots = step(ops, flat_g, flat_p, slot_lists, h, count)
        else:
            where = T.unflatten(spec, flat_p if params is not None else flat_g)
            leaf_masks = {k: leaf_mask(m, where, name) for k, m in masks.items()}
            updates, new_slots = step(ops, flat_g, flat_p, slot_lists, h, count, masks=leaf_masks)
        new_state = {"count": new_count, "hyperparams": hp}
        for k in slot_names:  # in the grads' structure (the same paths as before)
            new_state[k] = T.unflatten(spec, new_slots[k])
        return T.unflatten(spec, updates), new_state

    return GradientTransformation(init, update)


def _same_dtypes(name: str, spec: Any, grads: list, params: list) -> None:
    """A gradient has its param's dtype (autograd guarantees it for ``p.grad``): a float32
    gradient of a float64 param would otherwise fail deep inside a ``_foreach`` kernel."""
    for i, (g, p) in enumerate(zip(grads, params)):
        if isinstance(g, torch.Tensor) and isinstance(p, torch.Tensor) and g.dtype != p.dtype:
            path = T.paths(T.unflatten(spec, list(range(len(grads)))))[i]
            raise ValueError(f"{name} update: the gradient at {path!r} is {g.dtype}, its param is {p.dtype}: "
                             f"gradients must have their params' dtype")


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


def check_mask(owner: str, mask: Any) -> None:
    """At construction: a mask is ``None``, a bool, a function, or a tree (dict/list/tuple) of bools."""
    if not (mask is None or isinstance(mask, (bool, dict, list, tuple)) or callable(mask)):
        raise TypeError(f"{owner}: mask must be a bool tree like the params, f(path, leaf) -> bool or "
                        f"f(params) -> bool tree, got {type(mask).__name__}")


def _mask_flag(m: Any, path: str, owner: str) -> bool:
    if isinstance(m, bool) or type(m).__name__ == "bool_":  # numpy's bool too
        return bool(m)
    raise TypeError(f"{owner}: mask must hold True or False for each leaf, got {type(m).__name__} {m!r} at "
                    f"{path!r} (a mask is static: not a tensor)")


def _positional_arity(f: Callable) -> int | None:
    try:
        params = inspect.signature(f).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature
        return None
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind == inspect.Parameter.VAR_POSITIONAL for p in params):
        return None
    return sum(1 for p in params if p.kind in kinds and p.default is inspect.Parameter.empty)


def leaf_mask(mask: Mask, tree: Any, owner: str) -> list[bool]:
    """One bool per leaf of ``tree``, in its leaf order, from a :data:`Mask`: ``None`` (all
    leaves), ``f(path, leaf) -> bool`` (fnnet's form, as ``multi_transform`` labels),
    ``f(tree) -> bool tree`` (optax's form), or a bool tree paired by path — which, as in
    optax, may be a prefix of ``tree``: a bool standing where ``tree`` has a subtree covers its
    leaves. A path the mask misses (or has extra) is a ``ValueError`` naming it; a leaf that is
    not ``True``/``False`` is a ``TypeError``."""
    pairs = T.flatten_with_paths(tree)
    if mask is None:
        return [True] * len(pairs)
    if callable(mask):
        arity = _positional_arity(mask)
        if arity == 2:
            return [_mask_flag(mask(path, leaf), path, owner) for path, leaf in pairs]
        if arity not in (1, None):
            raise TypeError(f"{owner}: a mask function takes (path, leaf) or (params), got one with {arity} "
                            "required arguments")
        mask = mask(tree)
    if isinstance(mask, bool):
        return [mask] * len(pairs)
    try:
        _, (_, flat_m) = T.match(tree, mask, names=("params", "mask"), what=owner, shapes=False)
        return [_mask_flag(m, path, owner) for (path, _), m in zip(pairs, flat_m)]
    except ValueError:
        prefixed = _by_prefix(pairs, T.flatten_with_paths(mask))
        if prefixed is None:
            raise
        return [_mask_flag(m, path, owner) for (path, _), m in zip(pairs, prefixed)]


def _by_prefix(pairs: list, mask_pairs: list) -> list | None:
    """The mask leaf at each path or at its longest prefix (optax's prefix masks); ``None`` when
    a path has none or a mask leaf covers no path (the caller's by-path error then stands)."""
    by_path = dict(mask_pairs)
    out, used = [], set()
    for path, _ in pairs:
        parts = path.split(".")
        for n in range(len(parts), 0, -1):
            p = ".".join(parts[:n])
            if p in by_path:
                out.append(by_path[p])
                used.add(p)
                break
        else:
            return None
    return out if used == set(by_path) else None


def on_masked(keep: list[bool], f: Callable[..., list], *lists: list) -> list:
    """``f`` on the leaves ``keep`` selects (sublists of each of ``lists``); the other leaves as
    they are in ``lists[0]``. One ``f`` call (one ``_foreach`` launch per op) for all selected."""
    if all(keep):
        return f(*lists)
    idx = [i for i, k in enumerate(keep) if k]
    out = list(lists[0])
    if idx:
        for i, x in zip(idx, f(*([xs[i] for i in idx] for xs in lists))):
            out[i] = x
    return out
