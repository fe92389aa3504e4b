"""Pytree helpers: params, grads and optimizer states are nested dicts/lists/tuples of tensors.

This file is the only one that touches the pytree backend (``torch.utils._pytree``),
so the rest of fnnet speaks in these names. ``None`` is a leaf to torch's pytree (JAX takes it
as an empty subtree); :data:`HOLE` is the empty subtree :func:`partition` leaves.

Several trees are always paired by path, never by position (:func:`match`): torch's pytree
flattens a dict in insertion order, so two dicts with the same keys in another order would
otherwise pair the wrong leaves.
"""

from __future__ import annotations

import builtins
import functools
from typing import Any
from collections.abc import Callable

import torch
import torch.utils._pytree as _pt
from torch._C._functorch import is_batchedtensor

__all__ = [
    "map", "map_with_path", "leaves", "flatten", "unflatten", "structure", "same_structure",
    "flatten_with_paths", "paths", "stack", "unstack", "zeros_like", "ones_like", "full_like",
    "add", "sub", "mul", "scale", "axpy", "vdot", "global_norm", "size", "astype", "to",
    "all_finite", "TreeDef", "match", "partition", "combine", "HOLE", "ravel", "at",
]

TreeDef = _pt.TreeSpec


def map(f: Callable, tree: Any, *rest: Any, is_leaf: Callable[[Any], bool] | None = None) -> Any:
    """``f(leaf, *rest_leaves)`` for every leaf of ``tree``, with the leaves of ``rest`` paired
    by path (:func:`match`: dict key order does not matter; a missing or extra path is an
    error). Shapes are not compared here (``f`` may combine leaves of any shapes); the
    arithmetic helpers below do compare them. The result has ``tree``'s structure."""
    if not rest:
        return _pt.tree_map(f, tree, is_leaf=is_leaf)
    spec, cols = match(tree, *rest, what="tree.map", shapes=False, is_leaf=is_leaf)
    return unflatten(spec, [f(*xs) for xs in zip(*cols)])


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


def _shape(x: Any) -> tuple | None:
    """A leaf's shape for :func:`match`: a tensor's, ``()`` for a Python number, else ``None``
    (not compared)."""
    if isinstance(x, torch.Tensor):
        return tuple(x.shape)
    return () if isinstance(x, (int, float, complex)) else None


def _path_str(path: tuple) -> str:
    return ".".join(_key_str(k) for k in path) or "<root>"


def match(*trees: Any, names: tuple[str, ...] | None = None, what: str = "tree", shapes: bool = True,
          is_leaf: Callable[[Any], bool] | None = None) -> tuple[TreeDef, list[list]]:
    """Pair the leaves of several trees by path: ``(treedef, [leaves_0, leaves_1, ...])``, each
    list in the order of the first tree's leaves and ``treedef`` the first tree's structure.

    The one mechanism every binary tree operation goes through (``map``, ``add``, ``vdot``,
    ``optim.apply_updates``, optimizer updates, ...). Positions are meaningless: torch's pytree
    flattens a dict in insertion order, so ``{"a": .., "b": ..}`` and ``{"b": .., "a": ..}``
    flatten in different orders (and their TreeDefs differ); here they pair ``a`` with ``a``.
    A path in one tree and not in the other raises a ``ValueError`` naming it, and so, with
    ``shapes=True``, does a pair of leaves of different shapes (nothing is broadcast; dtypes may
    differ). ``what`` (the operation) and ``names`` (of the trees) go into the message.

    Cheap when the structures are identical (the usual case: one structure comparison and one
    shape comparison per leaf); by path otherwise. Under ``torch.compile`` it runs at trace time.
    """
    names = names or tuple(f"tree {i}" for i in range(len(trees)))
    flat0, spec = _pt.tree_flatten(trees[0], is_leaf=is_leaf)
    shapes0 = [getattr(x, "shape", None) for x in flat0] if shapes else None
    cols = [flat0]
    for i, t in enumerate(trees[1:], 1):
        flat, s = _pt.tree_flatten(t, is_leaf=is_leaf)
        # the fast path: same structure (same paths, same order) and, compared in one go, same shapes;
        # otherwise by path, which names the first difference (or finds none: a number and a 0-d tensor)
        if s != spec or (shapes and [getattr(y, "shape", None) for y in flat] != shapes0):
            flat = _by_path(trees[0], t, names[0], names[i], what, is_leaf, shapes)
        cols.append(flat)
    return spec, cols


