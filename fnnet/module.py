"""The Module protocol and the combinators that build models out of modules.

A module is a frozen dataclass of hyperparameters: hashable, so ``torch.compile``
treats it as a constant. It has two pure methods::

    params = module.init(key)                       # nested dict of tensors
    y = module.apply(params, x, key=None, train=False)

Stateful modules (BatchNorm) also have ``init_state()`` and return ``(y, new_state)``
from ``apply(params, x, state=..., train=...)``; ``module.stateful`` tells which form.

A user model is a frozen dataclass subclassing :class:`Module` whose Module-typed
fields are its children; the default ``init`` initializes each child under its field
name (children without parameters get no key), so the params tree has the names
``nn.Module`` would give it::

    @dataclass(frozen=True)
    class MLP(fn.Module):
        fc1: fn.Linear
        fc2: fn.Linear

        def apply(self, params, x, *, key=None, train=False):
            return self.fc2.apply(params["fc2"], fn.relu(self.fc1.apply(params["fc1"], x)))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable

import torch

from . import random
from . import tree as T

__all__ = ["Module", "Sequential", "Residual", "Concat", "Lambda", "ParamsError", "check_params",
           "param_shapes"]


class ParamsError(ValueError):
    """A params (or state) tree does not fit the module it is given to."""


class Module:
    """Base class of every fnnet model. Subclasses are ``@dataclass(frozen=True)``."""

    # -- structure ---------------------------------------------------------------------------
    def children(self) -> dict[str, Module]:
        """Named sub-modules, in field order (the default: Module-typed dataclass fields)."""
        if not dataclasses.is_dataclass(self):
            return {}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), Module)}

    @property
    def stateful(self) -> bool:
        """True if ``apply`` takes ``state=`` and returns ``(y, new_state)``."""
        # Asked on every apply of every container: computed once per (immutable) module and
        # remembered in its __dict__ (not a field: eq, hash and repr are unaffected). Not
        # written while torch.compile traces, where it is folded to a constant anyway.
        try:
            return self.__dict__["_fnnet_stateful"]
        except KeyError:
            value = any(c.stateful for c in self.children().values())
            if not torch.compiler.is_compiling():
                self.__dict__["_fnnet_stateful"] = value
            return value

    # -- the two pure methods ----------------------------------------------------------------
    def init(self, key: torch.Tensor) -> dict:
        """Parameters of every child under its name; children without parameters are left out."""
        kids = self.children()
        params = {}
        if kids:
            keys = random.split(key, len(kids))
            for (name, child), k in zip(kids.items(), keys):
                p = child.init(k)
                if p:
                    params[name] = p
        return params

    def init_state(self, device: Any = None) -> dict:
        """Initial non-trainable state (running statistics), keyed like the params."""
        return {name: c.init_state(device) for name, c in self.children().items() if c.stateful}

    def apply(self, params: dict, *inputs: Any, key: torch.Tensor | None = None,
              train: bool = False) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define apply(params, *inputs, key=None, train=False)")

    def __call__(self, params: dict, *inputs: Any, **kwargs: Any) -> Any:
        """Same as :meth:`apply`, so a module is a function ``(params, x) -> y``."""
        return self.apply(params, *inputs, **kwargs)

    # -- introspection -------------------------------------------------------------------------
    def param_shapes(self) -> dict:
        return param_shapes(self)

    def check(self, params: dict, state: dict | None = None) -> None:
        check_params(self, params, state)


def _name(module: Module) -> str:
    """The module's repr, or just its type for a container (whose repr is the whole model)."""
    return type(module).__name__ if module.children() else repr(module)


def _spec(tree: Any) -> dict[str, tuple]:
    return {p: tuple(x.shape) for p, x in T.flatten_with_paths(tree)}


def param_shapes(module: Module) -> dict:
    """The params tree ``module.init`` would build, with ``torch.Size`` leaves (computed on the
    meta device: no memory, no arithmetic)."""
    return T.map(lambda x: x.shape, module.init(random.key(0, device="meta")))


def check_params(module: Module, params: Any, state: Any = None) -> None:
    """Raise :class:`ParamsError` naming every missing or extra path and every wrong shape."""
    for what, given, expected in (("params", params, module.init(random.key(0, device="meta"))),
                                  ("state", state, module.init_state() if state is not None else None)):
        if given is None:
            continue
        if not isinstance(given, dict):
            raise ParamsError(f"{type(module).__name__}: {what} must be a nested dict of tensors, "
                              f"got {type(given).__name__}")
        want, got = _spec(expected), _spec(given)
        problems = [f"missing {p!r} (expected shape {list(s)})" for p, s in want.items() if p not in got]
        problems += [f"unexpected {p!r} (shape {list(s)})" for p, s in got.items() if p not in want]
        problems += [f"{p!r} has shape {list(got[p])}, expected {list(s)}"
                     for p, s in want.items() if p in got and got[p] != s]
        if problems:
            raise ParamsError(f"{what} do not fit {_name(module)}:\n  " + "\n  ".join(problems))


