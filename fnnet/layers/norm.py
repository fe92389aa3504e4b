"""Normalization: BatchNorm1d/2d/3d and InstanceNorm1d/2d/3d (running statistics as explicit
state), LayerNorm, RMSNorm, GroupNorm, LocalResponseNorm.

Each normalizes ``x`` by a mean and variance taken over some of its dims, then scales and
shifts per feature: ``y = (x - mean) / sqrt(var + eps) * weight + bias``. They differ in the
dims reduced over (batch and space; space per sample; the trailing dims; groups of channels)
and in whether running statistics are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .. import init as I
from ..module import Module
from . import _util as U
from ._util import expect


def _affine_params(size: int | tuple, weight: bool, bias: bool, key) -> dict:
    """``weight`` ones and ``bias`` zeros of ``size``, those asked for: a norm starts as the identity."""
    shape = (size,) if isinstance(size, int) else size
    p = {"weight": I.ones(key, shape)} if weight else {}
    if weight and bias:
        p["bias"] = I.zeros(key, shape)
    return p


@dataclass(frozen=True)
class _RunningStatsNorm(Module):
    """What BatchNorm and InstanceNorm share: per-channel ``weight``/``bias`` (with ``affine``;
    ``bias=False`` keeps the weight only) and, with ``track_running_stats``, the running mean and
    variance as explicit state, updated as torch updates its buffers (momentum, unbiased
    variance) and returned as the new state: ``y, state = layer.apply(params, x, state=state,
    train=True)``. Without ``track_running_stats`` there is no state and ``apply`` returns ``y``."""

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True
    bias: bool = field(default=True, kw_only=True)

    def __post_init__(self):
        U.ints(self, "num_features")
        U.real(self, "eps", 0.0, open_low=True)
        U.real(self, "momentum", 0.0, 1.0, none=True)
        U.flags(self, "affine", "track_running_stats", "bias")

    @property
    def stateful(self) -> bool:
        return self.track_running_stats

    def init(self, key):
        return _affine_params(self.num_features, self.affine, self.bias, key)

    def init_state(self, device: Any = None):
        if not self.track_running_stats:
            return {}
        c = self.num_features
        dtype = torch.get_default_dtype()
        return {"running_mean": torch.zeros(c, dtype=dtype, device=device),
                "running_var": torch.ones(c, dtype=dtype, device=device),
                "num_batches_tracked": torch.zeros((), dtype=torch.int64, device=device)}

    def _need_state(self, state) -> None:
        if self.track_running_stats and state is None:
            raise ValueError(f"{self!r}: pass state= (from init_state()); it holds the running statistics")

    def _normalize(self, params: dict, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """``x: [N, C, *]``; ``mean``, ``var`` broadcast against it (``[1 or N, C, 1, ...]``)."""
        y = (x - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            shape = (1, -1) + (1,) * (x.ndim - 2)
            y = y * params["weight"].reshape(shape)
            if self.bias:
                y = y + params["bias"].reshape(shape)
        return y

    def _updated(self, state: dict, mean: torch.Tensor, unbiased_var: torch.Tensor, momentum: Any,
                 count: torch.Tensor) -> dict:
        """``(1 - momentum) * running + momentum * batch`` for the mean and the unbiased variance
        (``[C]``, detached), in the statistics' dtype."""
        rm, rv = state["running_mean"], state["running_var"]
        return {"running_mean": (1 - momentum) * rm + momentum * mean.detach().to(rm.dtype),
                "running_var": (1 - momentum) * rv + momentum * unbiased_var.detach().to(rv.dtype),
                "num_batches_tracked": count}

    def _channels_expected(self, ranks: tuple, x: Any, channel_dim: int) -> None:
        ok = isinstance(x, torch.Tensor) and x.ndim in ranks and x.shape[channel_dim] == self.num_features
        expect(self, ok, f"input of rank {' or '.join(map(str, ranks))} with {self.num_features} channels "
                         f"in dim {channel_dim}", x)


