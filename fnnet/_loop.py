"""An opaque, chunked, compiled loop for compiled training (internal; ``Stacked``, ``cells.Recurrent``,
``fnnet.scan`` of a ``functools.partial``).

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
trace into (the pattern of ``cells.fused``), so the outer graph holds two nodes whatever ``T``.

**Residuals** (the default; what JAX's scan and aot_autograd do): one step's joint
forward+backward graph (``torch.func.vjp`` of ``body``, traced by ``make_fx``) is split by
torch's min-cut partitioner into ``fw_step(consts, carry, x_t) -> (carry, y_t, *saved)`` and
``bw_step(*saved, *d_out) -> grads``:

* ``fnnet::loop`` runs the steps in chunks of ``k``, each chunk one inductor-compiled function
  of ``k`` copies of ``fw_step`` (inductor fuses inside a chunk), and returns the ``ys`` and
  the residuals: each saved value that varies per step stacked ``[T, ...]``, a value computed
  from the consts alone once. A saved value that is a const or a step's ``x_t`` (or a view of
  one: a transposed weight) is not stored: the backward op is given the consts and ``xs`` and
  replays the view. The outputs of transcendental ops (``tanh``, ``sigmoid``, ``exp``, ...)
  are saved rather than recomputed (:func:`_save_transcendentals`): the backward reads a
  cell's gates as nn.LSTM's reads its workspace;
* ``fnnet::loop_backward`` walks the chunks in reverse, each chunk one compiled function of
  ``k`` copies of ``bw_step`` in reverse on the chunk's residuals (the step's forward does not
  run again): the carry's gradient carried down, the consts' summed, the ``xs``' written per
  step.

Within a chunk, what does not depend on the carry runs once for its ``k`` steps, as nn.LSTM
does: the part of ``fw_step`` that reads ``x_t`` but not the carry (a cell's input projection)
under ``vmap``, one matmul over ``k*B`` rows (:func:`_hoist`), and each const gradient of the
form ``g^T h`` (a weight's gradient, summed over steps) as one matmul over the chunk's rows
(:func:`_factor`). The chunks write their ``[T, ...]`` outputs and sums into the loop's
buffers in place (:func:`_into`).

What is differentiated is fixed in the forward (the residuals depend on it): the floating
inputs that require grad when dynamo traces the call (``mask``), and every floating carry leaf
(its gradient flows to the steps below); autograd may ask for fewer.

**Recompute** (``remat=True``, i.e. ``Stacked(..., remat=True)``; one step's shapes symbolic,
a batch size after a recompile, where the residuals' shapes would be too; a step that does not
partition, with one warning): ``fnnet::loop`` keeps only the carry at each chunk boundary
(``[ceil(T/k), ...]``), and ``fnnet::loop_backward`` runs each chunk's VJP (the chunk's forward
recomputed from its boundary carry, then its backward: the activations of one chunk at a time)
as one compiled function.

The chunk bodies are traced with ``make_fx`` (fake tensors: a body that reads a tensor's
value, ``if x.sum() > 0``, cannot be traced, rather than being frozen to one value) and
compiled with inductor directly: no dynamo, so no guards per call and no per-code-object
recompile limit shared by every model. A compiled body is cached per (handle, role, chunk
length, inputs' shapes/strides/dtypes/device, gradient mask or partition), at most
:data:`CACHE_SIZE` per handle (least recently used dropped), as are the partitions (per one
step's input metadata and mask). A body that does not trace or compile runs uncompiled instead
(the same numbers), with one warning naming the error.

Inputs are made contiguous and 16-byte aligned before a compiled call (a chunk's slice of
``xs`` may start anywhere; inductor assumes what its example inputs showed and a compiled
function has no guard).

The backward op cannot be differentiated again (compiled grad of grad raises); eagerly the
callers do not come here.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable
from typing import Any

import torch

from . import _compat, _handles
from ._island import eager_island, fresh_views

__all__ = ["loop", "applies", "register_kind", "flat", "nest", "DEFAULT_CHUNK"]

# steps per compiled chunk: fewer compiled calls vs a bigger body to compile. Measured (a user
# LSTMCell, Stacked of small blocks; README): 4 runs level with 8 and compiles shorter, as a
# chunk's inductor codegen grows with its length
DEFAULT_CHUNK = 4
CACHE_SIZE = 16  # compiled bodies kept per handle
RESIDUALS = True  # False: every loop takes the recompute path (read while dynamo traces; a switch to compare)


def _inductor(gm: torch.fx.GraphModule, args: list) -> Callable:
    """Inductor with its C++ wrapper (the chunk's kernel calls without a Python line each: a chunk
    of small steps spends much of its time in the Python wrapper otherwise); the Python wrapper
    where that fails."""
    try:
        with torch._inductor.config.patch(cpp_wrapper=True):
            return torch._inductor.compile(gm, args)
    except Exception:
        return torch._inductor.compile(gm, args)


COMPILER: Callable = _inductor  # (traced chunk graph, example inputs) -> callable; tests swap in the graph itself

_KINDS: dict[str, Callable] = {}  # kind -> make_body(owner, spec) -> body(consts, carry, x_t) -> (carry, ys)
_NAMES: dict[str, Callable] = {}  # kind -> name(owner): what errors and warnings call the loop
_HANDLES: dict = {}
_REGISTRY: dict = {}  # handle -> _Loop
_COUNTER = _handles.counter()  # this process's own numbers (see fnnet._handles)


def register_kind(kind: str, make_body: Callable, name: Callable | None = None) -> None:
    """``make_body(owner, spec)`` builds the step ``body(consts, carry, x_t) -> (carry, y_t)``
    (lists of tensors) of the loops of ``kind``; called once per handle. ``name(owner)``: what
    errors call the loop (default ``"<kind> of <owner's type>"``)."""
    _KINDS[kind] = make_body
    _NAMES[kind] = name or (lambda owner: f"{kind} of {type(owner).__name__}")


class _Loop:
    """What a handle stands for: the body and the loop's constants, with its compiled chunks."""

    def __init__(self, kind, owner, spec, chunk, reverse, counts, ys_grad):
        self.name = _NAMES[kind](owner)
        self.body = _KINDS[kind](owner, spec)
        self.chunk, self.reverse = chunk, reverse
        self.n_c, self.n_h, self.n_x = counts
        self.ys_grad = ys_grad
        self.compiled: collections.OrderedDict = collections.OrderedDict()
        self.plans: collections.OrderedDict = collections.OrderedDict()  # (step metas, mask) -> _Plan | None
        self.ys_metas: dict = {}  # step metas -> [(shape, dtype)] of a step's ys
        self.warned = False

    def chunks(self, length: int) -> list:
        """The chunks in the order they run: ``(lo, hi)`` slices of the time axis."""
        out = [(s, min(s + self.chunk, length)) for s in range(0, length, self.chunk)]
        return [(length - hi, length - lo) for lo, hi in out] if self.reverse else out


