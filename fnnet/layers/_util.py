"""Shared checks for layers: hyperparameters validated at construction (as torch.nn validates
them) and inputs at apply, with errors that name the layer and what it expected.

The params tree is not checked here: every Module's outermost ``apply`` checks it against
``init`` (``fnnet.module``), so a layer simply reads ``params["weight"]``.

Construction checks read a dataclass field, validate it and store the normalized value
(``Conv2d(3, 4, 3)`` keeps ``kernel_size=(3, 3)``): ``TypeError`` for a wrong type (a float
where an int is expected, a bool for a size), ``ValueError`` for a value out of range.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import torch

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


# -- construction checks ------------------------------------------------------------------------

def _fail(layer: Module, name: str, what: str, v: Any, exc: type = ValueError):
    raise exc(f"{type(layer).__name__}: {name} must be {what}, got {v!r}")


def _int(layer: Module, name: str, v: Any, minimum: int | None, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        _fail(layer, name, what, v, TypeError)
    v = operator.index(v)
    if minimum is not None and v < minimum:
        _fail(layer, name, what, v)
    return v


def _set(layer: Module, name: str, value: Any) -> None:
    object.__setattr__(layer, name, value)


def ints(layer: Module, *names: str, minimum: int | None = 1) -> None:
    """Each field an int (not a bool) ``>= minimum``."""
    what = "an int" if minimum is None else f"an int >= {minimum}"
    for name in names:
        _set(layer, name, _int(layer, name, getattr(layer, name), minimum, what))


def sizes(layer: Module, name: str, n: int, minimum: int = 1, none: bool = False) -> None:
    """An int or a sequence of ``n`` ints, each ``>= minimum`` (or ``None`` where ``none``),
    stored as an ``n``-tuple."""
    v = getattr(layer, name)
    elem = f"an int >= {minimum}" + (" or None" if none else "")
    what = f"{elem}, or a tuple of {n} of them"
    items = tuple(v) if isinstance(v, (tuple, list)) else (v,) * n
    if len(items) != n:
        _fail(layer, name, what, v)
    out = []
    for item in items:
        if item is None and none:
            out.append(None)
            continue
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            _fail(layer, name, what, v, TypeError)
        if item < minimum:
            _fail(layer, name, what, v)
        out.append(operator.index(item))
    _set(layer, name, tuple(out))


def real(layer: Module, name: str, low: float | None = None, high: float | None = None,
         open_low: bool = False, none: bool = False, nonzero: bool = False, arg: str | None = None) -> None:
    """A finite real number (not a bool) in ``[low, high]`` (``(low, high]`` with ``open_low``),
    stored as a float; ``None`` allowed where ``none``. ``arg``: the constructor argument's name
    in errors, where it differs from the field's (PReLU's ``init``)."""
    v = getattr(layer, name)
    label = arg or name
    if v is None and none:
        return
    bounds = ("" if low is None else f" {'>' if open_low else '>='} {low}") + \
             ("" if high is None else f"{' and' if low is not None else ''} <= {high}")
    what = f"a finite number{bounds}" + (" other than 0" if nonzero else "") + (" or None" if none else "")
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        _fail(layer, label, what, v, TypeError)
    try:
        f = float(v)
    except OverflowError:  # an int beyond float range (10**400)
        f = math.inf
    if (not math.isfinite(f) or (low is not None and (f <= low if open_low else f < low))
            or (high is not None and f > high) or (nonzero and f == 0.0)):
        _fail(layer, label, what, v)
    _set(layer, name, f)


def flags(layer: Module, *names: str) -> None:
    """Each field a bool."""
    for name in names:
        v = getattr(layer, name)
        if not isinstance(v, bool):
            _fail(layer, name, "a bool", v, TypeError)


def choice(layer: Module, name: str, choices: tuple) -> None:
    v = getattr(layer, name)
    if not isinstance(v, str) or v not in choices:
        _fail(layer, name, f"one of {list(choices)}", v, TypeError if not isinstance(v, str) else ValueError)


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
