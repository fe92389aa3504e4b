"""Function transforms, JAX-flavoured, from ``torch.func`` and ``torch.compile``."""

from __future__ import annotations

import functools
from typing import Any
from collections.abc import Callable, Sequence

import torch
import torch.func
import torch.utils._pytree as pytree
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

__all__ = ["grad", "value_and_grad", "vmap", "jit", "jacrev", "jacfwd", "vjp", "jvp", "hessian"]


def grad(f: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False) -> Callable:
    """Gradient of scalar ``f`` w.r.t. argument(s) ``argnums`` (pytrees welcome).
    With ``has_aux``: ``f`` returns ``(value, aux)`` and the result is ``(grads, aux)``."""
    g = _grad_and_value(f, argnums, has_aux)

    @functools.wraps(f)
    def wrapped(*args: Any, **kwargs: Any):
        grads, value = g(*args, **kwargs)
        return (grads, value[1]) if has_aux else grads
    return _own_code(wrapped)


def value_and_grad(f: Callable, argnums: int | Sequence[int] = 0, has_aux: bool = False) -> Callable:
    """JAX's order: ``value, grads = value_and_grad(f)(...)``; with ``has_aux``,
    ``(value, aux), grads``."""
    g = _grad_and_value(f, argnums, has_aux)

    @functools.wraps(f)
    def wrapped(*args: Any, **kwargs: Any):
        grads, value = g(*args, **kwargs)
        return value, grads
    return _own_code(wrapped)


def _grad_and_value(f: Callable, argnums: int | Sequence[int], has_aux: bool) -> Callable:
    """``torch.func.grad_and_value``, except as the outermost transform of a step traced by
    ``fn.jit``: there it is plain autograd (``torch.autograd.grad``, which ``fn.jit`` lets
    dynamo trace). The numbers are the same; the difference is what the compiler can do with
    the step: torch's ``scan`` op (``fnnet.scan``'s body traced once) differentiates under
    autograd but not inside a compiled ``torch.func.grad`` (torch 2.13)."""
    argnums = tuple(argnums) if isinstance(argnums, (list, tuple)) else argnums
    by_func = torch.func.grad_and_value(f, argnums=argnums, has_aux=has_aux)

    def g(*args: Any, **kwargs: Any):
        if (torch.compiler.is_compiling() and _traces_autograd() and not inside_functorch()
                and not _autograd_grad_depth):
            return _autograd_grad_and_value(f, argnums, has_aux, args, kwargs)
        return by_func(*args, **kwargs)
    return g


# an fn.grad inside one computed by autograd (a gradient penalty) must stay torch.func's: the
# outer gradient flows through it, which a detached autograd.grad would silently cut
_autograd_grad_depth = 0


def _autograd_grad_and_value(f, argnums, has_aux, args, kwargs):
    global _autograd_grad_depth
    _autograd_grad_depth += 1
    try:
        return _autograd_grad_and_value_impl(f, argnums, has_aux, args, kwargs)
    finally:
        _autograd_grad_depth -= 1


