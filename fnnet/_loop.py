"""An opaque, chunked, compiled loop for compiled training (internal; ``Stacked``, ``cells.Recurrent``).

    carry, ys = loop(kind, owner, spec, consts, carry, xs, ys_grad=...)

is, by definition, ``fnnet.scan`` of ``body(consts, carry, x_t) -> (carry, y_t)`` over the
leading axis of ``xs`` (``reverse=True`` walks ``t`` down and stores ``y_t`` at ``t``), where
``body = make_body(owner, spec)`` for the ``kind`` registered with :func:`register_kind`. All
arguments are flat lists of tensors: ``consts`` are read by every step (a cell's weights),
``xs`` are sliced per step (a stack's per-layer params, state and keys; a sequence's inputs),
``ys`` come back stacked ``[T, ...]``.

Why: under ``fn.jit`` with gradients ``fnnet.scan`` unrolls (torch's scan op is not trusted
with gradients, see ``fnnet.scan``), so the compiled step and its compile time would grow with
``T``. Here the loop is one autograd.Function over two custom ops the outer compile does not
trace into (the pattern of ``cells.fused``), so the outer graph holds two nodes whatever ``T``:

* ``fnnet::loop`` runs the steps in chunks of ``k``: each chunk is one inductor-compiled
  function of ``k`` unrolled steps (inductor fuses inside a chunk), and keeps the carry at
  each chunk boundary (``[ceil(T/k), ...]``) and the ``ys``;
* ``fnnet::loop_backward`` walks the chunks in reverse: each chunk's VJP (the chunk's forward
  recomputed from its boundary carry, then its backward: rematerialization, the activations of
  one chunk at a time) is one compiled function that returns the gradients of the carry, of
  the consts (summed over chunks) and of the chunk's ``xs``. Only the inputs whose gradient
  autograd asks for are differentiated.

The chunk bodies are traced with ``make_fx`` (fake tensors: a body that reads a tensor's
value, ``if x.sum() > 0``, cannot be traced, rather than being frozen to one value) and
compiled with inductor directly: no dynamo, so no guards per call and no per-code-object
recompile limit shared by every model. A compiled body is cached per (handle, role, chunk
length, inputs' shapes/strides/dtypes/device, gradient mask), at most :data:`CACHE_SIZE`
per handle (least recently used dropped). A body that does not trace or compile runs
uncompiled instead (the same numbers), with one warning naming the error.

Inputs are made contiguous and 16-byte aligned before a compiled call (a chunk's slice of
``xs`` may start anywhere; inductor assumes what its example inputs showed and a compiled
function has no guard).

The backward op cannot be differentiated again (compiled grad of grad raises); eagerly the
callers do not come here.
"""

from __future__ import annotations

import collections
import itertools
import warnings
from collections.abc import Callable
from typing import Any

import torch

from . import _compat
from ._island import eager_island, fresh_views

