"""Convolutions: Conv1d, Conv2d, Conv3d, ConvTranspose1d, ConvTranspose2d, ConvTranspose3d, as their ``torch.nn``
namesakes (same arguments, same params ``{"weight", "bias"}``, same init, batched or not)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .. import init as I
from .. import random
from ..module import Module
from . import _util as U
from ._util import expect

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_PADDING_MODES = ("zeros", "reflect", "replicate", "circular")


class _Weighted(Module):
    """Convolutions and their transposes: a ``weight`` of ``weight_shape`` and an optional
    ``bias [out_channels]``, both initialized as torch.nn's (uniform on +-1/sqrt(fan_in))."""

    def init(self, key):
        kw, kb = random.split(key)
        shape = self.weight_shape
        p = {"weight": I.torch_default(kw, shape)}
        if self.bias:
            p["bias"] = I.torch_default_bias(kb, (self.out_channels,), I.fans(shape)[0])
        return p

    def _check_common(self) -> None:
        U.ints(self, "in_channels", "out_channels", "groups")
        U.flags(self, "bias")
        for name, minimum in (("kernel_size", 1), ("stride", 1), ("dilation", 1)):
            U.sizes(self, name, self.n, minimum)
        U.divisible(self, "groups", "in_channels", "out_channels")

    def _check_input(self, x) -> None:
        n = self.n
        dims = ", ".join("*" * n)
        expect(self, isinstance(x, torch.Tensor) and x.ndim in (n + 1, n + 2)
               and x.shape[-n - 1] == self.in_channels,
               f"input [N, {self.in_channels}, {dims}] or unbatched [{self.in_channels}, {dims}]", x)


@dataclass(frozen=True)
class _Conv(_Weighted):
    in_channels: int
    out_channels: int
    kernel_size: Any
    stride: Any = 1
    padding: Any = 0
    dilation: Any = 1
    groups: int = 1
    bias: bool = True
    padding_mode: str = "zeros"

    n = 0  # spatial dims, set by subclasses

    def __post_init__(self):
        self._check_common()
        U.choice(self, "padding_mode", _PADDING_MODES)
        if isinstance(self.padding, str):
            U.choice(self, "padding", ("same", "valid"))
            if self.padding == "same" and any(s != 1 for s in self.stride):
                raise ValueError(f"{type(self).__name__}: padding='same' needs stride 1 (as in torch), "
                                 f"got stride {self.stride}")
        else:
            U.sizes(self, "padding", self.n, 0)

    @property
    def weight_shape(self) -> tuple:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def _padding_amounts(self) -> list[int]:
        """F.pad amounts (last dim first) for a non-zeros padding_mode, as torch computes them."""
        if self.padding == "valid":
            return [0, 0] * self.n
        if self.padding == "same":
            pads = []
            for d, k in zip(reversed(self.dilation), reversed(self.kernel_size)):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return pads
        return [p for p in reversed(self.padding) for _ in range(2)]

    def apply(self, params, input, *, key=None, train=False):
        """``input: [N, C_in, *n]`` or ``[C_in, *n]`` -> ``[N, C_out, *n_out]``."""
        x = input
        self._check_input(x)
        if not isinstance(self.padding, str):
            U.window_fits(self, x, self.kernel_size, self.stride, self.padding, self.dilation)
        elif self.padding == "valid":
            U.window_fits(self, x, self.kernel_size, self.stride, (0,) * self.n, self.dilation)
        w, b = params["weight"], params["bias"] if self.bias else None
        conv = _CONV[self.n]
        if self.padding_mode != "zeros":
            x = F.pad(x, self._padding_amounts(), mode=self.padding_mode)
            return conv(x, w, b, self.stride, 0, self.dilation, self.groups)
        return conv(x, w, b, self.stride, self.padding, self.dilation, self.groups)


@dataclass(frozen=True)
class Conv1d(_Conv):
    """x: ``[N, C_in, L]`` or ``[C_in, L]``; weight ``[C_out, C_in/groups, k]``."""

    n = 1


@dataclass(frozen=True)
class Conv2d(_Conv):
    """x: ``[N, C_in, H, W]`` or ``[C_in, H, W]``; weight ``[C_out, C_in/groups, kH, kW]``."""

    n = 2


@dataclass(frozen=True)
class Conv3d(_Conv):
    """x: ``[N, C_in, D, H, W]`` or unbatched; weight ``[C_out, C_in/groups, kD, kH, kW]``."""

    n = 3