def _by_path(ref: Any, other: Any, ref_name: str, name: str, what: str, is_leaf, shapes: bool = True) -> list:
    """``other``'s leaves in the order of ``ref``'s, looked up by path; raises on any difference."""
    ref_pairs, _ = _pt.tree_flatten_with_path(ref, is_leaf=is_leaf)
    pairs, _ = _pt.tree_flatten_with_path(other, is_leaf=is_leaf)
    by_path = dict(pairs)
    if len(by_path) != len(pairs):  # two paths that compare equal (cannot happen for dicts/lists)
        raise ValueError(f"{what}: {name} has repeated paths")
    out = []
    for path, x in ref_pairs:
        if path not in by_path:
            raise ValueError(f"{what}: {name} has no leaf at {_path_str(path)!r}, where {ref_name} has one "
                             f"({_describe(x)}); trees are matched by path")
        y = by_path[path]
        if shapes and _shape(x) is not None and _shape(y) is not None and _shape(x) != _shape(y):
            raise ValueError(f"{what}: at {_path_str(path)!r}, {ref_name} has shape {list(_shape(x))} and "
                             f"{name} {list(_shape(y))}; the shapes must be equal (nothing is broadcast)")
        out.append(y)
    if len(out) != len(pairs):
        known = {path for path, _ in ref_pairs}
        extra = next(p for p, _ in pairs if p not in known)
        raise ValueError(f"{what}: {name} has a leaf at {_path_str(extra)!r} ({_describe(by_path[extra])}) "
                         f"that {ref_name} does not have; trees are matched by path")
    return out


def _describe(x: Any) -> str:
    s = _shape(x)
    return f"shape {list(s)}" if s is not None else type(x).__name__


def map_with_path(f: Callable[[str, Any], Any], tree: Any) -> Any:
    """``f(path, leaf)`` for every leaf; path as in :func:`flatten_with_paths`."""
    pairs = flatten_with_paths(tree)
    return unflatten(structure(tree), [f(p, x) for p, x in pairs])


def stack(trees: list, dim: int = 0) -> Any:
    """Trees of equal structure -> one tree whose leaves gain a leading axis (ensembles, vmap)."""
    trees = list(trees)
    if not trees:
        raise ValueError("tree.stack: needs at least one tree")
    spec, cols = match(*trees, what="tree.stack")
    return unflatten(spec, [torch.stack(c, dim) for c in zip(*cols)])


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


def _binary(f: Callable, a: Any, b: Any, what: str) -> Any:
    """``f`` on the leaves of ``a`` and ``b`` paired by path, shapes equal (:func:`match`)."""
    spec, (xs, ys) = match(a, b, names=("a", "b"), what=what)
    return unflatten(spec, [f(x, y) for x, y in zip(xs, ys)])


def add(a: Any, b: Any) -> Any:
    """``a + b`` leaf-wise, paired by path, shapes equal (no broadcasting)."""
    return _binary(torch.add, a, b, "tree.add")


def sub(a: Any, b: Any) -> Any:
    return _binary(torch.sub, a, b, "tree.sub")


def mul(a: Any, b: Any) -> Any:
    return _binary(torch.mul, a, b, "tree.mul")


def scale(s: Any, tree: Any) -> Any:
    return map(lambda x: x * s, tree)


