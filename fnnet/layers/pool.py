"""Pooling: MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool1d/2d, AdaptiveMaxPool2d, as torch.nn.

Window sizes are stored as tuples (``MaxPool2d(2)`` has ``kernel_size=(2, 2)``), checked at
construction as torch checks them (positive kernel and stride, padding at most half the
window); inputs are checked at apply (rank, and a window that fits)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..module import Module
from . import _util as U
from ._util import expect


def _check(layer, x, n):
    expect(layer, isinstance(x, torch.Tensor) and x.ndim in (n + 1, n + 2),
           f"input [N, C, {n} spatial dims] or [C, {n} spatial dims]", x)


class _Pool(Module):
    """Sliding-window pooling: kernel, stride (``None``: the kernel), padding, dilation."""

    n: ClassVar[int] = 1

    def _check_window(self, dilated: bool) -> None:
        U.sizes(self, "kernel_size", self.n)
        if self.stride is None or (isinstance(self.stride, (tuple, list)) and len(self.stride) == 0):
            object.__setattr__(self, "stride", None)
        else:
            U.sizes(self, "stride", self.n)
        U.sizes(self, "padding", self.n, 0)
        if dilated:
            U.sizes(self, "dilation", self.n)
        U.flags(self, "ceil_mode")
        dilation = self.dilation if dilated else (1,) * self.n
        for p, k, d in zip(self.padding, self.kernel_size, dilation):
            if p > (d * (k - 1) + 1) // 2:
                raise ValueError(f"{type(self).__name__}: padding {self.padding} must be at most half the "
                                 f"window ({self.kernel_size}{f', dilation {dilation}' if dilated else ''})")

    def _check_apply(self, x, dilated: bool) -> None:
        _check(self, x, self.n)
        U.window_fits(self, x, self.kernel_size, self.stride or self.kernel_size, self.padding,
                      self.dilation if dilated else (1,) * self.n, self.ceil_mode)


@dataclass(frozen=True)
class MaxPool1d(_Pool):
    kernel_size: Any
    stride: Any = None
    padding: Any = 0
    dilation: Any = 1
    return_indices: bool = False
    ceil_mode: bool = False

    def __post_init__(self):
        self._check_window(dilated=True)
        U.flags(self, "return_indices")

    def apply(self, params, x, *, key=None, train=False):
        self._check_apply(x, dilated=True)
        return F.max_pool1d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


@dataclass(frozen=True)
class MaxPool2d(MaxPool1d):
    n: ClassVar[int] = 2

    def apply(self, params, x, *, key=None, train=False):
        self._check_apply(x, dilated=True)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


@dataclass(frozen=True)
class AvgPool1d(_Pool):
    kernel_size: Any
    stride: Any = None
    padding: Any = 0
    ceil_mode: bool = False
    count_include_pad: bool = True

    def __post_init__(self):
        self._check_window(dilated=False)
        U.flags(self, "count_include_pad")

    def apply(self, params, x, *, key=None, train=False):
        self._check_apply(x, dilated=False)
        return F.avg_pool1d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad)


@dataclass(frozen=True)
class AvgPool2d(_Pool):
    kernel_size: Any
    stride: Any = None
    padding: Any = 0
    ceil_mode: bool = False
    count_include_pad: bool = True
    divisor_override: int | None = None

    n: ClassVar[int] = 2

    def __post_init__(self):
        self._check_window(dilated=False)
        U.flags(self, "count_include_pad")
        if self.divisor_override is not None:
            U.ints(self, "divisor_override")

    def apply(self, params, x, *, key=None, train=False):
        self._check_apply(x, dilated=False)
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                            self.count_include_pad, self.divisor_override)


class _Adaptive(Module):
    n: ClassVar[int] = 1
    keep: ClassVar[bool] = False  # whether None ("keep that dim") is allowed in output_size

    def __post_init__(self):
        U.sizes(self, "output_size", self.n, none=self.keep)
        if hasattr(self, "return_indices"):
            U.flags(self, "return_indices")

    def _check_apply(self, x) -> None:
        _check(self, x, self.n)
        expect(self, all(s > 0 for s in x.shape[x.ndim - self.n:]), "non-empty spatial dims", x)


@dataclass(frozen=True)
class AdaptiveAvgPool1d(_Adaptive):
    output_size: Any

    def apply(self, params, x, *, key=None, train=False):
        self._check_apply(x)
        return F.adaptive_avg_pool1d(x, self.output_size)


@dataclass(frozen=True)
class AdaptiveAvgPool2d(_Adaptive):
    """``output_size``: int, pair, or a pair with ``None`` (keep that dim)."""

    output_size: Any

    n: ClassVar[int] = 2
    keep: ClassVar[bool] = True

    def apply(self, params, x, *, key=None, train=False):
        self._check_apply(x)
        return F.adaptive_avg_pool2d(x, self.output_size)


@dataclass(frozen=True)
class AdaptiveMaxPool2d(_Adaptive):
    output_size: Any
    return_indices: bool = False

    n: ClassVar[int] = 2
    keep: ClassVar[bool] = True

    def apply(self, params, x, *, key=None, train=False):
        self._check_apply(x)
        return F.adaptive_max_pool2d(x, self.output_size, self.return_indices)