def _autograd_grad_and_value_impl(f, argnums, has_aux, args, kwargs):
    nums = argnums if isinstance(argnums, tuple) else (argnums,)
    args, specs, leaves = list(args), [], []
    for i in nums:
        flat, spec = pytree.tree_flatten(args[i])
        flat = [x.detach().requires_grad_() for x in flat]
        args[i] = pytree.tree_unflatten(flat, spec)
        specs.append((spec, len(flat)))
        leaves += flat
    with torch.enable_grad():
        out = f(*args, **kwargs)
        value, aux = out if has_aux else (out, None)
        if not isinstance(value, torch.Tensor) or value.dim() != 0:  # as torch.func.grad asks
            raise RuntimeError(f"grad: f must return a scalar tensor, got {type(value).__name__}"
                               + (f" of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else ""))
        if value.requires_grad:
            grads = torch.autograd.grad(value, leaves, allow_unused=True, materialize_grads=True)
        else:  # f does not depend on what is differentiated: zeros, as torch.func.grad gives
            grads = tuple(torch.zeros_like(leaf) for leaf in leaves)
    trees, start = [], 0
    for spec, n in specs:
        trees.append(pytree.tree_unflatten(list(grads[start:start + n]), spec))
        start += n
    grads = tuple(trees) if isinstance(argnums, tuple) else trees[0]
    value = value.detach()
    if has_aux:
        return grads, (value, pytree.tree_map(lambda a: a.detach() if isinstance(a, torch.Tensor) else a, aux))
    return grads, value


@torch.compiler.assume_constant_result  # read at trace time: dynamo cannot trace the level itself
def inside_functorch() -> bool:
    """Whether a torch.func transform (``fn.grad``, ``fn.vmap``, ...) encloses this call."""
    return torch._C._functorch.maybe_current_level() is not None


@torch.compiler.assume_constant_result
def inside_vmap() -> bool:
    """Whether a ``vmap`` encloses this call (read as a constant while dynamo traces)."""
    return any(i.key() == TransformType.Vmap for i in retrieve_all_functorch_interpreters())


@torch.compiler.assume_constant_result
def _traces_autograd() -> bool:
    return bool(getattr(torch._dynamo.config, "trace_autograd_ops", False))


def _own_code(wrapper: Callable) -> Callable:
    """torch.compile caches compiled code per code object: a copy of it per wrapper lets
    ``fn.jit(fn.grad(f))`` compile many different ``f`` without hitting dynamo's recompile
    limit (8 per code object)."""
    if not torch.compiler.is_compiling():  # inside a traced step the wrapper is inlined anyway
        wrapper.__code__ = wrapper.__code__.replace()
    return wrapper


def vmap(f: Callable, in_dims: Any = 0, out_dims: Any = 0, randomness: str = "error",
         chunk_size: int | None = None) -> Callable:
    """``torch.func.vmap``. fnnet samplers take explicit keys, so batch the keys rather
    than asking for ``randomness="different"``."""
    return torch.func.vmap(f, in_dims=in_dims, out_dims=out_dims, randomness=randomness,
                           chunk_size=chunk_size)


def jit(f: Callable | None = None, *, fullgraph: bool = True, dynamic: bool | None = None,
        backend: str = "inductor", mode: str | None = None, **options: Any) -> Callable:
    """``torch.compile`` with ``fullgraph=True`` by default: a graph break is an error, not a
    silent slowdown. Usable as ``jit(f)`` or ``@jit(mode="max-autotune")``.

    While it traces, dynamo's ``trace_autograd_ops`` is on (restored after each call), so
    ``fn.grad`` can take a step's outermost gradient with ``torch.autograd.grad``: that is
    what lets ``fnnet.scan``'s traced-once loop be differentiated (see ``_grad_and_value``).
    ``torch.compile`` called directly works too; there ``fn.grad`` stays ``torch.func``'s
    and a scan is unrolled."""
    def compile_(fun: Callable) -> Callable:
        compiled = torch.compile(fun, fullgraph=fullgraph, dynamic=dynamic, backend=backend,
                                 mode=mode, **options)
        config = torch._dynamo.config
        if not hasattr(config, "trace_autograd_ops"):  # older torch: fn.grad stays torch.func's
            return compiled

        @functools.wraps(fun)
        def call(*args: Any, **kwargs: Any):
            # let dynamo trace torch.autograd.grad, which fn.grad uses as a step's outermost
            # transform (see _grad_and_value). Set and reset directly: config.patch costs ~50 us
            # a call, this ~10 us; none where the user turned the flag on for good.
            if config.trace_autograd_ops:
                return compiled(*args, **kwargs)
            config.trace_autograd_ops = True
            try:
                return compiled(*args, **kwargs)
            finally:
                config.trace_autograd_ops = False
        return call

    return compile_ if f is None else compile_(f)


jacrev = torch.func.jacrev
jacfwd = torch.func.jacfwd
vjp = torch.func.vjp
jvp = torch.func.jvp
hessian = torch.func.hessian
