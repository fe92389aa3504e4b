"""Regression losses, as ``torch.nn.functional`` defines them but without silent broadcasting.

input, target: the same shape ``[*]``; ``reduction``: ``"mean"`` | ``"sum"`` | ``"none"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._util import check_reduction, float_input, float_weight, number, same_shape, value_target


def _check(name: str, input, target, reduction: str) -> None:
    """input: float; target: real (float, or integer as torch promotes it; not bool or complex)."""
    check_reduction(name, reduction)
    float_input(name, input)
    value_target(name, input, target)
    same_shape(name, input, target)


def _weight(name: str, input: torch.Tensor, weight) -> None:
    """torch's ``weight=``: one per element (the input's shape and dtype); the mean is then
    ``sum(weight * loss) / sum(weight)``."""
    float_weight(name, input, weight)
    if weight is not None:
        same_shape(name, input, weight, "weight")


def _elementwise(name: str, f):
    def loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
             weight: torch.Tensor | None = None) -> torch.Tensor:
        _check(name, input, target, reduction)
        _weight(name, input, weight)
        if weight is None:  # (torch < 2.8 has no weight= at all)
            return f(input, target, reduction=reduction)
        return f(input, target, reduction=reduction, weight=weight)

    loss.__name__ = name
    return loss


mse = _elementwise("mse", F.mse_loss)
mse.__doc__ = """Mean squared error ``(input - target)^2``, as ``F.mse_loss`` (``weight``: one per
element, the mean then ``sum(weight * loss) / sum(weight)``)."""

l1 = _elementwise("l1", F.l1_loss)
l1.__doc__ = """Absolute error ``|input - target|``, as ``F.l1_loss`` (``weight``: one per element,
the mean then ``sum(weight * loss) / sum(weight)``)."""


def smooth_l1(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
              beta: float = 1.0) -> torch.Tensor:
    """``0.5 d^2 / beta`` where ``|d| < beta``, else ``|d| - 0.5 beta``, as ``F.smooth_l1_loss``."""
    _check("smooth_l1", input, target, reduction)
    beta = number("smooth_l1", beta, "beta", low=0.0)
    return F.smooth_l1_loss(input, target, reduction=reduction, beta=beta)


def huber(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
          delta: float = 1.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``0.5 d^2`` where ``|d| <= delta``, else ``delta (|d| - 0.5 delta)``, as ``F.huber_loss``
    (``weight`` as for :func:`mse`)."""
    _check("huber", input, target, reduction)
    delta = number("huber", delta, "delta", low=0.0, strict=True)
    _weight("huber", input, weight)
    if weight is None:
        return F.huber_loss(input, target, reduction=reduction, delta=delta)
    return F.huber_loss(input, target, reduction=reduction, delta=delta, weight=weight)