def axpy(a: Any, x: Any, y: Any) -> Any:
    """``a * x + y`` leaf-wise (``a`` a number or 0-d tensor), paired by path, shapes equal."""
    spec, (xs, ys) = match(x, y, names=("x", "y"), what="tree.axpy")
    return unflatten(spec, [a * xi + yi for xi, yi in zip(xs, ys)])


def vdot(a: Any, b: Any) -> torch.Tensor:
    """Sum over leaves of the elementwise products (a scalar tensor); leaves paired by path,
    shapes equal (never truncated to the shorter tree)."""
    _, (xs, ys) = match(a, b, names=("a", "b"), what="tree.vdot")
    terms = [torch.sum(x * y) for x, y in zip(xs, ys)]
    return torch.stack(terms).sum() if terms else torch.tensor(0.0)


def global_norm(tree: Any, ord: float = 2.0, *, wide: bool = False) -> torch.Tensor:
    """The ``ord``-norm of all leaves taken as one vector (what ``clip_grad_norm_`` measures).

    Accumulated in float32 at least (float16 leaves whose squares overflow float16 do not give
    ``inf``; float64 leaves in float64) and returned in the dtype torch's ``clip_grad_norm_``
    returns, the promotion of the leaves' dtypes — or, ``wide=True``, in the accumulation dtype
    (a float16 tree's norm past 65504 is then still finite: what clipping divides by)."""
    flat = [x for x in leaves(tree) if isinstance(x, torch.Tensor)]
    if not flat:
        return torch.tensor(0.0)
    out_dtype = functools.reduce(torch.promote_types, (x.dtype for x in flat))
    acc = torch.promote_types(out_dtype, torch.float32)
    out_dtype = out_dtype if out_dtype.is_floating_point else acc  # integer leaves: a float norm
    # floating leaves are read in their dtype and accumulated in acc (no wide copy); others cast
    flat = [x if x.is_floating_point() else x.to(acc) for x in flat]
    if builtins.any(is_batchedtensor(x) for x in flat):  # _foreach_norm has no vmap rule
        norms = [torch.linalg.vector_norm(x, ord, dtype=acc) for x in flat]
    else:
        norms = torch._foreach_norm(flat, ord, dtype=acc)
    total = torch.linalg.vector_norm(torch.stack(list(norms)), ord)
    return total if wide else total.to(out_dtype)


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


# -- splitting, joining, flattening to a vector, updating by path ------------------------------------

class _Hole:
    """The type of :data:`HOLE` (one instance)."""

    _one: _Hole | None = None

    def __new__(cls) -> _Hole:
        if cls._one is None:
            cls._one = super().__new__(cls)
        return cls._one

    def __repr__(self) -> str:
        return "tree.HOLE"

    def __reduce__(self) -> str:
        return "HOLE"  # unpickles as the module's one instance


HOLE = _Hole()
"""The empty subtree that stands in a :func:`partition` half where the other half has the leaf:
a pytree node with no leaves, so ``fn.grad``, ``tree.map`` and ``tree.paths`` pass over it and
keep it in place. (Not ``None``, JAX's and equinox's marker: torch's pytree takes ``None`` as a
leaf, which ``torch.func.grad`` refuses.)"""

_pt.register_pytree_node(_Hole, lambda h: ([], None), lambda leaves, context: HOLE,
                         serialized_type_name="fnnet.tree.HOLE", flatten_with_keys_fn=lambda h: ([], None))


def _is_hole(x: Any) -> bool:
    return x is HOLE


