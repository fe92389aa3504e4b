"""Regression losses, as ``torch.nn.functional`` defines them but without silent broadcasting.

input, target: the same shape ``[*]``; ``reduction``: ``"mean"`` | ``"sum"`` | ``"none"``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._util import check_reduction, same_shape


def _elementwise(name: str, f):
    def loss(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean", **kw) -> torch.Tensor:
        check_reduction(name, reduction)
        same_shape(name, input, target)
        return f(input, target, reduction=reduction, **kw)

    loss.__name__ = name
    return loss


mse = _elementwise("mse", F.mse_loss)
mse.__doc__ = "Mean squared error ``(input - target)^2``, as ``F.mse_loss``."

l1 = _elementwise("l1", F.l1_loss)
l1.__doc__ = "Absolute error ``|input - target|``, as ``F.l1_loss``."


def smooth_l1(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
              beta: float = 1.0) -> torch.Tensor:
    """``0.5 d^2 / beta`` where ``|d| < beta``, else ``|d| - 0.5 beta``, as ``F.smooth_l1_loss``."""
    check_reduction("smooth_l1", reduction)
    same_shape("smooth_l1", input, target)
    if beta < 0:
        raise ValueError(f"losses.smooth_l1: beta must be >= 0, got {beta}")
    return F.smooth_l1_loss(input, target, reduction=reduction, beta=beta)


def huber(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
          delta: float = 1.0) -> torch.Tensor:
    """``0.5 d^2`` where ``|d| <= delta``, else ``delta (|d| - 0.5 delta)``, as ``F.huber_loss``."""
    check_reduction("huber", reduction)
    same_shape("huber", input, target)
    if delta <= 0:
        raise ValueError(f"losses.huber: delta must be > 0, got {delta}")
    return F.huber_loss(input, target, reduction=reduction, delta=delta)
