"""``base.optimizer`` plus state that is not a per-leaf slot shaped like the params.

``base.optimizer`` pairs each slot tree with the grads by path and shape. Two torch optimizers
keep state of other shapes: NAdam's running product of momentum coefficients (``mu_product``,
one scalar) and Adafactor's factored second moments (a matrix's ``row_var`` ``[..., R, 1]`` and
``col_var`` ``[..., 1, C]``). :func:`optimizer_with_aux` keeps such entries in the same state
dict, next to the count, the hyperparameters and the slots, and leaves all the rest to
``base.optimizer`` (hyperparameters and schedules, the count, pairing grads, params and slots by
path, the choice of arithmetic). Each optimizer checks its own entries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import tree as T
from .base import GradientTransformation, optimizer

# aux_init(leaves, paths) -> {name: entry}: from the params' leaves and their dotted paths
AuxInit = Callable[[list, list[str]], dict[str, Any]]


def optimizer_with_aux(hyperparams: dict[str, Any], slots: Callable, aux_names: tuple[str, ...],
                       aux_init: AuxInit, step: Callable, name: str) -> GradientTransformation:
    """:func:`base.optimizer` whose state also holds the entries ``aux_names``, made by ``aux_init``.

    ``step(ops, grads, params, slots, h, count, aux, paths) -> (updates, new_slots, new_aux)`` is
    ``base.optimizer``'s step given, in addition, ``aux`` (the entries as the state holds them)
    and ``paths`` (the grads' dotted paths, in the order of the leaf lists); ``new_aux`` replaces
    the entries. An entry is any tree of tensors (a 0-d tensor, a ``{path: tensor}`` dict), so
    the state still saves, stacks and ``vmap``s as a whole.
    """
    core_init = optimizer(hyperparams, slots, step, name).init

    def init(params):
        state = core_init(params)
        pairs = T.flatten_with_paths(params)
        state.update(aux_init([leaf for _, leaf in pairs], [p for p, _ in pairs]))
        return state

    def update(grads, state, params=None, **extra):
        if not isinstance(state, dict) or not all(k in state for k in aux_names):
            keys = f" with keys {sorted(state)}" if isinstance(state, dict) else ""
            raise ValueError(f"{name} update: the state must be this optimizer's init(params) (with "
                             f"{', '.join(aux_names)}), got {type(state).__name__}{keys}")
        aux = {k: state[k] for k in aux_names}
        core = {k: v for k, v in state.items() if k not in aux_names}
        paths = T.paths(grads)
        new_aux: dict[str, Any] = {}

        def core_step(ops, g, p, s, h, count):
            updates, new_slots, new = step(ops, g, p, s, h, count, aux, paths)
            new_aux.update(new)
            return updates, new_slots

        updates, new_state = optimizer(hyperparams, slots, core_step, name).update(grads, core, params, **extra)
        return updates, {**new_state, **new_aux}

    return GradientTransformation(init, update)