def partition(tree: Any, predicate: Callable[[str, Any], bool]) -> tuple[Any, Any]:
    """``(selected, rest)``: two trees shaped like ``tree``, ``selected`` holding the leaves for
    which ``predicate(path, leaf)`` is True (``path`` dotted as :func:`flatten_with_paths` and
    ``multi_transform``'s label function write it) and :data:`HOLE` elsewhere, ``rest`` the
    others. A hole is an empty subtree to the transforms, so ``fn.grad`` of
    ``lambda s: loss(combine(s, rest))`` at ``selected`` differentiates only the selected leaves
    and returns grads shaped like ``selected`` (equinox's ``partition``). A tree that already
    holds a hole is refused: a half cannot be partitioned again (:func:`combine` it first)."""
    if not callable(predicate):
        raise TypeError(f"tree.partition: predicate must be a function (path, leaf) -> bool, got "
                        f"{type(predicate).__name__}")
    pairs, spec = _pt.tree_flatten_with_path(tree, is_leaf=_is_hole)
    selected, rest = [], []
    for path, x in pairs:
        where = _path_str(path)
        if x is HOLE:
            raise ValueError(f"tree.partition: the tree holds a hole at {where!r} (it is a half of a partition); "
                             "combine the halves before partitioning again")
        keep = predicate(".".join(_key_str(k) for k in path), x)
        if not isinstance(keep, bool):
            raise TypeError(f"tree.partition: predicate must return True or False, got {type(keep).__name__} "
                            f"at {where!r}")
        selected.append(x if keep else HOLE)
        rest.append(HOLE if keep else x)
    return unflatten(spec, selected), unflatten(spec, rest)


def combine(selected: Any, rest: Any) -> Any:
    """The inverse of :func:`partition`: at each path the leaf of whichever half holds one. The
    halves are paired by path (any dict key order; the result has ``selected``'s); a path where
    both hold a leaf, or neither does (a hole in both), is a ``ValueError`` naming it."""
    spec, (xs, ys) = match(selected, rest, names=("selected", "rest"), what="tree.combine", shapes=False,
                           is_leaf=_is_hole)
    paths = [p for p, _ in _pt.tree_flatten_with_path(selected, is_leaf=_is_hole)[0]]
    out = []
    for path, x, y in zip(paths, xs, ys):
        if (x is HOLE) == (y is HOLE):
            which = "neither selected nor rest holds" if x is HOLE else "both selected and rest hold"
            raise ValueError(f"tree.combine: {which} a leaf at {_path_str(path)!r}; the halves of a partition "
                             "hold each leaf exactly once")
        out.append(y if x is HOLE else x)
    return unflatten(spec, out)


def _canonical_order(tree: Any) -> Any:
    """``tree`` with every plain dict's keys sorted (JAX's flattening order): the order of
    :func:`ravel`'s vector, so that two trees with the same paths ravel alike whatever their key
    insertion order."""
    if type(tree) is dict:
        try:
            keys = sorted(tree)
        except TypeError:
            raise TypeError(f"tree.ravel: dict keys must be sortable (all str, or all int), got "
                            f"{sorted(map(repr, tree))}") from None
        return {k: _canonical_order(tree[k]) for k in keys}
    if type(tree) in (list, tuple):
        return type(tree)(_canonical_order(x) for x in tree)
    return tree


