"""Reductions, argument and shape checks shared by the losses.

Every loss checks its arguments before the arithmetic, so a mistake is a ``ValueError`` /
``TypeError`` naming the loss and the argument, not a silent broadcast and not an error from
deep inside torch (hyperparameters through ``fnnet._check``, with ``losses.<name>`` as
owner). Checks of *values* (class indices in range, a variance >= 0) read the data:
they run eagerly, run inside a compiled graph as an op of the graph (:func:`checked_values`),
and are skipped under ``vmap`` (a batched tensor has no single value to test).
"""

from __future__ import annotations

import torch

from fnnet import _check

# checks of values: one mechanism for the whole library, re-exported for the losses
from fnnet._values import check_range as check_range
from fnnet._values import checked_values as checked_values
from fnnet._values import eager_values as eager_values

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(name: str, reduction: str, allowed: tuple = REDUCTIONS) -> None:
    _check.choice(f"losses.{name}", "reduction", reduction, allowed, wrong_kind=ValueError)


def tensor(name: str, x, what: str) -> torch.Tensor:
    """``x`` itself, after checking that it is a tensor."""
    return _check.tensor(f"losses.{name}", what, x)


def float_input(name: str, x, what: str = "input") -> torch.Tensor:
    """A real floating-point tensor (the predictions a loss differentiates)."""
    tensor(name, x, what)
    if not x.is_floating_point():
        raise TypeError(f"losses.{name}: {what} must be a floating-point tensor, got {x.dtype}")
    return x


def same_device(name: str, input: torch.Tensor, other: torch.Tensor, what: str) -> None:
    if other.device != input.device:
        raise ValueError(f"losses.{name}: {what} is on {other.device}, the input on {input.device}")


def value_target(name: str, input: torch.Tensor, target, what: str = "target", *, ints: bool = True,
                 bools: bool = False, same_dtype: bool = False) -> torch.Tensor:
    """A target of real values, on the input's device: floating point (of the input's dtype if
    ``same_dtype``, where torch would compute in the target's dtype or refuse), or integer where
    torch promotes it (``ints``). Complex is refused everywhere; bool where ``False`` (0) is no
    valid label or torch refuses it."""
    tensor(name, target, what)
    same_device(name, input, target, what)
    kind = target.dtype
    if target.is_complex() or (kind == torch.bool and not bools) or \
            (not target.is_floating_point() and kind != torch.bool and not ints):
        want = "a floating-point tensor" if not ints else "a real (floating-point or integer) tensor"
        raise TypeError(f"losses.{name}: {what} must be {want}, got {kind}")
    if same_dtype and target.is_floating_point() and kind != input.dtype:
        raise TypeError(f"losses.{name}: {what} must have the input's dtype {input.dtype}, got {kind}")
    return target


def index_target(name: str, input: torch.Tensor, target, what: str = "target") -> torch.Tensor:
    """Class indices: an integer tensor (not bool) on the input's device."""
    tensor(name, target, what)
    same_device(name, input, target, what)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(f"losses.{name}: {what} must hold class indices (an integer tensor), got {target.dtype}")
    return target


def float_weight(name: str, input: torch.Tensor, weight, what: str = "weight") -> torch.Tensor | None:
    """``None`` or a floating tensor of the input's dtype and device (torch refuses others deep
    inside, or computes in the weight's dtype)."""
    if weight is None:
        return None
    tensor(name, weight, what)
    same_device(name, input, weight, what)
    if weight.dtype != input.dtype:
        raise TypeError(f"losses.{name}: {what} must have the input's dtype {input.dtype}, got {weight.dtype}")
    return weight


def number(name: str, value, what: str, *, low: float | None = None, strict: bool = False,
           integer: bool = False) -> float:
    """``value`` itself, after checking that it is a finite real hyperparameter (an ``int`` if
    ``integer``), ``>= low`` (``> low`` if ``strict``). bool is refused: ``margin=True`` is a
    mistake, not 1."""
    if integer:
        _check.integer(f"losses.{name}", what, value)
    _check.real(f"losses.{name}", what, value, low, lo_open=strict)  # an int past float's range too
    return value


def flag(name: str, value, what: str) -> bool:
    return _check.flag(f"losses.{name}", what, value)


def same_shape(name: str, input: torch.Tensor, target: torch.Tensor, what: str = "target") -> None:
    """fnnet never broadcasts a loss silently (a [N, 1] prediction against a [N] target is
    the classic bug that torch only warns about)."""
    if input.shape != target.shape:
        raise ValueError(f"losses.{name}: {what} must have the input's shape {list(input.shape)}, "
                         f"got {list(target.shape)}")


def broadcasts_to(name: str, t: torch.Tensor | None, shape: torch.Size, what: str) -> None:
    """``t`` (a weight) may broadcast to ``shape`` but never enlarge it."""
    if t is None:
        return
    small, big = tuple(t.shape), tuple(shape)
    if len(small) > len(big) or any(s not in (1, b) for s, b in zip(reversed(small), reversed(big))):
        raise ValueError(f"losses.{name}: {what} of shape {list(small)} does not broadcast to the "
                         f"input's shape {list(big)}")


def reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x
