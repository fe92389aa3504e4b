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

How it runs (each route forced by what torch supports):

* **Plain autograd** (``loss.backward()``, eager or under ``fn.jit``): torch's
  ``torch.utils.checkpoint`` with ``use_reentrant=False``; compiled, inductor's partitioner
  recomputes the tagged region. ``policy`` is torch's selective activation checkpoint
  (``torch.utils.checkpoint.create_selective_checkpoint_contexts``): a list of ops whose
  outputs are kept (``[torch.ops.aten.mm.default]``: JAX's ``dots_saveable``), or a function
  ``(ctx, op, *args, **kwargs) -> torch.utils.checkpoint.CheckpointPolicy``.
* **Inside torch.func transforms** (``fn.grad``, ``fn.vmap``), eager: torch.func refuses the
  saved-tensor hooks torch's checkpoint is built on (pytorch/pytorch#122729), so here it is an ``autograd.Function``
  that keeps only the inputs and whose backward runs ``torch.func.vjp`` of ``f`` on them
  (differentiable again: grad of grad works; batched by a generated vmap rule). A ``policy``
  cannot be honoured there (it needs the same hooks): everything is recomputed, with a
  one-time warning.
* **Inside torch.func transforms under ``fn.jit``**: ``f`` as it is. The compiled
  ``fn.grad`` step is one graph whose forward and backward inductor plans together, and
  dynamo cannot trace a Function whose backward runs a transform; values and gradients are
  the same, the memory is whatever inductor's plan for the whole step is.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any
from collections.abc import Callable

import torch
import torch.utils.checkpoint as _torch_checkpoint

from . import tree as T
from .transforms import inside_functorch

__all__ = ["checkpoint"]

_selective = getattr(_torch_checkpoint, "create_selective_checkpoint_contexts", None)  # torch >= 2.4


def checkpoint(f: Callable, policy: Any = None) -> Callable:
    """``f`` whose forward is recomputed in the backward instead of stored (see the module doc).

    f: a pure function of pytrees of tensors (and constants).
    policy: ``None`` (keep only the inputs), or, for plain autograd, torch's selective-checkpoint
    policy: a list of ops whose outputs are kept, or ``(ctx, op, *args, **kwargs) -> CheckpointPolicy``.
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
            return _torch_checkpoint.checkpoint(f, *args, use_reentrant=False, preserve_rng_state=False,
                                                **extra, **kwargs)
        if torch.compiler.is_compiling():
            return f(*args, **kwargs)
        if policy is not None:
            _warn_policy_ignored()
        return _recomputed(f, args, kwargs)

    return remat


@functools.cache
def _warn_policy_ignored() -> None:
    warnings.warn("fn.checkpoint: inside torch.func transforms (fn.grad, fn.vmap) a policy cannot be "
                  "honoured (torch.func refuses saved-tensor hooks): everything is recomputed", stacklevel=3)


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

        def forward(*xs):
            return tuple(o for o, d in zip(ctx.run(*xs, *others), keep) if d)

        with torch.enable_grad():
            _, vjp = torch.func.vjp(forward, *floats)
            d_floats = vjp(tuple(g for g, d in zip(grads, keep) if d))
        return (None, None, *d_floats, *[None] * len(others))
