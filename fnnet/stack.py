"""``Stacked``: ``n`` copies of a block, their params stacked on a leading axis, run by ``scan``.

    model = fn.Stacked(block, 12)               # block: x [..] -> y of x's shape
    params = model.init(key)                    # each leaf of block's params, now [12, ...]
    y = model.apply(params, x, key=k, train=True)

is ``fn.Sequential(block, block, ..., block)`` (``n`` times) written as a loop over layers, as
Haiku's ``layer_stack``, Flax's ``nn.scan`` over ``params`` and Equinox's vmapped init + ``scan``
write it. The numbers are the Sequential's: ``init(key)`` gives layer ``i`` the params
``block.init(split(key, n)[i])``, which is what the Sequential's own ``init`` gives its child
``"i"``, and ``apply`` gives layer ``i`` the key ``split(key, n)[i]``, as the Sequential splits
its key over its children (the same dropout masks). A stateful block (BatchNorm) has its state
stacked the same way, threaded through the loop and returned stacked.

How it runs:

* **Eager** (and under ``fn.grad``/``fn.vmap``): :func:`fnnet.scan` over ``(params, state,
  keys)`` with the activation as the carry, i.e. the Python loop; autograd records it as it
  would the Sequential.
* **Under ``fn.jit`` without gradients** (inference, ``no_grad``): the same scan, which is
  torch's scan op there: the block is traced once, the graph does not grow with ``n``.
* **Under ``fn.jit`` with grad mode on** (a training step, ``fn.grad`` or ``.backward()``):
  ``fnnet.scan`` would unroll (torch's scan op is not trusted with gradients), so the compiled
  graph, and its compile time, would grow with ``n``. Instead the stack is two opaque custom ops
  (``fnnet::stacked``, ``fnnet::stacked_backward``; the pattern of ``cells.fused``): the forward
  runs the layer loop eagerly and keeps each layer's input (``[n, *x.shape]``); the backward
  walks the layers in reverse and recomputes each one's forward from its input under
  ``torch.func.vjp`` (rematerialization: one more forward of the block, the activations of one
  layer at a time). The graph holds two nodes whatever ``n``; the block itself runs op by op
  (not fused by inductor). That backward cannot be differentiated again (compiled grad of
  grad raises); eagerly it can. A compiled ``vmap`` over a stack runs the unrolled scan.

The opaque ops trade speed for flat compile time: the block runs op by op, unfused, and is
computed twice. ``unroll=True`` keeps the unrolled scan for compiled training instead (inductor
fuses the whole step; compile time grows with ``n``): for small blocks, where per-op overhead
dominates, the unrolled step is several times faster.

``remat=True`` wraps each layer in :func:`fnnet.checkpoint` on the eager path: the backward
recomputes a layer's activations from its input, so a deep stack keeps the layer inputs
instead of every intermediate (the compiled training path always does).

``unstack`` / ``stack`` convert between the stacked tree and a Sequential's ``{"0": ..., "1":
...}`` tree (``as_sequential()`` is that Sequential): the weights of a ``torch.nn.Sequential`` of
identical blocks load with ``model.stack(fn.params_from_module(torch_seq))``.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from typing import Any

import torch

from . import _compat, random
from . import tree as T
from .transforms import inside_vmap
from .module import Module, ParamsError, Sequential, _as_module, _describe, _run
from .remat import checkpoint
from .scan import scan

__all__ = ["Stacked"]


@dataclass(frozen=True)
class Stacked(Module):
    """``n`` copies of ``block`` (``x -> y`` of ``x``'s shape and dtype), params ``[n, ...]``.
    ``block`` may be a module, a function or a list of them (a Sequential), as a Sequential's layer."""

    block: Module
    n: int
    remat: bool = False
    unroll: bool = False

    def __post_init__(self):
        object.__setattr__(self, "block", _as_module(self.block, "Stacked"))  # as Sequential takes a layer
        if isinstance(self.n, bool) or not isinstance(self.n, int):
            raise TypeError(f"Stacked: n must be an int, got {type(self.n).__name__}")
        if self.n < 1:
            raise ValueError(f"Stacked: n must be >= 1, got {self.n}")
        for name in ("remat", "unroll"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"Stacked: {name} must be a bool, got {type(getattr(self, name)).__name__}")

    @property
    def stateful(self) -> bool:
        return self.block.stateful

    def init(self, key: torch.Tensor) -> dict:
        """Layer ``i``: ``block.init(split(key, n)[i])``, stacked (as ``as_sequential().init(key)``)."""
        return _stacked([self.block.init(k) for k in random.split(key, self.n)])

    def init_state(self, device: Any = None) -> dict:
        if not self.block.stateful:
            return {}
        return _stacked([self.block.init_state(device) for _ in range(self.n)])

    def apply(self, params, x, *, state=None, key=None, train=False):
        if self.stateful and state is None:
            raise ValueError(f"{_describe(self)}: the block is stateful (running statistics): pass "
                             f"state=model.init_state()")
        keys = None if key is None else random.split(key, self.n)
        block, stateful = self.block, self.stateful

        def layer(p, s, k, h):
            y, s_new = _run(block, p, h, s, k, train)
            return y, (s_new if stateful else None)

        if self.remat:
            layer = checkpoint(layer)

        def step(h, xs):
            xs = xs or {}
            y, s_new = layer(xs.get("params", {}), xs.get("state"), xs.get("key"), h)
            _check_carry(self, h, y)
            if not stateful:  # an empty y, not None: inductor's scan lowering fails on a scan without ys
                s_new = T.leaves(y)[0].new_zeros(0)
            return y, s_new

        xs = {"params": params or {}}
        if stateful:
            xs["state"] = state
        if keys is not None:
            xs["key"] = keys
        if not self.unroll and _opaque_applies(x):
            y, new_state = _stacked_op(self, train, x, xs)
            return (y, new_state) if stateful else y
        if not T.leaves(xs):  # a parameter-free, stateless block without a key: nothing to slice
            x, new_state = scan(step, x, None, length=self.n)
        else:
            x, new_state = scan(step, x, xs)
        return (x, new_state) if stateful else x

    # -- conversions to and from a Sequential of n blocks ------------------------------------
    def as_sequential(self) -> Sequential:
        """The Sequential of ``n`` copies of ``block``: the same numbers, unrolled."""
        return Sequential(*[self.block] * self.n)

    def unstack(self, tree: dict) -> dict:
        """A stacked params (or state) tree as the Sequential's ``{"0": ..., "n-1": ...}``."""
        if not tree:
            return {}
        layers = T.unstack(tree)
        if len(layers) != self.n:
            raise ParamsError(f"{_describe(self)}.unstack: expected leaves with a leading axis of {self.n}, "
                              f"got {len(layers)}")
        return {str(i): layer for i, layer in enumerate(layers)}

    def stack(self, tree: dict) -> dict:
        """A Sequential's ``{"0": ..., "n-1": ...}`` params (or state) tree, stacked: what ``apply``
        takes. Layers with nothing to stack (parameter-free blocks) may be absent."""
        if not isinstance(tree, dict):
            raise ParamsError(f"{_describe(self)}.stack: expected a dict keyed '0'..'{self.n - 1}', "
                              f"got {type(tree).__name__}")
        want = [str(i) for i in range(self.n)]
        if not tree:
            return {}
        if sorted(tree, key=lambda k: (len(k), k)) != want:
            raise ParamsError(f"{_describe(self)}.stack: expected the keys {want} (one per layer), "
                              f"got {sorted(tree)}")
        return _stacked([tree[k] for k in want])


def _stacked(trees: list) -> dict:
    """``tree.stack`` of per-layer trees; empty trees stay ``{}``."""
    return T.stack(trees) if T.leaves(trees[0]) else {}


def _check_carry(model: Stacked, x: Any, y: Any) -> None:
    """The block must give back its input's structure, shapes and dtypes (the next layer's input)."""
    same = T.structure(x) == T.structure(y) and all(
        isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype
        for a, b in zip(T.leaves(x), T.leaves(y)))
    if not same:
        def desc(t):
            return T.map(lambda v: f"{list(v.shape)} {v.dtype}" if isinstance(v, torch.Tensor)
                         else type(v).__name__, t)
        raise ValueError(f"{_describe(model)}: the block must map its input to an output of the same "
                         f"structure, shapes and dtypes (the next layer's input); got {desc(y)} from "
                         f"{desc(x)}")


# -- compiled training: two opaque ops, whatever n ----------------------------------------------
#
# With gradients, fnnet.scan unrolls under fn.jit (torch's scan op is not trusted with them), so
# the compiled step would grow with n. Instead, under torch.compile with grad mode on, the stack
# is one autograd.Function whose forward and backward each call one custom op the compiler does
# not trace into (the pattern of cells.fused): the forward op runs the layer loop and keeps each
# layer's input ([n, *x.shape]); the backward op walks the layers in reverse, recomputing each
# layer's forward from its input under torch.func.vjp (rematerialization: one more forward of
# the block per step, the memory of one layer's activations). The loops run eagerly inside the
# ops, so the graph holds two nodes whatever n is.

_REGISTRY: dict = {}  # handle -> (model, train, paths of xs, n_params): filled at trace time, read by the ops
try:
    from torch.utils._python_dispatch import _disable_current_modes as _no_dispatch_modes
except ImportError:  # pragma: no cover - private in torch; present from 2.0 to 2.13 at least
    from contextlib import nullcontext as _no_dispatch_modes

# the dispatcher's thread-local key sets of plain eager code (read at import, at top level)
_EAGER_KEYS = (torch._C._dispatch_tls_local_include_set(), torch._C._dispatch_tls_local_exclude_set())


@contextlib.contextmanager
def _eager_island(grad: bool):
    """Inside a custom op's implementation, run as plain eager code at top level: the dispatcher
    excludes autograd (and, under a dispatch mode such as the compiled graph's first-run
    aliasing check, functorch) there, and the block's backward needs both. What torch's own
    ``invoke_leaf_function`` does."""
    with _no_dispatch_modes(), torch._C._ForceDispatchKeyGuard(*_EAGER_KEYS), torch.set_grad_enabled(grad):
        yield
_HANDLES: dict = {}
_COUNTER = itertools.count()


def _opaque_applies(x: Any) -> bool:
    """Compiling, with grad mode on, a tensor activation, outside vmap (torch.compile cannot vmap
    an autograd.Function)."""
    return (torch.compiler.is_compiling() and torch.is_grad_enabled() and isinstance(x, torch.Tensor)
            and not inside_vmap())


@_compat.assume_constant_result  # run for real while dynamo traces: registers, the handle is a constant
def _handle(model: Stacked, train: bool, paths: tuple, n_params: int) -> int:
    key = (model, train, paths)
    if key not in _HANDLES:
        _HANDLES[key] = handle = next(_COUNTER)
        _REGISTRY[handle] = (model, train, paths, n_params)
    return _HANDLES[key]


def _flat(tree: dict, prefix: tuple = ()) -> list:
    """``[(path, leaf)]`` of a nested dict, in its order (paths are tuples of keys)."""
    out = []
    for k, v in tree.items():
        if isinstance(v, dict):
            out += _flat(v, prefix + (k,))
        else:
            out.append((prefix + (k,), v))
    return out


def _nest(paths, leaves) -> dict:
    out: dict = {}
    for path, leaf in zip(paths, leaves):
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        d[path[-1]] = leaf
    return out


def _stacked_op(model: Stacked, train: bool, x: torch.Tensor, xs: dict) -> tuple:
    flat = _flat(xs)
    paths = tuple(p for p, _ in flat)
    n_params = sum(p[0] == "params" for p in paths)
    handle = _handle(model, train, paths, n_params)
    x, *leaves = _fresh_views(x, *(v for _, v in flat))
    out = _StackFn.apply(handle, n_params, x, *leaves)
    new_state = None
    if model.stateful:
        state_paths = [p[1:] for p in paths if p[0] == "state"]
        new_state = _nest(state_paths, out[2:])
    return out[0], new_state


def _fresh_views(*tensors: torch.Tensor) -> tuple:
    """A view of each input of the Function: dynamo reads a compiled function's own inputs'
    requires_grad as it was before torch.func.grad marked them, and would drop the backward
    (as ``cells.fused.fresh_views`` explains); a view is a new tensor it reads right."""
    return tuple(t.view(t.shape) for t in tensors)


def _forward_impl(handle: int, x: torch.Tensor, leaves: list) -> list:
    model, train, paths, _ = _REGISTRY[handle]
    inputs = x.new_empty((model.n, *x.shape))
    columns = [v.unbind(0) for v in leaves]
    state_paths = [p[1:] for p in paths if p[0] == "state"]
    new_state = [[] for _ in state_paths]
    h = x
    for i in range(model.n):
        inputs[i].copy_(h)
        xs = _nest(paths, [c[i] for c in columns])
        h, s = _run(model.block, xs["params"], h, xs.get("state"), xs.get("key"), train)
        _check_carry(model, inputs[i], h)
        for column, path in zip(new_state, state_paths):  # in the input state's order
            column.append(_at(s, path))
    return [h.clone() if h is x else h, inputs, *(torch.stack(c) for c in new_state)]


def _at(tree: dict, path: tuple) -> torch.Tensor:
    for k in path:
        tree = tree[k]
    return tree


def _backward_impl(handle: int, dy: torch.Tensor, inputs: torch.Tensor, leaves: list) -> list:
    """The layers in reverse: each one's forward recomputed from its input on fresh leaves and
    differentiated by autograd (restored in the island), the input gradient carried down."""
    model, train, paths, n_params = _REGISTRY[handle]
    grads = [torch.zeros_like(v) for v in leaves[:n_params]]
    columns = [v.unbind(0) for v in leaves]
    g = dy
    for i in range(model.n - 1, -1, -1):
        p = [c[i].detach().requires_grad_(c[i].is_floating_point()) for c in columns[:n_params]]
        h = inputs[i].detach().requires_grad_()
        xs = _nest(paths, p + [c[i] for c in columns[n_params:]])
        y, _ = _run(model.block, xs["params"], h, xs.get("state"), xs.get("key"), train)
        wrt = [h, *(v for v in p if v.requires_grad)]
        d = iter(torch.autograd.grad(y, wrt, g, allow_unused=True))
        dh = next(d)
        for buf, v in zip(grads, p):
            dv = next(d) if v.requires_grad else None
            if dv is not None:
                buf[i].copy_(dv)
        g = dh if dh is not None else torch.zeros_like(g)
    return [g, *grads]


@torch.library.custom_op("fnnet::stacked", mutates_args=())
def _forward_op(handle: int, x: torch.Tensor, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    with _eager_island(grad=False):
        return _forward_impl(handle, x, leaves)


@_forward_op.register_fake
def _(handle, x, leaves):
    model, _, paths, _ = _REGISTRY[handle]
    state_leaves = [v for p, v in zip(paths, leaves) if p[0] == "state"]
    return [x.new_empty(x.shape), x.new_empty((model.n, *x.shape)), *(v.new_empty(v.shape) for v in state_leaves)]


@torch.library.custom_op("fnnet::stacked_backward", mutates_args=())
def _backward_op(handle: int, dy: torch.Tensor, inputs: torch.Tensor,
                 leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    with _eager_island(grad=True):
        return _backward_impl(handle, dy, inputs, leaves)


@_backward_op.register_fake
def _(handle, dy, inputs, leaves):
    n_params = _REGISTRY[handle][3]
    return [dy.new_empty(dy.shape), *(v.new_empty(v.shape) for v in leaves[:n_params])]


def _refuse_second_derivative(ctx, *grads):
    raise RuntimeError("Stacked: the compiled backward of a stack (fnnet::stacked_backward) cannot be "
                       "differentiated again (grad of grad, a gradient penalty); run that step eagerly")


_backward_op.register_autograd(_refuse_second_derivative, setup_context=lambda ctx, inputs, output: None)


class _StackFn(torch.autograd.Function):
    @staticmethod
    def forward(handle, n_params, x, *leaves):
        return tuple(_forward_op(handle, x, list(leaves)))

    @staticmethod
    def setup_context(ctx, inputs, output):
        handle, n_params, _, *leaves = inputs
        ctx.handle, ctx.n_params, ctx.n_leaves = handle, n_params, len(leaves)
        ctx.save_for_backward(output[1], *leaves)
        ctx.mark_non_differentiable(*output[1:])

    @staticmethod
    def backward(ctx, dy, *_):
        inputs, *leaves = ctx.saved_tensors
        out = _backward_op(ctx.handle, dy, inputs, leaves)
        return (None, None, out[0], *out[1:], *[None] * (ctx.n_leaves - ctx.n_params))
