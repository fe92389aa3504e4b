"""List arithmetic for optimizer updates: ``torch._foreach_*`` (one kernel launch per op for
all leaves) on the hot path, per-leaf ops where ``_foreach`` cannot go.

``_foreach`` has no ``vmap`` batching rule, so when any leaf is a functorch-batched tensor
(an ensemble's vmapped optimizer state) the same arithmetic runs leaf by leaf.
Scalars may be Python numbers or 0-d tensors (hyperparameters held in the state).
"""

from __future__ import annotations

import torch
from torch._C._functorch import is_batchedtensor

List = list[torch.Tensor]


def _per_leaf(*lists: List) -> bool:
    return any(is_batchedtensor(x) for xs in lists for x in xs)


def mul(xs: List, s) -> List:
    """``x * s`` for a scalar, or elementwise for a list ``s``."""
    if isinstance(s, list):
        return [x * y for x, y in zip(xs, s)] if _per_leaf(xs, s) else torch._foreach_mul(xs, s)
    return [x * s for x in xs] if _per_leaf(xs) else torch._foreach_mul(xs, s)


def add(xs: List, ys) -> List:
    """``x + y`` for a list ``ys``, or ``x + s`` for a scalar."""
    if isinstance(ys, list):
        return [x + y for x, y in zip(xs, ys)] if _per_leaf(xs, ys) else torch._foreach_add(xs, ys)
    return [x + ys for x in xs] if _per_leaf(xs) else torch._foreach_add(xs, ys)


def sub(xs: List, ys: List) -> List:
    return [x - y for x, y in zip(xs, ys)] if _per_leaf(xs, ys) else torch._foreach_sub(xs, ys)


def axpy(a, xs: List, ys: List) -> List:
    """``a * x + y``."""
    return add(mul(xs, a), ys)


def div(xs: List, ys: List) -> List:
    return [x / y for x, y in zip(xs, ys)] if _per_leaf(xs, ys) else torch._foreach_div(xs, ys)


def sqrt(xs: List) -> List:
    return [torch.sqrt(x) for x in xs] if _per_leaf(xs) else torch._foreach_sqrt(xs)


def abs(xs: List) -> List:
    return [torch.abs(x) for x in xs] if _per_leaf(xs) else torch._foreach_abs(xs)


def maximum(xs: List, ys: List) -> List:
    return [torch.maximum(x, y) for x, y in zip(xs, ys)] if _per_leaf(xs, ys) else torch._foreach_maximum(xs, ys)


def neg(xs: List) -> List:
    return [-x for x in xs] if _per_leaf(xs) else torch._foreach_neg(xs)


def square(xs: List) -> List:
    return mul(xs, xs)
