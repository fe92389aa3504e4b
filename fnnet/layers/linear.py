"""Affine maps and reshaping: Linear, Identity, Flatten, Unflatten."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import init as I
from .. import random
from ..module import Module
from ._util import expect, no_extra, param


@dataclass(frozen=True)
class Linear(Module):
    """``y = x W^T + b``. x: ``[..., in_features]`` -> ``[..., out_features]``.
    Params ``{"weight": [out, in], "bias": [out]}``, initialized as ``nn.Linear``."""

    in_features: int
    out_features: int
    bias: bool = True

    def init(self, key):
        kw, kb = random.split(key)
        p = {"weight": I.torch_default(kw, (self.out_features, self.in_features))}
        if self.bias:
            p["bias"] = I.torch_default_bias(kb, (self.out_features,), self.in_features)
        return p

    def apply(self, params, x, *, key=None, train=False):
        expect(self, x.ndim >= 1 and x.shape[-1] == self.in_features,
               f"input [..., {self.in_features}]", x)
        w = param(self, params, "weight", (self.out_features, self.in_features))
        b = param(self, params, "bias", (self.out_features,)) if self.bias else None
        no_extra(self, params, ("weight", "bias") if self.bias else ("weight",))
        return F.linear(x, w, b)


@dataclass(frozen=True)
class Identity(Module):
    def apply(self, params, x, *, key=None, train=False):
        return x


@dataclass(frozen=True)
class Flatten(Module):
    """Flattens dims ``start_dim..end_dim`` (default: all but the batch dim), as ``nn.Flatten``."""

    start_dim: int = 1
    end_dim: int = -1

    def apply(self, params, x, *, key=None, train=False):
        return torch.flatten(x, self.start_dim, self.end_dim)


@dataclass(frozen=True)
class Unflatten(Module):
    """Expands dim ``dim`` into ``unflattened_size``, as ``nn.Unflatten``."""

    dim: int
    unflattened_size: tuple

    def apply(self, params, x, *, key=None, train=False):
        return x.unflatten(self.dim, tuple(self.unflattened_size))
