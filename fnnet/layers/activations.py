"""Activations: plain functions (``fn.relu``) and the ``torch.nn``-named modules to put in a
Sequential (``fn.LeakyReLU(0.2)``), with torch.nn's constructor arguments.

One mechanism: a module is an :class:`_Activation` whose hyperparameters are its fields and whose
``f(x)`` applies the function form; its ``apply(params, input)`` takes the input as torch's
``forward(input)`` does (by position, or as ``input=``). No ``inplace`` flag: fnnet never writes
into its inputs. :class:`PReLU`, the one with a parameter, has its own ``init``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..module import Module
from . import _util as U
from ._util import expect

from ._relu import relu  # (a backward whose own derivative is cheap: _relu.py)
relu6 = F.relu6
sigmoid = torch.sigmoid
tanh = torch.tanh
silu = F.silu
mish = F.mish
selu = F.selu
hardswish = F.hardswish
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


def hardshrink(x: torch.Tensor, lambd: float = 0.5) -> torch.Tensor:
    """``x`` where ``|x| > lambd``, else 0."""
    return F.hardshrink(x, lambd)


def softshrink(x: torch.Tensor, lambd: float = 0.5) -> torch.Tensor:
    """``x - lambd * sign(x)`` where ``|x| > lambd``, else 0 (``lambd >= 0``)."""
    return F.softshrink(x, lambd)


def threshold(x: torch.Tensor, threshold: float, value: float) -> torch.Tensor:
    """``x`` where ``x > threshold``, else ``value``."""
    return F.threshold(x, threshold, value)


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return F.softmax(x, dim=dim)


def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return F.log_softmax(x, dim=dim)


def softmin(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``softmax(-x, dim)``."""
    return F.softmin(x, dim=dim)


