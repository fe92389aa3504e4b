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
  graph, and its compile time, would grow with ``n``. Instead the stack is ``fnnet._loop``'s
  loop: two opaque custom ops (``fnnet::loop``, ``fnnet::loop_backward``) running the layers in
  chunks of ``k``, each chunk one inductor-compiled function of ``k`` unrolled layers (fused
  inside the chunk). The layer's joint forward+backward graph is partitioned once: the forward
  keeps each layer's residuals (what its backward reads, stacked ``[n, ...]``; its params are
  not copied), the backward runs ``k`` layers' backward graphs per compiled chunk, without
  recomputing the forward. With ``remat=True`` the forward keeps the activation at each chunk
  boundary only and the backward recomputes each chunk from it under the chunk's compiled VJP
  (rematerialization: one more forward of the block, the activations of one chunk at a
  time; also the path when a recompile made the batch size symbolic). The outer graph holds two
  nodes whatever ``n``; two chunk bodies are compiled (three when ``k`` does not divide ``n``:
  the last, shorter chunk), the first time the step runs. ``unroll=k`` (an int) sets ``k``;
  ``unroll=False`` takes ``fnnet._loop.DEFAULT_CHUNK`` (4, or ``n`` if smaller). Under
  ``fn.grad`` of ``fn.grad`` (a second derivative) and a compiled ``vmap`` the stack runs the
  unrolled scan instead (the opaque backward cannot be differentiated again).

``unroll=True`` keeps the unrolled scan for compiled training (inductor fuses the whole step;
compile time grows with ``n``).

``remat=True`` wraps each layer in :func:`fnnet.checkpoint` on the eager path: the backward
recomputes a layer's activations from its input, so a deep stack keeps the layer inputs
instead of every intermediate (on the compiled training path: the chunk inputs, above).

``unstack`` / ``stack`` convert between the stacked tree and a Sequential's ``{"0": ..., "1":
...}`` tree (``as_sequential()`` is that Sequential): the weights of a ``torch.nn.Sequential`` of
identical blocks load with ``model.stack(fn.params_from_module(torch_seq))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import _loop, random
from . import tree as T
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
    unroll: bool | int = False

    def __post_init__(self):
        object.__setattr__(self, "block", _as_module(self.block, "Stacked"))  # as Sequential takes a layer
        if isinstance(self.n, bool) or not isinstance(self.n, int):
            raise TypeError(f"Stacked: n must be an int, got {type(self.n).__name__}")
        if self.n < 1:
            raise ValueError(f"Stacked: n must be >= 1, got {self.n}")
        if not isinstance(self.remat, bool):
            raise TypeError(f"Stacked: remat must be a bool, got {type(self.remat).__name__}")
        u = self.unroll
        if not isinstance(u, (bool, int)) or (not isinstance(u, bool) and u < 1):
            raise TypeError(f"Stacked: unroll must be a bool or an int >= 1 (layers per compiled chunk), got {u!r}")

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
        if self.unroll is not True and _opaque_applies(x):
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


# -- compiled training: the opaque chunked loop of fnnet._loop, whatever n ---------------------
#
# With gradients, fnnet.scan unrolls under fn.jit (torch's scan op is not trusted with them), so
# the compiled step would grow with n. Instead the stack is fnnet._loop's loop: two custom ops the
# outer compile does not trace into, running compiled chunks of k layers (the forward keeping
# each layer's residuals, the backward running the layer's backward graph on them; with
# remat=True the forward keeps chunk-boundary activations and the backward recomputes).
# The block's per-layer params, state and key are the loop's xs; the activation is its carry;
# the new state of each layer its ys.


_opaque_applies = _loop.applies


def _make_body(model: Stacked, spec: tuple):
    """The step of the loop: one layer, ``xs`` the layer's leaves at ``paths`` (or one empty
    placeholder), ``ys`` its new state leaves in the input state's order."""
    train, paths = spec
    state_paths = [p[1:] for p in paths if p[0] == "state"]

    def body(consts, carry, x_t):
        xs = _nest(paths, x_t)
        h, s = _run(model.block, xs.get("params", {}), carry[0], xs.get("state"), xs.get("key"), train)
        _check_carry(model, carry[0], h)
        return [h], [_at(s, p) for p in state_paths]
    return body


_loop.register_kind("stacked", _make_body)


_flat, _nest = _loop.flat, _loop.nest


def _stacked_op(model: Stacked, train: bool, x: torch.Tensor, xs: dict) -> tuple:
    flat = _flat(xs)
    paths = tuple(p for p, _ in flat)
    leaves = [v for _, v in flat] or [x.new_zeros((model.n, 0))]  # nothing per layer: a placeholder
    chunk = None if isinstance(model.unroll, bool) else model.unroll
    state_paths = [p[1:] for p in paths if p[0] == "state"]
    (y,), new = _loop.loop("stacked", model, (train, paths), [], [x], leaves, ys_grad=(False,) * len(state_paths),
                           chunk=chunk, remat=model.remat)
    return y, (_nest(state_paths, new) if model.stateful else None)


def _at(tree: dict, path: tuple) -> torch.Tensor:
    for k in path:
        tree = tree[k]
    return tree
