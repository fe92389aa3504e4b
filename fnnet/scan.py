"""``scan``: a loop over the leading axis of pytrees, with ``jax.lax.scan``'s semantics.

    carry, ys = scan(f, carry, xs)      # f(carry, x_t) -> (carry, y_t)

is, by definition, this Python loop (``reverse=True`` walks ``t`` from ``T - 1`` down to 0 and
still stores ``y_t`` at index ``t``)::

    ys = []
    for t in range(T):
        carry, y_t = f(carry, tree.map(lambda x: x[t], xs))
        ys.append(y_t)
    return carry, tree.map(lambda *y: torch.stack(y), *ys)

``xs`` is a pytree of tensors stacked on dim 0 (or ``None`` with ``length``); ``ys`` is the
pytree of the ``y_t`` stacked the same way (``None`` if ``f``'s y is ``None`` or has no tensors).
Every step's carry must have the initial carry's structure, shapes and dtypes (checked, eager
and compiled, with an error naming the path).

How it runs (the numbers live in ``benchmarks/cells.py`` and the README table):

* **Eager**: that loop, with each leaf of ``xs`` unbound once. Autograd differentiates it, so
  ``fn.grad`` and ``fn.vmap`` compose with it.
* **Under ``fn.jit`` without gradients** (``torch.no_grad()``, or nothing the loop touches
  requires grad: inference): torch's ``scan`` op (``torch._higher_order_ops.scan``), the body
  traced once (``unroll=k``: a body of k steps), so compile time does not grow with the length.
* **Under ``fn.jit`` with gradients, ``f = functools.partial(g, params, ...)``** (``g`` a plain
  function; torch >= 2.12; at most one level of gradients, no ``vmap``/``jvp`` around):
  ``fnnet._loop``'s compiled chunks, the tensors among the partial's arguments the loop's
  constants, so compile time does not grow with the length. ``g`` must be given every tensor it
  reads (one it reads from a closure or a global is an error: the chunks could not differentiate
  it). What else ``g`` reads from outside (a global number) dynamo's guards watch on one traced
  step, and a change compiles the loop again, as an unrolled loop would be.
* **Otherwise under ``fn.jit`` with gradients, and inside ``torch.func`` transforms**: the loop
  unrolled, so compile time grows with the length. Whether a loop needs gradients shows on its first
  step: if what that step returns does not require grad, no later step's does (same function,
  same closure), and the rest of the loop goes to the op. ``FNNET_SCAN_HOP=0`` turns the op off.

Why not torch's scan op with gradients (each point pinned by a test that fails once the
installed torch no longer needs it):

* under inductor it silently gives wrong gradients when two scans are chained in one graph
  (pytorch/pytorch#153679, still so on torch 2.13; ``tests/test_scan.py``);
* JAX's design written by hand, the VJP as two scans (an autograd.Function whose forward is
  the op keeping the carries and whose backward is a reverse op over the body's VJP, so torch
  never differentiates its op), is hit the same way: the fault is inductor's, which lowers
  every higher-order op's subgraph in a backward graph with that graph's donated-buffer
  indices, so a subgraph input may be overwritten while still needed (pytorch/pytorch#192840,
  fixed upstream by #193960; a reused ``nested_compile_region`` is hit too). With
  ``torch._functorch.config.donated_buffer = False`` the same graph is right
  (``tests/test_scan_vjp.py``);
* inside a compiled ``torch.func.grad`` (``fn.jit(fn.grad(...))``, the usual training step)
  the op does not compile at all ("Expected FakeTensor"), hand-written VJP or not
  (``tests/test_scan_vjp.py``);
* an opaque op that runs the loop and its VJP outside the graph (what ``fnnet.Stacked`` and
  ``cells.fused`` do) needs the body's weights as explicit inputs; weights a closure reads
  are visible only to dynamo, which lifts them for its own higher-order ops alone. A
  ``functools.partial`` names them: that is the case the chunks take.

The recurrent layers of ``cells`` run their recurrence as hand-written VJPs behind opaque ops
(``cells.fused``, ``cells.native``): flat compile time with gradients, at native speed. A
user's cell in ``cells.Recurrent``, a ``fnnet.Stacked`` and a ``scan`` of a partial train compiled
through ``fnnet._loop``: the step compiled in chunks behind two opaque ops, its VJP by inductor
(flat compile time; speed in ``benchmarks/cells.py`` and ``benchmarks/stack.py``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import types
from typing import Any
from collections.abc import Callable

import torch

from . import _check, _compat
from . import _loop as _chunked_loop
from . import tree as T
from .transforms import inside_functorch

__all__ = ["scan"]

try:  # torch >= 2.6; the prototype lived elsewhere before and is not used
    from torch._higher_order_ops.scan import scan as _scan_hop
except ImportError:  # pragma: no cover - depends on the installed torch
    _scan_hop = None

_USE_HOP = os.environ.get("FNNET_SCAN_HOP", "1") != "0"


def scan(f: Callable[[Any, Any], tuple[Any, Any]], carry: Any, xs: Any = None, reverse: bool = False,
         length: int | None = None, unroll: int | bool = 1) -> tuple[Any, Any]:
    """Loop ``f`` over the leading axis of ``xs``; returns the final carry and the stacked ys.

    f: ``(carry, x_t) -> (carry, y_t)``, carry keeping its structure, shapes and dtypes.
    xs: pytree of ``[T, ...]`` tensors, or ``None`` (then ``x_t`` is ``None``; give ``length``).
    unroll: under ``fn.jit`` without gradients, steps per traced body; with gradients and ``f``
    a partial, steps per compiled chunk (``True``: the whole loop unrolled).
    Returns ``(carry, ys)``, ys a pytree of ``[T, ...]`` tensors (``None`` if f's y is None).
    """
    if not isinstance(unroll, bool):
        _check.integer("scan", "unroll", unroll, 1, expected="True, False or an int >= 1")
    _check.flag("scan", "reverse", reverse)
    if xs is None:
        if length is None:
            raise ValueError("scan: give xs or length")
        length = _check.integer("scan", "length", length, 0)
        n, flat, spec = length, [], None
    else:
        flat, spec = T.flatten(xs)
        if not flat:
            raise ValueError("scan: xs has no leaves; pass xs=None and length=")
        for path, x in T.flatten_with_paths(xs):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"scan: xs leaf {path!r} is a {type(x).__name__}, expected a tensor")
        n = flat[0].shape[0] if flat[0].ndim else None
        for path, x in T.flatten_with_paths(xs):
            if x.ndim == 0 or x.shape[0] != n:
                raise ValueError(f"scan: every leaf of xs needs the same leading length ({n}); xs leaf "
                                 f"{path!r} has shape {list(x.shape)}")
        if length is not None and length != n:
            raise ValueError(f"scan: length={length} but xs has leading length {n}")
    f_given, f = f, _checked(f, carry)
    steps = n if unroll is True else max(int(unroll), 1)  # False: one step per body
    owner = _chunks_owner(f_given, carry, flat, xs) if steps < n else None
    if owner is not None:
        return _chunked(owner, f_given, f, carry, flat, spec, xs, n, reverse, steps if steps > 1 else None)
    if steps >= n or not _op_applies():
        return _loop(f, carry, flat, spec, n, reverse)
    # Gradients may be needed: torch's scan op cannot be trusted with them (see the module
    # doc). The first step, run as the loop runs it, tells: if nothing it returns requires
    # grad, neither will any later step, and the rest goes to the op; it also tells whether f
    # returns ys at all.
    first, rest = ([x[n - 1:] for x in flat], [x[:n - 1] for x in flat]) if reverse else \
        ([x[:1] for x in flat], [x[1:] for x in flat])
    carry, y_first = _loop(f, carry, first, spec, 1, reverse)
    if any(leaf.requires_grad for leaf in T.leaves((carry, y_first)) if isinstance(leaf, torch.Tensor)):
        carry, y_rest = _loop(f, carry, rest, spec, n - 1, reverse)
    elif steps >= n - 1:
        carry, y_rest = _loop(f, carry, rest, spec, n - 1, reverse)
    else:
        carry, y_rest = _traced_once(f, carry, rest, spec, n - 1, reverse, steps, y_first is not None)
    if y_first is None:
        return carry, None
    return carry, T.map(lambda a, b: torch.cat([b, a] if reverse else [a, b]), y_first, y_rest)


def _op_applies() -> bool:
    """Whether torch's scan op may run this loop (compiling, outside torch.func transforms)."""
    if _scan_hop is None or not _USE_HOP or not torch.compiler.is_compiling():
        return False
    return not inside_functorch()


def _checked(f: Callable, carry: Any) -> Callable:
    """``f`` that refuses a new carry whose structure, shapes or dtypes differ from ``carry``'s
    (an error naming the path; eager and compiled alike, as the loop's definition requires)."""
    spec = T.structure(carry)
    like = T.flatten_with_paths(carry)
    for path, leaf in like:
        if not isinstance(leaf, torch.Tensor):
            raise TypeError(f"scan: carry leaf {path!r} is a {type(leaf).__name__}, expected a tensor")
    want = [(p, x.shape, x.dtype) for p, x in like]

    def step(c, x_t):
        out = f(c, x_t)
        if not isinstance(out, tuple) or len(out) != 2:
            raise TypeError(f"scan: f must return a pair (carry, y), got {type(out).__name__}")
        new = out[0]
        if T.structure(new) != spec:
            raise ValueError(f"scan: f must return a carry of the same structure as the initial one; "
                             f"got {T.structure(new)}, expected {spec}")
        for (p, shape, dtype), x in zip(want, T.leaves(new)):
            if not isinstance(x, torch.Tensor) or x.shape != shape or x.dtype != dtype:
                got = (f"{list(x.shape)} {x.dtype}" if isinstance(x, torch.Tensor) else type(x).__name__)
                raise ValueError(f"scan: carry leaf {p!r} came back from f as {got}, expected "
                                 f"{list(shape)} {dtype} (the initial carry's)")
        return out
    return step


def _loop(f, carry, flat, spec, n, reverse):
    columns = [x.unbind(0) for x in flat]
    order = range(n - 1, -1, -1) if reverse else range(n)
    ys = []
    for t in order:
        x_t = T.unflatten(spec, [c[t] for c in columns]) if spec is not None else None
        carry, y_t = f(carry, x_t)
        ys.append(y_t)
    if reverse:
        ys = ys[::-1]
    if n == 0 or not _has_tensors(ys[0]):
        return carry, None
    return carry, T.map(lambda *y: torch.stack(y), *ys)


def _traced_once(f, carry, flat, spec, n, reverse, k, has_ys):
    """torch's scan op (no gradients): a body of ``k`` steps traced once, over ``n // k``
    blocks; the ``n % k`` steps the loop reaches last run unrolled after it. Without ys
    (``has_ys`` False) the body gives a ``[0]`` placeholder, dropped: inductor fails on the op
    with no ys ("getitem is not an OpOverload", torch 2.13)."""
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
        return f(c, T.unflatten(spec, list(x_leaves)) if spec is not None else None)

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
        if not has_ys:
            return T.map(torch.clone, c), T.leaves(c)[0].new_zeros(0)
        return T.map(torch.clone, c), T.map(torch.clone, y)

    xs_blocks = [x.unflatten(0, (blocks, k)) for x in blocked] if k > 1 else blocked
    # the op also refuses initial carry leaves that alias each other (e.g. ``(h0, h0)``)
    carry, ys = _scan_hop(body, T.map(torch.clone, carry), xs_blocks, reverse=reverse)
    ys = (T.map(lambda y: y.flatten(0, 1), ys) if k > 1 else ys) if has_ys else None
    if rest:
        carry, ys_left = _loop(f, carry, left, spec, rest, reverse)
        if ys is not None:
            ys = T.map(lambda b, r: torch.cat([r, b] if reverse else [b, r]), ys, ys_left)
    return carry, ys


def _has_tensors(tree: Any) -> bool:
    return any(isinstance(leaf, torch.Tensor) for leaf in T.leaves(tree))


# -- under fn.jit with gradients: f = functools.partial(g, *args, **kw) as compiled chunks ---------
_SLOT = ("tensor",)


def _skeleton(tree: Any) -> Any:
    """``tree`` as nested tuples that dynamo can pass as a constant (a treespec it cannot): a
    tensor as a slot, a module (a dataclass) by its id, dicts, lists and tuples by their items.
    None where some node is none of these and no number, string, bool, dtype or None."""
    if isinstance(tree, torch.Tensor):
        return _SLOT
    if type(tree) is dict:
        items = tuple((k, _skeleton(v)) for k, v in tree.items())
        return None if any(v is None for _, v in items) else ("dict", items)
    if type(tree) in (list, tuple):
        items = tuple(_skeleton(v) for v in tree)
        return None if any(v is None for v in items) else (type(tree).__name__, items)
    if tree is None or isinstance(tree, (bool, int, float, str, torch.dtype)):
        return ("leaf", tree)
    if dataclasses.is_dataclass(tree) and not isinstance(tree, type):
        return ("object", id(tree))  # looked up once, while dynamo traces (the object is alive then)
    return None


def _tensors(tree: Any) -> list:
    """The tensors of ``tree`` in the order :func:`_skeleton` puts their slots."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if type(tree) is dict:
        return [t for v in tree.values() for t in _tensors(v)]
    if type(tree) in (list, tuple):
        return [t for v in tree for t in _tensors(v)]
    return []


def _resolve(skel: Any) -> Any:
    """``skel`` with its objects looked up by id: called while dynamo traces."""
    if skel == _SLOT:
        return skel
    kind, body = skel
    if kind == "object":
        return ("leaf", ctypes.cast(body, ctypes.py_object).value)
    return (kind, tuple((k, _resolve(v)) for k, v in body)) if kind == "dict" else \
        (kind, tuple(_resolve(v) for v in body)) if kind in ("list", "tuple") else skel


def _fill(skel: Any, leaves: Any) -> Any:
    """The tree ``skel`` was made from, its slots taken in order from the iterator ``leaves``."""
    if skel == _SLOT:
        return next(leaves)
    kind, body = skel
    if kind == "leaf":
        return body
    if kind == "dict":
        return {k: _fill(v, leaves) for k, v in body}
    items = [_fill(v, leaves) for v in body]
    return items if kind == "list" else tuple(items)


def _chunks_owner(f: Any, carry: Any, flat: list, xs: Any) -> tuple | None:
    """``(f.func, skeletons of f's args, keywords, the carry, xs)`` where the loop runs as
    fnnet._loop's compiled chunks: compiling with gradients (at most one level of them, no
    vmap/jvp around), ``xs`` given, ``f`` a ``functools.partial`` of a plain function, and every
    tree one :func:`_skeleton` can pass. None elsewhere."""
    if not (_compat.DYNAMO_PASSES_OBJECTS and isinstance(f, functools.partial)
            and isinstance(f.func, types.FunctionType) and flat and _chunked_loop.applies(flat[0])):
        return None
    skeletons = tuple(_skeleton(t) for t in (f.args, f.keywords, carry, xs))
    return None if any(sk is None for sk in skeletons) else (f.func, *skeletons)


def _chunked(owner: tuple, f: functools.partial, checked: Callable, carry: Any, flat: list, spec: Any, xs: Any,
             n: int, reverse: bool, chunk: int | None) -> tuple[Any, Any]:
    """The loop as fnnet._loop's compiled chunks: the tensors among ``f``'s arguments are the
    loop's consts (what it differentiates besides the carry and ``xs``), the carry's and ``xs``'
    leaves its carry and xs; ``chunk`` steps per compiled chunk (None: the default). One step is
    traced first for what it tells (the ys' structure and dtypes; the carry checked); its values
    are not used, and the compiler drops it. A handle per trace: the body reads what ``f.func``
    reads (globals, closures), which dynamo's guards on that step watch, so a change compiles
    the loop again. Trees cross as :func:`_skeleton` and :func:`_tensors` walk them, one order."""
    first = [x[n - 1:] if reverse else x[:1] for x in flat]
    _, y_like = _loop(checked, carry, first, spec, 1, reverse)
    consts = [*_tensors(f.args), *_tensors(f.keywords)]
    ys_like = T.leaves(y_like) if y_like is not None else []
    new, ys = _chunked_loop.loop("scan", owner, (), consts, _tensors(carry), _tensors(xs), reverse=reverse,
                                 ys_grad=tuple(bool(y.is_floating_point()) for y in ys_like), chunk=chunk,
                                 fresh=True)
    carry = _fill(owner[3], iter(new))
    return carry, (T.unflatten(T.structure(y_like), ys) if y_like is not None else None)


def _scan_body(owner: tuple, spec: tuple) -> Callable:
    """``body(consts, carry, x_t)`` of a :func:`_chunked` loop: ``f.func`` on the partial's
    arguments with the consts in their slots, checked as the unrolled loop checks each step."""
    func, args, keywords, carry_skel, xs_skel = owner[0], *map(_resolve, owner[1:])

    def body(consts, carry, x_t):
        leaves = iter(consts)
        f = functools.partial(func, *_fill(args, leaves), **_fill(keywords, leaves))
        c = _fill(carry_skel, iter(carry))
        new, y = _checked(f, c)(c, _fill(xs_skel, iter(x_t)))
        return _tensors(new), (T.leaves(y) if y is not None else [])
    return body


_chunked_loop.register_kind("scan", _scan_body,
                            name=lambda owner: f"fn.scan of functools.partial({owner[0].__qualname__}, ...)")
