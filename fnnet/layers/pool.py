"""Pooling, as torch.nn: MaxPool, AvgPool, LPPool, AdaptiveMaxPool, AdaptiveAvgPool (1d, 2d, 3d)
and FractionalMaxPool (2d, 3d), with torch's arguments by torch's names.

Each family is one class whose 1d/2d/3d layers only set ``n``, the number of pooled (trailing)
dims; the op is torch.nn.functional's for that ``n``. Window sizes are stored as tuples
(``MaxPool2d(2)`` has ``kernel_size=(2, 2)``), checked at construction as torch checks them
(positive kernel and stride, padding at most half the kernel); inputs are checked at apply as
torch checks them, before the op, naming the layer: ``[N, C, *n]`` or unbatched ``[C, *n]``,
non-empty except the batch, and a window that gives at least one output (torch's
``pooling_output_shape``: with ``ceil_mode`` a last window may run past the end, if it starts
inside the input or its left padding).

FractionalMaxPool is random (Graham's pseudo-random pooling regions): ``apply`` draws its
samples, ``[N, C, n]`` uniform on [0, 1), from ``key=`` (fnnet.random), in train and eval alike
as torch does; ``_random_samples=`` at construction gives them explicitly instead (torch's
argument: the same samples give torch's output exactly).

Compiled, an average (and power-average) pool whose ceil-mode last window overhangs the padded
input, counting padding (``count_include_pad``, no ``divisor_override``), is computed as a sum
over each window divided by the window's clipped size (:func:`avg_pool`): inductor's backward of
that case divides by the full kernel instead (wrong gradients, pytorch/pytorch#198119; pinned by
a test). Likewise a compiled fractional max pool and 3d adaptive max pool take their values at
their indices (a gather, :func:`max_at_indices`): torch's CPU backward of those ops reads the
indices as contiguous, and inductor may save them in another layout (wrong gradients,
pytorch/pytorch#197888; pinned by a test). Eager runs torch's ops as they are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .. import _check, random
from ..module import Module
from . import _util as U
from ._util import expect

_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
_LP = {1: F.lp_pool1d, 2: F.lp_pool2d, 3: F.lp_pool3d}
_ADAPTIVE_AVG = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}
_ADAPTIVE_MAX = {1: F.adaptive_max_pool1d, 2: F.adaptive_max_pool2d, 3: F.adaptive_max_pool3d}
_FRACTIONAL = {2: F.fractional_max_pool2d, 3: F.fractional_max_pool3d}


def _check_input(layer: Module, x: Any, n: int, empty_channels: bool = False) -> None:
    """``x: [N, C, *n]`` or ``[C, *n]``, every dim but the batch non-empty (``empty_channels``:
    C may be 0, as torch's adaptive average pools allow)."""
    dims = ", ".join("*" * n)
    expect(layer, isinstance(x, torch.Tensor) and x.ndim in (n + 1, n + 2),
           f"input [N, C, {dims}] or unbatched [C, {dims}]", x)
    spatial = x.shape[x.ndim - n:]
    channels = x.shape[x.ndim - n - 1]
    expect(layer, all(s > 0 for s in spatial) and (empty_channels or channels > 0),
           "non-empty dims except the batch" + (" and channels" if empty_channels else ""), x)


def pooled_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """Output length of a pooling window along one dim: torch's ``pooling_output_shape`` (in
    ceil mode the last window must start inside the input or its left padding)."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _overhangs(x: torch.Tensor, kernel: tuple, stride: tuple, padding: tuple) -> bool:
    """Whether a ceil-mode last window runs past the padded input along some dim."""
    n = len(kernel)
    for i in range(n):
        size = x.shape[x.ndim - n + i]
        out = pooled_size(size, kernel[i], stride[i], padding[i], 1, True)
        if (out - 1) * stride[i] - padding[i] + kernel[i] > size + padding[i]:
            return True
    return False


def avg_pool(x: torch.Tensor, kernel: tuple, stride: tuple | None, padding: tuple, ceil_mode: bool,
             count_include_pad: bool, divisor_override: int | None = None) -> torch.Tensor:
    """``F.avg_pool{n}d`` (``n = len(kernel)``); under compile, where inductor's backward is wrong
    (a ceil-mode window overhanging the padded input, counting padding, no divisor_override:
    pytorch/pytorch#198119), the same numbers as a sum over each window (divisor 1, whose backward
    is right) divided by the window clipped to the padded input, as torch's eager kernel divides."""
    n, stride = len(kernel), stride or kernel
    if not (torch.compiler.is_compiling() and ceil_mode and count_include_pad and divisor_override is None
            and _overhangs(x, kernel, stride, padding)):
        extra = () if n == 1 else (divisor_override,)
        return _AVG[n](x, kernel, stride, padding, ceil_mode, count_include_pad, *extra)
    if n == 1:  # avg_pool1d has no divisor_override: pool [*, 1, L] in 2d
        total = F.avg_pool2d(x.unsqueeze(-2), (1, *kernel), (1, *stride), (0, *padding), True, True, 1).squeeze(-2)
    else:
        total = _AVG[n](x, kernel, stride, padding, True, True, 1)
    counts = 1
    for i in range(n):
        size, out, k, s, p = x.shape[x.ndim - n + i], total.shape[total.ndim - n + i], kernel[i], stride[i], padding[i]
        clipped = [min(o * s - p + k, size + p) - (o * s - p) for o in range(out)]
        shape = [1] * n
        shape[i] = out
        counts = counts * torch.tensor(clipped, dtype=x.dtype, device=x.device).reshape(shape)
    return total / counts


def max_at_indices(pool, x: torch.Tensor, n: int, return_indices: bool):
    """``pool(x)`` of a max pool that returns indices (flat within each plane of the last ``n``
    dims); under compile its values are gathered from ``x`` at the indices, so the gradient is a
    scatter to them rather than the op's own backward (wrong under inductor: pytorch/pytorch#197888)."""
    if not torch.compiler.is_compiling():
        return pool(x, return_indices)
    _, indices = pool(x.detach(), True)
    y = x.flatten(-n).gather(-1, indices.flatten(-n)).view_as(indices)
    return (y, indices) if return_indices else y


class _Window(Module):
    """A sliding window: ``kernel_size``, ``stride`` (``None``: the kernel), ``padding`` and
    ``dilation`` (where the family has them), ``ceil_mode``."""

    n: ClassVar[int] = 1
    padded: ClassVar[bool] = True  # the family takes padding (LPPool does not)
    dilated: ClassVar[bool] = False
    kernel_fits_input: ClassVar[bool] = False  # torch's avg_pool3d: each dim, unpadded, at least the kernel

    def _check_window(self) -> None:
        U.sizes(self, "kernel_size", self.n)
        if self.stride is None or (isinstance(self.stride, (tuple, list)) and len(self.stride) == 0):
            object.__setattr__(self, "stride", None)
        else:
            U.sizes(self, "stride", self.n)
        if self.padded:
            U.sizes(self, "padding", self.n, 0)
            for p, k in zip(self.padding, self.kernel_size):
                if p > k // 2:  # torch's rule; the dilation does not widen it
                    raise ValueError(f"{type(self).__name__}: padding {self.padding} must be at most half "
                                     f"the kernel_size {self.kernel_size} (as in torch)")
        if self.dilated:
            U.sizes(self, "dilation", self.n)
        U.flags(self, "ceil_mode")

    def _check_apply(self, x) -> None:
        n = self.n
        _check_input(self, x, n)
        stride = self.stride or self.kernel_size
        padding = self.padding if self.padded else (0,) * n
        dilation = self.dilation if self.dilated else (1,) * n
        for i in range(n):
            size, k, d, p = x.shape[x.ndim - n + i], self.kernel_size[i], dilation[i], padding[i]
            out = pooled_size(size, k, stride[i], p, d, self.ceil_mode)
            if out < 1 or (self.kernel_fits_input and size < k):
                padded = "" if self.kernel_fits_input else f" (padded: {size + 2 * p})"
                raise ValueError(f"{self!r}: input {list(x.shape)} is too small: spatial dim {i} of size {size}"
                                 f"{padded} is smaller than the window ({d * (k - 1) + 1})")
            if d > 1:  # dilated taps may all fall in the padding
                self._check_windows_meet_input(x, i, size, out, k, stride[i], p, d)

    def _check_windows_meet_input(self, x, i, size, out, k, s, p, d) -> None:
        """Each window holds at least one input element: torch gives a window of padding only
        ``-inf`` and an index outside the input, to which its backward then writes. (A window
        that starts inside the input holds its first tap: only those starting in the padding,
        ``o * s < p`` or ``o * s >= size + p``, are looked at.)"""
        for o in (*range(min(out, -(-p // s))), *range(max(0, -(-(size + p) // s)), out)):
            start = o * s - p
            first = 0 if start >= 0 else -(start // d)  # the first tap at or after 0: ceil(-start / d)
            if not (first < k and start + first * d < size):
                raise ValueError(f"{self!r}: input {list(x.shape)}: window {o} of spatial dim {i} (size {size}) "
                                 f"holds no input element, its dilated taps {start}, {start + d}, ... all fall in "
                                 f"the padding (torch returns -inf there, with an index outside the input)")


# -- max ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _MaxPool(_Window):
    kernel_size: Any
    stride: Any = None
    padding: Any = 0
    dilation: Any = 1
    return_indices: bool = False
    ceil_mode: bool = False

    dilated: ClassVar[bool] = True

    def __post_init__(self):
        self._check_window()
        U.flags(self, "return_indices")

    def apply(self, params, input, *, key=None, train=False):
        """``input: [N, C, *n]`` or ``[C, *n]`` -> the windows' maxima (and, with
        ``return_indices``, their flat positions in each input plane)."""
        self._check_apply(input)
        return _MAX[self.n](input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices)


@dataclass(frozen=True)
class MaxPool1d(_MaxPool):
    """input: ``[N, C, L]`` or ``[C, L]``."""


@dataclass(frozen=True)
class MaxPool2d(_MaxPool):
    """input: ``[N, C, H, W]`` or ``[C, H, W]``."""

    n = 2


@dataclass(frozen=True)
class MaxPool3d(_MaxPool):
    """input: ``[N, C, D, H, W]`` or ``[C, D, H, W]``."""

    n = 3


# -- average -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class _AvgPool(_Window):
    kernel_size: Any
    stride: Any = None
    padding: Any = 0
    ceil_mode: bool = False
    count_include_pad: bool = True

    def __post_init__(self):
        self._check_window()
        U.flags(self, "count_include_pad")
        if getattr(self, "divisor_override", None) is not None:
            U.ints(self, "divisor_override")  # torch also takes a negative one (flipping the sign): refused

    def apply(self, params, input, *, key=None, train=False):
        """``input: [N, C, *n]`` or ``[C, *n]`` -> the windows' means (``count_include_pad``:
        padded zeros count; ``divisor_override``: divide by it instead)."""
        self._check_apply(input)
        return avg_pool(input, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad,
                        getattr(self, "divisor_override", None))


@dataclass(frozen=True)
class AvgPool1d(_AvgPool):
    """input: ``[N, C, L]`` or ``[C, L]`` (no ``divisor_override``, as torch's)."""


@dataclass(frozen=True)
class AvgPool2d(_AvgPool):
    """input: ``[N, C, H, W]`` or ``[C, H, W]``."""

    divisor_override: int | None = None

    n = 2


@dataclass(frozen=True)
class AvgPool3d(_AvgPool):
    """input: ``[N, C, D, H, W]`` or ``[C, D, H, W]``."""

    divisor_override: int | None = None

    n = 3
    kernel_fits_input = True


# -- power average -----------------------------------------------------------------------------

@dataclass(frozen=True)
class _LPPool(_Window):
    """``(sum over the window of x^p)^(1/p)``, ``p = norm_type``: torch's power-average pool
    (``p = inf``: the max of ``|x|``); no padding, as torch's."""

    norm_type: float
    kernel_size: Any
    stride: Any = None
    ceil_mode: bool = False

    padded: ClassVar[bool] = False

    def __post_init__(self):
        owner, what = type(self).__name__, "a number other than 0 (the power p)"
        if math.isnan(_check.real(owner, "norm_type", self.norm_type, nonzero=True, finite=False, expected=what)):
            _check.fail(owner, "norm_type", what, repr(self.norm_type))
        self._check_window()

    def apply(self, params, input, *, key=None, train=False):
        """``input: [N, C, *n]`` or ``[C, *n]`` -> each window's p-norm."""
        self._check_apply(input)
        p, k, stride = self.norm_type, self.kernel_size, self.stride or self.kernel_size
        if math.isinf(p):  # the max (p = -inf: the min) of |x|, as torch 2.13 (2.11's lp_pool takes x^inf)
            y = _MAX[self.n](input.abs() if p > 0 else -input.abs(), k, stride, 0, 1, self.ceil_mode)
            return y if p > 0 else -y
        if torch.compiler.is_compiling() and self.ceil_mode and _overhangs(
                input, k, stride, (0,) * self.n):  # torch's formula, over avg_pool's workaround
            out = avg_pool(input.pow(p), k, stride, (0,) * self.n, True, True)
            return (torch.sign(out) * F.relu(torch.abs(out))).mul(math.prod(k)).pow(1.0 / p)
        kernel = k[0] if self.n == 1 else k  # lp_pool1d multiplies by it
        return _LP[self.n](input, p, kernel, self.stride, self.ceil_mode)


@dataclass(frozen=True)
class LPPool1d(_LPPool):
    """input: ``[N, C, L]`` or ``[C, L]``."""


@dataclass(frozen=True)
class LPPool2d(_LPPool):
    """input: ``[N, C, H, W]`` or ``[C, H, W]``."""

    n = 2


@dataclass(frozen=True)
class LPPool3d(_LPPool):
    """input: ``[N, C, D, H, W]`` or ``[C, D, H, W]``."""

    n = 3

    @property
    def kernel_fits_input(self) -> bool:  # avg_pool3d's rule (p = +-inf runs max_pool3d)
        return not math.isinf(self.norm_type)


# -- adaptive ----------------------------------------------------------------------------------

class _Adaptive(Module):
    """Pools each plane to ``output_size`` (an int, or ``n`` of them; from 2d on, ``None`` keeps
    that dim) with windows spread evenly, as torch's adaptive pools."""

    n: ClassVar[int] = 1

    def __post_init__(self):
        U.sizes(self, "output_size", self.n, none=self.n > 1)
        if hasattr(self, "return_indices"):
            U.flags(self, "return_indices")


@dataclass(frozen=True)
class _AdaptiveAvgPool(_Adaptive):
    output_size: Any

    def apply(self, params, input, *, key=None, train=False):
        """``input: [N, C, *n]`` or ``[C, *n]`` -> ``[N, C, *output_size]``."""
        _check_input(self, input, self.n, empty_channels=True)
        return _ADAPTIVE_AVG[self.n](input, self.output_size)


@dataclass(frozen=True)
class _AdaptiveMaxPool(_Adaptive):
    output_size: Any
    return_indices: bool = False

    def apply(self, params, input, *, key=None, train=False):
        """``input: [N, C, *n]`` or ``[C, *n]`` -> ``[N, C, *output_size]`` (and indices)."""
        _check_input(self, input, self.n)
        pool = _ADAPTIVE_MAX[self.n]
        if self.n < 3:  # inductor lowers these itself
            return pool(input, self.output_size, self.return_indices)
        return max_at_indices(lambda x, r: pool(x, self.output_size, r), input, 3, self.return_indices)


@dataclass(frozen=True)
class AdaptiveAvgPool1d(_AdaptiveAvgPool):
    """input: ``[N, C, L]`` or ``[C, L]``."""


@dataclass(frozen=True)
class AdaptiveAvgPool2d(_AdaptiveAvgPool):
    """input: ``[N, C, H, W]`` or ``[C, H, W]``; ``output_size`` may hold ``None`` (keep that dim)."""

    n = 2


@dataclass(frozen=True)
class AdaptiveAvgPool3d(_AdaptiveAvgPool):
    """input: ``[N, C, D, H, W]`` or ``[C, D, H, W]``; ``output_size`` may hold ``None``."""

    n = 3


@dataclass(frozen=True)
class AdaptiveMaxPool1d(_AdaptiveMaxPool):
    """input: ``[N, C, L]`` or ``[C, L]``."""


@dataclass(frozen=True)
class AdaptiveMaxPool2d(_AdaptiveMaxPool):
    """input: ``[N, C, H, W]`` or ``[C, H, W]``; ``output_size`` may hold ``None`` (keep that dim)."""

    n = 2


@dataclass(frozen=True)
class AdaptiveMaxPool3d(_AdaptiveMaxPool):
    """input: ``[N, C, D, H, W]`` or ``[C, D, H, W]``; ``output_size`` may hold ``None``."""

    n = 3


# -- fractional --------------------------------------------------------------------------------

@dataclass(frozen=True)
class _FractionalMaxPool(Module):
    """Max over ``kernel_size`` windows at pseudo-random steps that reach ``output_size`` (or
    ``output_ratio`` of the input; exactly one of the two). The steps come from samples
    ``[N, C, n]`` uniform on [0, 1): drawn from ``key=`` at each call, or fixed by
    ``_random_samples`` (torch's argument; then no key is needed)."""

    kernel_size: Any
    output_size: Any = None
    output_ratio: Any = None
    return_indices: bool = False
    _random_samples: torch.Tensor | None = field(default=None, repr=False)  # a tensor: kept out of messages

    n: ClassVar[int] = 2

    def __post_init__(self):
        name, n = type(self).__name__, self.n
        U.sizes(self, "kernel_size", n)
        U.flags(self, "return_indices")
        if (self.output_size is None) == (self.output_ratio is None):
            raise ValueError(f"{name}: exactly one of output_size and output_ratio must be given, got "
                             f"output_size={self.output_size!r}, output_ratio={self.output_ratio!r}")
        if self.output_size is not None:
            U.sizes(self, "output_size", n)
        else:
            v = self.output_ratio
            ratios = tuple(v) if isinstance(v, (tuple, list)) else (v,) * n
            what = f"a number in (0, 1), or a tuple of {n} of them"
            if len(ratios) != n:
                _check.fail(name, "output_ratio", what, repr(v), TypeError)
            object.__setattr__(self, "output_ratio", tuple(
                _check.real(name, "output_ratio", r, 0, 1, lo_open=True, hi_open=True, expected=what) for r in ratios))
        s = self._random_samples
        if s is not None:
            ok = isinstance(s, torch.Tensor) and s.is_floating_point() and s.ndim == 3 and s.shape[-1] == n
            if not ok:
                got = f"{s.dtype} {list(s.shape)}" if isinstance(s, torch.Tensor) else type(s).__name__
                raise TypeError(f"{name}: _random_samples must be a float tensor [N, C, {n}], got {got}")
            if s.device.type != "meta" and not torch.compiler.is_compiling() and not bool(
                    ((s >= 0) & (s < 1)).all()):
                raise ValueError(f"{name}: _random_samples must lie in [0, 1)")

    def _output_size(self, x) -> tuple:
        spatial = x.shape[x.ndim - self.n:]
        if self.output_size is not None:
            return self.output_size
        return tuple(int(s * r) for s, r in zip(spatial, self.output_ratio))

    def _samples(self, x, key) -> torch.Tensor:
        batch = x.shape[0] if x.ndim == self.n + 2 else 1
        want = (batch, x.shape[x.ndim - self.n - 1], self.n)
        s = self._random_samples
        if s is not None:
            if s.shape[0] < batch or tuple(s.shape[1:]) != want[1:] or s.dtype != x.dtype:
                raise ValueError(f"{self!r}: _random_samples {s.dtype} {list(s.shape)} do not fit input "
                                 f"{x.dtype} {list(x.shape)}: expected {x.dtype} {list(want)} (a larger "
                                 f"first dim is cut, as in torch)")
            return s
        if key is None:
            raise ValueError(f"{self!r}: needs key= (an fnnet.random key) to draw its pseudo-random pooling "
                             f"regions, in train and eval alike (or _random_samples= at construction)")
        if not isinstance(key, torch.Tensor) or key.dtype != torch.int64 or key.shape != (2,):
            got = f"{key.dtype} {list(key.shape)}" if isinstance(key, torch.Tensor) else type(key).__name__
            raise TypeError(f"{self!r}: key must be a key (fnnet.random.key: int64 [2]), got {got}")
        return random.uniform(key, want, dtype=x.dtype).to(x.device)

    def apply(self, params, input, *, key=None, train=False):
        """``input: [N, C, *n]`` or ``[C, *n]`` -> ``[N, C, *output_size]`` (and indices)."""
        x, n = input, self.n
        _check_input(self, x, n)
        expect(self, x.is_floating_point(), "a floating-point input", x)
        out = self._output_size(x)
        for i in range(n):
            size, need = x.shape[x.ndim - n + i], out[i] + self.kernel_size[i] - 1 + (n == 3)  # torch's 3d: one more
            if size < need:
                raise ValueError(f"{self!r}: input {list(x.shape)} is too small: output size {out[i]} with kernel "
                                 f"{self.kernel_size[i]} needs spatial dim {i} of size >= {need}, got {size}")
        samples = self._samples(x, key)
        return max_at_indices(lambda x, r: _FRACTIONAL[n](x, self.kernel_size, out, None, r, _random_samples=samples),
                              x, n, self.return_indices)


@dataclass(frozen=True)
class FractionalMaxPool2d(_FractionalMaxPool):
    """input: ``[N, C, H, W]`` or ``[C, H, W]``; samples ``[N, C, 2]``."""


@dataclass(frozen=True)
class FractionalMaxPool3d(_FractionalMaxPool):
    """input: ``[N, C, D, H, W]`` or ``[C, D, H, W]``; samples ``[N, C, 3]``."""

    n = 3
