"""``scan``: a loop over the leading axis of pytrees, with ``jax.lax.scan``'s semantics.

    carry, ys = scan(f, carry, xs)      # f(carry, x_t) -> (carry, y_t)

``xs`` is a pytree of tensors stacked on dim 0 (or ``None`` with ``length``); ``ys`` is the
pytree of the ``y_t`` stacked the same way (``None`` if ``f`` returns ``None`` for y).
``reverse=True`` runs from the last index to the first and still stores ``y_t`` at index t.

Design: a tight Python loop. Each leaf of ``xs`` is unbound once (no per-step indexing or
tree rebuilding beyond the step itself), so eager overhead is the step's own ops; it is
differentiated by autograd, so ``fn.grad``, ``fn.vmap`` and ``fn.jit`` compose with it.
Under ``fn.jit`` the loop is unrolled: compile time grows with the sequence length (about
linearly), while the compiled step fuses each time step's elementwise work.

The two ways torch offers to trace a repeated body once were measured here (torch 2.13,
CPU) and both fail for what fnnet needs, a ``torch.func`` gradient inside ``fn.jit``:
the ``scan`` higher-order op cannot be differentiated under inductor
(pytorch/pytorch #195977), and a step marked ``torch.compiler.nested_compile_region``
raises "Expected FakeTensor" under ``torch.func.grad`` when compiled. Until one of them
works, long sequences are best trained eagerly or compiled with short ``T``.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

import torch

from . import tree as T

__all__ = ["scan"]


def scan(f: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any = None, reverse: bool = False,
         length: int | None = None) -> tuple[Any, Any]:
    """Loop ``f`` over the leading axis of ``xs``; returns the final carry and the stacked ys."""
    if xs is None:
        if length is None:
            raise ValueError("scan: give xs or length")
        n, columns, spec = length, [], None
    else:
        flat, spec = T.flatten(xs)
        if not flat:
            raise ValueError("scan: xs has no leaves; pass xs=None and length=")
        n = flat[0].shape[0]
        for i, x in enumerate(flat):
            if x.ndim == 0 or x.shape[0] != n:
                raise ValueError(f"scan: every leaf of xs needs the same leading length {n}; leaf {i} "
                                 f"has shape {list(x.shape)}")
        if length is not None and length != n:
            raise ValueError(f"scan: length={length} but xs has leading length {n}")
        columns = [x.unbind(0) for x in flat]
    order = range(n - 1, -1, -1) if reverse else range(n)
    ys = [None] * n
    for t in order:
        x_t = T.unflatten(spec, [c[t] for c in columns]) if spec is not None else None
        carry, ys[t] = f(carry, x_t)
    if n == 0 or ys[0] is None:
        return carry, None
    return carry, T.map(lambda *y: torch.stack(y), *ys)