__all__ = ["loop", "applies", "register_kind", "flat", "nest", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 8  # steps per compiled chunk: fewer compiled calls vs a bigger body (benchmarks/stack.py)
CACHE_SIZE = 16  # compiled bodies kept per handle


def _inductor(gm: torch.fx.GraphModule, args: list) -> Callable:
    return torch._inductor.compile(gm, args)


COMPILER: Callable = _inductor  # (traced chunk graph, example inputs) -> callable; tests swap in the graph itself

_KINDS: dict[str, Callable] = {}  # kind -> make_body(owner, spec) -> body(consts, carry, x_t) -> (carry, ys)
_HANDLES: dict = {}
_REGISTRY: dict = {}  # handle -> _Loop
_COUNTER = itertools.count()


def register_kind(kind: str, make_body: Callable) -> None:
    """``make_body(owner, spec)`` builds the step ``body(consts, carry, x_t) -> (carry, y_t)``
    (lists of tensors) of the loops of ``kind``; called once per handle."""
    _KINDS[kind] = make_body


class _Loop:
    """What a handle stands for: the body and the loop's constants, with its compiled chunks."""

    def __init__(self, kind, owner, spec, chunk, reverse, counts, ys_grad):
        self.name = f"{kind} of {type(owner).__name__}"
        self.body = _KINDS[kind](owner, spec)
        self.chunk, self.reverse = chunk, reverse
        self.n_c, self.n_h, self.n_x = counts
        self.ys_grad = ys_grad
        self.compiled: collections.OrderedDict = collections.OrderedDict()
        self.warned = False

    def chunks(self, length: int) -> list:
        """The chunks in the order they run: ``(lo, hi)`` slices of the time axis."""
        out = [(s, min(s + self.chunk, length)) for s in range(0, length, self.chunk)]
        return [(length - hi, length - lo) for lo, hi in out] if self.reverse else out


@_compat.assume_constant_result  # run for real while dynamo traces: registers, the handle is a constant
def _handle(kind: str, owner: Any, spec: tuple, chunk: int, reverse: bool, counts: tuple, ys_grad: tuple) -> int:
    key = (kind, owner, spec, chunk, reverse, counts, ys_grad)
    if key not in _HANDLES:
        _HANDLES[key] = handle = next(_COUNTER)
        _REGISTRY[handle] = _Loop(kind, owner, spec, chunk, reverse, counts, ys_grad)
    return _HANDLES[key]


@torch.compiler.assume_constant_result  # read at trace time: dynamo cannot trace the interpreters
def _differentiated_at_most_once() -> bool:
    """No torch.func transform, or one ``grad``/``vjp`` level alone: the loop's backward is not
    differentiated again. Under two grad levels (``fn.grad`` of ``fn.grad``), a compiled
    autograd.Function's backward is taken as a constant by the outer level (the second
    derivative silently 0, torch 2.13), and under ``vmap``/``jvp`` torch.compile cannot run it."""
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    kinds = [i.key() for i in retrieve_all_functorch_interpreters()]
    return all(k == TransformType.Grad for k in kinds) and len(kinds) <= 1


def applies(x: Any) -> bool:
    """Whether a loop over ``x`` runs here: compiling with grad mode on, ``x`` a non-empty
    tensor, at most one level of differentiation and no ``vmap``/``jvp`` around (elsewhere the
    callers' unrolled ``fnnet.scan`` is right and compiles)."""
    return (torch.compiler.is_compiling() and torch.is_grad_enabled() and isinstance(x, torch.Tensor)
            and x.numel() > 0 and _differentiated_at_most_once())


def loop(kind: str, owner: Any, spec: tuple, consts: list, carry: list, xs: list, *, ys_grad: tuple,
         reverse: bool = False, chunk: int | None = None) -> tuple[list, list]:
    """``(final carry, ys)`` of the loop (see the module docstring); ``ys_grad[i]``: whether
    ``ys[i]`` carries a gradient (a BatchNorm's new running statistics do not). Call it while
    dynamo traces with grad mode on; the carry and ``xs`` are lists of tensors, ``xs`` non-empty."""
    k = chunk or DEFAULT_CHUNK  # the length is read when the op runs (it may be symbolic here)
    counts = (len(consts), len(carry), len(xs))
    handle = _handle(kind, owner, spec, k, reverse, counts, tuple(ys_grad))
    args = fresh_views(*consts, *carry, *xs, contiguous=True)
    out = _LoopFn.apply(handle, len(consts), len(carry), tuple(ys_grad), *args)
    n_h = len(carry)
    return list(out[:n_h]), list(out[n_h:n_h + len(ys_grad)])


def flat(tree: dict, prefix: tuple = ()) -> list:
    """``[(path, leaf)]`` of a nested dict, in its order (paths are tuples of keys)."""
    out = []
    for k, v in tree.items():
        if isinstance(v, dict):
            out += flat(v, prefix + (k,))
        else:
            out.append((prefix + (k,), v))
    return out


def nest(paths, leaves) -> dict:
    """The nested dict of ``leaves`` at ``paths`` (the inverse of :func:`flat`)."""
    out: dict = {}
    for path, leaf in zip(paths, leaves):
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = leaf
    return out


# -- running in the ops ------------------------------------------------------------------------
def _aligned(t: torch.Tensor) -> torch.Tensor:
    """``t`` contiguous, its data 16-byte aligned (what a compiled body was compiled for)."""
    if not t.is_contiguous() or t.data_ptr() % 16:
        t = t.clone(memory_format=torch.contiguous_format)
    return t


def _meta(ts) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in ts)


