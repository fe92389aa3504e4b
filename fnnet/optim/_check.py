"""Construction-time checks of hyperparameters, as ``torch.optim`` and its schedulers make them
(the same conditions, plus: a number must be a finite real, and an integer an ``int``):
``fnnet._check`` with the optimizer or schedule as owner, a one-element real tensor accepted
where a number is. Each error names the optimizer or schedule, the argument, what was expected
and what came."""

from __future__ import annotations

from typing import Any

from .. import _check


def number(owner: str, name: str, value: Any, lo: float | None = None, hi: float | None = None,
           lo_open: bool = False, hi_open: bool = False) -> None:
    """A finite real in ``[lo, hi]`` (``lo_open``/``hi_open``: the bound excluded)."""
    _check.real(owner, name, value, lo, hi, lo_open=lo_open, hi_open=hi_open, tensors=True)


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
    _check.integer(owner, name, value, lo)


def flag(owner: str, name: str, value: Any) -> None:
    _check.flag(owner, name, value)


def choice(owner: str, name: str, value: Any, options: tuple) -> None:
    """One of ``options`` (``ValueError`` for any other value, as torch)."""
    _check.choice(owner, name, value, options, wrong_kind=ValueError)
