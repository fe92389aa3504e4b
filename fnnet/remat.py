"""``checkpoint``: rematerialization, ``jax.checkpoint`` for fnnet functions.

    g = fn.checkpoint(f)            # same values and gradients as f
    y = g(params, x)

The backward of ``g`` recomputes ``f``'s forward from ``g``'s inputs instead of keeping
``f``'s intermediate activations from the forward pass: memory for the activations of one
``f`` at a time, for one more forward of ``f`` in the backward. Wrap each block of a deep
model (``fn.Stacked(..., remat=True)`` does it per layer) to trade compute for memory.

Recomputation is exact: fnnet draws randomness from explicit keys, so a recomputed dropout
mask is the mask of the forward (same key, same bits); nothing reads or restores torch's
global generator (``preserve_rng_state=False``). ``f`` must be a pure function of its
arguments (pytrees of tensors and constants), as everything under ``fn.jit`` is.

``policy`` says what is kept rather than recomputed: ``fn.checkpoint_policies.dots_saveable``
(and the other names of ``jax.checkpoint_policies``, below), a list of torch ops whose outputs
are kept (``[torch.ops.aten.mm.default]``), or torch's function ``(ctx, op, *args, **kwargs) ->
torch.utils.checkpoint.CheckpointPolicy``. There are no ``save_only_these_names`` policies:
they need ``jax.ad_checkpoint.checkpoint_name``, a no-op tag the policy can read, and torch has
no such tag (a custom identity op would copy its input in eager and be opaque to inductor).

How it runs (each route forced by what torch supports):

* **Plain autograd** (``loss.backward()``, eager or under ``fn.jit``): torch's
  ``torch.utils.checkpoint`` with ``use_reentrant=False``; compiled, inductor's partitioner
  recomputes the tagged region. A policy is torch's selective activation checkpoint
  (``torch.utils.checkpoint.create_selective_checkpoint_contexts``), eager and compiled.
* **Inside torch.func transforms** (``fn.grad``, ``fn.vmap``), eager: torch.func refuses the
  saved-tensor hooks torch's checkpoint is built on (pytorch/pytorch#122729), so here it is an
  ``autograd.Function`` that keeps only the inputs and whose backward runs ``torch.func.vjp``
  of ``f`` on them (batched by a generated vmap rule). That backward is itself rematerialized
  (kept: the inputs and cotangents; differentiated again, grad of grad, by recomputing it):
  ``torch.func.grad`` differentiates with ``create_graph=True``, and a backward recorded as it
  ran would keep every recomputed activation until the gradient returns, saving nothing.
  A ``policy`` cannot be honoured there (it needs the same hooks): everything is
  recomputed, with a one-time warning.
* **Inside one ``fn.grad`` under ``fn.jit``** (the compiled training step): the step is one
  graph whose forward and backward inductor plans together, with no partitioner to recompute
  anything, and torch's checkpoint op fails to trace there (saved-tensor hooks again). So
  ``f`` is two custom ops the compiler does not trace into, as ``fn.Stacked``'s: the forward
  runs ``f`` keeping only its inputs, the backward recomputes ``f`` and differentiates it.
  ``f`` runs op by op there, not fused with the rest of the step, and that backward cannot be
  differentiated again (compiled grad of grad raises); a policy is not honoured (warning). A
  tensor ``f`` reads that is not one of its arguments cannot get a gradient through the ops:
  a closure over a traced tensor fails to compile, and a tensor from outside the step that
  requires grad is refused in the backward, naming ``f``. Pass tensors as arguments.
* **Other compiled transforms** (``fn.vmap``, grad of grad, torch older than 2.12, whose dynamo
  cannot hand ``f`` to the ops): ``f`` as it is: the same values and gradients, the memory of
  inductor's plan for the whole step; a policy is not applied (warning).
"""

from __future__ import annotations

import functools
import types
import warnings
from typing import Any
from collections.abc import Callable

import torch
import torch.utils.checkpoint as _torch_checkpoint
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from . import _compat, _handles
from . import tree as T
from ._island import eager_island, fresh_views
from .transforms import inside_functorch

__all__ = ["checkpoint", "checkpoint_policies"]

_selective = getattr(_torch_checkpoint, "create_selective_checkpoint_contexts", None)  # torch >= 2.4