def _chunk_forward(lp: _Loop, kc: int) -> Callable:
    """``f(*consts, *carry, *xs_chunk) -> (*carry, *ys_chunk)``: ``kc`` steps unrolled."""
    n_c, n_h, body, reverse = lp.n_c, lp.n_h, lp.body, lp.reverse

    def f(*args):
        consts, carry, xs = list(args[:n_c]), list(args[n_c:n_c + n_h]), args[n_c + n_h:]
        ys_steps = [None] * kc
        for j in (range(kc - 1, -1, -1) if reverse else range(kc)):
            new, y = body(consts, carry, [x[j] for x in xs])
            _check_carry(lp, carry, new)
            carry, ys_steps[j] = list(new), list(y)
        ys = [torch.stack([s[i] for s in ys_steps]) for i in range(len(ys_steps[0]))]
        return (*carry, *ys)
    return f


def _chunk_vjp(lp: _Loop, kc: int, mask: tuple) -> Callable:
    """``g(*consts, *carry, *xs_chunk, *d_carry, *d_ys) -> grads of the inputs in mask``: the
    chunk recomputed, then its VJP (the ys without a gradient left out)."""
    f = _chunk_forward(lp, kc)
    n_in = lp.n_c + lp.n_h + lp.n_x
    wrt = [i for i in range(n_in) if mask[i]]
    keep = [lp.n_h + i for i, g in enumerate(lp.ys_grad) if g]

    def g(*args):
        inputs, cot = list(args[:n_in]), args[n_in:]

        def of_wrt(*w):
            full = list(inputs)
            for i, v in zip(wrt, w):
                full[i] = v
            out = f(*full)
            return tuple(out[:lp.n_h]) + tuple(out[i] for i in keep)
        _, vjp = torch.func.vjp(of_wrt, *(inputs[i] for i in wrt))
        return tuple(vjp(tuple(cot)))
    return g


def _compiled(lp: _Loop, key: tuple, fn: Callable, args: list) -> Callable:
    """``fn`` traced by ``make_fx`` on fake tensors and compiled by inductor, cached under ``key``
    (the role and the inputs' metadata); uncompiled (one warning) if that fails."""
    try:
        from torch.fx.experimental.proxy_tensor import make_fx
        gm = make_fx(fn, tracing_mode="fake")(*args)
        compiled = COMPILER(gm, list(args))
    except _CarryError:
        raise
    except Exception as e:  # any failure to trace or compile: the same function, eagerly
        if not lp.warned:
            lp.warned = True
            warnings.warn(f"fnnet: the compiled training loop ({lp.name}) could not compile its step "
                          f"({type(e).__name__}: {str(e)[:300]}); it runs uncompiled (the same numbers, slower)",
                          stacklevel=2)
        compiled = fn
    lp.compiled[key] = compiled
    if len(lp.compiled) > CACHE_SIZE:
        lp.compiled.popitem(last=False)
    return compiled


def _call(lp: _Loop, role: tuple, args: list) -> tuple:
    """The compiled chunk ``role`` (``("fwd", k)`` or ``("vjp", k, mask)``) on ``args``."""
    args = [_aligned(a) for a in args]
    key = (role, _meta(args), COMPILER)
    fn = lp.compiled.get(key)
    if fn is None:
        fn = _compiled(lp, key, _chunk_forward(lp, role[1]) if role[0] == "fwd" else _chunk_vjp(lp, *role[1:]), args)
    else:
        lp.compiled.move_to_end(key)
    return tuple(fn(*args))


class _CarryError(ValueError):
    pass


