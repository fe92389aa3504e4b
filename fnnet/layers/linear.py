"""Affine maps and reshaping: Linear, Identity, Flatten, Unflatten."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import _check
from .. import init as I
from .. import random
from ..module import Module
from . import _gemm
from . import _util as U
from ._gemm import get_gemm, jit_options, set_gemm  # noqa: F401  (fnnet.layers.linear.set_gemm)
from ._util import expect


@dataclass(frozen=True)
class Linear(Module):
    """``y = x W^T + b``. x: ``[..., in_features]`` -> ``[..., out_features]``.
    Params ``{"weight": [out, in], "bias": [out]}``, initialized as ``nn.Linear``.

    float32 on the CPU, the matmul runs on oneDNN's GEMM where that is chosen (measured faster
    here, or asked for: ``set_gemm``, ``FNNET_GEMM``; ``fnnet/layers/_gemm.py``): equal to
    ``nn.Linear`` to float32 rounding, not bit for bit. Every other dtype and device is
    ``F.linear``, bit for bit."""

    in_features: int
    out_features: int
    bias: bool = True

    def __post_init__(self):
        U.ints(self, "in_features", "out_features")
        U.flags(self, "bias")

    def init(self, key):
        kw, kb = random.split(key)
        p = {"weight": I.torch_default(kw, (self.out_features, self.in_features))}
        if self.bias:
            p["bias"] = I.torch_default_bias(kb, (self.out_features,), self.in_features)
        return p

    def apply(self, params, input, *, key=None, train=False):
        expect(self, isinstance(input, torch.Tensor) and input.ndim >= 1 and input.shape[-1] == self.in_features,
               f"input [..., {self.in_features}]", input)
        w, b = params["weight"], params["bias"] if self.bias else None
        # eager float32 CPU: oneDNN's GEMM where it is chosen (_gemm); compiled, F.linear, whose
        # matmuls fn.jit(..., **_gemm.jit_options()) moves to oneDNN after differentiation
        rows = input.numel() // self.in_features if self.in_features else 0
        if (not torch.compiler.is_compiling() and w.dtype == input.dtype and (b is None or b.dtype == input.dtype)
                and _gemm.applies(input.dtype, input.device, rows, self.in_features, self.out_features)):
            return _gemm.linear(input, w, b)
        return F.linear(input, w, b)


@dataclass(frozen=True)
class Identity(Module):
    def apply(self, params, input, *, key=None, train=False):
        return input


@dataclass(frozen=True)
class Flatten(Module):
    """Flattens dims ``start_dim..end_dim`` (default: all but the batch dim), as ``nn.Flatten``."""

    start_dim: int = 1
    end_dim: int = -1

    def __post_init__(self):
        U.ints(self, "start_dim", "end_dim", minimum=None)

    def apply(self, params, input, *, key=None, train=False):
        if isinstance(input, torch.Tensor):
            n = max(input.ndim, 1)
            start, end = self.start_dim % n if -n <= self.start_dim < n else None, \
                self.end_dim % n if -n <= self.end_dim < n else None
            ok = start is not None and end is not None and start <= end
        else:
            ok = False
        expect(self, ok, f"input with dims {self.start_dim}..{self.end_dim} (start before end)", input)
        return torch.flatten(input, self.start_dim, self.end_dim)


@dataclass(frozen=True)
class Unflatten(Module):
    """Expands dim ``dim`` into ``unflattened_size``, as ``nn.Unflatten``."""

    dim: int
    unflattened_size: tuple

    def __post_init__(self):
        U.ints(self, "dim", minimum=None)
        size, what = self.unflattened_size, "a non-empty tuple of ints"
        if not isinstance(size, (tuple, list)) or not size:
            _check.fail("Unflatten", "unflattened_size", what, _check.describe(size), TypeError)
        size = tuple(_check.integer("Unflatten", "unflattened_size", s, expected=what, shown=size) for s in size)
        if any(s < 1 and s != -1 for s in size) or list(size).count(-1) > 1:
            raise ValueError(f"Unflatten: unflattened_size must hold sizes >= 1 and at most one -1, "
                             f"got {size!r}")
        object.__setattr__(self, "unflattened_size", tuple(size))

    def apply(self, params, input, *, key=None, train=False):
        ok = isinstance(input, torch.Tensor) and -input.ndim <= self.dim < input.ndim
        if ok:
            known = math.prod(s for s in self.unflattened_size if s != -1)
            n = input.shape[self.dim]
            ok = n % known == 0 if -1 in self.unflattened_size else n == known
        expect(self, ok, f"input whose dim {self.dim} splits into {list(self.unflattened_size)}", input)
        return input.unflatten(self.dim, self.unflattened_size)