def _split_or_none(key: torch.Tensor | None, n: int) -> list:
    return [None] * n if key is None else list(random.split(key, n))


@dataclass(frozen=True)
class Lambda(Module):
    """A parameter-free function ``f(x)`` as a module (activations inside Sequential)."""

    f: Callable

    def apply(self, params, *inputs, key=None, train=False):
        return self.f(*inputs)


def _as_module(m: Any) -> Module:
    if isinstance(m, Module):
        return m
    if callable(m):
        return Lambda(m)
    raise TypeError(f"expected an fnnet Module or a function, got {type(m).__name__}")


def _run(layer: Module, params: dict, x: Any, state: dict, key, train: bool):
    """Apply one child, threading its state if it has any."""
    if layer.stateful:
        return layer.apply(params, x, state=state, key=key, train=train)
    return layer.apply(params, x, key=key, train=train), state


class _Container(Module):
    """Children ``"0"``, ``"1"``, ... as in ``nn.Sequential``; plain functions allowed."""

    def children(self) -> dict[str, Module]:
        return {str(i): m for i, m in enumerate(self.layers)}

    def _init_layers(self, layers: tuple) -> None:
        object.__setattr__(self, "layers", tuple(_as_module(m) for m in layers))


@dataclass(frozen=True, init=False)
class Sequential(_Container):
    """``Sequential(fn.Linear(2, 400), fn.relu, fn.Linear(400, 1))``: params keyed ``"0"``, ``"2"``
    like ``nn.Sequential`` (layers without parameters have no key)."""

    layers: tuple

    def __init__(self, *layers: Any):
        self._init_layers(layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int) -> Module:
        return self.layers[i]

    def apply(self, params, x, *, state=None, key=None, train=False):
        if self.stateful and state is None:
            raise ValueError("Sequential contains stateful layers (BatchNorm): pass state=model.init_state()")
        keys = _split_or_none(key, len(self.layers))
        new_state = {}
        for i, (layer, k) in enumerate(zip(self.layers, keys)):
            name = str(i)
            x, s = _run(layer, params.get(name, {}), x, state.get(name) if state else None, k, train)
            if layer.stateful:
                new_state[name] = s
        return (x, new_state) if self.stateful else x


@dataclass(frozen=True)
class Residual(Module):
    """``activation(block(x) + shortcut(x))``; the shortcut is the identity when ``None``
    (a 1x1 convolution when the channel count changes). Params: ``{"block", "shortcut"}``."""

    block: Module
    shortcut: Module | None = None
    activation: Callable | None = None

    def apply(self, params, x, *, state=None, key=None, train=False):
        kb, ks = _split_or_none(key, 2)
        state = state or {}
        y, sb = _run(self.block, params.get("block", {}), x, state.get("block"), kb, train)
        if self.shortcut is not None:
            x, ss = _run(self.shortcut, params.get("shortcut", {}), x, state.get("shortcut"), ks, train)
        y = y + x
        if self.activation is not None:
            y = self.activation(y)
        if not self.stateful:
            return y
        new_state = {"block": sb} if self.block.stateful else {}
        if self.shortcut is not None and self.shortcut.stateful:
            new_state["shortcut"] = ss
        return y, new_state


@dataclass(frozen=True, init=False)
class Concat(_Container):
    """Parallel branches on the same input, outputs concatenated along ``dim`` (channels: the
    Inception block). Branches are keyed ``"0"``, ``"1"``, ..."""

    layers: tuple
    dim: int = 1

    def __init__(self, *branches: Any, dim: int = 1):
        self._init_layers(branches)
        object.__setattr__(self, "dim", dim)

    def apply(self, params, x, *, state=None, key=None, train=False):
        keys = _split_or_none(key, len(self.layers))
        outs, new_state = [], {}
        for i, (branch, k) in enumerate(zip(self.layers, keys)):
            name = str(i)
            y, s = _run(branch, params.get(name, {}), x, (state or {}).get(name), k, train)
            outs.append(y)
            if branch.stateful:
                new_state[name] = s
        y = torch.cat(outs, dim=self.dim)
        return (y, new_state) if self.stateful else y
