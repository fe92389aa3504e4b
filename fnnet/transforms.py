"""Function transforms, JAX-flavoured, from ``torch.func`` and ``torch.compile``."""

from __future__ import annotations

import functools
from typing import Any
from collections.abc import Callable, Sequence

import torch
import torch.func
from torch._C._functorch import TransformType
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from . import _compat

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
    """``torch.func.grad_and_value``, the same transform eager and under ``fn.jit``: what is
    differentiated keeps its graph to everything it was computed from (a ``w`` that requires
    grad stays connected), as JAX's ``jit`` never changes what ``grad`` means."""
    argnums = tuple(argnums) if isinstance(argnums, (list, tuple)) else argnums
    return torch.func.grad_and_value(f, argnums=argnums, has_aux=has_aux)


@torch.compiler.assume_constant_result  # read at trace time: dynamo cannot trace the level itself
def inside_functorch() -> bool:
    """Whether a torch.func transform (``fn.grad``, ``fn.vmap``, ...) encloses this call."""
    return torch._C._functorch.maybe_current_level() is not None


@torch.compiler.assume_constant_result
def inside_vmap() -> bool:
    """Whether a ``vmap`` encloses this call (read as a constant while dynamo traces)."""
    return any(i.key() == TransformType.Vmap for i in retrieve_all_functorch_interpreters())


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
    silent slowdown. Usable as ``jit(f)`` or ``@jit(mode="max-autotune")``. It changes how
    ``f`` runs, never what it computes: values, gradients and what they stay connected to are
    eager's, and an error ``f`` raises (a params tree that does not fit) is raised as itself.

    One jitted step may serve any number of models and optimizers: dynamo keeps at most
    ``recompile_limit`` (8) compiled versions per code object, and with ``fullgraph=True`` a
    ninth ends in ``FailOnRecompileLimitHit``. When that happens, the function switches to
    one compiled function per *static configuration* of its arguments — their pytree
    structure, the non-tensor leaves (a model, an optimizer's functions, flags; ints and floats
    only by type) and each tensor's dtype, device and ``requires_grad`` — each on its own copy of
    the code (its own cache and limit). Only tensor shapes then vary within one configuration;
    should they need more than ``recompile_limit`` versions, the error says to pass
    ``dynamic=True``."""
    def compile_(fun: Callable) -> Callable:
        def make() -> Callable:
            return torch.compile(_fresh_code(fun), fullgraph=fullgraph, dynamic=dynamic, backend=backend,
                                 mode=mode, **options)

        compiled = torch.compile(fun, fullgraph=fullgraph, dynamic=dynamic, backend=backend, mode=mode,
                                 **options)
        per_config: dict[Any, Callable] = {}  # filled once `compiled` has hit the recompile limit

        def run(c: Callable, args: tuple, kwargs: dict):
            try:
                if _compat.SPECIALIZE_INTS and not torch.compiler.is_compiling():
                    with torch._dynamo.config.patch(specialize_int=True):
                        return c(*args, **kwargs)
                return c(*args, **kwargs)
            except torch._dynamo.exc.Unsupported:
                # an error raised while tracing (a ParamsError naming a path, a ValueError naming an
                # argument) reaches the caller as dynamo's "Observed exception", or as whatever in
                # building its message dynamo cannot trace: run f eagerly once so the caller gets the
                # error itself; if eager f does not raise, dynamo's error stands
                if torch.compiler.is_compiling():
                    raise
                fun(*args, **kwargs)
                raise

        @functools.wraps(fun)
        def call(*args: Any, **kwargs: Any):
            if torch.compiler.is_compiling():  # inside another compiled function: inlined
                return run(compiled, args, kwargs)
            if not per_config:
                try:
                    return run(compiled, args, kwargs)
                except torch._dynamo.exc.FailOnRecompileLimitHit:
                    pass  # raised before anything ran: the call is retried below
            key = _static_config(args, kwargs)
            c = per_config.get(key)
            if c is None:
                c = per_config[key] = make()
            try:
                return run(c, args, kwargs)
            except torch._dynamo.exc.FailOnRecompileLimitHit as e:
                raise RuntimeError(
                    f"fn.jit: {getattr(fun, '__qualname__', fun)!r} was compiled more than "
                    f"torch._dynamo.config.recompile_limit ({torch._dynamo.config.recompile_limit}) times "
                    "for one configuration of its non-tensor arguments: its tensors' shapes kept "
                    "changing. Pass fn.jit(..., dynamic=True) to compile shape-generic code, or raise "
                    "torch._dynamo.config.recompile_limit") from e
        return call

    return compile_ if f is None else compile_(f)


def _fresh_code(fun: Callable) -> Callable:
    """A trampoline to ``fun`` on a code object of its own: dynamo keeps its compiled versions
    (and counts its recompile limit) per code object, and inlines ``fun`` into it."""
    def trampoline(*args: Any, **kwargs: Any):
        return fun(*args, **kwargs)
    trampoline.__code__ = trampoline.__code__.replace()
    return functools.wraps(fun)(trampoline)


def _static_config(args: tuple, kwargs: dict) -> Any:
    """What dynamo specializes a compiled function on, short of tensor shapes: the pytree
    structure, each non-tensor leaf (hashable ones by value, others by identity; ints by value, as
    fn.jit specializes them; floats by type, as dynamo makes a changing float dynamic) and each
    tensor's dtype, device and ``requires_grad``."""
    leaves, spec = torch.utils._pytree.tree_flatten((args, kwargs))
    key: list[Any] = [spec]
    for x in leaves:
        if isinstance(x, torch.Tensor):
            key.append((x.dtype, x.device, x.requires_grad))
        elif isinstance(x, int) and not isinstance(x, bool) and _compat.SPECIALIZE_INTS:
            key.append((int, x))
        elif isinstance(x, (int, float)) and not isinstance(x, bool):
            key.append(type(x))
        else:
            try:
                hash(x)
                key.append((type(x), x))
            except TypeError:
                key.append((type(x), id(x)))
    return tuple(key)


jacrev = torch.func.jacrev
jacfwd = torch.func.jacfwd
vjp = torch.func.vjp
jvp = torch.func.jvp
hessian = torch.func.hessian