def _check_carry(lp: _Loop, carry: list, new: Any) -> None:
    same = isinstance(new, (list, tuple)) and len(new) == len(carry) and all(
        isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype for a, b in zip(carry, new))
    if not same:
        raise _CarryError(f"fnnet: the step of the {lp.name} must return a carry of the shapes and dtypes it "
                          f"was given ({[(list(a.shape), a.dtype) for a in carry]})")


def _unalias(outs: list, inputs: list) -> list:
    """A custom op's outputs may not alias its inputs (a carry passed through unchanged)."""
    ptrs = {t.untyped_storage().data_ptr() for t in inputs if t.numel()}
    return [o.clone() if o.numel() and o.untyped_storage().data_ptr() in ptrs else o for o in outs]


def _forward_impl(handle: int, consts: list, carry: list, xs: list) -> list:
    lp = _REGISTRY[handle]
    length = xs[0].shape[0]
    chunks = lp.chunks(length)
    bounds = [h.new_empty((len(chunks), *h.shape)) for h in carry]
    ys = None
    h = list(carry)
    for c, (lo, hi) in enumerate(chunks):
        for b, v in zip(bounds, h):
            b[c].copy_(v)
        kc = hi - lo
        out = _call(lp, ("fwd", kc), [*consts, *h, *(x[lo:hi] for x in xs)])
        h, y = list(out[:lp.n_h]), out[lp.n_h:]
        if ys is None:
            ys = [v.new_empty((length, *v.shape[1:])) for v in y]
        for buf, v in zip(ys, y):
            buf[lo:hi].copy_(v)
    return [*_unalias(h, [*consts, *carry, *xs]), *ys, *bounds]


def _ys_meta(lp: _Loop, consts: list, carry: list, xs: list) -> list:
    """The ys of one step, run on the fake tensors the fake implementation is given."""
    with torch.no_grad():
        _, y = lp.body(list(consts), list(carry), [x[0] for x in xs])
    return list(y)


def _backward_impl(handle: int, mask: int, consts: list, xs: list, bounds: list, d_carry: list,
                   d_ys: list) -> list:
    """The chunks in reverse: each chunk's VJP from its boundary carry, the carry's gradient carried
    down (always, for the chunks below), the consts' summed, the xs' written at the chunk's steps."""
    lp = _REGISTRY[handle]
    bits = _bits(lp, mask)
    n_c, n_h = lp.n_c, lp.n_h
    # the chunk VJP: w.r.t. the consts and xs asked for and every floating carry leaf
    vbits = (*bits[:n_c], *(b.is_floating_point() for b in bounds), *bits[n_c + n_h:])
    d_consts = [torch.zeros_like(v) for v, b in zip(consts, bits[:n_c]) if b]
    d_xs = [(j, torch.zeros_like(x)) for j, (x, b) in enumerate(zip(xs, bits[n_c + n_h:])) if b]
    g = list(d_carry)
    chunks = lp.chunks(xs[0].shape[0])
    for c in range(len(chunks) - 1, -1, -1):
        lo, hi = chunks[c]
        kc = hi - lo
        args = [*consts, *(b[c] for b in bounds), *(x[lo:hi] for x in xs), *g, *(d[lo:hi] for d in d_ys)]
        out = iter(_call(lp, ("vjp", kc, vbits), args))
        for buf in d_consts:
            buf.add_(next(out))
        g = [next(out) if b else v for v, b in zip(g, vbits[n_c:n_c + n_h])]
        for _, buf in d_xs:
            buf[lo:hi].copy_(next(out))
    d_h = [v for v, b in zip(g, bits[n_c:n_c + n_h]) if b]
    return _unalias([*d_consts, *d_h, *(buf for _, buf in d_xs)], [*consts, *xs, *bounds, *d_carry, *d_ys])


def _bits(lp: _Loop, mask: int) -> tuple:
    return tuple(bool(mask >> i & 1) for i in range(lp.n_c + lp.n_h + lp.n_x))