@_compat.assume_constant_result  # run for real while dynamo traces: registers, the handle is a constant
def _handle(kind: str, owner: Any, spec: tuple, chunk: int, reverse: bool, counts: tuple, ys_grad: tuple,
            fresh: bool) -> int:
    if fresh:  # a handle of its own for this trace (see loop's fresh)
        handle = next(_COUNTER)
        _REGISTRY[handle] = _Loop(kind, owner, spec, chunk, reverse, counts, ys_grad)
        return handle
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
         reverse: bool = False, chunk: int | None = None, remat: bool = False, fresh: bool = False
         ) -> tuple[list, list]:
    """``(final carry, ys)`` of the loop (see the module docstring); ``ys_grad[i]``: whether
    ``ys[i]`` carries a gradient (a BatchNorm's new running statistics do not); ``remat``: keep
    only the chunk-boundary carries and recompute each chunk in the backward (no residuals);
    ``fresh``: a handle (and compiled chunks) for this trace alone, for a body whose behaviour
    ``(owner, spec)`` does not pin down (a user's function, reading globals): dynamo's guards on
    the trace around the loop then decide when it is compiled again, not a key.
    Call it while dynamo traces with grad mode on; the carry and ``xs`` are lists of tensors,
    ``xs`` non-empty."""
    k = chunk or DEFAULT_CHUNK  # the length is read when the op runs (it may be symbolic here)
    counts = (len(consts), len(carry), len(xs))
    handle = _handle(kind, owner, spec, k, reverse, counts, tuple(ys_grad), fresh)
    args = fresh_views(*consts, *carry, *xs, contiguous=True)
    # the residual path differentiates the floating inputs that require grad (read here, while
    # dynamo traces); it needs one step's shapes to be static (a symbolic batch size after a
    # recompile: the recompute path). mask 0: the recompute path.
    mask = sum(1 << i for i, a in enumerate(args) if a.requires_grad and a.is_floating_point())
    step_dims = [d for a in args[:len(consts) + len(carry)] for d in a.shape]
    step_dims += [d for a in args[len(consts) + len(carry):] for d in a.shape[1:]]
    if remat or not RESIDUALS or not all(_static(d) for d in step_dims):
        mask = 0
    if any(a.requires_grad for a in args):
        out = _LoopFn.apply(handle, len(consts), len(carry), tuple(ys_grad), mask, *args)
    else:  # nothing to differentiate (dynamo fails on the Function then): the forward op alone
        out = _LoopFn.forward(handle, len(consts), len(carry), tuple(ys_grad), 0, *args)
    n_h = len(carry)
    return list(out[:n_h]), list(out[n_h:n_h + len(ys_grad)])


