"""Shared checks for layers: hyperparameters validated at construction (as torch.nn validates
them) and inputs at apply, with errors that name the layer and what it expected.

The params tree is not checked here: every Module's outermost ``apply`` checks it against
``init`` (``fnnet.module``), so a layer simply reads ``params["weight"]``.

Construction checks read a dataclass field, validate it with ``fnnet._check`` (the layer's
class name as owner) and store the normalized value (``Conv2d(3, 4, 3)`` keeps
``kernel_size=(3, 3)``): ``TypeError`` for a wrong type (a float where an int is expected, a
bool for a size), ``ValueError`` for a value out of range.
"""

from __future__ import annotations

from typing import Any

import torch

from .. import _check
from ..module import Module, ParamsError


def param(layer: Module, params: dict, name: str, shape: tuple) -> torch.Tensor:
    """``params[name]``, checked to exist with ``shape`` (for code that reads params outside a
    checked ``apply``; a layer's own ``apply`` has its params checked already)."""
    try:
        p = params[name]
    except (KeyError, TypeError):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ParamsError(f"{layer!r}: params have no {name!r} (expected shape {list(shape)}); "
                          f"got {got}") from None
    if tuple(p.shape) != tuple(shape):
        raise ParamsError(f"{layer!r}: params[{name!r}] has shape {list(p.shape)}, "
                          f"expected {list(shape)}")
    return p


def expect(layer: Module, ok: bool, what: str, x: Any) -> None:
    """Raise ``ValueError("<layer>: expected <what>, got <shape>")`` unless ``ok``."""
    if not ok:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{layer!r}: expected {what}, got {got}")


def ntuple(v: Any, n: int) -> tuple:
    if isinstance(v, (tuple, list)):
        if len(v) != n:
            raise ValueError(f"expected {n} values, got {tuple(v)}")
        return tuple(v)
    return (v,) * n


# -- construction checks: fnnet._check with the layer's class name as owner -------------------

def _set(layer: Module, name: str, value: Any) -> None:
    object.__setattr__(layer, name, value)


def ints(layer: Module, *names: str, minimum: int | None = 1) -> None:
    """Each field an int (not a bool) ``>= minimum``."""
    for name in names:
        _set(layer, name, _check.integer(type(layer).__name__, name, getattr(layer, name), minimum))


def sizes(layer: Module, name: str, n: int, minimum: int = 1, none: bool = False) -> None:
    """An int or a sequence of ``n`` ints, each ``>= minimum`` (or ``None`` where ``none``),
    stored as an ``n``-tuple."""
    v, owner = getattr(layer, name), type(layer).__name__
    what = f"an int >= {minimum}{' or None' if none else ''}, or a tuple of {n} of them"
    items = tuple(v) if isinstance(v, (tuple, list)) else (v,) * n
    if len(items) != n:
        _check.fail(owner, name, what, repr(v))
    _set(layer, name, tuple(None if item is None and none else
                            _check.integer(owner, name, item, minimum, expected=what, shown=v) for item in items))


def real(layer: Module, name: str, low: float | None = None, high: float | None = None,
         open_low: bool = False, none: bool = False, nonzero: bool = False, arg: str | None = None) -> None:
    """A finite real number (not a bool) in ``[low, high]`` (``(low, high]`` with ``open_low``),
    stored as a float; ``None`` allowed where ``none``. ``arg``: the constructor argument's name
    in errors, where it differs from the field's (PReLU's ``init``)."""
    v = getattr(layer, name)
    if v is None and none:
        return
    what = (f"a finite number{_check.interval(low, high, open_low)}{' other than 0' if nonzero else ''}"
            f"{' or None' if none else ''}")
    _set(layer, name, _check.real(type(layer).__name__, arg or name, v, low, high, lo_open=open_low,
                                  nonzero=nonzero, expected=what))


def flags(layer: Module, *names: str) -> None:
    """Each field a bool."""
    for name in names:
        _check.flag(type(layer).__name__, name, getattr(layer, name))


def choice(layer: Module, name: str, choices: tuple) -> None:
    """One of ``choices`` (``TypeError`` for a value that is no string)."""
    _check.choice(type(layer).__name__, name, getattr(layer, name), choices)


def divisible(layer: Module, by: str, *names: str) -> None:
    """Each ``names`` field divisible by the ``by`` field (channels by groups)."""
    d = getattr(layer, by)
    for name in names:
        if getattr(layer, name) % d:
            raise ValueError(f"{type(layer).__name__}: {name} ({getattr(layer, name)}) must be divisible "
                             f"by {by} ({d})")


def window_fits(layer: Module, x: torch.Tensor, kernel: tuple, stride: tuple, padding: tuple,
                dilation: tuple, ceil_mode: bool = False) -> None:
    """Every spatial dim of ``x`` gives at least one output of a sliding window (convolution,
    pooling), as torch demands; static shapes: free under compile."""
    n = len(kernel)
    for i in range(n):
        size, k, s, p, d = x.shape[x.ndim - n + i], kernel[i], stride[i], padding[i], dilation[i]
        span = size + 2 * p - d * (k - 1) - 1
        out = (-(-span // s) if ceil_mode else span // s) + 1
        if span < 0 or out < 1:
            raise ValueError(f"{layer!r}: input {list(x.shape)} is too small: spatial dim {i} of size "
                             f"{size} (padded: {size + 2 * p}) is smaller than the window ({d * (k - 1) + 1})")


def dropout_inputs(layer: Module, x: Any, key: Any) -> None:
    """A tensor to drop from and a key (an int64 tensor ``[2]``) to draw the mask from."""
    if key is None:
        raise ValueError(f"{layer!r}: train=True needs a key= for the dropout mask")
    if not isinstance(key, torch.Tensor) or key.dtype != torch.int64 or key.shape != (2,):
        got = f"{key.dtype} {list(key.shape)}" if isinstance(key, torch.Tensor) else type(key).__name__
        raise TypeError(f"{layer!r}: key must be a key (fnnet.random.key: int64 [2]), got {got}")
    expect(layer, isinstance(x, torch.Tensor) and x.is_floating_point(), "a floating-point tensor", x)