def ravel(tree: Any) -> tuple[torch.Tensor, Callable[[torch.Tensor], Any]]:
    """``(vector, unravel)``: every leaf flattened and concatenated into one 1-D tensor, and the
    function back (JAX's ``ravel_pytree``). The order is deterministic: dict keys sorted (JAX's
    order, not insertion order), lists and tuples by position. Mixed dtypes promote as
    ``torch.cat`` promotes (``torch.promote_types``; JAX's rule too) and ``unravel`` casts each
    piece back to its leaf's dtype. ``unravel(v)`` requires a 1-D ``v`` of the vector's size and
    dtype, and is differentiable, so a Hessian over all params is
    ``torch.func.hessian(lambda v: loss(unravel(v)))(vector)``. An empty tree gives an empty
    float32 vector. Leaves must be tensors."""
    pairs, spec = _pt.tree_flatten_with_path(tree)
    for path, x in pairs:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"tree.ravel: leaves must be tensors, got {type(x).__name__} at {_path_str(path)!r}")
    index = {path: i for i, (path, _) in enumerate(pairs)}
    order = [index[path] for path, _ in _pt.tree_flatten_with_path(_canonical_order(tree))[0]]
    leaves_ = [pairs[i][1] for i in order]
    dtype = functools.reduce(torch.promote_types, (x.dtype for x in leaves_)) if leaves_ else torch.float32
    shapes = [x.shape for x in leaves_]
    dtypes = [x.dtype for x in leaves_]
    sizes = [x.numel() for x in leaves_]
    total = builtins.sum(sizes)
    device = leaves_[0].device if leaves_ else None
    vector = (torch.cat([x.reshape(-1).to(dtype) for x in leaves_]) if leaves_
              else torch.zeros(0, dtype=dtype, device=device))

    def unravel(v: torch.Tensor) -> Any:
        if not isinstance(v, torch.Tensor) or v.ndim != 1 or v.shape[0] != total:
            got = f"shape {list(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"tree.ravel's unravel: expected a 1-D tensor of {total} elements (the raveled tree's "
                             f"size), got {got}")
        if v.dtype != dtype:
            raise TypeError(f"tree.ravel's unravel: expected a {dtype} vector (the raveled tree's dtype), "
                            f"got {v.dtype}")
        pieces = torch.split(v, sizes) if sizes else []
        flat = [None] * len(pairs)
        for i, piece, shape, dt in zip(order, pieces, shapes, dtypes):
            flat[i] = piece.reshape(shape).to(dt)
        return unflatten(spec, flat)

    return vector, unravel


def _path_keys(path: Any) -> list:
    if isinstance(path, str):
        return path.split(".") if path else []
    if isinstance(path, (tuple, list)):
        return list(path)
    raise TypeError(f"tree.at: path must be a dotted str ('encoder.0.weight') or a tuple of keys, got "
                    f"{type(path).__name__}")


def at(tree: Any, path: str | tuple, value: Any) -> Any:
    """A new tree with the leaf (or subtree) at ``path`` replaced by ``value``; ``tree`` is
    untouched (only the containers along the path are new, the rest is shared). ``path`` is
    dotted as :func:`flatten_with_paths` writes it (``"encoder.0.weight"``; a list index by its
    number) or a tuple of keys (``("encoder", 0, "weight")``, for keys holding a dot). A path
    that is not in the tree is a ``ValueError`` naming the first missing key and the keys there."""
    keys = _path_keys(path)

    def put(node: Any, i: int) -> Any:
        if i == len(keys):
            return value
        k = keys[i]
        where = ".".join(map(str, keys[:i])) or "<root>"
        if isinstance(node, dict):
            match_ = [key for key in node if key == k or str(key) == str(k)]
            if not match_:
                raise ValueError(f"tree.at: no key {str(k)!r} at {where!r} (path {'.'.join(map(str, keys))!r}); "
                                 f"the keys there: {sorted(map(str, node))}")
            key = match_[0]
            return {**node, key: put(node[key], i + 1)} if type(node) is dict else \
                type(node)({**node, key: put(node[key], i + 1)})
        if isinstance(node, (list, tuple)):
            try:
                j = int(k)
            except (TypeError, ValueError):
                j = -1
            if not 0 <= j < len(node):
                raise ValueError(f"tree.at: no index {str(k)!r} at {where!r} (path {'.'.join(map(str, keys))!r}); "
                                 f"a {type(node).__name__} of length {len(node)} is there")
            items = list(node)
            items[j] = put(node[j], i + 1)
            if isinstance(node, list):
                return items
            return type(node)(*items) if hasattr(node, "_fields") else type(node)(items)
        raise ValueError(f"tree.at: path {'.'.join(map(str, keys))!r} goes past a leaf at {where!r} "
                         f"({_describe(node)})")

    return put(tree, 0)