def _static(d: Any) -> bool:
    """Whether a size read while dynamo traces is a plain int: dynamo answers ``isinstance(d, int)``
    and ``type(d)`` as if a symbolic size were one, but traces ``statically_known_true`` on the
    symbol, and a size's symbol has no upper bound."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true
    return statically_known_true(d < 2**62)


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


def _warn(lp: _Loop, what: str, e: Exception) -> None:
    if not lp.warned:
        lp.warned = True
        warnings.warn(f"fnnet: the compiled training loop ({lp.name}) could not {what} "
                      f"({type(e).__name__}: {str(e)[:300]})", stacklevel=3)


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
        _warn(lp, "compile its step; it runs uncompiled (the same numbers, slower)", e)
        compiled = fn
    lp.compiled[key] = compiled
    if len(lp.compiled) > CACHE_SIZE:
        lp.compiled.popitem(last=False)
    return compiled


def _call(lp: _Loop, role: tuple, args: list, bufs: list, kinds: tuple, make: Callable, seen: dict) -> tuple:
    """The compiled chunk ``role`` (``("fwd", k)``, ``("vjp", k, mask)``, ``("rfwd", k, plan)``,
    ``("rbwd", k, plan)``) on ``args``, its outputs by ``kinds`` (see :func:`_into`) into
    ``bufs``; ``make()`` builds the chunk's function on a miss. A buffer is passed where it is:
    where inductor assumed an aligned one, it writes an unaligned one through an aligned copy
    (torch's own check). ``seen`` (one per run of the loop) keeps the function found for each
    role: within a run, the chunks of one role have the same inputs' metadata (the same consts,
    the carry's shapes kept by the body, slices of one length), so it is looked up once."""
    args = [_aligned(a) for a in args]
    fn = seen.get(role)
    if fn is None:
        key = (role, _meta(args), _meta(bufs), COMPILER)
        fn = lp.compiled.get(key)
        if fn is None:
            fn = _compiled(lp, key, _into(make(), len(args), kinds), [*args, *bufs])
        else:
            lp.compiled.move_to_end(key)
        seen[role] = fn
    return tuple(fn(*args, *bufs))


def _into(f: Callable, n_args: int, kinds: tuple) -> Callable:
    """``g(*args, *bufs)``: ``f(*args)``'s outputs by ``kinds``, one per output: ``"ret"``
    returned, ``"write"`` copied into the next buffer, ``"add"`` added to it. Compiled, the
    chunk's kernels write the loop's ``[T, ...]`` outputs and sums in place: no copy after each
    chunk (the copies of a chunk's stacked outputs into the loop's buffers took about a tenth
    of a small LSTM's training step)."""
    def g(*a):
        bufs, out = iter(a[n_args:]), []
        for v, kind in zip(f(*a[:n_args]), kinds, strict=True):
            if kind == "ret":
                out.append(v)
            elif kind == "write":
                next(bufs).copy_(v)
            else:
                next(bufs).add_(v)
        return tuple(out)
    return g


# -- the residual path: one step's joint graph, partitioned ---------------------------------------
class _Plan:
    """One step's forward and backward graphs (``fw(*primals) -> (*outs, *saved)``,
    ``bw(*saved, *tangents) -> grads``), the primals ``(*consts, *carry, *x_t)``; what each saved
    value is, ``(kind, i, views)``: ``("const", i)`` (a const: the backward op is given the
    consts) or ``("x", i)`` (the step's slice of ``xs[i]``), through the view ops ``views``
    replayed; ``("step", i)`` (stored per step, ``[T, ...]``) or ``("once", i)`` (read only the
    consts: the same every step, stored once), ``views`` ``("bool",)`` for a bool stored as int8."""

    def __init__(self, fw, bw, n_out, saved, step, once, wrt, n_tan, hoisted, factored):
        self.fw, self.bw, self.n_out, self.saved = fw, bw, n_out, saved
        self.hoisted = hoisted  # (pre, post) of the forward graph (see _hoist), or None
        self.factored = factored  # (bw', {const grad: views}) (see _factor), or None
        self.step, self.once = step, once  # [(shape, stored dtype)] of one step's residuals
        self.wrt, self.n_tan = wrt, n_tan


def _wrt(lp: _Loop, mask: int, carry_float: list) -> tuple:
    """The primals differentiated: the consts and xs in ``mask`` and every floating carry leaf
    (its gradient flows to the steps below)."""
    n_c, n_h = lp.n_c, lp.n_h
    return tuple(i for i in range(n_c + n_h + lp.n_x)
                 if (carry_float[i - n_c] if n_c <= i < n_c + n_h else mask >> i & 1))


def _joint(lp: _Loop, wrt: tuple, diff: tuple) -> Callable:
    """``joint(primals, tangents) -> (outs, grads)``: one step and its VJP w.r.t. ``wrt``, the
    outputs ``diff`` (indices into ``(*carry, *ys)``) differentiated."""
    n_c, n_h = lp.n_c, lp.n_h

    def joint(primals, tangents):
        def f(*w):
            full = list(primals)
            for i, v in zip(wrt, w):
                full[i] = v
            new, y = lp.body(full[:n_c], full[n_c:n_c + n_h], full[n_c + n_h:])
            _check_carry(lp, full[n_c:n_c + n_h], new)
            outs = (*new, *y)
            return tuple(outs[i] for i in diff), outs
        _, vjp, outs = torch.func.vjp(f, *(primals[i] for i in wrt), has_aux=True)
        return list(outs), list(vjp(tuple(tangents)))
    return joint


def _plan(lp: _Loop, metas: tuple, mask: int) -> _Plan | None:
    """The partitioned step for one step's input metadata ``metas`` (``(shape, dtype, device)``
    of ``(*consts, *carry, *x_t)``), cached; ``None`` (one warning) where tracing or partitioning
    fails: the loop then keeps the recompute path (the same numbers)."""
    key = (metas, mask)
    if key in lp.plans:
        lp.plans.move_to_end(key)
        return lp.plans[key]
    try:
        # its own fake mode, outside any trace (the fake implementation runs under dynamo's)
        with eager_island(grad=True), torch._guards.tracing(None):
            plan = _partition(lp, metas, mask)
    except _CarryError:
        raise
    except Exception as e:
        _warn(lp, "partition its step into forward and backward; it recomputes each chunk in the "
                  "backward instead (the same numbers, slower)", e)
        plan = None
    lp.plans[key] = plan
    if len(lp.plans) > CACHE_SIZE:
        lp.plans.popitem(last=False)
    return plan


def _partition(lp: _Loop, metas: tuple, mask: int) -> _Plan:
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch.fx.experimental.proxy_tensor import make_fx
    n_c, n_h = lp.n_c, lp.n_h
    primals = [torch.zeros(shape, dtype=dtype, device=device) for shape, dtype, device in metas]
    with torch.no_grad():
        new, y = lp.body(primals[:n_c], primals[n_c:n_c + n_h], primals[n_c + n_h:])
    outs = [*new, *y]
    diff = tuple(i for i, o in enumerate(outs) if o.is_floating_point() and (i < n_h or lp.ys_grad[i - n_h]))
    wrt = _wrt(lp, mask, [h.is_floating_point() for h in primals[n_c:n_c + n_h]])
    tangents = [torch.zeros_like(outs[i]) for i in diff]
    gm = make_fx(_joint(lp, wrt, diff), tracing_mode="fake")(primals, tangents)
    fw, bw = min_cut_rematerialization_partition(_save_transcendentals(gm), [*primals, *tangents],
                                                 num_fwd_outputs=len(outs))
    fw_out = next(n for n in fw.graph.nodes if n.op == "output").args[0]
    saved_nodes = list(fw_out[len(outs):])
    bw_in = [n for n in bw.graph.nodes if n.op == "placeholder"]
    n_tan = sum(n.name.startswith("tangents") for n in bw_in)
    if (n_tan != len(diff) or [n.name for n in bw_in[:len(saved_nodes)]] != [n.name for n in saved_nodes]
            or not all(isinstance(n.meta.get("val"), torch.Tensor) for n in saved_nodes)
            or any(v is None for v in next(n for n in bw.graph.nodes if n.op == "output").args[0])):
        raise RuntimeError("unexpected partition: saved values and backward inputs do not match")
    n_in = len(primals)
    primal_of = {n: i for i, n in enumerate(n for n in fw.graph.nodes if n.op == "placeholder")}
    # the fw nodes that read a step's carry or x_t (or draw random numbers): their values vary per step
    varying = set()
    for n in fw.graph.nodes:
        if n.op == "placeholder":
            if primal_of[n] >= n_c:
                varying.add(n)
        elif n.op == "call_function" and (
                any(a in varying for a in n.all_input_nodes)
                or torch.Tag.nondeterministic_seeded in getattr(n.target, "tags", ())):
            varying.add(n)
    saved, step, once = [], [], []
    for n in saved_nodes:
        v = n.meta["val"]
        base, views = _view_chain(n)
        if base in primal_of and primal_of[base] < n_c:
            saved.append(("const", primal_of[base], views))
        elif base in primal_of and primal_of[base] >= n_c + n_h:
            saved.append(("x", primal_of[base] - n_c - n_h, views))
        elif n in varying:
            saved.append(("step", len(step), ("bool",) if v.dtype == torch.bool else ()))
            step.append((tuple(v.shape), _STORED.get(v.dtype, v.dtype)))
        else:
            saved.append(("once", len(once), ("bool",) if v.dtype == torch.bool else ()))
            once.append((tuple(v.shape), _STORED.get(v.dtype, v.dtype)))
    assert n_in == len(primal_of)
    w_c = sum(i < n_c for i in wrt)
    hoisted = _hoist(fw, n_c, n_h)
    if hoisted:  # its batched form must run: else the step is not split (the chunk compiles unbatched)
        try:
            torch.func.vmap(hoisted[0], in_dims=(None,) * n_c + (0,) * lp.n_x)(
                *primals[:n_c], *(torch.stack([x, x]) for x in primals[n_c + n_h:]))
        except Exception:
            hoisted = None
    return _Plan(fw, bw, len(outs), saved, step, once, wrt, n_tan, hoisted, _factor(bw, w_c))


# forward ops whose outputs the backward graph reads rather than recomputes: the min-cut
# partitioner counts every pointwise op as free to recompute, but a transcendental is a
# polynomial per element (on CPU inductor's tanh costs several sigmoids), and a loop's backward
# would recompute a step's gates at every step, where nn.LSTM reads its stored workspace
_TRANSCENDENTAL = {getattr(torch.ops.aten, name).default for name in (
    "tanh", "sigmoid", "exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "erf", "erfc", "erfinv",
    "sin", "cos", "tan", "asin", "acos", "atan", "sinh", "cosh", "asinh", "acosh", "atanh",
    "gelu", "silu", "mish", "softplus", "elu", "selu", "celu", "lgamma", "digamma")}


def _save_transcendentals(joint: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``joint`` with its forward's transcendental ops marked never to be recomputed (the
    partitioner's own mark, ``CheckpointPolicy.MUST_SAVE``): a saved value is then the gate's
    output, and the backward graph evaluates no transcendental."""
    from torch.utils.checkpoint import CheckpointPolicy
    backward = set()  # what reads a tangent
    for n in joint.graph.nodes:
        if (n.op == "placeholder" and n.name.startswith("tangents")) or any(a in backward for a in n.all_input_nodes):
            backward.add(n)
        elif n.op == "call_function" and n.target in _TRANSCENDENTAL:
            n.meta["recompute"] = CheckpointPolicy.MUST_SAVE
    return joint


def _factor(bw: torch.fx.GraphModule, w_c: int) -> tuple | None:
    """``(bw', {i: views})``: the step's backward graph with each const gradient ``i`` of the form
    ``views(mm(t(a), b))`` (a weight's gradient, the batch contracted: ``g^T h``) left out of its
    outputs and its factors ``a, b`` appended, so that a chunk sums it as one matmul over its
    ``k*B`` rows, ``views(cat(a)^T @ cat(b))``, rather than ``k`` small ones added up (what
    nn.LSTM's backward does for its weights). ``None`` where no gradient has that form."""
    output = next(n for n in bw.graph.nodes if n.op == "output")
    outs = list(output.args[0])
    factored, factors = {}, []
    for i in range(w_c):
        node, views = _view_chain(outs[i])
        if node.op == "call_function" and node.target is torch.ops.aten.mm.default:
            left, right = node.args
            if (left.op == "call_function" and left.target is torch.ops.aten.t.default
                    and getattr(left.args[0].meta.get("val"), "ndim", 0) == 2):
                factored[i] = views
                factors += [left.args[0], right]
    if not factored:
        return None
    kept = [o for i, o in enumerate(outs) if i not in factored]
    return torch.fx.GraphModule(bw, _rebuild(bw.graph, kept + factors)), factored


def _rebuild(graph: torch.fx.Graph, outs: list) -> torch.fx.Graph:
    """A copy of ``graph`` returning ``outs`` (nodes of ``graph``); what they do not read is dropped."""
    new, env = torch.fx.Graph(), {}
    for n in graph.nodes:
        if n.op == "output":
            new.output(tuple(env[o] for o in outs))
        else:
            env[n] = new.node_copy(n, lambda a: env[a])
    new.eliminate_dead_code()
    return new


# the ops worth batching over a chunk's steps: the input projections of a recurrent cell
_GEMMS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
          torch.ops.aten.baddbmm.default, torch.ops.aten.convolution.default}


def _hoist(fw: torch.fx.GraphModule, n_c: int, n_h: int) -> tuple | None:
    """``(pre, post)``: the step's forward graph split so that its part that reads ``x_t`` but not
    the carry, ``pre(*consts, *x_t) -> values``, runs for all the chunk's steps at once (under
    ``vmap``: a cell's input projection one matmul over ``[k*B, I]`` rather than ``k`` small
    ones, what nn.LSTM does), and ``post(*consts, *carry, *x_t, *values) -> fw's outputs`` steps.
    ``None`` where that part holds no matmul or convolution (nothing to gain)."""
    nodes = list(fw.graph.nodes)
    phs = [n for n in nodes if n.op == "placeholder"]
    const_ph, x_ph = set(phs[:n_c]), set(phs[n_c + n_h:])
    consts_only, pre = set(const_ph), {}  # pre: node -> reads x_t and not the carry
    for n in nodes:
        if n.op != "call_function":
            continue
        ins = n.all_input_nodes
        if torch.Tag.nondeterministic_seeded in getattr(n.target, "tags", ()):
            continue
        if all(a in consts_only for a in ins):
            consts_only.add(n)
        elif all(a in consts_only or a in x_ph or a in pre for a in ins):
            pre[n] = True
    if not any(n.target in _GEMMS for n in pre):
        return None
    output = next(n for n in nodes if n.op == "output")
    boundary = [n for n in pre if any(u not in pre for u in n.users)]
    # pre: the consts, x_t; the carry-free nodes and the const-only nodes they read
    g_pre, env = torch.fx.Graph(), {}
    for n in phs[:n_c] + phs[n_c + n_h:]:
        env[n] = g_pre.placeholder(n.name)
    for n in nodes:
        if n.op == "call_function" and (n in pre or (n in consts_only and any(u in pre for u in n.users))):
            env[n] = g_pre.node_copy(n, lambda a: env[a])
    g_pre.output(tuple(env[n] for n in boundary))
    # post: every node but the carry-free ones, which it reads as placeholders
    g_post, env = torch.fx.Graph(), {}
    for n in phs:
        env[n] = g_post.placeholder(n.name)
    for n in boundary:
        env[n] = g_post.placeholder(f"pre_{n.name}")
    for n in nodes:
        if n.op == "call_function" and n not in pre:
            env[n] = g_post.node_copy(n, lambda a: env[a])
    g_post.output(torch.fx.node.map_arg(output.args[0], lambda a: env[a]))
    return torch.fx.GraphModule(fw, g_pre), torch.fx.GraphModule(fw, g_post)


# a bool residual is stored as int8: inductor's CPU kernels write a bool output several times
# slower than the int8 of a select (torch 2.13), and a training step writes one per ReLU
_STORED = {torch.bool: torch.int8}


def _store(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v, 1, 0).to(torch.int8) if v.dtype == torch.bool else v


def _load(v: torch.Tensor, views: tuple) -> torch.Tensor:
    """A stored residual as the backward reads it (``views``: ``("bool",)`` for a stored bool)."""
    return v != 0 if views == ("bool",) else v


def _view_chain(n: torch.fx.Node) -> tuple:
    """``(base, views)``: ``n`` is ``base`` through the view ops ``views`` (``[(op, args, kwargs)]``,
    the first argument the previous value), replayed in the backward rather than stored."""
    views = []
    while (n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload) and n.target.is_view
           and n.args and isinstance(n.args[0], torch.fx.Node) and n.all_input_nodes == [n.args[0]]):
        views.append((n.target, tuple(n.args[1:]), dict(n.kwargs)))
        n = n.args[0]
    return n, tuple(reversed(views))


def _replay(v: torch.Tensor, views: tuple) -> torch.Tensor:
    for op, args, kwargs in views:
        v = op(v, *args, **kwargs)
    return v


def _step_metas(consts: list, carry: list, xs: list) -> tuple:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in (*consts, *carry)) + tuple(
        (tuple(x.shape[1:]), x.dtype, x.device) for x in xs)


def _residual_forward(lp: _Loop, plan: _Plan, kc: int) -> Callable:
    """``f(*consts, *carry, *xs_chunk) -> (*carry, *ys_chunk, *step residuals [kc, ...], *once)``:
    ``kc`` steps of the forward graph unrolled."""
    n_c, n_h, reverse = lp.n_c, lp.n_h, lp.reverse
    kinds = [kind for kind, _, _ in plan.saved]

    def f(*args):
        consts, carry, xs = list(args[:n_c]), list(args[n_c:n_c + n_h]), args[n_c + n_h:]
        ys_steps, res_steps, once = [None] * kc, [None] * kc, None
        if plan.hoisted:  # the steps' carry-free part, batched over the chunk's steps
            pre, post = plan.hoisted
            batched = torch.func.vmap(pre, in_dims=(None,) * n_c + (0,) * len(xs))(*consts, *xs)
        for j in (range(kc - 1, -1, -1) if reverse else range(kc)):
            if plan.hoisted:
                out = post(*consts, *carry, *(x[j] for x in xs), *(b[j] for b in batched))
            else:
                out = plan.fw(*consts, *carry, *(x[j] for x in xs))
            carry, ys_steps[j] = list(out[:n_h]), out[n_h:plan.n_out]
            saved = out[plan.n_out:]
            res_steps[j] = [_store(v) for v, kind in zip(saved, kinds) if kind == "step"]
            if once is None:
                once = [_store(v) for v, kind in zip(saved, kinds) if kind == "once"]
        ys = [torch.stack([s[i] for s in ys_steps]) for i in range(len(ys_steps[0]))]
        res = [torch.stack([s[i] for s in res_steps]) for i in range(len(plan.step))]
        return (*carry, *ys, *res, *once)
    return f


def _residual_backward(lp: _Loop, plan: _Plan, kc: int) -> Callable:
    """``g(*consts, *once, *step residuals [kc, ...], *xs_chunk, *d_carry, *d_ys_chunk) ->
    (*d_consts summed over the chunk, *d_carry, *d_xs_chunk)``: ``kc`` steps of the backward
    graph in reverse; ``d_carry`` of the floating carry leaves, the grads of ``plan.wrt``."""
    n_c, n_h, reverse = lp.n_c, lp.n_h, lp.reverse
    n_once, n_step, n_x = len(plan.once), len(plan.step), lp.n_x
    w_c = sum(i < n_c for i in plan.wrt)
    w_h = sum(n_c <= i < n_c + n_h for i in plan.wrt)

    bw, factored = plan.factored or (plan.bw, {})
    n_grads = len(plan.wrt) - len(factored)

    def g(*args):
        a = iter(args)
        consts = [next(a) for _ in range(n_c)]
        once = [next(a) for _ in range(n_once)]
        res = [next(a) for _ in range(n_step)]
        xs = [next(a) for _ in range(n_x)]
        d_h = [next(a) for _ in range(w_h)]
        d_ys = list(a)
        d_c, d_x = [None] * w_c, [[None] * kc for _ in range(len(plan.wrt) - w_c - w_h)]
        factors = [[] for _ in range(2 * len(factored))]
        for j in (range(kc) if reverse else range(kc - 1, -1, -1)):
            saved = [_replay(consts[i], views) if kind == "const" else _replay(xs[i][j], views) if kind == "x"
                     else _load(res[i][j] if kind == "step" else once[i], views) for kind, i, views in plan.saved]
            out = list(bw(*saved, *d_h, *(d[j] for d in d_ys)))
            grads = iter(out[:n_grads])
            for i in range(w_c):
                if i not in factored:
                    v = next(grads)
                    d_c[i] = v if d_c[i] is None else d_c[i] + v
            d_h = [next(grads) for _ in range(w_h)]
            for steps, v in zip(d_x, grads):
                steps[j] = v
            for fs, v in zip(factors, out[n_grads:]):
                fs.append(v)
        for (i, views), a_, b_ in zip(factored.items(), factors[::2], factors[1::2]):
            d_c[i] = _replay(torch.cat(a_).t() @ torch.cat(b_), views)  # one matmul over the chunk's rows
        return (*d_c, *d_h, *(torch.stack(s) for s in d_x))
    return g


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


def _forward_impl(handle: int, mask: int, consts: list, carry: list, xs: list) -> list:
    """``[*final carry, *ys, *saved]``: ``saved`` the residuals (``[T, ...]`` per step, then the
    ones stored once) where ``mask`` asks for them and the step partitions, else the carry at
    each chunk boundary (``[n_chunks, ...]``)."""
    lp = _REGISTRY[handle]
    metas = _step_metas(consts, carry, xs)
    plan = _plan(lp, metas, mask) if mask else None
    length, like = xs[0].shape[0], xs[0]
    chunks = lp.chunks(length)
    per_step = _ys_metas(lp, metas) + (plan.step if plan else [])  # written by the chunks, [T, ...]
    outs = [like.new_empty((length, *shape), dtype=dtype) for shape, dtype in per_step]
    bounds = [] if plan else [h.new_empty((len(chunks), *h.shape)) for h in carry]
    once, seen = None, {}
    h = list(carry)
    # the chunk returns its carry (and the values stored once), writes its ys and residuals
    kinds = ("ret",) * lp.n_h + ("write",) * len(outs) + (("ret",) * len(plan.once) if plan else ())
    for c, (lo, hi) in enumerate(chunks):
        kc = hi - lo
        args, bufs = [*consts, *h, *(x[lo:hi] for x in xs)], [o[lo:hi] for o in outs]
        if plan:
            out = _call(lp, ("rfwd", kc, plan), args, bufs, kinds, lambda kc=kc: _residual_forward(lp, plan, kc), seen)
            h, once = list(out[:lp.n_h]), once if once is not None else list(out[lp.n_h:])
        else:
            for b, v in zip(bounds, h):
                b[c].copy_(v)
            h = list(_call(lp, ("fwd", kc), args, bufs, kinds, lambda kc=kc: _chunk_forward(lp, kc), seen))
    n_y = len(outs) - (len(plan.step) if plan else 0)
    saved = [*outs[n_y:], *(v.clone() for v in once)] if plan else bounds  # once: the first chunk's
    return [*_unalias(h, [*consts, *carry, *xs]), *outs[:n_y], *saved]


def _ys_metas(lp: _Loop, metas: tuple) -> list:
    """``[(shape, dtype)]`` of one step's ys for one step's input metadata: one step run on fake
    tensors (on zeros where the body reads a value), once (cached)."""
    if metas not in lp.ys_metas:
        from torch._subclasses.fake_tensor import FakeTensorMode

        def run(make):
            primals = [make(shape, dtype=dtype, device=device) for shape, dtype, device in metas]
            _, y = lp.body(primals[:lp.n_c], primals[lp.n_c:lp.n_c + lp.n_h], primals[lp.n_c + lp.n_h:])
            return [(tuple(v.shape), v.dtype) for v in y]
        with torch.no_grad():
            try:
                with FakeTensorMode():  # shapes only: no arithmetic on values (a Cholesky of zeros)
                    lp.ys_metas[metas] = run(torch.empty)
            except Exception:  # a body that reads a value (an eager check): on zeros
                lp.ys_metas[metas] = run(torch.zeros)
    return lp.ys_metas[metas]


def _ys_meta(lp: _Loop, consts: list, carry: list, xs: list) -> list:
    """The ys of one step, run on the fake tensors the fake implementation is given. A body that
    reads a real tensor here read it from outside its inputs (a closure, a global): the loop
    could not differentiate it, so that is an error."""
    try:
        with torch.no_grad():
            _, y = lp.body(list(consts), list(carry), [x[0] for x in xs])
    except AssertionError as e:
        if "convert all Tensors to FakeTensors" not in str(e):
            raise
        raise RuntimeError(f"fnnet: the step of the {lp.name} reads a tensor that is not one of its inputs (a "
                           "closure's or a global's): the compiled loop can neither differentiate nor update it. Pass "
                           "every tensor the step reads as an argument (for fn.scan, one of the partial's)") from None
    return list(y)


def _backward_impl(handle: int, mask: int, fmask: int, consts: list, carry: list, xs: list, saved: list,
                   d_carry: list, d_ys: list) -> list:
    """The chunks in reverse, the carry's gradient carried down (always, for the chunks below),
    the consts' summed, the xs' written at the chunk's steps: each chunk's backward graph on its
    residuals, or (no residuals) each chunk's VJP from its boundary carry, recomputing it."""
    lp = _REGISTRY[handle]
    bits = _bits(lp, mask)
    n_c, n_h = lp.n_c, lp.n_h
    plan = _plan(lp, _step_metas(consts, carry, xs), fmask) if fmask else None
    floating = [h.is_floating_point() for h in carry]
    if plan:  # the residual path differentiates plan.wrt (what required grad in the forward)
        vbits = tuple(i in plan.wrt for i in range(len(bits)))
        if any(b and not v for b, v in zip(bits, vbits)):
            raise RuntimeError(f"fnnet: the compiled training loop ({lp.name}) was asked for a gradient its "
                               f"forward did not keep residuals for")
        res, once = saved[:len(plan.step)], saved[len(plan.step):]
    else:  # the chunk VJP: w.r.t. the consts and xs asked for and every floating carry leaf
        vbits = (*bits[:n_c], *floating, *bits[n_c + n_h:])
    d_consts = [torch.zeros_like(v) if b else None for v, b in zip(consts, vbits[:n_c])]
    d_xs = [torch.empty_like(x) if b else None for x, b in zip(xs, vbits[n_c + n_h:])]  # every step written
    g, seen = list(d_carry), {}
    chunks = lp.chunks(xs[0].shape[0])
    # the chunk adds its consts' gradients into d_consts and writes its xs' into d_xs
    n_h_diff = sum(floating)
    kinds = (("add",) * sum(b is not None for b in d_consts) + ("ret",) * n_h_diff
             + ("write",) * sum(b is not None for b in d_xs))
    for c in range(len(chunks) - 1, -1, -1):
        lo, hi = chunks[c]
        kc = hi - lo
        bufs = [*(b for b in d_consts if b is not None), *(b[lo:hi] for b in d_xs if b is not None)]
        if plan:
            args = [*consts, *once, *(r[lo:hi] for r in res), *(x[lo:hi] for x in xs),
                    *(v for v, f in zip(g, floating) if f), *(d[lo:hi] for d in d_ys)]
            out = iter(_call(lp, ("rbwd", kc, plan), args, bufs, kinds,
                             lambda kc=kc: _residual_backward(lp, plan, kc), seen))
        else:
            args = [*consts, *(b[c] for b in saved), *(x[lo:hi] for x in xs), *g, *(d[lo:hi] for d in d_ys)]
            out = iter(_call(lp, ("vjp", kc, vbits), args, bufs, kinds, lambda kc=kc: _chunk_vjp(lp, kc, vbits), seen))
        g = [next(out) if f else v for v, f in zip(g, floating)]
    picked = [*d_consts, *g, *d_xs]
    return _unalias([v for v, b in zip(picked, bits) if b], [*consts, *carry, *xs, *saved, *d_carry, *d_ys])


def _bits(lp: _Loop, mask: int) -> tuple:
    return tuple(bool(mask >> i & 1) for i in range(lp.n_c + lp.n_h + lp.n_x))


@torch.library.custom_op("fnnet::loop", mutates_args=())
def _forward_op(handle: int, mask: int, consts: list[torch.Tensor], carry: list[torch.Tensor],
                xs: list[torch.Tensor]) -> list[torch.Tensor]:
    with eager_island(grad=False):
        return _forward_impl(handle, mask, consts, carry, xs)


@_forward_op.register_fake
def _(handle, mask, consts, carry, xs):
    lp = _REGISTRY[handle]
    length = xs[0].shape[0]
    ys = [y.new_empty((length, *y.shape)) for y in _ys_meta(lp, consts, carry, xs)]
    metas = _step_metas(consts, carry, xs)
    if mask and not all(isinstance(d, int) for shape, _, _ in metas for d in shape):
        raise RuntimeError(f"fnnet: the compiled training loop ({lp.name}) was given symbolic step shapes "
                           f"for its residuals ({[m[0] for m in metas]})")
    plan = _plan(lp, metas, mask) if mask else None
    if plan:
        like = xs[0]
        saved = [*(like.new_empty((length, *shape), dtype=dtype) for shape, dtype in plan.step),
                 *(like.new_empty(shape, dtype=dtype) for shape, dtype in plan.once)]
    else:
        n_chunks = (length + lp.chunk - 1) // lp.chunk
        saved = [h.new_empty((n_chunks, *h.shape)) for h in carry]
    return [*(h.new_empty(h.shape) for h in carry), *ys, *saved]


@torch.library.custom_op("fnnet::loop_backward", mutates_args=())
def _backward_op(handle: int, mask: int, fmask: int, consts: list[torch.Tensor], carry: list[torch.Tensor],
                 xs: list[torch.Tensor], saved: list[torch.Tensor], d_carry: list[torch.Tensor],
                 d_ys: list[torch.Tensor]) -> list[torch.Tensor]:
    with eager_island(grad=False):
        return _backward_impl(handle, mask, fmask, consts, carry, xs, saved, d_carry, d_ys)


@_backward_op.register_fake
def _(handle, mask, fmask, consts, carry, xs, saved, d_carry, d_ys):
    lp = _REGISTRY[handle]
    bits = _bits(lp, mask)
    like = [*consts, *carry, *xs]
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
    def forward(handle, n_c, n_h, ys_grad, mask, *args):
        return tuple(_forward_op(handle, mask, list(args[:n_c]), list(args[n_c:n_c + n_h]),
                                 list(args[n_c + n_h:])))

    @staticmethod
    def setup_context(ctx, inputs, output):
        handle, n_c, n_h, ys_grad, mask, *args = inputs
        n_y = len(ys_grad)
        ctx.handle, ctx.counts, ctx.ys_grad, ctx.mask = handle, (n_c, n_h, len(args) - n_c - n_h), ys_grad, mask
        ctx.n_saved = len(output) - n_h - n_y
        ctx.save_for_backward(*args, *output[n_h + n_y:])
        no_grad = [o for o, g in zip(output[n_h:n_h + n_y], ys_grad) if not g or not o.is_floating_point()]
        ctx.mark_non_differentiable(*no_grad, *output[n_h + n_y:],
                                    *(o for o in output[:n_h] if not o.is_floating_point()))

    @staticmethod
    def backward(ctx, *grads):
        (n_c, n_h, n_x), ys_grad = ctx.counts, ctx.ys_grad
        n_y = len(ys_grad)
        saved = ctx.saved_tensors
        consts, carry, xs = saved[:n_c], saved[n_c:n_c + n_h], saved[n_c + n_h:n_c + n_h + n_x]
        residuals = saved[n_c + n_h + n_x:]
        needs = ctx.needs_input_grad[5:]
        mask = sum(1 << i for i, b in enumerate(needs) if b)
        if not mask:
            return (None,) * (5 + len(needs))
        d_carry = [g if g is not None else torch.zeros_like(h) for g, h in zip(grads[:n_h], carry)]
        d_ys = [g for g, want in zip(grads[n_h:n_h + n_y], ys_grad) if want]
        if any(g is None for g in d_ys):
            raise RuntimeError("fnnet: the compiled training loop got no gradient tensor for an output it "
                               "differentiates")
        out = iter(_backward_op(ctx.handle, mask, ctx.mask, list(consts), list(carry), list(xs), list(residuals),
                                d_carry, d_ys))
        return (None, None, None, None, None, *(next(out) if b else None for b in needs))
