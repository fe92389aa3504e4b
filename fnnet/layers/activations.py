"""Activations: plain functions (``fn.relu``) and, where a hyperparameter is involved, the
``torch.nn``-named modules to put in a Sequential (``fn.LeakyReLU(0.2)``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..module import Module
from . import _util as U
from ._util import expect

relu = F.relu
relu6 = F.relu6
sigmoid = torch.sigmoid
tanh = torch.tanh
silu = F.silu
mish = F.mish
selu = F.selu
logsigmoid = F.logsigmoid
softsign = F.softsign
tanhshrink = F.tanhshrink


def leaky_relu(x: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    return F.leaky_relu(x, negative_slope)


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return F.gelu(x, approximate=approximate)


def elu(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    return F.elu(x, alpha)


def celu(x: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    return F.celu(x, alpha)


def softplus(x: torch.Tensor, beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    return F.softplus(x, beta, threshold)


def hardtanh(x: torch.Tensor, min_val: float = -1.0, max_val: float = 1.0) -> torch.Tensor:
    return F.hardtanh(x, min_val, max_val)


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return F.softmax(x, dim=dim)


def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return F.log_softmax(x, dim=dim)


@dataclass(frozen=True)
class _Activation(Module):
    def apply(self, params, x, *, key=None, train=False):
        expect(self, isinstance(x, torch.Tensor), "a tensor", x)
        return self.f(x)


@dataclass(frozen=True)
class ReLU(_Activation):
    def f(self, x):
        return relu(x)


@dataclass(frozen=True)
class Sigmoid(_Activation):
    def f(self, x):
        return sigmoid(x)


@dataclass(frozen=True)
class Tanh(_Activation):
    def f(self, x):
        return tanh(x)


@dataclass(frozen=True)
class LeakyReLU(_Activation):
    negative_slope: float = 0.01

    def __post_init__(self):
        U.real(self, "negative_slope")

    def f(self, x):
        return leaky_relu(x, self.negative_slope)


@dataclass(frozen=True)
class GELU(_Activation):
    approximate: str = "none"

    def __post_init__(self):
        U.choice(self, "approximate", ("none", "tanh"))

    def f(self, x):
        return gelu(x, self.approximate)


@dataclass(frozen=True)
class ELU(_Activation):
    alpha: float = 1.0

    def __post_init__(self):
        U.real(self, "alpha")

    def f(self, x):
        return elu(x, self.alpha)


@dataclass(frozen=True)
class Softplus(_Activation):
    beta: float = 1.0
    threshold: float = 20.0

    def __post_init__(self):
        U.real(self, "beta", nonzero=True)
        U.real(self, "threshold")

    def f(self, x):
        return softplus(x, self.beta, self.threshold)


@dataclass(frozen=True)
class Softmax(_Activation):
    dim: int = -1

    def __post_init__(self):
        U.ints(self, "dim", minimum=None)

    def f(self, x):
        return softmax(x, self.dim)


@dataclass(frozen=True)
class LogSoftmax(_Activation):
    dim: int = -1

    def __post_init__(self):
        U.ints(self, "dim", minimum=None)

    def f(self, x):
        return log_softmax(x, self.dim)
