"""Argument checks: one mechanism behind every constructor and function that validates its
arguments (layers, optimizers, schedules, losses, cells, random), so a wrong argument is
refused the same way everywhere, before any arithmetic:

    integer("Linear", "in_features", 0, lo=1)
    ValueError: Linear: in_features must be an int >= 1, got 0

Each check takes the owner (what the user called: ``"Linear"``, ``"adam"``,
``"losses.huber"``, ``"random.split"``), the argument's name and its value, and raises
``TypeError`` for a value of the wrong kind, ``ValueError`` for one of the right kind but out
of range: ``"<owner>: <name> must be <expected>, got <value>"`` (a wrong kind is shown with
its type: ``got float 3.5``; a tensor by dtype and shape). The domain adapters
(``fnnet.layers._util``, ``fnnet.optim._check``, ``losses._util``, ``cells.cell``,
``fnnet.random``) say who the owner is and which kinds they accept; ``words`` keeps torch's
own wording where users match it (the RNN layers).

The kinds:

- bool is never a number: ``True`` for a size or a rate is a mistake, not 1;
- an int is a ``numbers.Integral`` (Python and numpy ints; only ``int`` itself where
  ``exact``, as ``torch.nn.RNN`` demands), and a 0-d integer tensor or a ``SymInt`` (a dynamic
  size under ``torch.compile``) where ``tensors``;
- a real is a ``numbers.Real`` (Python and numpy), finite unless ``finite=False`` (an int past
  float's range counts as infinite), and a one-element real tensor (its value) where
  ``tensors``.
"""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any, NoReturn

import torch

_SAME = object()


def describe(v: Any) -> str:
    """A value as an error message shows it: a tensor by dtype and shape, else type and repr."""
    if isinstance(v, torch.Tensor):
        return f"a {v.dtype} tensor of shape {list(v.shape)}"
    return f"{type(v).__name__} {v!r}"


def fail(owner: Any, name: str, expected: str, got: str, exc: type[Exception] = ValueError,
         words: dict | None = None, value: Any = None) -> NoReturn:
    """Raise ``exc("<owner>: <name> must be <expected>, got <got>")``; ``words[exc]``, where
    given, is the text after ``"<owner>: "`` instead (a template of ``name``, ``expected``,
    ``got`` and ``value``). An ``owner`` that is no string (a layer, whose repr names its
    configuration) is formatted only here, when the check fails."""
    text = f"{name} must be {expected}, got {got}"
    if words and exc in words:
        text = words[exc].format(name=name, expected=expected, got=got, value=value)
    raise exc(f"{owner if isinstance(owner, str) else repr(owner)}: {text}")


def interval(lo: Any, hi: Any, lo_open: bool = False, hi_open: bool = False) -> str:
    """The bounds in words: ``" >= 0"``, ``" < 1"``, ``" in [0, 1)"``, or ``""``."""
    if lo is not None and hi is not None:
        return f" in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f" {'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f" {'<' if hi_open else '<='} {hi}"
    return ""


def _shown(v: Any, shown: Any) -> Any:
    return v if shown is _SAME else shown


def integer(owner: str, name: str, v: Any, lo: int | None = None, hi: int | None = None, *,
            exact: bool = False, tensors: bool = False, expected: str | None = None,
            words: dict | None = None, shown: Any = _SAME) -> int:
    """``v`` as a Python int in ``[lo, hi)`` (either bound optional). ``expected``: the words
    for what was expected (default ``"an int >= lo"``); ``shown``: what the error shows as
    got (default ``v``: a sequence checked item by item shows the whole sequence)."""
    if tensors and isinstance(v, torch.SymInt):
        return v
    if tensors and isinstance(v, torch.Tensor):
        ok = not (v.ndim or v.is_floating_point() or v.is_complex() or v.dtype == torch.bool)
    else:
        ok = type(v) is int or (not isinstance(v, bool) and isinstance(v, int if exact else numbers.Integral))
    if not ok:
        fail(owner, name, expected or _int_words(lo, hi), describe(_shown(v, shown)), TypeError, words, v)
    i = operator.index(v)
    if (lo is not None and i < lo) or (hi is not None and i >= hi):
        fail(owner, name, expected or _int_words(lo, hi), repr(_shown(i, shown)), ValueError, words, v)
    return i


def _int_words(lo: int | None, hi: int | None) -> str:
    return f"an int{interval(lo, hi, hi_open=True)}"


def real(owner: str, name: str, v: Any, lo: float | None = None, hi: float | None = None, *,
         lo_open: bool = False, hi_open: bool = False, nonzero: bool = False, finite: bool = True,
         tensors: bool = False, expected: str | None = None, words: dict | None = None) -> float:
    """``v`` as a float in ``[lo, hi]`` (``lo_open``/``hi_open``: the bound excluded; either
    bound optional), not 0 where ``nonzero``, finite unless ``finite=False``. The error says
    what failed: the kind (``must be a finite number >= 0``), finiteness (``must be finite``)
    or the bounds (``must be >= 0``); ``expected``, where given, is said instead."""
    if tensors and isinstance(v, torch.Tensor):
        if v.numel() != 1 or v.is_complex() or v.dtype == torch.bool:
            fail(owner, name, "a number or a one-element real tensor", describe(v), ValueError, words, v)
        v = v.item()
    if type(v) is not float and (isinstance(v, bool) or not isinstance(v, numbers.Real)):
        bounds = interval(lo, hi, lo_open, hi_open) + (" other than 0" if nonzero else "")
        fail(owner, name, expected or f"a {'finite ' if finite else ''}number{bounds}", describe(v), TypeError,
             words, v)
    try:
        f = float(v)
    except OverflowError:  # an int beyond float's range
        f = math.inf if v > 0 else -math.inf
    if finite and not math.isfinite(f):
        fail(owner, name, expected or "finite", repr(v), ValueError, words, v)
    if ((lo is not None and (f <= lo if lo_open else f < lo)) or (hi is not None and (f >= hi if hi_open else f > hi))
            or (nonzero and f == 0.0)):
        bounds = interval(lo, hi, lo_open, hi_open) + (" other than 0" if nonzero else "")
        fail(owner, name, expected or bounds.lstrip(), repr(v), ValueError, words, v)
    return f


def flag(owner: str, name: str, v: Any, words: dict | None = None) -> bool:
    """A bool (``1``, ``"yes"``, a tensor are refused: ``TypeError``)."""
    if not isinstance(v, bool):
        fail(owner, name, "a bool", describe(v), TypeError, words, v)
    return v


def choice(owner: str, name: str, v: Any, options: tuple, *, expected: str | None = None,
           wrong_kind: type[Exception] = TypeError, words: dict | None = None) -> Any:
    """One of ``options`` (strings, and ``None`` where an option): ``ValueError`` for an
    unknown string, ``wrong_kind`` for anything else (``ValueError`` where torch raises it
    for any value)."""
    if (v is None or isinstance(v, str)) and v in options:
        return v
    fail(owner, name, expected or f"one of {', '.join(map(repr, options))}", repr(v),
         ValueError if isinstance(v, str) else wrong_kind, words, v)


def tensor(owner: Any, name: str, v: Any) -> torch.Tensor:
    """``v`` itself, after checking that it is a tensor (``TypeError`` naming its type)."""
    if not isinstance(v, torch.Tensor):
        fail(owner, name, "a tensor", type(v).__name__, TypeError)
    return v