def glu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Gated linear unit: ``a * sigmoid(b)``, ``a`` and ``b`` the two halves of ``x`` along ``dim``
    (of even size). x: ``[..., 2n, ...]`` -> ``[..., n, ...]``."""
    ok = isinstance(x, torch.Tensor) and -x.ndim <= dim < x.ndim and x.shape[dim] % 2 == 0
    if not ok:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"glu: expected an input whose dim {dim} has an even size (it is halved), got {got}")
    return F.glu(x, dim)


def _implicit_dim(ndim: int) -> int:
    """torch's choice of dim for a softmax given none (``nn.Softmax()``): 0 for a 0-, 1- or 3-d
    input, else 1."""
    return 0 if ndim in (0, 1, 3) else 1


@dataclass(frozen=True)
class _Activation(Module):
    """``apply(params, input)`` is ``self.f(input)``; subclasses define ``f`` and their fields."""

    def apply(self, params, input, *, key=None, train=False):
        expect(self, isinstance(input, torch.Tensor), "a tensor", input)
        return self.f(input)

    def _dim_expected(self, x: torch.Tensor, dim: int) -> None:
        n = max(x.ndim, 1)  # a 0-d tensor takes dim 0 or -1, as in torch
        expect(self, -n <= dim < n, f"an input that has dim {dim}", x)


@dataclass(frozen=True)
class ReLU(_Activation):
    def f(self, x):
        return relu(x)


@dataclass(frozen=True)
class ReLU6(_Activation):
    """``min(max(x, 0), 6)``."""

    def f(self, x):
        return relu6(x)


@dataclass(frozen=True)
class Sigmoid(_Activation):
    def f(self, x):
        return sigmoid(x)


@dataclass(frozen=True)
class Tanh(_Activation):
    def f(self, x):
        return tanh(x)


@dataclass(frozen=True)
class SiLU(_Activation):
    """``x * sigmoid(x)`` (swish)."""

    def f(self, x):
        return silu(x)


@dataclass(frozen=True)
class Mish(_Activation):
    """``x * tanh(softplus(x))``."""

    def f(self, x):
        return mish(x)


@dataclass(frozen=True)
class SELU(_Activation):
    """Scaled ELU with the self-normalizing constants."""

    def f(self, x):
        return selu(x)


@dataclass(frozen=True)
class Hardswish(_Activation):
    """``x * relu6(x + 3) / 6``."""

    def f(self, x):
        return hardswish(x)


@dataclass(frozen=True)
class LogSigmoid(_Activation):
    """``log(sigmoid(x))``, stable for large ``|x|``."""

    def f(self, x):
        return logsigmoid(x)


@dataclass(frozen=True)
class Softsign(_Activation):
    """``x / (1 + |x|)``."""

    def f(self, x):
        return softsign(x)


@dataclass(frozen=True)
class Tanhshrink(_Activation):
    """``x - tanh(x)``."""

    def f(self, x):
        return tanhshrink(x)


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
class CELU(_Activation):
    """``max(0, x) + min(0, alpha * (exp(x / alpha) - 1))``; ``alpha`` other than 0."""

    alpha: float = 1.0

    def __post_init__(self):
        U.real(self, "alpha", nonzero=True)

    def f(self, x):
        return celu(x, self.alpha)


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
class Hardtanh(_Activation):
    """``x`` clamped to ``[min_val, max_val]`` (``max_val > min_val``)."""

    min_val: float = -1.0
    max_val: float = 1.0

    def __post_init__(self):
        U.real(self, "min_val")
        U.real(self, "max_val")
        if not self.max_val > self.min_val:
            raise ValueError(f"Hardtanh: max_val ({self.max_val}) must be greater than min_val ({self.min_val})")

    def f(self, x):
        return hardtanh(x, self.min_val, self.max_val)


@dataclass(frozen=True)
class Hardshrink(_Activation):
    lambd: float = 0.5

    def __post_init__(self):
        U.real(self, "lambd")

    def f(self, x):
        return hardshrink(x, self.lambd)


@dataclass(frozen=True)
class Softshrink(_Activation):
    lambd: float = 0.5

    def __post_init__(self):
        U.real(self, "lambd", 0.0)

    def f(self, x):
        return softshrink(x, self.lambd)


@dataclass(frozen=True)
class Threshold(_Activation):
    """``x`` where ``x > threshold``, else ``value``."""

    threshold: float
    value: float

    def __post_init__(self):
        U.real(self, "threshold")
        U.real(self, "value")

    def f(self, x):
        return threshold(x, self.threshold, self.value)


@dataclass(frozen=True)
class _AlongDim(_Activation):
    """An activation along one dim. ``dim=None`` (torch's default for these modules) is torch's
    implicit choice: dim 0 of a 0-, 1- or 3-d input, else dim 1, so ``nn.Softmax()`` ports with
    the same numbers (torch also warns that the implicit choice is deprecated: pass ``dim``)."""

    dim: int | None = None

    def __post_init__(self):
        if self.dim is not None:
            U.ints(self, "dim", minimum=None)

    def _dim(self, x: torch.Tensor) -> int:
        dim = _implicit_dim(x.ndim) if self.dim is None else self.dim
        self._dim_expected(x, dim)
        return dim


@dataclass(frozen=True)
class Softmax(_AlongDim):
    def f(self, x):
        return softmax(x, self._dim(x))


@dataclass(frozen=True)
class LogSoftmax(_AlongDim):
    def f(self, x):
        return log_softmax(x, self._dim(x))


@dataclass(frozen=True)
class Softmin(_AlongDim):
    """``softmax(-x, dim)``."""

    def f(self, x):
        return softmin(x, self._dim(x))


@dataclass(frozen=True)
class Softmax2d(_Activation):
    """Softmax over the channels at each location. x: ``[N, C, H, W]`` or ``[C, H, W]``."""

    def f(self, x):
        expect(self, x.ndim in (3, 4), "input [N, C, H, W] or [C, H, W]", x)
        return softmax(x, -3)


@dataclass(frozen=True)
class GLU(_Activation):
    """:func:`glu` along ``dim``: x ``[..., 2n, ...]`` -> ``[..., n, ...]``."""

    dim: int = -1

    def __post_init__(self):
        U.ints(self, "dim", minimum=None)

    def f(self, x):
        ok = -x.ndim <= self.dim < x.ndim and x.shape[self.dim] % 2 == 0
        expect(self, ok, f"an input whose dim {self.dim} has an even size (it is halved)", x)
        return glu(x, self.dim)


@dataclass(frozen=True, init=False)
class PReLU(Module):
    """``max(0, x) + weight * min(0, x)`` with a learned slope: one shared (``num_parameters=1``)
    or one per channel (dim 1 of x). x: ``[N, C, *]``, or any shape with one slope.
    Params ``{"weight": [num_parameters]}``, filled with ``init``.

    ``PReLU(num_parameters=1, init=0.25)`` as in torch; the initial slope is kept as
    ``init_value`` (``init`` is the method every module has)."""

    num_parameters: int = 1
    init_value: float = 0.25

    def __init__(self, num_parameters: int = 1, init: float = 0.25):
        object.__setattr__(self, "num_parameters", num_parameters)
        object.__setattr__(self, "init_value", init)
        U.ints(self, "num_parameters")
        U.real(self, "init_value", arg="init")

    def init(self, key):
        return {"weight": torch.full((self.num_parameters,), self.init_value, dtype=torch.get_default_dtype(),
                                     device=key.device)}

    def apply(self, params, input, *, key=None, train=False):
        c = self.num_parameters
        ok = isinstance(input, torch.Tensor) and (c == 1 or (input.ndim >= 2 and input.shape[1] == c))
        expect(self, ok, "a tensor" if c == 1 else f"input [N, {c}, ...]", input)
        return F.prelu(input, params["weight"])