class _Policy:
    """A named selective-checkpoint policy: ``(ctx, op, *args, **kwargs) -> CheckpointPolicy``,
    the outputs of the ops it names kept for the backward, everything else recomputed."""

    def __init__(self, name: str, saves: Callable[[Any], bool]):
        self.__name__ = self.name = name
        self.saves = saves

    def __call__(self, ctx, op, *args, **kwargs):
        P = _torch_checkpoint.CheckpointPolicy
        return P.MUST_SAVE if self.saves(op) else P.PREFER_RECOMPUTE

    def __repr__(self) -> str:
        return f"fn.checkpoint_policies.{self.name}"


def _ops(*names: str) -> frozenset:
    """The overloads of the aten (and oneDNN) ops named, those this torch has."""
    found = set()
    for name in names:
        ns, _, op = name.rpartition(".")
        packet = getattr(getattr(torch.ops, ns or "aten"), op, None)
        if packet is not None:
            found.update(getattr(packet, o) for o in packet.overloads())
    return frozenset(found)


# matmul-like ops as they reach the dispatcher (F.linear is addmm/mm/bmm there; fnnet's oneDNN
# GEMM is mkldnn._linear_pointwise): JAX's dot_general, and convolution
_DOTS_NO_BATCH = _ops("mm", "addmm", "linear", "mkldnn._linear_pointwise")
_DOTS = _DOTS_NO_BATCH | _ops("bmm", "baddbmm", "matmul", "convolution", "_convolution")

checkpoint_policies = types.SimpleNamespace(
    everything_saveable=_Policy("everything_saveable", lambda op: True),
    nothing_saveable=_Policy("nothing_saveable", lambda op: False),
    dots_saveable=_Policy("dots_saveable", lambda op: op in _DOTS),
    dots_with_no_batch_dims_saveable=_Policy("dots_with_no_batch_dims_saveable",
                                             lambda op: op in _DOTS_NO_BATCH),
)
checkpoint_policies.__doc__ = """JAX's ``jax.checkpoint_policies`` for ``fn.checkpoint(f, policy=...)``:
``everything_saveable`` (nothing recomputed), ``nothing_saveable`` (everything recomputed, as
``policy=None``), ``dots_saveable`` (the outputs of matmuls and convolutions kept: mm, addmm,
bmm, baddbmm, convolution, oneDNN's linear), ``dots_with_no_batch_dims_saveable`` (only the
unbatched ones: mm, addmm, oneDNN's linear)."""


def checkpoint(f: Callable, policy: Any = None) -> Callable:
    """``f`` whose forward is recomputed in the backward instead of stored (see the module doc).

    f: a pure function of pytrees of tensors (and constants).
    policy: ``None`` (keep only the inputs), or, honoured under plain autograd (eager and
    compiled), what to keep: one of ``fn.checkpoint_policies``, a list of ops whose outputs are
    kept, or torch's ``(ctx, op, *args, **kwargs) -> CheckpointPolicy``.
    Returns a function with ``f``'s signature, values and gradients.
    """
    if not callable(f):
        raise TypeError(f"checkpoint: f must be callable, got {type(f).__name__}")
    if policy is not None:
        if _selective is None:  # pragma: no cover - depends on the installed torch
            raise NotImplementedError("checkpoint: policy= needs torch's selective activation checkpoint "
                                      "(torch >= 2.4)")
        if not (callable(policy) or (isinstance(policy, (list, tuple)) and all(
                isinstance(op, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)) for op in policy))):
            raise TypeError(f"checkpoint: policy must be None, a list of torch ops (torch.ops.aten.mm.default) "
                            f"or a function (ctx, op, *args, **kwargs) -> CheckpointPolicy, got {policy!r}")
        policy = list(policy) if isinstance(policy, (list, tuple)) else policy

    @functools.wraps(f)
    def remat(*args: Any, **kwargs: Any) -> Any:
        if not inside_functorch():
            # (context_fn only with a policy: dynamo takes a functools.partial there, not the default)
            extra = {} if policy is None else {"context_fn": functools.partial(_selective, policy)}
            if policy is not None and not torch.compiler.is_compiling():
                _settle_lazy_choices()
            return _torch_checkpoint.checkpoint(f, *args, use_reentrant=False, preserve_rng_state=False,
                                                **extra, **kwargs)
        if torch.compiler.is_compiling():
            if _compat.DYNAMO_PASSES_OBJECTS and torch.is_grad_enabled() and _one_grad_level():
                return _opaque(f, args, kwargs, policy is not None)
            if policy is not None:
                _warn_inline_at_trace()
            return f(*args, **kwargs)
        if policy is not None:
            _warn_policy_ignored()
        return _recomputed(f, args, kwargs)

    return remat