@dataclass(frozen=True)
class _BatchNorm(_RunningStatsNorm):
    """Batch normalization: statistics over the batch and the spatial dims, per channel.

    In training it normalizes with the batch statistics and updates the running ones
    (``momentum=None``: the cumulative average, ``1 / num_batches_tracked``); in eval it
    normalizes with the running statistics and returns the state unchanged. An empty batch
    gives an empty output and leaves the running statistics as they were, counting the batch
    (torch's buffers do the same)."""

    ndims: ClassVar[tuple] = (2, 3)  # accepted input ranks

    def apply(self, params, input, *, state=None, key=None, train=False):
        x = input
        self._channels_expected(self.ndims, x, 1)
        self._need_state(state)
        dims = [0] + list(range(2, x.ndim))
        shape = (1, -1) + (1,) * (x.ndim - 2)
        n = x.numel() // self.num_features  # values per channel
        if train or not self.track_running_stats:
            if n == 1:  # (torch refuses it in eval too, when there are no running statistics)
                raise ValueError(f"{self!r}: expected more than 1 value per channel when training (or "
                                 f"without running statistics), got input {list(x.shape)}")
            if n == 0:  # nothing to average (the output is empty): any finite statistics, no warning
                mean, var = x.new_zeros(self.num_features), x.new_ones(self.num_features)
            else:
                var, mean = torch.var_mean(x, dim=dims, correction=0)
        else:
            mean, var = state["running_mean"].to(x.dtype), state["running_var"].to(x.dtype)
        y = self._normalize(params, x, mean.reshape(shape), var.reshape(shape))
        if not self.track_running_stats:
            return y
        if not train:
            return y, state
        count = state["num_batches_tracked"] + 1
        if n == 0:  # no statistics to average in
            return y, {**state, "num_batches_tracked": count}
        # momentum=None: the cumulative average 1/count, in the statistics' dtype (torch uses a double)
        m = (1.0 / count.to(state["running_mean"].dtype)) if self.momentum is None else self.momentum
        return y, self._updated(state, mean, var * (n / max(n - 1, 1)), m, count)


@dataclass(frozen=True)
class BatchNorm1d(_BatchNorm):
    """x: ``[N, C]`` or ``[N, C, L]``."""

    ndims: ClassVar[tuple] = (2, 3)


@dataclass(frozen=True)
class BatchNorm2d(_BatchNorm):
    """x: ``[N, C, H, W]``."""

    ndims: ClassVar[tuple] = (4,)


@dataclass(frozen=True)
class BatchNorm3d(_BatchNorm):
    """x: ``[N, C, D, H, W]``."""

    ndims: ClassVar[tuple] = (5,)


@dataclass(frozen=True)
class _InstanceNorm(_RunningStatsNorm):
    """Instance normalization: statistics over the spatial dims of each sample and channel.

    Defaults as torch's: no affine params, no running statistics. With
    ``track_running_stats=True`` training updates them with the batch average of the
    per-sample statistics (eval normalizes with them); ``momentum=None`` is torch's 0 there:
    they stay as they are. ``num_batches_tracked`` is carried in the state, never counted, as
    torch's buffer. An empty batch leaves them unchanged (torch writes nan into its buffers).
    An unbatched input (no N dim) is one sample."""

    affine: bool = False
    track_running_stats: bool = False

    spatial: ClassVar[int] = 1  # spatial dims

    def apply(self, params, input, *, state=None, key=None, train=False):
        x = input
        ranks = (self.spatial + 1, self.spatial + 2)
        ok = isinstance(x, torch.Tensor) and x.ndim in ranks
        self._channels_expected(ranks, x, x.ndim - self.spatial - 1 if ok else 1)
        self._need_state(state)
        unbatched = x.ndim == self.spatial + 1
        if unbatched:
            x = x.unsqueeze(0)
        dims = list(range(2, x.ndim))
        n = math.prod(x.shape[2:])  # values per sample and channel
        use_input_stats = train or not self.track_running_stats
        if use_input_stats:
            if n == 1:
                raise ValueError(f"{self!r}: expected more than 1 spatial element when normalizing with the "
                                 f"input's statistics, got input {list(input.shape)}")
            if x.numel() == 0:  # nothing to average (the output is empty): any finite statistics, no warning
                mean = var = x.new_ones((*x.shape[:2],) + (1,) * self.spatial)
            else:
                var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=True)  # [N, C, 1, ...]
        else:
            shape = (1, -1) + (1,) * self.spatial
            mean = state["running_mean"].to(x.dtype).reshape(shape)
            var = state["running_var"].to(x.dtype).reshape(shape)
        y = self._normalize(params, x, mean, var)
        if unbatched:
            y = y.squeeze(0)
        if not self.track_running_stats:
            return y
        if not train or x.shape[0] == 0:
            return y, state
        m = 0.0 if self.momentum is None else self.momentum
        batch_mean = mean.flatten(1).mean(0)
        batch_var = (var * (n / (n - 1))).flatten(1).mean(0)
        return y, self._updated(state, batch_mean, batch_var, m, state["num_batches_tracked"])


@dataclass(frozen=True)
class InstanceNorm1d(_InstanceNorm):
    """x: ``[N, C, L]`` or ``[C, L]``."""

    spatial: ClassVar[int] = 1


@dataclass(frozen=True)
class InstanceNorm2d(_InstanceNorm):
    """x: ``[N, C, H, W]`` or ``[C, H, W]``."""

    spatial: ClassVar[int] = 2


@dataclass(frozen=True)
class InstanceNorm3d(_InstanceNorm):
    """x: ``[N, C, D, H, W]`` or ``[C, D, H, W]``."""

    spatial: ClassVar[int] = 3