@dataclass(frozen=True)
class _ConvTranspose(_Weighted):
    in_channels: int
    out_channels: int
    kernel_size: Any
    stride: Any = 1
    padding: Any = 0
    output_padding: Any = 0
    groups: int = 1
    bias: bool = True
    dilation: Any = 1
    padding_mode: str = "zeros"

    n = 0

    def __post_init__(self):
        self._check_common()
        U.sizes(self, "padding", self.n, 0)
        U.sizes(self, "output_padding", self.n, 0)
        if self.padding_mode != "zeros":
            raise ValueError(f"{type(self).__name__}: only padding_mode='zeros' is supported (as in torch), "
                             f"got {self.padding_mode!r}")
        for op, s, d in zip(self.output_padding, self.stride, self.dilation):
            if not (op < s or op < d):
                raise ValueError(f"{type(self).__name__}: output_padding must be smaller than stride or "
                                 f"dilation, got output_padding {self.output_padding}, stride {self.stride}, "
                                 f"dilation {self.dilation}")

    @property
    def weight_shape(self) -> tuple:
        return (self.in_channels, self.out_channels // self.groups, *self.kernel_size)

    def _output_padding(self, x, output_size) -> tuple:
        """torch's ``_ConvTransposeNd._output_padding``: the padding that reaches ``output_size``."""
        if output_size is None:
            return self.output_padding
        ok = isinstance(output_size, (tuple, list, torch.Size)) and len(output_size) in (
            self.n, x.ndim) and all(isinstance(v, int) and not isinstance(v, bool) for v in output_size)
        if not ok:
            raise TypeError(f"{self!r}: output_size must be {self.n} ints (or {x.ndim}: the whole output "
                            f"shape), got {output_size!r}")
        size = tuple(output_size)[-self.n:]
        spatial = x.shape[-self.n:]
        pads = []
        for i in range(self.n):
            smallest = ((spatial[i] - 1) * self.stride[i] - 2 * self.padding[i]
                        + self.dilation[i] * (self.kernel_size[i] - 1) + 1)
            if not smallest <= size[i] < smallest + self.stride[i]:
                raise ValueError(f"{self!r}: output_size {list(size)} is not reachable; dim {i} must be in "
                                 f"[{smallest}, {smallest + self.stride[i] - 1}]")
            pads.append(size[i] - smallest)
        return tuple(pads)

    def apply(self, params, input, output_size=None, *, key=None, train=False):
        """``input: [N, C_in, *n]`` or ``[C_in, *n]`` -> ``[N, C_out, *n_out]``; ``output_size``
        (``n`` ints, or the whole output shape) picks the output padding that reaches it, as
        torch's ``forward(input, output_size)``."""
        x, n = input, self.n
        self._check_input(x)
        for i in range(n):  # the output (before output_padding) has at least one element per dim
            if ((x.shape[x.ndim - n + i] - 1) * self.stride[i] - 2 * self.padding[i]
                    + self.dilation[i] * (self.kernel_size[i] - 1) + 1) < 1:
                raise ValueError(f"{self!r}: input {list(x.shape)} gives an empty output: padding "
                                 f"{self.padding} removes more than the transposed convolution adds")
        w, b = params["weight"], params["bias"] if self.bias else None
        return _CONV_T[n](x, w, b, self.stride, self.padding, self._output_padding(x, output_size),
                          self.groups, self.dilation)


@dataclass(frozen=True)
class ConvTranspose1d(_ConvTranspose):
    """x: ``[N, C_in, L]`` or ``[C_in, L]``; weight ``[C_in, C_out/groups, k]``."""

    n = 1


@dataclass(frozen=True)
class ConvTranspose2d(_ConvTranspose):
    """x: ``[N, C_in, H, W]`` or ``[C_in, H, W]``; weight ``[C_in, C_out/groups, kH, kW]``."""

    n = 2


@dataclass(frozen=True)
class ConvTranspose3d(_ConvTranspose):
    """x: ``[N, C_in, D, H, W]`` or unbatched; weight ``[C_in, C_out/groups, kD, kH, kW]``."""

    n = 3


def conv_output_size(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> int:
    """Spatial output length of a convolution or pooling (floor mode)."""
    return math.floor((size + 2 * padding - dilation * (kernel - 1) - 1) / stride + 1)
