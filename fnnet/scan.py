"""``scan``: a loop over the leading axis of pytrees, with ``jax.lax.scan``'s semantics.

    carry, ys = scan(f, carry, xs)      # f(carry, x_t) -> (carry, y_t)

``xs`` is a pytree of tensors stacked on dim 0 (or ``None`` with ``length``); ``ys`` is the
pytree of the ``y_t`` stacked the same way (``None`` if ``f``'s y is ``None`` or has no tensors).
``reverse=True`` runs from the last index to the first and still stores ``y_t`` at index t.

Design (measured on torch 2.13, CPU; see ``benchmarks/cells.py`` and the README table):

* **Eager**: a tight Python loop. Each leaf of ``xs`` is unbound once, so per step there is
  no indexing or tree rebuilding beyond the step itself; autograd differentiates it, so
  ``fn.grad`` and ``fn.vmap`` compose with it.
* **Under ``fn.jit``** (``unroll=1``, the default, as in JAX): torch's ``scan`` op
  (``torch._higher_order_ops.scan``): the body is traced once, so compile time does not grow
  with the length (an LSTM cell's training step: ~5 s at T=16 and at T=1024, where the
  unrolled loop took 546 s at T=1024). With gradients this needs the step's gradient to be
  taken by autograd, which is what ``fn.grad``/``fn.value_and_grad`` do as the outermost
  transform of an ``fn.jit`` step (see ``fnnet.transforms``); it also covers a compiled
  forward followed by ``loss.backward()``. The op is not used, and the loop is unrolled
  instead, inside a ``torch.func`` transform (``fn.vmap``, or a ``torch.func.grad`` that is
  not ``fn.grad``): there it fails on torch 2.13 ("Expected FakeTensor"). It is not used with
  gradients on torch < 2.13 either: earlier versions silently zeroed gradients w.r.t.
  closed-over weights when the initial carry did not require grad (pytorch/pytorch#184528,
  a test here checks it). ``FNNET_SCAN_HOP=0`` in the environment turns the op off.
* Speed: the op runs its steps one at a time with little fusion. An LSTM cell scanned and
  trained under ``fn.jit`` takes 2.2-2.4x ``nn.LSTM``'s time (T=64, 256; compile 2-7 s at
  any T). ``unroll=k`` traces a body of k steps once (T need not be a multiple of k): k=8
  takes 1.4-1.7x, compiling in 16-20 s. ``unroll=True`` unrolls the whole loop: compile
  time linear in the length (minutes for an LSTM at T=64). JAX's ``lax.scan`` under
  ``jit``: 1.3x, compiled in 0.6 s. The recurrent layers of ``cells`` use hand-written VJPs
  behind opaque ops instead (``cells.fused``, ``cells.native``): flat compile time and
  native speed. That is the pattern to follow for a cell on a hot path.
"""

from __future__ import annotations

import os
from typing import Any
from collections.abc import Callable

import torch

from . import tree as T
from .transforms import inside_functorch

__all__ = ["scan"]

try:  # torch >= 2.6; the prototype lived elsewhere before and is not used
    from torch._higher_order_ops.scan import scan as _scan_hop
except ImportError:  # pragma: no cover - depends on the installed torch
    _scan_hop = None

_USE_HOP = os.environ.get("FNNET_SCAN_HOP", "1") != "0"
# pytorch/pytorch#184528 (closed-over weights' gradients silently zeroed) is fixed in 2.13
_HOP_GRADIENTS_RIGHT = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 13)


def scan(f: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any = None, reverse: bool = False,
         length: int | None = None, unroll: int | bool = 1) -> tuple[Any, Any]:
    """Loop ``f`` over the leading axis of ``xs``; returns the final carry and the stacked ys.

    f: ``(carry, x_t) -> (carry, y_t)``, carry keeping its structure, shapes and dtypes.
    xs: pytree of ``[T, ...]`` tensors, or ``None`` (then ``x_t`` is ``None``; give ``length``).
    unroll: under ``fn.jit``, steps per traced body (``True``: the whole loop unrolled).
    Returns ``(carry, ys)``, ys a pytree of ``[T, ...]`` tensors (``None`` if f's y is None).
    """
    if not isinstance(unroll, int) or unroll < 0 or (unroll == 0 and not isinstance(unroll, bool)):
        raise ValueError(f"scan: unroll must be True, False or a positive int, got {unroll!r}")
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
    steps = n if unroll is True else max(int(unroll), 1)  # False: one step per body
    if steps >= n or not _op_applies():
        return _loop(f, carry, flat, spec, n, reverse)
    return _traced_once(f, carry, flat, spec, n, reverse, steps)


def _op_applies() -> bool:
    """Whether torch's scan op can run this loop (see the module doc)."""
    if _scan_hop is None or not _USE_HOP or not torch.compiler.is_compiling():
        return False
    return not torch.is_grad_enabled() or (_HOP_GRADIENTS_RIGHT and not inside_functorch())


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


def _traced_once(f, carry, flat, spec, n, reverse, k):
    """torch's scan op: a body of ``k`` steps traced once, over ``n // k`` blocks; the
    ``n % k`` steps the loop reaches last run unrolled after it."""
    carry_spec = T.structure(carry)
    if not T.leaves(carry):
        raise ValueError("scan: under fn.jit the carry needs at least one tensor")
    if spec is None:  # length only: a [n, 0] placeholder to scan over
        like = T.leaves(carry)[0]
        flat = [torch.empty(n, 0, device=like.device, dtype=like.dtype)]
    blocks, rest = n // k, n % k
    cut = rest if reverse else n - rest  # the blocks cover [cut, n) in reverse, [0, cut) forward
    blocked = [x[cut:] if reverse else x[:cut] for x in flat]
    left = [x[:cut] if reverse else x[cut:] for x in flat]

    def step(c, x_leaves):
        x_t = T.unflatten(spec, list(x_leaves)) if spec is not None else None
        new, y = f(c, x_t)
        if T.structure(new) != carry_spec:
            raise ValueError(f"scan: f must return a carry of the same structure as the initial one; "
                             f"got {T.structure(new)}, expected {carry_spec}")
        return new, y

    def body(c, x_block):
        if k == 1:
            c, y = step(c, x_block)
        else:
            ys = [None] * k
            for i in (range(k - 1, -1, -1) if reverse else range(k)):
                c, ys[i] = step(c, [x[i] for x in x_block])
            y = None if not _has_tensors(ys[0]) else T.map(lambda *a: torch.stack(a), *ys)
        # the op refuses outputs that alias its inputs (a carry passed through, a slice of x);
        # aliasing cannot be asked while tracing, so every output is a copy (fused by inductor)
        return T.map(torch.clone, c), (() if y is None else T.map(torch.clone, y))

    xs_blocks = [x.unflatten(0, (blocks, k)) for x in blocked] if k > 1 else blocked
    # the op also refuses initial carry leaves that alias each other (e.g. ``(h0, h0)``)
    carry, ys = _scan_hop(body, T.map(torch.clone, carry), xs_blocks, reverse=reverse)
    ys = (T.map(lambda y: y.flatten(0, 1), ys) if k > 1 else ys) if _has_tensors(ys) else None
    if rest:
        carry, ys_left = _loop(f, carry, left, spec, rest, reverse)
        if ys is not None:
            ys = T.map(lambda b, r: torch.cat([r, b] if reverse else [b, r]), ys, ys_left)
    return carry, ys


def _has_tensors(tree: Any) -> bool:
    return any(isinstance(leaf, torch.Tensor) for leaf in T.leaves(tree))