def _settle_lazy_choices() -> None:
    """Make the choices fnnet measures lazily, on first use, before a selective checkpoint runs
    ``f``: the policy's saved outputs are replayed in the order ops ran, so a probe that ran in
    the forward (the eager GEMM's timing matmuls, ``fnnet.layers._gemm``) and not in the
    recomputation would hand later ops its outputs (a shape error, or the wrong values)."""
    from .layers import _gemm
    _gemm.onednn_chosen()


@functools.cache
def _warn_policy_ignored() -> None:
    warnings.warn("fn.checkpoint: inside torch.func transforms (fn.grad, fn.vmap), eager or compiled, a "
                  "policy cannot be honoured (torch.func refuses saved-tensor hooks): everything is "
                  "recomputed", stacklevel=3)


@torch.compiler.assume_constant_result  # run for real while dynamo traces: warns once
def _warn_inline_at_trace() -> int:
    _warn_inline()
    return 0


@functools.cache
def _warn_inline() -> None:
    warnings.warn("fn.checkpoint: compiled inside a grad of grad or a vmap, or on torch < 2.12, f is traced "
                  "inline: it is not rematerialized and its policy is not applied (the step stores f's "
                  "activations as it would without checkpoint; the numbers are the same)", stacklevel=3)


def _recomputed(f: Callable, args: tuple, kwargs: dict) -> Any:
    """``f(*args, **kwargs)`` through :class:`_Remat`: floating tensors are differentiated, other
    tensors (keys, indices) are passed along, everything else is closed over."""
    leaves, spec = T.flatten((args, kwargs))
    floats = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    others = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor) and not x.is_floating_point()]
    out_spec = []

    def run(*tensors: torch.Tensor) -> list:
        full = list(leaves)
        for i, t in zip(floats + others, tensors):
            full[i] = t
        a, kw = T.unflatten(spec, full)
        out, s = T.flatten(f(*a, **kw))
        # leaves that are not tensors (None, numbers) are constants of f: kept from the forward
        out_spec[:] = [s, [None if isinstance(o, torch.Tensor) else (o,) for o in out]]
        return [o for o in out if isinstance(o, torch.Tensor)]

    out = iter(_Remat.apply(run, len(floats), *[leaves[i] for i in floats], *[leaves[i] for i in others]))
    spec_out, constants = out_spec
    return T.unflatten(spec_out, [next(out) if c is None else c[0] for c in constants])


