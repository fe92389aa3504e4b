"""Initializers: ``torch.nn``'s default distributions, drawn from explicit keys.

Every initializer is ``f(key, shape, ...) -> tensor``, on the key's device, in
``torch.get_default_dtype()`` unless a ``dtype`` is given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import _check, random

__all__ = ["fans", "zeros", "ones", "uniform", "normal", "kaiming_uniform", "kaiming_normal",
           "xavier_uniform", "xavier_normal", "torch_default", "torch_default_bias"]


def _dtype(dtype: torch.dtype | None) -> torch.dtype:
    return dtype or torch.get_default_dtype()


def _shape(shape: Sequence[int]) -> tuple:
    """A shape: a sequence of ints >= 0 (a bare int is a 1-d shape)."""
    if isinstance(shape, int) and not isinstance(shape, bool):
        shape = (shape,)
    if not isinstance(shape, (tuple, list, torch.Size)):
        _check.fail("init", "shape", "a sequence of ints >= 0", _check.describe(shape), TypeError)
    return tuple(_check.integer("init", "shape", d, lo=0, expected="a sequence of ints >= 0", shown=list(shape))
                 for d in shape)


def _scale(name: str, v: float) -> float:
    return _check.real("init", name, v, lo=0)


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_in, fan_out)`` exactly as ``torch.nn.init`` computes them: dim 1 and dim 0,
    times the receptive field (the product of the trailing dims)."""
    shape = _shape(shape)
    if len(shape) < 2:
        raise ValueError(f"fans need a weight with at least 2 dims, got shape {list(shape)}")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def zeros(key: torch.Tensor, shape: Sequence[int], dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.zeros(_shape(shape), dtype=_dtype(dtype), device=key.device)


def ones(key: torch.Tensor, shape: Sequence[int], dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.ones(_shape(shape), dtype=_dtype(dtype), device=key.device)


def uniform(key: torch.Tensor, shape: Sequence[int], bound: float,
            dtype: torch.dtype | None = None) -> torch.Tensor:
    """Uniform on ``[-bound, bound)``."""
    bound = _scale("bound", bound)
    return random.uniform(key, _shape(shape), _dtype(dtype), -bound, bound)


def normal(key: torch.Tensor, shape: Sequence[int], std: float = 1.0,
           dtype: torch.dtype | None = None) -> torch.Tensor:
    return random.normal(key, _shape(shape), _dtype(dtype)) * _scale("std", std)


_GAINS = {"relu": math.sqrt(2.0), "tanh": 5.0 / 3, "linear": 1.0, "sigmoid": 1.0, "selu": 0.75,
          "conv1d": 1.0, "conv2d": 1.0, "conv3d": 1.0}


def _gain(nonlinearity: str, a: float) -> float:
    """``torch.nn.init.calculate_gain``."""
    if nonlinearity == "leaky_relu":
        a = _check.real("init", "a (the negative slope)", a)
        return math.sqrt(2.0 / (1 + a * a))
    return _GAINS[_check.choice("init", "nonlinearity", nonlinearity, ("leaky_relu", *_GAINS))]


def _fan(shape: Sequence[int], mode: str) -> int:
    return fans(shape)[0 if _check.choice("init", "mode", mode, ("fan_in", "fan_out")) == "fan_in" else 1]


def kaiming_uniform(key, shape, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", dtype=None) -> torch.Tensor:
    fan = _fan(shape, mode)
    bound = _gain(nonlinearity, a) * math.sqrt(3.0 / fan) if fan > 0 else 0.0
    return uniform(key, shape, bound, dtype)


def kaiming_normal(key, shape, a: float = 0.0, mode: str = "fan_in",
                   nonlinearity: str = "leaky_relu", dtype=None) -> torch.Tensor:
    fan = _fan(shape, mode)
    std = _gain(nonlinearity, a) / math.sqrt(fan) if fan > 0 else 0.0
    return normal(key, shape, std, dtype)


def xavier_uniform(key, shape, gain: float = 1.0, dtype=None) -> torch.Tensor:
    fan_in, fan_out = fans(shape)
    return uniform(key, shape, gain * math.sqrt(6.0 / (fan_in + fan_out)), dtype)


def xavier_normal(key, shape, gain: float = 1.0, dtype=None) -> torch.Tensor:
    fan_in, fan_out = fans(shape)
    return normal(key, shape, gain * math.sqrt(2.0 / (fan_in + fan_out)), dtype)


def torch_default(key, shape, dtype=None) -> torch.Tensor:
    """The weight init of ``nn.Linear`` and ``nn.Conv*``: ``kaiming_uniform(a=sqrt(5))``,
    i.e. uniform on ``+-1/sqrt(fan_in)``."""
    return kaiming_uniform(key, shape, a=math.sqrt(5.0), dtype=dtype)


def torch_default_bias(key, shape, fan_in: int, dtype=None) -> torch.Tensor:
    """The bias init of ``nn.Linear`` and ``nn.Conv*``: uniform on ``+-1/sqrt(fan_in)``."""
    return uniform(key, shape, 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0, dtype)