def _normalized_shape(layer: Module) -> None:
    """``normalized_shape``: an int or a non-empty sequence of ints >= 1, kept as a tuple."""
    s = layer.normalized_shape
    if isinstance(s, (tuple, list, torch.Size)) and len(s) == 0:
        raise ValueError(f"{type(layer).__name__}: normalized_shape must name at least one dim, got {s!r}")
    U.sizes(layer, "normalized_shape", len(s) if isinstance(s, (tuple, list, torch.Size)) else 1)


def _trailing_shape_expected(layer: Module, x: Any) -> None:
    k = len(layer.normalized_shape)
    fits = isinstance(x, torch.Tensor) and x.ndim >= k and tuple(x.shape[x.ndim - k:]) == layer.normalized_shape
    expect(layer, fits, f"input [..., {', '.join(map(str, layer.normalized_shape))}]", x)


@dataclass(frozen=True)
class LayerNorm(Module):
    """Normalizes over the trailing ``normalized_shape`` dims, as ``nn.LayerNorm``.
    x: ``[..., *normalized_shape]``."""

    normalized_shape: Any
    eps: float = 1e-5
    elementwise_affine: bool = True
    bias: bool = True

    def __post_init__(self):
        _normalized_shape(self)
        U.real(self, "eps", 0.0, open_low=True)
        U.flags(self, "elementwise_affine", "bias")

    def init(self, key):
        return _affine_params(self.normalized_shape, self.elementwise_affine, self.bias, key)

    def apply(self, params, input, *, key=None, train=False):
        _trailing_shape_expected(self, input)
        w = params["weight"] if self.elementwise_affine else None
        b = params["bias"] if self.elementwise_affine and self.bias else None
        return F.layer_norm(input, self.normalized_shape, w, b, self.eps)


@dataclass(frozen=True)
class RMSNorm(Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` over the trailing ``normalized_shape`` dims, as
    ``nn.RMSNorm`` (no mean subtracted, no bias). ``eps=None``: the machine epsilon of x's dtype.
    x: ``[..., *normalized_shape]``."""

    normalized_shape: Any
    eps: float | None = None
    elementwise_affine: bool = True

    def __post_init__(self):
        _normalized_shape(self)
        U.real(self, "eps", 0.0, open_low=True, none=True)
        U.flags(self, "elementwise_affine")

    def init(self, key):
        return _affine_params(self.normalized_shape, self.elementwise_affine, False, key)

    def apply(self, params, x, *, key=None, train=False):
        _trailing_shape_expected(self, x)
        w = params["weight"] if self.elementwise_affine else None
        return F.rms_norm(x, self.normalized_shape, w, self.eps)


@dataclass(frozen=True)
class GroupNorm(Module):
    """x: ``[N, C, *]``; normalizes over groups of ``C / num_groups`` channels, as ``nn.GroupNorm``
    (``bias=False``: the weight only)."""

    num_groups: int
    num_channels: int
    eps: float = 1e-5
    affine: bool = True
    bias: bool = field(default=True, kw_only=True)

    def __post_init__(self):
        U.ints(self, "num_groups", "num_channels")
        U.divisible(self, "num_groups", "num_channels")
        U.real(self, "eps", 0.0, open_low=True)
        U.flags(self, "affine", "bias")

    def init(self, key):
        return _affine_params(self.num_channels, self.affine, self.bias, key)

    def apply(self, params, input, *, key=None, train=False):
        expect(self, isinstance(input, torch.Tensor) and input.ndim >= 2 and input.shape[1] == self.num_channels,
               f"input [N, {self.num_channels}, ...]", input)
        if input.shape[0] * (self.num_channels // self.num_groups) * math.prod(input.shape[2:]) == 1:
            # torch's check, in train and eval alike: one sample of one value per group
            raise ValueError(f"{self!r}: expected more than 1 value per group, got input {list(input.shape)}")
        w = params["weight"] if self.affine else None
        b = params["bias"] if self.affine and self.bias else None
        return F.group_norm(input, self.num_groups, w, b, self.eps)


@dataclass(frozen=True)
class LocalResponseNorm(Module):
    """Each value divided by ``(k + alpha / size * sum of squares over size neighbouring
    channels) ** beta``, as ``nn.LocalResponseNorm``. x: ``[N, C, *]`` with at least one
    spatial dim."""

    size: int
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0

    def __post_init__(self):
        U.ints(self, "size")
        U.real(self, "alpha")
        U.real(self, "beta")
        U.real(self, "k")

    def apply(self, params, input, *, key=None, train=False):
        expect(self, isinstance(input, torch.Tensor) and input.ndim >= 3, "input [N, C, L, ...] (rank 3 or more)",
               input)
        return F.local_response_norm(input, self.size, self.alpha, self.beta, self.k)
