"""Dropout from an explicit key: same key, same mask; ``train=False`` is the identity."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import random
from ..module import Module


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
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1], got {self.p}")

    def apply(self, params, x, *, key=None, train=False):
        if not train or self.p == 0.0:
            return x
        if key is None:
            raise ValueError(f"{self!r}: train=True needs a key= for the dropout mask")
        return dropout(x, self.p, key)


@dataclass(frozen=True)
class Dropout2d(Dropout):
    """Zeroes whole channels: x ``[N, C, H, W]`` or ``[C, H, W]``, as ``nn.Dropout2d``."""

    def apply(self, params, x, *, key=None, train=False):
        if not train or self.p == 0.0:
            return x
        if key is None:
            raise ValueError(f"{self!r}: train=True needs a key= for the dropout mask")
        if x.ndim not in (3, 4):
            raise ValueError(f"{self!r}: expected input [N, C, H, W] or [C, H, W], got {list(x.shape)}")
        return dropout(x, self.p, key, (*x.shape[:-2], 1, 1))
