"""Dropout from an explicit key: same key, same mask; ``train=False`` is the identity."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import random
from ..module import Module
from . import _util as U


def dropout(x: torch.Tensor, p: float, key: torch.Tensor, mask_shape: tuple | None = None) -> torch.Tensor:
    """Zero each element (or each slice, for ``mask_shape`` with 1s) with probability ``p``
    and scale the rest by ``1 / (1 - p)``, as ``F.dropout`` in training."""
    if p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    keep = random.bernoulli(key.to(x.device), 1.0 - p, tuple(mask_shape or x.shape))  # drawn where x lives
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


@dataclass(frozen=True)
class Dropout(Module):
    """``nn.Dropout(p)``; in training the mask comes from ``key`` (required)."""

    p: float = 0.5

    def __post_init__(self):
        U.real(self, "p", 0.0, 1.0)

    def apply(self, params, x, *, key=None, train=False):
        if not train or self.p == 0.0:
            return x
        U.dropout_inputs(self, x, key)
        return dropout(x, self.p, key)


@dataclass(frozen=True)
class Dropout2d(Dropout):
    """Zeroes whole channels: x ``[N, C, H, W]`` or ``[C, H, W]``, as ``nn.Dropout2d``."""

    def apply(self, params, x, *, key=None, train=False):
        if not train or self.p == 0.0:
            return x
        U.dropout_inputs(self, x, key)
        U.expect(self, x.ndim in (3, 4), "input [N, C, H, W] or [C, H, W]", x)
        return dropout(x, self.p, key, (*x.shape[:-2], 1, 1))
