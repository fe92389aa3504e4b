"""Construction-time checks of hyperparameters, as ``torch.optim`` and its schedulers make them
(the same conditions, plus: a number must be a finite real, and an integer an ``int``).
Each error names the optimizer or schedule, the argument, what was expected and what came."""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch


def _real(owner: str, name: str, value: Any) -> float:
    """``value`` as a float: a real number or a one-element real tensor, finite."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{owner}: {name} must be a number or a one-element real tensor, got a "
                             f"{value.dtype} tensor of shape {list(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {type(value).__name__} {value!r}")
    try:
        f = float(value)
    except OverflowError:  # an int beyond float's range
        f = math.inf
    if not math.isfinite(f):
        raise ValueError(f"{owner}: {name} must be finite, got {value}")
    return f


def number(owner: str, name: str, value: Any, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False) -> None:
    """A finite real in ``[lo, hi]`` (``lo_open``/``hi_open``: the bound excluded)."""
    v = _real(owner, name, value)
    below = lo is not None and (v <= lo if lo_open else v < lo)
    above = hi is not None and (v >= hi if hi_open else v > hi)
    if below or above:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        rng = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise ValueError(f"{owner}: {name} must be in {rng}, got {value}")


def nonneg(owner: str, name: str, value: Any) -> None:
    number(owner, name, value, lo=0.0)


def lr(owner: str, value: Any, schedule_ok: bool = True) -> None:
    """``lr >= 0`` (torch's "Invalid learning rate"), or a schedule (a callable of the count)."""
    if callable(value):
        if not schedule_ok:
            raise TypeError(f"{owner}: lr cannot be a schedule here")
        return
    number(owner, "lr", value, lo=0.0)


def betas(owner: str, value: Any, name: str = "betas") -> None:
    """A pair, each in ``[0, 1)`` (torch's "Invalid beta parameter at index i")."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{owner}: {name} must be a pair (beta1, beta2), got {value!r}")
    for i, b in enumerate(value):
        number(owner, f"{name}[{i}]", b, lo=0.0, hi=1.0, hi_open=True)


def integer(owner: str, name: str, value: Any, lo: int = 1) -> None:
    """An ``int`` (not a float, not a bool) ``>= lo``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an int, got {type(value).__name__} {value!r}")
    if value < lo:
        raise ValueError(f"{owner}: {name} must be an int >= {lo}, got {value}")


def flag(owner: str, name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{owner}: {name} must be True or False, got {type(value).__name__} {value!r}")


def choice(owner: str, name: str, value: Any, options: tuple) -> None:
    if not isinstance(value, (str, type(None))) or value not in options:
        raise ValueError(f"{owner}: {name} must be one of {', '.join(map(repr, options))}, got {value!r}")