@torch.library.custom_op("fnnet::loop", mutates_args=())
def _forward_op(handle: int, consts: list[torch.Tensor], carry: list[torch.Tensor],
                xs: list[torch.Tensor]) -> list[torch.Tensor]:
    with eager_island(grad=False):
        return _forward_impl(handle, consts, carry, xs)


@_forward_op.register_fake
def _(handle, consts, carry, xs):
    lp = _REGISTRY[handle]
    length = xs[0].shape[0]
    n_chunks = (length + lp.chunk - 1) // lp.chunk
    return [*(h.new_empty(h.shape) for h in carry),
            *(y.new_empty((length, *y.shape)) for y in _ys_meta(lp, consts, carry, xs)),
            *(h.new_empty((n_chunks, *h.shape)) for h in carry)]


@torch.library.custom_op("fnnet::loop_backward", mutates_args=())
def _backward_op(handle: int, mask: int, consts: list[torch.Tensor], xs: list[torch.Tensor],
                 bounds: list[torch.Tensor], d_carry: list[torch.Tensor],
                 d_ys: list[torch.Tensor]) -> list[torch.Tensor]:
    with eager_island(grad=False):
        return _backward_impl(handle, mask, consts, xs, bounds, d_carry, d_ys)


@_backward_op.register_fake
def _(handle, mask, consts, xs, bounds, d_carry, d_ys):
    lp = _REGISTRY[handle]
    bits = _bits(lp, mask)
    like = [*consts, *d_carry, *xs]
    return [v.new_empty(v.shape) for v, b in zip(like, bits) if b]


def _refuse_second_derivative(ctx, *grads):
    raise RuntimeError("fnnet: the compiled backward of a training loop (fnnet::loop_backward, used by "
                       "Stacked and cells.Recurrent under fn.jit) cannot be differentiated again (grad of grad, "
                       "a gradient penalty); run that step eagerly")


_backward_op.register_autograd(_refuse_second_derivative, setup_context=lambda ctx, inputs, output: None)


class _LoopFn(torch.autograd.Function):
    """Reads nothing from the registry while dynamo traces it (a global dict's new entries are
    not seen there): the counts come as arguments."""

    @staticmethod
    def forward(handle, n_c, n_h, ys_grad, *args):
        return tuple(_forward_op(handle, list(args[:n_c]), list(args[n_c:n_c + n_h]), list(args[n_c + n_h:])))

    @staticmethod
    def setup_context(ctx, inputs, output):
        handle, n_c, n_h, ys_grad, *args = inputs
        n_y = len(ys_grad)
        ctx.handle, ctx.counts, ctx.ys_grad = handle, (n_c, n_h, len(args) - n_c - n_h), ys_grad
        ctx.save_for_backward(*args[:n_c], *args[n_c + n_h:], *output[n_h + n_y:])
        no_grad = [o for o, g in zip(output[n_h:n_h + n_y], ys_grad) if not g or not o.is_floating_point()]
        ctx.mark_non_differentiable(*no_grad, *output[n_h + n_y:],
                                    *(o for o in output[:n_h] if not o.is_floating_point()))

    @staticmethod
    def backward(ctx, *grads):
        (n_c, n_h, n_x), ys_grad = ctx.counts, ctx.ys_grad
        n_y = len(ys_grad)
        saved = ctx.saved_tensors
        consts, xs, bounds = saved[:n_c], saved[n_c:n_c + n_x], saved[n_c + n_x:]
        needs = ctx.needs_input_grad[4:]
        mask = sum(1 << i for i, b in enumerate(needs) if b)
        if not mask:
            return (None,) * (4 + len(needs))
        d_carry = [g if g is not None else torch.zeros_like(b[0]) for g, b in zip(grads[:n_h], bounds)]
        d_ys = [g for g, want in zip(grads[n_h:n_h + n_y], ys_grad) if want]
        if any(g is None for g in d_ys):
            raise RuntimeError("fnnet: the compiled training loop got no gradient tensor for an output it "
                               "differentiates")
        out = iter(_backward_op(ctx.handle, mask, list(consts), list(xs), list(bounds), d_carry, d_ys))
        return (None, None, None, None, *(next(out) if b else None for b in needs))
