"""Normalization: BatchNorm1d/2d (explicit running-statistics state), LayerNorm, GroupNorm."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .. import init as I
from ..module import Module
from . import _util as U
from ._util import expect


@dataclass(frozen=True)
class _BatchNorm(Module):
    """Batch normalization with the running statistics as explicit state.

    ``y, state = bn.apply(params, x, state=state, train=True)`` normalizes with the batch
    statistics and returns the running statistics updated exactly as torch updates its
    buffers (unbiased variance, ``momentum``; ``momentum=None`` is the cumulative average);
    with ``train=False`` it normalizes with the running statistics and returns the state
    unchanged. With ``track_running_stats=False`` there is no state and ``apply`` returns ``y``.
    """

    num_features: int
    eps: float = 1e-5
    momentum: float | None = 0.1
    affine: bool = True
    track_running_stats: bool = True

    ndims: ClassVar[tuple] = (2, 3)  # accepted input ranks

    def __post_init__(self):
        U.ints(self, "num_features")
        U.real(self, "eps", 0.0, open_low=True)
        U.real(self, "momentum", 0.0, 1.0, none=True)
        U.flags(self, "affine", "track_running_stats")

    @property
    def stateful(self) -> bool:
        return self.track_running_stats

    def init(self, key):
        if not self.affine:
            return {}
        return {"weight": I.ones(key, (self.num_features,)), "bias": I.zeros(key, (self.num_features,))}

    def init_state(self, device: Any = None):
        if not self.track_running_stats:
            return {}
        c = self.num_features
        dtype = torch.get_default_dtype()
        return {"running_mean": torch.zeros(c, dtype=dtype, device=device),
                "running_var": torch.ones(c, dtype=dtype, device=device),
                "num_batches_tracked": torch.zeros((), dtype=torch.int64, device=device)}

    def apply(self, params, x, *, state=None, key=None, train=False):
        expect(self, isinstance(x, torch.Tensor) and x.ndim in self.ndims and x.shape[1] == self.num_features,
               f"input of rank {' or '.join(map(str, self.ndims))} with {self.num_features} channels "
               f"in dim 1", x)
        if self.track_running_stats and state is None:
            raise ValueError(f"{self!r}: pass state= (from init_state()); it holds the running statistics")
        shape = (1, -1) + (1,) * (x.ndim - 2)
        dims = [0] + list(range(2, x.ndim))
        use_batch = train or not self.track_running_stats
        if use_batch:
            n = x.numel() // self.num_features
            if train and n <= 1:
                raise ValueError(f"{self!r}: expected more than 1 value per channel when training, "
                                 f"got input {list(x.shape)}")
            var, mean = torch.var_mean(x, dim=dims, correction=0)
        else:
            mean, var = state["running_mean"].to(x.dtype), state["running_var"].to(x.dtype)
        y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            y = y * params["weight"].reshape(shape) + params["bias"].reshape(shape)
        if not self.track_running_stats:
            return y
        if not train:
            return y, state
        count = state["num_batches_tracked"] + 1
        rm, rv = state["running_mean"], state["running_var"]
        # momentum=None: the cumulative average 1/count, in the statistics' dtype (torch uses a double)
        m = (1.0 / count.to(rm.dtype)) if self.momentum is None else self.momentum
        unbiased = var.detach() * (n / max(n - 1, 1))
        new_state = {"running_mean": (1 - m) * rm + m * mean.detach().to(rm.dtype),
                     "running_var": (1 - m) * rv + m * unbiased.to(rv.dtype),
                     "num_batches_tracked": count}
        return y, new_state


@dataclass(frozen=True)
class BatchNorm1d(_BatchNorm):
    """x: ``[N, C]`` or ``[N, C, L]``."""

    ndims: ClassVar[tuple] = (2, 3)


@dataclass(frozen=True)
class BatchNorm2d(_BatchNorm):
    """x: ``[N, C, H, W]``."""

    ndims: ClassVar[tuple] = (4,)


@dataclass(frozen=True)
class LayerNorm(Module):
    """Normalizes over the trailing ``normalized_shape`` dims, as ``nn.LayerNorm``."""

    normalized_shape: Any
    eps: float = 1e-5
    elementwise_affine: bool = True
    bias: bool = True

    def __post_init__(self):
        s = self.normalized_shape
        if isinstance(s, (tuple, list, torch.Size)) and len(s) == 0:
            raise ValueError(f"LayerNorm: normalized_shape must name at least one dim, got {s!r}")
        U.sizes(self, "normalized_shape", len(s) if isinstance(s, (tuple, list, torch.Size)) else 1)
        U.real(self, "eps", 0.0, open_low=True)
        U.flags(self, "elementwise_affine", "bias")

    def init(self, key):
        if not self.elementwise_affine:
            return {}
        p = {"weight": I.ones(key, self.normalized_shape)}
        if self.bias:
            p["bias"] = I.zeros(key, self.normalized_shape)
        return p

    def apply(self, params, x, *, key=None, train=False):
        k = len(self.normalized_shape)
        fits = isinstance(x, torch.Tensor) and x.ndim >= k and tuple(x.shape[x.ndim - k:]) == self.normalized_shape
        expect(self, fits, f"input [..., {', '.join(map(str, self.normalized_shape))}]", x)
        w = params["weight"] if self.elementwise_affine else None
        b = params["bias"] if self.elementwise_affine and self.bias else None
        return F.layer_norm(x, self.normalized_shape, w, b, self.eps)


@dataclass(frozen=True)
class GroupNorm(Module):
    """x: ``[N, C, *]``; normalizes over groups of ``C / num_groups`` channels, as ``nn.GroupNorm``."""

    num_groups: int
    num_channels: int
    eps: float = 1e-5
    affine: bool = True

    def __post_init__(self):
        U.ints(self, "num_groups", "num_channels")
        U.divisible(self, "num_groups", "num_channels")
        U.real(self, "eps", 0.0, open_low=True)
        U.flags(self, "affine")

    def init(self, key):
        if not self.affine:
            return {}
        return {"weight": I.ones(key, (self.num_channels,)), "bias": I.zeros(key, (self.num_channels,))}

    def apply(self, params, x, *, key=None, train=False):
        expect(self, isinstance(x, torch.Tensor) and x.ndim >= 2 and x.shape[1] == self.num_channels,
               f"input [N, {self.num_channels}, ...]", x)
        w = params["weight"] if self.affine else None
        b = params["bias"] if self.affine else None
        return F.group_norm(x, self.num_groups, w, b, self.eps)
