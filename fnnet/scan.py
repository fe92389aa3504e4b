"""``scan``: a loop over the leading axis of pytrees, with ``jax.lax.scan``'s semantics.

    carry, ys = scan(f, carry, xs)      # f(carry, x_t) -> (carry, y_t)

``xs`` is a pytree of tensors stacked on dim 0 (or ``None`` with ``length``); ``ys`` is the
pytree of the ``y_t`` stacked the same way (``None`` if ``f``'s y is ``None`` or has no tensors).
``reverse=True`` runs from the last index to the first and still stores ``y_t`` at index t.

Design (measured on torch 2.13, CPU; see ``benchmarks/cells.py`` and the README table):

* **Eager** (and whenever gradients are recorded): a tight Python loop. Each leaf of ``xs``
  is unbound once, so per step there is no indexing or tree rebuilding beyond the step
  itself; autograd differentiates it, so ``fn.grad`` and ``fn.vmap`` compose with it. Under
  ``fn.jit`` *with* gradients the loop is unrolled: correct, fused, but compile time grows
  about linearly with the length (an LSTM at T=64 took minutes to compile).
* **Under ``fn.jit`` without gradients** (``torch.no_grad()`` / ``inference_mode``, e.g. an
  evaluation or sampling step), when torch has the ``scan`` higher-order op
  (``torch._higher_order_ops.scan``, torch >= 2.6): the body is traced once and the op
  compiles in flat time whatever the length. The op is not used when gradients are recorded
  because on torch 2.13 it cannot be differentiated under inductor (pytorch/pytorch#195977,
  "scan might be aliasing the input or the output!"), fails inside a compiled
  ``torch.func.grad`` ("Expected FakeTensor"), and older versions silently zeroed gradients
  w.r.t. closed-over weights when the initial carry did not require grad (#184528). On a
  torch without the op (or with ``FNNET_SCAN_HOP=0`` in the environment) the loop is used.
* For training long sequences compiled, a recurrence gets a hand-written VJP behind an op the
  compiler does not trace into: ``cells.fused`` does this for RNN/LSTM/GRU, whose compile
  time is then flat in T. That is the pattern to follow for another cell.
"""

from __future__ import annotations

import os
from typing import Any
from collections.abc import Callable

import torch

from . import tree as T

__all__ = ["scan"]

try:  # torch >= 2.6; the prototype lived elsewhere before and is not used
    from torch._higher_order_ops.scan import scan as _scan_hop
except ImportError:  # pragma: no cover - depends on the installed torch
    _scan_hop = None

_USE_HOP = os.environ.get("FNNET_SCAN_HOP", "1") != "0"


def scan(f: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any = None, reverse: bool = False,
         length: int | None = None) -> tuple[Any, Any]:
    """Loop ``f`` over the leading axis of ``xs``; returns the final carry and the stacked ys.

    f: ``(carry, x_t) -> (carry, y_t)``, carry keeping its structure, shapes and dtypes.
    xs: pytree of ``[T, ...]`` tensors, or ``None`` (then ``x_t`` is ``None``; give ``length``).
    Returns ``(carry, ys)``, ys a pytree of ``[T, ...]`` tensors (``None`` if f's y is None).
    """
    if xs is None:
        if length is None:
            raise ValueError("scan: give xs or length")
        n, flat, spec = length, [], None
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
    if (n > 0 and _scan_hop is not None and _USE_HOP and torch.compiler.is_compiling()
            and not torch.is_grad_enabled()):
        return _traced_once(f, carry, flat, spec, n, reverse)
    return _loop(f, carry, flat, spec, n, reverse)


def _loop(f, carry, flat, spec, n, reverse):
    columns = [x.unbind(0) for x in flat]
    order = range(n - 1, -1, -1) if reverse else range(n)
    ys = [None] * n
    for t in order:
        x_t = T.unflatten(spec, [c[t] for c in columns]) if spec is not None else None
        carry, ys[t] = f(carry, x_t)
    if n == 0 or not _has_tensors(ys[0]):
        return carry, None
    return carry, T.map(lambda *y: torch.stack(y), *ys)


def _traced_once(f, carry, flat, spec, n, reverse):
    """torch's scan op: the body traced once."""
    carry_spec = T.structure(carry)
    if not T.leaves(carry):
        raise ValueError("scan: under fn.jit the carry needs at least one tensor")
    if spec is None:  # length only: a [n, 0] placeholder to scan over
        like = T.leaves(carry)[0]
        flat = [torch.empty(n, 0, device=like.device, dtype=like.dtype)]

    def body(c, x_leaves):
        x_t = T.unflatten(spec, list(x_leaves)) if spec is not None else None
        new, y = f(c, x_t)
        if T.structure(new) != carry_spec:
            raise ValueError(f"scan: f must return a carry of the same structure as the initial one; "
                             f"got {T.structure(new)}, expected {carry_spec}")
        # the op refuses outputs that alias its inputs (a carry passed through, a slice of x);
        # aliasing cannot be asked while tracing, so every output is a copy (fused by inductor)
        return T.map(torch.clone, new), (() if y is None else T.map(torch.clone, y))

    # the op also refuses initial carry leaves that alias each other (e.g. ``(h0, h0)``)
    carry, ys = _scan_hop(body, T.map(torch.clone, carry), list(flat), reverse=reverse)
    return carry, (ys if _has_tensors(ys) else None)


def _has_tensors(tree: Any) -> bool:
    return any(isinstance(leaf, torch.Tensor) for leaf in T.leaves(tree))
