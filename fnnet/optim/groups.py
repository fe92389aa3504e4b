"""Parameter groups and freezing: a label per leaf picks its transformation (torch's param
groups, optax's ``multi_transform``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import random
from .. import tree as T
from ..module import Module
from .base import GradientTransformation, set_to_zero

Labels = Any  # a tree of str like the params, or f(path, leaf) -> str


def _labels(labels: Labels, params: Any, what: str) -> list[str]:
    """One label per leaf of ``params``, in its leaf order (a label tree is paired by path)."""
    if callable(labels):
        return [str(labels(path, p)) for path, p in T.flatten_with_paths(params)]
    _, (_, out) = T.match(params, labels, names=("params", "labels"), what=what, shapes=False)
    return [str(x) for x in out]


def multi_transform(transforms: dict[str, GradientTransformation], labels: Labels) -> GradientTransformation:
    """Each leaf is updated by ``transforms[label]``; ``labels`` is a tree of strings shaped like
    the params (paired by path), or ``f(path, leaf) -> label``. Each group's transformation sees
    only its own leaves (as a flat ``{path: leaf}`` dict), so a group keeps state only for its
    leaves. The state is ``{label: state}``; ``set_hyperparams(state, group=label, lr=...)``
    changes one group.

        opt = multi_transform({"decay": adamw(1e-3), "no_decay": adam(1e-3), "frozen": set_to_zero()},
                              lambda path, p: "frozen" if path.startswith("encoder") else
                                              "no_decay" if path.endswith("bias") else "decay")
    """
    if not isinstance(transforms, dict) or not transforms:
        raise TypeError(f"multi_transform: transforms must be a non-empty dict {{label: transformation}}, "
                        f"got {type(transforms).__name__}")
    for k, t in transforms.items():
        if not isinstance(t, GradientTransformation):
            raise TypeError(f"multi_transform: transforms[{k!r}] must be a GradientTransformation "
                            f"(an optimizer or transform from fnnet.optim), got {type(t).__name__}")

    def split(tree: Any, names: list[str]) -> dict[str, dict]:
        groups: dict[str, dict] = {k: {} for k in transforms}
        for (path, leaf), label in zip(T.flatten_with_paths(tree), names):
            if label not in groups:
                raise ValueError(f"multi_transform: leaf {path!r} has label {label!r}, which has no "
                                 f"transformation (labels: {sorted(transforms)})")
            groups[label][path] = leaf
        return groups

    def init(params):
        names = _labels(labels, params, "multi_transform init")
        groups = split(params, names)
        return {k: t.init(groups[k]) for k, t in transforms.items()}

    def update(grads, state, params=None, **extra):
        if not isinstance(state, dict) or set(state) != set(transforms):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"multi_transform: the state must be {{label: state}} for the labels "
                             f"{sorted(transforms)} (from this multi_transform's init), got {got}")
        if params is not None:  # paired by path, in the grads' order
            spec, (_, flat_p) = T.match(grads, params, names=("grads", "params"), what="multi_transform update")
            params = T.unflatten(spec, flat_p)
        names = _labels(labels, params if params is not None else grads, "multi_transform update")
        g_groups = split(grads, names)
        p_groups = split(params, names) if params is not None else {k: None for k in transforms}
        new_state, merged = {}, {}
        for k, t in transforms.items():
            u, new_state[k] = t.update(g_groups[k], state[k], p_groups[k], **extra)
            merged.update(u)
        flat_paths = [p for p, _ in T.flatten_with_paths(grads)]
        return T.unflatten(T.structure(grads), [merged[p] for p in flat_paths]), new_state

    return GradientTransformation(init, update)


def frozen_paths(model: Module) -> list[str]:
    """The dotted params paths ``model`` marks frozen: every param of a layer whose ``freeze``
    field is true (``Embedding.from_pretrained``'s default), found through ``children()``, whose
    names are the params' keys. torch.optim skips a parameter that does not require grad; fnnet
    params are plain tensors, so pass these to :func:`freeze` (``freeze(opt, model)`` does)."""
    out: list[str] = []

    def visit(m: Module, prefix: str) -> None:
        if getattr(m, "freeze", False) is True:
            out.extend(prefix + p for p in T.paths(m.init(random.key(0, device="meta"))))  # no memory
            return
        for name, child in m.children().items():
            visit(child, f"{prefix}{name}.")

    visit(model, "")
    return out


def freeze(transform: GradientTransformation,
           frozen: Callable[[str, Any], bool] | Module | Any) -> GradientTransformation:
    """``transform`` on every leaf but the frozen ones, which get zero updates (``-0.0``: the
    params stay bit-identical, weight decay included) and no optimizer state. ``frozen`` is
    ``f(path, leaf) -> bool``, a bool tree like the params (paired by path), or a model: its
    :func:`frozen_paths` (``Embedding.from_pretrained(w, freeze=True)``), all of which must be
    in the params."""
    if isinstance(frozen, Module):
        paths = set(frozen_paths(frozen))

        inner = multi_transform({"train": transform, "frozen": set_to_zero()},
                                lambda path, p: "frozen" if path in paths else "train")

        def init(params):
            missing = paths - set(T.paths(params))
            if missing:
                raise ValueError(f"freeze: the model marks {sorted(missing)} frozen, but the params have no "
                                 "such path (params built by another model?)")
            return inner.init(params)

        return GradientTransformation(init, inner.update)
    if callable(frozen):
        labels = lambda path, p: "frozen" if frozen(path, p) else "train"
    else:
        labels = T.map(lambda f: "frozen" if f else "train", frozen)
    return multi_transform({"train": transform, "frozen": set_to_zero()}, labels)
