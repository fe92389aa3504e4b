"""optax's wrappers: a transformation around another (``masked``, ``apply_if_finite``,
``MultiSteps``, ``lookahead``), under optax's names, arguments and state fields.

Each decides per step whether the inner transformation's result is used. Eager on the CPU that
decision is read on the host and the skipped work is not done (as torch.optim reads its CPU step
count); on an accelerator or under ``fn.jit`` the inner update runs every step and
``torch.where`` selects updates and state (no host sync, no graph break, no recompile: the
counters are tensors). Both give the same numbers. Skipped steps' updates are ``-0.0``:
``p + (-0.0)`` is ``p`` bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .. import tree as T
from . import _check as C
from . import _ops
from .base import GradientTransformation, Mask, check_mask, hyperparam_dtype, leaf_mask


def _check_inner(owner: str, name: str, inner: Any) -> None:
    if not isinstance(inner, GradientTransformation):
        raise TypeError(f"{owner}: {name} must be a GradientTransformation (an optimizer or transform from "
                        f"fnnet.optim), got {type(inner).__name__}")


def _check_state(owner: str, state: Any, keys: tuple[str, ...]) -> None:
    if not isinstance(state, dict) or any(k not in state for k in keys):
        got = f"a dict with keys {sorted(state)}" if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{owner}: the state must be this wrapper's init(params), with keys {list(keys)}; got {got}")


def _device(tree: Any):
    leaves = T.leaves(tree)
    return leaves[0].device if leaves else None


def _select(cond: torch.Tensor, new: Any, old: Any) -> Any:
    """``new`` where ``cond`` else ``old``, leaf by leaf (paired by path): a jit-friendly ``if``."""
    return T.map(lambda n, o: torch.where(cond, n, o), new, old)


def _zeros(tree: Any) -> Any:
    return T.full_like(tree, -0.0)


def masked(inner: GradientTransformation, mask: Mask) -> GradientTransformation:
    """``inner`` on the leaves ``mask`` selects; the others pass through unchanged and get no
    state (``optax.masked``). ``mask``: a bool tree like the params (or a prefix of it, as
    optax), ``f(path, leaf) -> bool``, or optax's ``f(params) -> bool tree``. ``inner`` sees the
    selected leaves as a flat ``{path: leaf}`` dict (as ``multi_transform``'s groups), so its
    state is keyed by the params' dotted paths. State: ``{"inner_state": ...}``."""
    _check_inner("masked", "inner", inner)
    check_mask("masked", mask)

    def pick(tree: Any, keep: list[bool]) -> dict:
        return {path: x for (path, x), k in zip(T.flatten_with_paths(tree), keep) if k}

    def init(params):
        return {"inner_state": inner.init(pick(params, leaf_mask(mask, params, "masked")))}

    def update(grads, state, params=None, **extra):
        _check_state("masked", state, ("inner_state",))
        if params is not None:  # paired by path, in the grads' order
            spec, (_, flat_p) = T.match(grads, params, names=("grads", "params"), what="masked update")
            params = T.unflatten(spec, flat_p)
        keep = leaf_mask(mask, params if params is not None else grads, "masked")
        sub, inner_state = inner.update(pick(grads, keep), state["inner_state"],
                                        None if params is None else pick(params, keep), **extra)
        out = [sub[path] if k else g for (path, g), k in zip(T.flatten_with_paths(grads), keep)]
        return T.unflatten(T.structure(grads), out), {"inner_state": inner_state}

    return GradientTransformation(init, update)


def all_finite(tree: Any) -> torch.Tensor:
    """A 0-d bool tensor: every element of every leaf is finite (an empty tree is)."""
    leaves = T.leaves(tree)
    if not leaves:
        return torch.tensor(True)
    return torch.stack([torch.isfinite(x).all() for x in leaves]).all()


def apply_if_finite(inner: GradientTransformation, max_consecutive_errors: int) -> GradientTransformation:
    """Skip a step whose gradients are not all finite (``optax.apply_if_finite``): its updates
    are zeros and ``inner``'s state is kept; after more than ``max_consecutive_errors``
    consecutive such steps the step is applied anyway. State: ``notfinite_count`` (consecutive,
    reset by a finite step), ``last_finite``, ``total_notfinite`` (never reset), ``inner_state``."""
    _check_inner("apply_if_finite", "inner", inner)
    C.integer("apply_if_finite", "max_consecutive_errors", max_consecutive_errors, lo=0)
    keys = ("notfinite_count", "last_finite", "total_notfinite", "inner_state")

    def init(params):
        device = _device(params)
        zero = torch.zeros((), dtype=torch.int64, device=device)
        return {"notfinite_count": zero, "last_finite": torch.ones((), dtype=torch.bool, device=device),
                "total_notfinite": zero.clone(), "inner_state": inner.init(params)}

    def update(grads, state, params=None, **extra):
        _check_state("apply_if_finite", state, keys)
        finite = all_finite(grads).to(state["last_finite"].device)
        notfinite_count = torch.where(finite, 0, state["notfinite_count"] + 1)
        apply = finite | (notfinite_count > max_consecutive_errors)
        counters = {"notfinite_count": notfinite_count, "last_finite": finite,
                    "total_notfinite": state["total_notfinite"] + (~finite).to(torch.int64)}
        if _ops.host_scalars(notfinite_count):
            if bool(apply):
                updates, inner_state = inner.update(grads, state["inner_state"], params, **extra)
            else:
                updates, inner_state = _zeros(grads), state["inner_state"]
        else:
            updates, new_inner = inner.update(grads, state["inner_state"], params, **extra)
            updates = T.map(lambda u: torch.where(apply, u, -0.0), updates)
            inner_state = _select(apply, new_inner, state["inner_state"])
        return updates, {**counters, "inner_state": inner_state}

    return GradientTransformation(init, update)


class MultiSteps(GradientTransformation):
    """Gradient accumulation (``optax.MultiSteps``): the mean (``use_grad_mean=False``: the sum)
    of ``k`` consecutive gradients goes to one ``opt`` step every ``k`` calls; the other calls
    return zero updates. ``every_k_schedule`` is an int ``k >= 1`` or a function of the
    ``gradient_step`` count giving it. A drop-in transformation (``.init``, ``.update``, in a
    ``chain``); ``has_updated(state)`` tells whether the last call stepped.

    State (optax's fields): ``mini_step``, ``gradient_step``, ``inner_opt_state``, ``acc_grads``
    (accumulated at least in float32, as optax). The running mean is Welford's
    ``acc + (g - acc) / (mini_step + 1)``, as optax. Not carried over:
    ``should_skip_update_fn`` (wrap ``opt`` in :func:`apply_if_finite` instead) and
    ``accumulator_dtype``."""

    def __new__(cls, opt: GradientTransformation, every_k_schedule: int | Callable[[Any], Any],
                use_grad_mean: bool = True):
        _check_inner("MultiSteps", "opt", opt)
        if not callable(every_k_schedule):
            C.integer("MultiSteps", "every_k_schedule", every_k_schedule, lo=1)
        C.flag("MultiSteps", "use_grad_mean", use_grad_mean)
        keys = ("mini_step", "gradient_step", "inner_opt_state", "acc_grads")

        def k_at(gradient_step):
            if not callable(every_k_schedule):
                return every_k_schedule
            k = every_k_schedule(int(gradient_step) if _ops.host_scalars(gradient_step) else gradient_step)
            if not isinstance(k, torch.Tensor):
                C.integer("MultiSteps", "every_k_schedule(gradient_step)", k, lo=1)
            return k

        def init(params):
            device = _device(params)
            zero = torch.zeros((), dtype=torch.int64, device=device)
            acc = T.map(lambda p: torch.zeros_like(p, dtype=hyperparam_dtype(p)), params)
            return {"mini_step": zero, "gradient_step": zero.clone(), "inner_opt_state": opt.init(params),
                    "acc_grads": acc}

        def update(grads, state, params=None, **extra):
            _check_state("MultiSteps", state, keys)
            mini, gstep = state["mini_step"], state["gradient_step"]
            k = k_at(gstep)
            spec, (flat_g, flat_a) = T.match(grads, state["acc_grads"], names=("grads", "state['acc_grads']"),
                                             what="MultiSteps update")
            ops = _ops.for_leaves(flat_g, flat_a)
            if use_grad_mean:   # Welford: acc + (g - acc) / (n + 1)
                n1 = mini + 1
                n1 = int(n1) if _ops.host_scalars(n1) else n1.to(flat_a[0].dtype if flat_a else torch.float32)
                flat_a = ops.add(flat_a, ops.div(ops.sub(flat_g, flat_a), n1)) if flat_g else flat_a
            else:
                flat_a = ops.add(flat_a, flat_g) if flat_g else flat_a
            acc = T.unflatten(spec, flat_a)
            mean = T.unflatten(spec, [a.to(g.dtype) for a, g in zip(flat_a, flat_g)])
            emit = mini == k - 1
            next_mini = torch.remainder(mini + 1, k)
            if _ops.host_scalars(mini):
                if bool(emit):
                    updates, inner = opt.update(mean, state["inner_opt_state"], params, **extra)
                    acc, gstep = T.zeros_like(acc), gstep + 1
                else:
                    updates, inner = _zeros(grads), state["inner_opt_state"]
            else:
                new_updates, new_inner = opt.update(mean, state["inner_opt_state"], params, **extra)
                updates = T.map(lambda u: torch.where(emit, u, -0.0), new_updates)
                inner = _select(emit, new_inner, state["inner_opt_state"])
                acc = T.map(lambda a: torch.where(emit, 0.0, a), acc)
                gstep = gstep + emit.to(gstep.dtype)
            return updates, {"mini_step": next_mini, "gradient_step": gstep, "inner_opt_state": inner,
                             "acc_grads": acc}

        self = super().__new__(cls, init, update)
        self._opt = opt
        return self

    @property
    def inner_opt(self) -> GradientTransformation:
        return self._opt

    @staticmethod
    def has_updated(state: dict) -> torch.Tensor:
        """Whether the call that produced ``state`` stepped the inner optimizer (a 0-d bool)."""
        return (state["mini_step"] == 0) & (state["gradient_step"] > 0)

    def gradient_transformation(self) -> GradientTransformation:
        """The plain ``(init, update)`` pair (optax's spelling; a ``MultiSteps`` already is one)."""
        return GradientTransformation(self.init, self.update)


def lookahead(fast_optimizer: GradientTransformation, sync_period: int, slow_step_size: float,
              reset_state: bool = False) -> GradientTransformation:
    """Lookahead (Zhang et al. 2019; ``optax.lookahead``): ``fast_optimizer`` steps the params;
    every ``sync_period`` steps the slow weights move ``slow_step_size`` of the way to the fast
    ones and the fast ones are reset to them (``reset_state``: so is ``fast_optimizer``'s state,
    its hyperparameters excepted).

    fnnet's convention, simplified from optax's ``LookaheadParams``: the params you hold (and
    differentiate) are optax's ``params.fast``, and the slow weights, optax's ``params.slow``,
    live in the state, ``state["slow"]`` (use them for evaluation), starting as a copy of the
    params given to ``init``. The numbers are optax's: with ``d = fast + u - slow`` at a sync
    step, ``slow += slow_step_size * d`` and the update is ``u - (1 - slow_step_size) * d``. So
    ``update(grads, state, params)`` needs ``params``, and lookahead goes last (outermost): its
    updates must reach ``apply_updates`` unchanged. State: ``steps_since_sync``, ``fast_state``,
    ``slow``."""
    _check_inner("lookahead", "fast_optimizer", fast_optimizer)
    C.integer("lookahead", "sync_period", sync_period, lo=1)
    C.number("lookahead", "slow_step_size", slow_step_size, lo=0.0, hi=1.0)
    C.flag("lookahead", "reset_state", reset_state)
    alpha = float(slow_step_size)
    keys = ("steps_since_sync", "fast_state", "slow")

    def init(params):
        return {"steps_since_sync": torch.zeros((), dtype=torch.int64, device=_device(params)),
                "fast_state": fast_optimizer.init(params), "slow": T.map(torch.clone, params)}

    def fresh_state(params: Any, current: Any) -> Any:
        """``fast_optimizer.init(params)`` keeping ``current``'s hyperparameters (set_hyperparams)."""
        def keep_hyperparams(new, old):
            if isinstance(new, dict):
                return {k: old[k] if k == "hyperparams" else keep_hyperparams(v, old[k]) for k, v in new.items()}
            if isinstance(new, (tuple, list)):
                return type(new)(keep_hyperparams(n, o) for n, o in zip(new, old))
            return new
        return keep_hyperparams(fast_optimizer.init(params), current)

    def update(grads, state, params=None, **extra):
        _check_state("lookahead", state, keys)
        if params is None:
            raise ValueError("lookahead needs params (the fast weights): call update(grads, state, params)")
        spec, (flat_p, flat_s) = T.match(params, state["slow"], names=("params", "state['slow']"),
                                         what="lookahead update")
        updates, fast_state = fast_optimizer.update(grads, state["fast_state"], params, **extra)
        _, (_, flat_u) = T.match(params, updates, names=("params", "updates"), what="lookahead update")
        steps = state["steps_since_sync"]
        sync = steps == sync_period - 1
        ops = _ops.for_leaves(flat_p, flat_u, flat_s)
        d = ops.sub(ops.add(flat_p, flat_u), flat_s) if flat_p else []          # fast + u - slow
        synced_u = ops.add(flat_u, d, alpha=-(1 - alpha)) if flat_p else []      # u - (1 - a) d
        synced_s = ops.add(flat_s, d, alpha=alpha) if flat_p else []             # slow + a d
        if _ops.host_scalars(steps):
            if bool(sync):
                flat_u, flat_s = synced_u, synced_s
                if reset_state:
                    fast_state = fresh_state(params, fast_state)
        else:
            flat_u = [torch.where(sync, a, b) for a, b in zip(synced_u, flat_u)]
            flat_s = [torch.where(sync, a, b) for a, b in zip(synced_s, flat_s)]
            if reset_state:
                fast_state = _select(sync, fresh_state(params, fast_state), fast_state)
        new_state = {"steps_since_sync": torch.remainder(steps + 1, sync_period),
                     "fast_state": fast_state, "slow": T.unflatten(spec, flat_s)}
        return T.unflatten(spec, flat_u), new_state

    return GradientTransformation(init, update)