class _Remat(torch.autograd.Function):
    """Forward: ``run`` without recording, the inputs saved. Backward: ``run`` again under
    ``torch.func.vjp`` (so the backward is itself differentiable and batchable)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(run, n_floats, *tensors):
        return tuple(run(*tensors))

    @staticmethod
    def setup_context(ctx, inputs, output):
        run, n_floats, *tensors = inputs
        ctx.run, ctx.n_floats = run, n_floats
        ctx.save_for_backward(*tensors)
        ctx.differentiable = [o.is_floating_point() for o in output]
        ctx.mark_non_differentiable(*[o for o in output if not o.is_floating_point()])

    @staticmethod
    def backward(ctx, *grads):
        tensors = ctx.saved_tensors
        floats, others = tensors[:ctx.n_floats], tensors[ctx.n_floats:]
        keep = ctx.differentiable
        if not floats:
            return (None, None, *[None] * len(others))
        cotangents = [g for g, d in zip(grads, keep) if d]
        d_floats = _RematVjp.apply(ctx.run, keep, len(floats), len(others), *floats, *others, *cotangents)
        return (None, None, *d_floats, *[None] * len(others))


def _vjp(run: Callable, keep: list, floats: tuple, others: tuple, cotangents: tuple) -> tuple:
    """The gradient of ``run``'s floating outputs (``keep``) against ``floats``, ``run``
    recomputed from its inputs under ``torch.func.vjp``."""
    def forward(*xs):
        return tuple(o for o, d in zip(run(*xs, *others), keep) if d)

    with torch.enable_grad():
        _, vjp = torch.func.vjp(forward, *floats)
        return vjp(tuple(cotangents))


class _RematVjp(torch.autograd.Function):
    """``_Remat``'s backward, itself rematerialized: computed without recording, its inputs
    (``f``'s inputs and the cotangents) saved, and differentiated again (grad of grad) by
    recomputing it under ``torch.func.vjp``. ``torch.func.grad`` differentiates with
    ``create_graph=True``; recorded as it runs, this backward would keep every recomputed
    activation of ``f`` alive until the gradient is returned, and save nothing."""

    generate_vmap_rule = True

    @staticmethod
    def forward(run, keep, n_floats, n_others, *tensors):
        floats, others = tensors[:n_floats], tensors[n_floats:n_floats + n_others]
        return tuple(_vjp(run, keep, floats, others, tensors[n_floats + n_others:]))

    @staticmethod
    def setup_context(ctx, inputs, output):
        run, keep, n_floats, n_others, *tensors = inputs
        ctx.run, ctx.keep, ctx.n_floats, ctx.n_others = run, keep, n_floats, n_others
        ctx.save_for_backward(*tensors)

    @staticmethod
    def backward(ctx, *grads):
        tensors = ctx.saved_tensors
        n, m = ctx.n_floats, ctx.n_others
        others = tensors[n:n + m]

        def vjp_of(*xs):  # (floats, cotangents) -> the floats' gradients
            return tuple(_vjp(ctx.run, ctx.keep, xs[:n], others, xs[n:]))

        with torch.enable_grad():
            _, vjp = torch.func.vjp(vjp_of, *tensors[:n], *tensors[n + m:])
            d = vjp(tuple(grads))
        return (None, None, None, None, *d[:n], *[None] * m, *d[n:])


# -- compiled fn.grad: two opaque ops ---------------------------------------------------------
#
# The compiled fn.grad step is one graph (torch.func.grad traced to forward and backward
# together): there is no partitioner to recompute a tagged region, and torch's checkpoint op
# (tag_activation_checkpoint) fails there on saved-tensor hooks. So, as Stacked does, f becomes
# an autograd.Function over two custom ops the compiler does not trace into: fnnet::remat runs
# f without recording (nothing of f's kept but its inputs), fnnet::remat_backward recomputes f
# from the inputs under autograd and returns the input gradients. f runs op by op there (not
# fused by inductor). The handle, a constant in the graph, names f and everything about the
# call that is not a tensor; dynamo guards it by f's identity.
#
# f can only be reached through the handle, so a tensor f reads that is not one of its arguments
# would get no gradient through the ops. Dynamo itself refuses a handle to a closure over a
# traced tensor (a lambda over an activation fails to compile); a tensor from outside the step
# that requires grad is caught in the backward (its graph reaches a leaf that is not an input)
# and refused, naming f.

_REGISTRY: dict = {}  # handle -> _Call
_HANDLES: dict = {}  # (f, spec, constants) -> handle, when hashable
_COUNTER = _handles.counter()  # this process's own numbers (see fnnet._handles)


class _Call:
    """What a handle stands for: ``f``, its arguments' tree, the non-tensor leaves, and (filled
    by the first fake run) its output's tree with the non-tensor outputs."""

    def __init__(self, f, spec, constants):
        self.f, self.spec, self.constants = f, spec, constants
        self.out = None  # (out spec, [None for a tensor, (constant,) otherwise])

    def run(self, tensors) -> list:
        it = iter(tensors)
        leaves = [next(it) if c is None else c[0] for c in self.constants]
        args, kwargs = T.unflatten(self.spec, leaves)
        out, out_spec = T.flatten(self.f(*args, **kwargs))
        self.out = (out_spec, [None if isinstance(o, torch.Tensor) else (o,) for o in out])
        return [o for o in out if isinstance(o, torch.Tensor)]


_TENSOR = "<fnnet.remat: a tensor argument>"  # a tensor's place in the template of a call


@_compat.assume_constant_result  # run for real while dynamo traces: registers, the handle is a constant
def _handle(f: Callable, template: Any, has_policy: bool) -> int:
    if has_policy:
        _warn_policy_ignored()
    leaves, spec = T.flatten(template)
    constants = tuple(None if x is _TENSOR else (x,) for x in leaves)
    try:
        key = (f, spec, constants)
        hash(key)
    except TypeError:
        key = None
    if key is not None and key in _HANDLES:
        return _HANDLES[key]
    handle = next(_COUNTER)
    _REGISTRY[handle] = _Call(f, spec, constants)
    if key is not None:
        _HANDLES[key] = handle
    return handle


@torch.compiler.assume_constant_result  # read at trace time, as fnnet.transforms.inside_vmap
def _one_grad_level() -> bool:
    """Exactly one torch.func transform encloses this call, and it is a gradient (fn.grad, vjp):
    the opaque ops' backward cannot be differentiated again, nor batched by vmap."""
    levels = retrieve_all_functorch_interpreters()
    return len(levels) == 1 and levels[0].key() == TransformType.Grad


@_compat.assume_constant_result  # read after the fake run of the forward op has filled it
def _out_tree(handle: int) -> tuple:
    return _REGISTRY[handle].out


