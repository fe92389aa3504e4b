"""Bilinear: ``y = x1^T A x2 + b``, one matrix ``A`` per output feature, as ``nn.Bilinear``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import init as I
from .. import random
from ..module import Module
from . import _util as U
from ._util import expect


@dataclass(frozen=True)
class Bilinear(Module):
    """``y[..., o] = sum_ij input1[..., i] * weight[o, i, j] * input2[..., j] + bias[o]``.
    input1: ``[..., in1_features]``, input2: ``[..., in2_features]`` (the same leading dims) ->
    ``[..., out_features]``. Params ``{"weight": [out, in1, in2], "bias": [out]}``, both uniform
    on ``+-1/sqrt(in1_features)`` as in torch."""

    in1_features: int
    in2_features: int
    out_features: int
    bias: bool = True

    def __post_init__(self):
        U.ints(self, "in1_features", "in2_features", "out_features")
        U.flags(self, "bias")

    def init(self, key):
        kw, kb = random.split(key)
        bound = 1.0 / math.sqrt(self.in1_features)
        p = {"weight": I.uniform(kw, (self.out_features, self.in1_features, self.in2_features), bound)}
        if self.bias:
            p["bias"] = I.uniform(kb, (self.out_features,), bound)
        return p

    def apply(self, params, input1, input2, *, key=None, train=False):
        for x, size, name in ((input1, self.in1_features, "input1"), (input2, self.in2_features, "input2")):
            expect(self, isinstance(x, torch.Tensor) and x.ndim >= 1 and x.shape[-1] == size,
                   f"{name} [..., {size}]", x)
        if input1.shape[:-1] != input2.shape[:-1]:
            raise ValueError(f"{self!r}: input1 {list(input1.shape)} and input2 {list(input2.shape)} must have the "
                             f"same leading dims (no broadcasting)")
        if input1.dtype != input2.dtype:
            raise TypeError(f"{self!r}: input1 ({input1.dtype}) and input2 ({input2.dtype}) must have the same dtype")
        return F.bilinear(input1, input2, params["weight"], params["bias"] if self.bias else None)
