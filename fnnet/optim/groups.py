"""Parameter groups and freezing: a label per leaf picks its transformation (torch's param
groups, optax's ``multi_transform``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import tree as T
from .base import GradientTransformation, set_to_zero

Labels = Any  # a tree of str like the params, or f(path, leaf) -> str


def _labels(labels: Labels, params: Any) -> list[str]:
    if callable(labels):
        return [str(labels(path, p)) for path, p in T.flatten_with_paths(params)]
    out = [str(x) for x in T.leaves(labels)]
    if len(out) != len(T.leaves(params)):
        raise ValueError(f"multi_transform: the label tree has {len(out)} leaves, the params "
                         f"{len(T.leaves(params))}")
    return out


def multi_transform(transforms: dict[str, GradientTransformation], labels: Labels) -> GradientTransformation:
    """Each leaf is updated by ``transforms[label]``; ``labels`` is a tree of strings shaped like
    the params, or ``f(path, leaf) -> label``. Each group's transformation sees only its own
    leaves (as a flat ``{path: leaf}`` dict), so a group keeps state only for its leaves.

        opt = multi_transform({"decay": adamw(1e-3), "no_decay": adam(1e-3), "frozen": set_to_zero()},
                              lambda path, p: "frozen" if path.startswith("encoder") else
                                              "no_decay" if path.endswith("bias") else "decay")
    """

    def split(tree: Any, names: list[str]) -> dict[str, dict]:
        groups: dict[str, dict] = {k: {} for k in transforms}
        for (path, leaf), label in zip(T.flatten_with_paths(tree), names):
            if label not in groups:
                raise KeyError(f"multi_transform: leaf {path!r} has label {label!r}, which has no "
                               f"transformation (labels: {sorted(transforms)})")
            groups[label][path] = leaf
        return groups

    def init(params):
        names = _labels(labels, params)
        groups = split(params, names)
        return {k: t.init(groups[k]) for k, t in transforms.items()}

    def update(grads, state, params=None, **extra):
        names = _labels(labels, params if params is not None else grads)
        g_groups = split(grads, names)
        p_groups = split(params, names) if params is not None else {k: None for k in transforms}
        new_state, merged = {}, {}
        for k, t in transforms.items():
            u, new_state[k] = t.update(g_groups[k], state[k], p_groups[k], **extra)
            merged.update(u)
        flat_paths = [p for p, _ in T.flatten_with_paths(grads)]
        return T.unflatten(T.structure(grads), [merged[p] for p in flat_paths]), new_state

    return GradientTransformation(init, update)


def freeze(transform: GradientTransformation, frozen: Callable[[str, Any], bool] | Any) -> GradientTransformation:
    """``transform`` on every leaf but the frozen ones (``f(path, leaf) -> bool`` or a bool tree),
    which get zero updates and no optimizer state."""
    if callable(frozen):
        labels = lambda path, p: "frozen" if frozen(path, p) else "train"
    else:
        labels = T.map(lambda f: "frozen" if f else "train", frozen)
    return multi_transform({"train": transform, "frozen": set_to_zero()}, labels)