def _opaque(f: Callable, args: tuple, kwargs: dict, has_policy: bool) -> Any:
    leaves, spec = T.flatten((args, kwargs))
    template = T.unflatten(spec, [_TENSOR if isinstance(x, torch.Tensor) else x for x in leaves])
    handle = _handle(f, template, has_policy)
    tensors = fresh_views(*[x for x in leaves if isinstance(x, torch.Tensor)])
    out = iter(_RematOp.apply(handle, *tensors))
    out_spec, out_constants = _out_tree(handle)
    return T.unflatten(out_spec, [next(out) if c is None else c[0] for c in out_constants])


def _unaliased(outs: list, inputs: list) -> list:
    """A custom op may not return its inputs, views or one tensor twice: such outputs are copied."""
    seen = {id(x) for x in inputs}
    fresh = []
    for o in outs:
        fresh.append(o.clone() if id(o) in seen or o._is_view() else o)
        seen.add(id(fresh[-1]))
    return fresh


@torch.library.custom_op("fnnet::remat", mutates_args=())
def _forward_op(handle: int, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    with eager_island(grad=False):
        return _unaliased(_REGISTRY[handle].run(tensors), tensors)


@_forward_op.register_fake
def _(handle, tensors):
    call = _REGISTRY[handle]
    mode = torch._guards.detect_fake_mode(tensors)
    # a tensor f reads from outside its arguments is real here: let it in (the backward refuses
    # one that requires grad), rather than fail with fake tensor mode's error
    before = getattr(mode, "allow_non_fake_inputs", None)
    if mode is not None:
        mode.allow_non_fake_inputs = True
    try:
        return _unaliased(call.run(tensors), tensors)
    finally:
        if mode is not None:
            mode.allow_non_fake_inputs = before


@torch.library.custom_op("fnnet::remat_backward", mutates_args=())
def _backward_op(handle: int, tensors: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
    with eager_island(grad=True):
        call = _REGISTRY[handle]
        xs = [x.detach().requires_grad_(x.is_floating_point()) for x in tensors]
        wrt = [x for x in xs if x.requires_grad]
        outs = call.run(xs)
        pairs = [(o, g) for o, g in zip(outs, grads) if o.requires_grad]
        _refuse_foreign_leaves(call.f, [o for o, _ in pairs], wrt)
        d = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs],
                                allow_unused=True) if pairs else [None] * len(wrt)
        return [torch.zeros_like(x) if g is None else g for x, g in zip(wrt, d)]


@_backward_op.register_fake
def _(handle, tensors, grads):
    return [x.new_empty(x.shape) for x in tensors if x.is_floating_point()]


def _refuse_foreign_leaves(f: Callable, outs: list, inputs: list) -> None:
    """Raise if ``outs`` depend on a tensor that requires grad and is not one of ``inputs``: one
    ``f`` reads from outside its arguments, which the ops cannot give a gradient."""
    mine = {id(x) for x in inputs}
    seen, stack = set(), [o.grad_fn for o in outs if o.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        var = getattr(node, "variable", None)
        if var is not None and id(var) not in mine:
            raise RuntimeError(
                f"fn.checkpoint: {getattr(f, '__qualname__', f)!r} reads a tensor that requires grad and "
                f"is not one of its arguments (shape {list(var.shape)}); inside a compiled fn.grad it "
                f"would get no gradient. Pass it to the checkpointed function as an argument")
        stack += [n for n, _ in node.next_functions]


def _refuse_second_derivative(ctx, *grads):
    raise RuntimeError("fn.checkpoint: the compiled backward of a checkpointed function "
                       "(fnnet::remat_backward) cannot be differentiated again (grad of grad, a gradient "
                       "penalty); run that step eagerly")


_backward_op.register_autograd(_refuse_second_derivative, setup_context=lambda ctx, inputs, output: None)


class _RematOp(torch.autograd.Function):
    @staticmethod
    def forward(handle, *tensors):
        return tuple(_forward_op(handle, list(tensors)))

    @staticmethod
    def setup_context(ctx, inputs, output):
        handle, *tensors = inputs
        ctx.handle = handle
        ctx.floats = [t.is_floating_point() for t in tensors]
        ctx.save_for_backward(*tensors)
        ctx.mark_non_differentiable(*[o for o in output if not o.is_floating_point()])

    @staticmethod
    def backward(ctx, *grads):
        tensors = ctx.saved_tensors
        d = iter(_backward_op(ctx.handle, list(tensors), grads))
        return (None, *[next(d) if fl else None for fl in ctx.floats])

