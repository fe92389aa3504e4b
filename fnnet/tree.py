"""Pytree helpers: params, grads and optimizer states are nested dicts/lists/tuples of tensors.

This file is the only one that touches the pytree backend (``torch.utils._pytree``),
so the rest of fnnet speaks in these names. ``None`` is an empty subtree, as in JAX.
"""

from __future__ import annotations

import builtins
from typing import Any
from collections.abc import Callable

import torch
import torch.utils._pytree as _pt

__all__ = [
    "map", "map_with_path", "leaves", "flatten", "unflatten", "structure", "same_structure",
    "flatten_with_paths", "paths", "stack", "unstack", "zeros_like", "ones_like", "full_like",
    "add", "sub", "mul", "scale", "axpy", "vdot", "global_norm", "size", "astype", "to",
    "all_finite", "TreeDef",
]

TreeDef = _pt.TreeSpec


def map(f: Callable, tree: Any, *rest: Any) -> Any:
    """``f`` applied leaf-wise over ``tree`` and trees of the same structure ``rest``."""
    return _pt.tree_map(f, tree, *rest)


def leaves(tree: Any) -> list:
    return _pt.tree_leaves(tree)


def flatten(tree: Any) -> tuple[list, TreeDef]:
    return _pt.tree_flatten(tree)


def unflatten(treedef: TreeDef, leaves: list) -> Any:
    return _pt.tree_unflatten(list(leaves), treedef)


def structure(tree: Any) -> TreeDef:
    return _pt.tree_structure(tree)


def same_structure(a: Any, b: Any) -> bool:
    return structure(a) == structure(b)


def _key_str(k: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def flatten_with_paths(tree: Any) -> list[tuple[str, Any]]:
    """``[("encoder.0.weight", tensor), ...]``: dotted paths, as torch's state_dict names them."""
    pairs, _ = _pt.tree_flatten_with_path(tree)
    return [(".".join(_key_str(k) for k in path), leaf) for path, leaf in pairs]


def paths(tree: Any) -> list[str]:
    return [p for p, _ in flatten_with_paths(tree)]


def map_with_path(f: Callable[[str, Any], Any], tree: Any) -> Any:
    """``f(path, leaf)`` for every leaf; path as in :func:`flatten_with_paths`."""
    pairs = flatten_with_paths(tree)
    return unflatten(structure(tree), [f(p, x) for p, x in pairs])


def stack(trees: list, dim: int = 0) -> Any:
    """Trees of equal structure -> one tree whose leaves gain a leading axis (ensembles, vmap)."""
    trees = list(trees)
    if not trees:
        raise ValueError("tree.stack: needs at least one tree")
    spec = structure(trees[0])
    for i, t in enumerate(trees[1:], 1):
        if structure(t) != spec:
            raise ValueError(f"tree.stack: tree {i} has a different structure from tree 0")
    cols = zip(*(leaves(t) for t in trees))
    return unflatten(spec, [torch.stack(c, dim) for c in cols])


def unstack(tree: Any, dim: int = 0) -> list:
    """Inverse of :func:`stack`: a list of trees, one per index of the leading axis."""
    flat, spec = flatten(tree)
    if not flat:
        return []
    n = flat[0].shape[dim]
    return [unflatten(spec, [x.select(dim, i) for x in flat]) for i in range(n)]


def zeros_like(tree: Any) -> Any:
    return map(torch.zeros_like, tree)


def ones_like(tree: Any) -> Any:
    return map(torch.ones_like, tree)


def full_like(tree: Any, value: float) -> Any:
    return map(lambda x: torch.full_like(x, value), tree)


def add(a: Any, b: Any) -> Any:
    return map(torch.add, a, b)


def sub(a: Any, b: Any) -> Any:
    return map(torch.sub, a, b)


def mul(a: Any, b: Any) -> Any:
    return map(torch.mul, a, b)


def scale(s: Any, tree: Any) -> Any:
    return map(lambda x: x * s, tree)


def axpy(a: Any, x: Any, y: Any) -> Any:
    """``a * x + y`` leaf-wise."""
    return map(lambda xi, yi: a * xi + yi, x, y)


def vdot(a: Any, b: Any) -> torch.Tensor:
    """Sum over leaves of the elementwise products (a scalar tensor)."""
    terms = [torch.sum(x * y) for x, y in zip(leaves(a), leaves(b))]
    return torch.stack(terms).sum() if terms else torch.tensor(0.0)


def global_norm(tree: Any) -> torch.Tensor:
    """The 2-norm of all leaves taken as one vector (what ``clip_grad_norm_`` measures)."""
    flat = leaves(tree)
    if not flat:
        return torch.tensor(0.0)
    norms = torch._foreach_norm(flat, 2.0)
    return torch.linalg.vector_norm(torch.stack([n.to(flat[0].dtype) for n in norms]), 2.0)


def size(tree: Any) -> int:
    """Number of scalars in the tree."""
    return builtins.sum(x.numel() for x in leaves(tree))


def astype(tree: Any, dtype: torch.dtype) -> Any:
    """Floating leaves cast to ``dtype``; integer leaves (counters, indices) kept."""
    return map(lambda x: x.to(dtype) if x.is_floating_point() else x, tree)


def to(tree: Any, device: Any) -> Any:
    return map(lambda x: x.to(device), tree)


def all_finite(tree: Any) -> bool:
    return builtins.all(bool(torch.isfinite(x).all()) for x in leaves(tree) if x.is_floating_point())
