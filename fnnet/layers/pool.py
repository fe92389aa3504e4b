"""Pooling: MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool1d/2d, AdaptiveMaxPool2d, as torch.nn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F

from ..module import Module
from ._util import expect


def _check(layer, x, n):
    expect(layer, x.ndim in (n + 1, n + 2), f"input [N, C, {n} spatial dims] or [C, {n} spatial dims]", x)


@dataclass(frozen=True)
class MaxPool1d(Module):
    kernel_size: Any
    stride: Any = None
    padding: Any = 0
    dilation: Any = 1
    return_indices: bool = False
    ceil_mode: bool = False

    def apply(self, params, x, *, key=None, train=False):
        _check(self, x, 1)
        return F.max_pool1d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


@dataclass(frozen=True)
class MaxPool2d(MaxPool1d):
    def apply(self, params, x, *, key=None, train=False):
        _check(self, x, 2)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


@dataclass(frozen=True)
class AvgPool1d(Module):
    kernel_size: Any
    stride: Any = None
    padding: Any = 0
    ceil_mode: bool = False
    count_include_pad: bool = True

    def apply(self, params, x, *, key=None, train=False):
        _check(self, x, 1)
        return F.avg_pool1d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)


@dataclass(frozen=True)
class AvgPool2d(Module):
    kernel_size: Any
    stride: Any = None
    padding: Any = 0
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None

    def apply(self, params, x, *, key=None, train=False):
        _check(self, x, 2)
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)


@dataclass(frozen=True)
class AdaptiveAvgPool1d(Module):
    output_size: Any

    def apply(self, params, x, *, key=None, train=False):
        _check(self, x, 1)
        return F.adaptive_avg_pool1d(x, self.output_size)


@dataclass(frozen=True)
class AdaptiveAvgPool2d(Module):
    """``output_size``: int, pair, or a pair with ``None`` (keep that dim)."""

    output_size: Any

    def apply(self, params, x, *, key=None, train=False):
        _check(self, x, 2)
        return F.adaptive_avg_pool2d(x, self.output_size)


@dataclass(frozen=True)
class AdaptiveMaxPool2d(Module):
    output_size: Any
    return_indices: bool = False

    def apply(self, params, x, *, key=None, train=False):
        _check(self, x, 2)
        return F.adaptive_max_pool2d(x, self.output_size, self.return_indices)
