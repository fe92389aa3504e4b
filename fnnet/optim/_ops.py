"""List arithmetic for optimizer updates, written once and run one of two ways.

Every optimizer's step is arithmetic on lists of leaves (``ops.lerp(m, g, 1 - b1)``). ``for_leaves``
picks how, once per update:

- ``FOREACH``: ``torch._foreach_*`` — one kernel launch per operation for all leaves, no Python
  loop over leaves. The normal path, eager or under ``torch.compile``.
- ``PER_LEAF``: the same operations leaf by leaf. ``_foreach`` ops have no ``vmap`` batching
  rule (torch 2.13: "Batching rule not implemented for aten::_foreach_add.List"), so this path
  runs when any leaf is a functorch-batched tensor (an ensemble's vmapped optimizer state),
  when a leaf requires grad (differentiating through an update: no in-place arithmetic), and
  in compiled graphs on torch 2.10, whose compiled ``_foreach_*`` ops refuse 0-d tensor scalars.

The ``*_`` operations (``mul_``, ``add_``, ...) may write into their first argument, and are
only ever called on a list the step itself just created, never on grads, params or state: on
the CPU a fresh buffer costs page faults, so the fewer the faster. ``PER_LEAF`` makes them
out of place.

Scalars (``s``, ``w``, ``value``) are Python numbers or 0-d tensors. Numbers reach the fused
``_foreach`` kernels (``lerp``, ``addcmul``, ``add(alpha=)``) as torch.optim passes them; a
tensor (a hyperparameter held in the state, read on the device or inside a compiled graph)
takes the unfused form of the same formula. :func:`host_scalars` decides which an update uses.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch._C._functorch import is_batchedtensor

from .. import _compat

List = list[torch.Tensor]

try:  # torch >= 2.3
    from torch.compiler import is_compiling as _is_compiling
except ImportError:  # pragma: no cover
    from torch._dynamo import is_compiling as _is_compiling


def _number(s) -> bool:
    return not isinstance(s, torch.Tensor)


is_number = _number  # a scalar read on the host (Python number), not a 0-d tensor


def _each(xs: List, s) -> zip:
    """``(x, s_x)`` pairs: ``s`` one scalar for all leaves, or a list of one per leaf."""
    return zip(xs, s if isinstance(s, (list, tuple)) else [s] * len(xs))


def _numbers(s) -> bool:
    """A number, or a list of numbers (a ``_foreach`` ScalarList)."""
    return all(map(_number, s)) if isinstance(s, (list, tuple)) else _number(s)


def host_scalars(count: torch.Tensor) -> bool:
    """Whether an update reads its step count and hyperparameters as Python numbers: only when
    that costs nothing — eager, on the CPU, outside ``vmap`` (torch.optim does the same with its
    CPU step counts). On an accelerator or in a compiled graph they stay tensors: no host sync,
    and changing one does not recompile."""
    return count.device.type == "cpu" and not is_batchedtensor(count) and not _is_compiling()


class _Foreach:
    """``torch._foreach_*`` on whole lists."""

    @staticmethod
    def add(xs: List, ys, alpha=None) -> List:
        """``x + y`` (list) or ``x + s`` (scalar); ``x + alpha * y`` with a number ``alpha``."""
        if alpha is None:
            return torch._foreach_add(xs, ys)
        if _number(alpha):
            return torch._foreach_add(xs, ys, alpha=alpha)
        return torch._foreach_add(xs, torch._foreach_mul(ys, alpha))

    @staticmethod
    def add_(xs: List, ys, alpha=None) -> List:
        if alpha is None:
            torch._foreach_add_(xs, ys)
        elif _number(alpha):
            torch._foreach_add_(xs, ys, alpha=alpha)
        else:
            torch._foreach_add_(xs, torch._foreach_mul(ys, alpha))
        return xs

    @staticmethod
    def sub(xs: List, ys: List) -> List:
        return torch._foreach_sub(xs, ys)

    @staticmethod
    def mul(xs: List, s) -> List:
        return torch._foreach_mul(xs, s)

    @staticmethod
    def mul_(xs: List, s) -> List:
        torch._foreach_mul_(xs, s)
        return xs

    @staticmethod
    def div(xs: List, s) -> List:
        return torch._foreach_div(xs, s)

    @staticmethod
    def div_(xs: List, s) -> List:
        torch._foreach_div_(xs, s)
        return xs

    @staticmethod
    def lerp(xs: List, ys: List, w) -> List:
        """``x + w (y - x)`` (``Tensor.lerp``)."""
        if _number(w):
            return torch._foreach_lerp(xs, ys, w)
        d = torch._foreach_sub(ys, xs)
        torch._foreach_mul_(d, w)
        torch._foreach_add_(d, xs)
        return d

    @staticmethod
    def addcmul(xs: List, a: List, b: List, value=1.0) -> List:
        """``x + value * a * b``."""
        if _number(value):
            return torch._foreach_addcmul(xs, a, b, value=value)
        ab = torch._foreach_mul(a, b)
        torch._foreach_mul_(ab, value)
        torch._foreach_add_(ab, xs)
        return ab

    @staticmethod
    def addcmul_(xs: List, a: List, b: List, value=1.0) -> List:
        if _number(value):
            torch._foreach_addcmul_(xs, a, b, value=value)
        else:
            ab = torch._foreach_mul(a, b)
            torch._foreach_mul_(ab, value)
            torch._foreach_add_(xs, ab)
        return xs

    @staticmethod
    def sqrt(xs: List) -> List:
        return torch._foreach_sqrt(xs)

    @staticmethod
    def rsqrt(xs: List) -> List:
        return torch._foreach_rsqrt(xs)

    @staticmethod
    def reciprocal(xs: List) -> List:
        return torch._foreach_reciprocal(xs)

    @staticmethod
    def abs(xs: List) -> List:
        return torch._foreach_abs(xs)

    @staticmethod
    def neg(xs: List) -> List:
        return torch._foreach_neg(xs)

    @staticmethod
    def sign(xs: List) -> List:
        return torch._foreach_sign(xs)

    @staticmethod
    def maximum(xs: List, ys: List) -> List:
        return torch._foreach_maximum(xs, ys)

    @staticmethod
    def clamp(xs: List, lo=None, hi=None) -> List:
        """Bounds: a number or 0-d tensor, or a list of one per leaf. Numbers are one
        ``_foreach_clamp_*``; tensors clamp leaf by leaf (no ``_foreach`` overload takes them)."""
        if lo is not None:
            xs = torch._foreach_clamp_min(xs, lo) if _numbers(lo) else [torch.clamp(x, min=b) for x, b in _each(xs, lo)]
        if hi is not None:
            xs = torch._foreach_clamp_max(xs, hi) if _numbers(hi) else [torch.clamp(x, max=b) for x, b in _each(xs, hi)]
        return xs

    @staticmethod
    def scale_each(xs: List, scalars: Sequence) -> List:
        """``x_i * s_i``: one scalar per leaf (numbers: one ``_foreach_mul``; 0-d tensors: leaf
        by leaf, as a list of them has no ``_foreach`` overload that broadcasts)."""
        if all(_number(s) for s in scalars):
            return torch._foreach_mul(xs, list(scalars))
        return [x * s for x, s in zip(xs, scalars)]

    @staticmethod
    def rpow(base: float, xs: List) -> List:
        """``base ** x`` for a number ``base``."""
        return torch._foreach_pow(base, xs)

    @staticmethod
    def norms(xs: List, ord: float) -> List:
        return list(torch._foreach_norm(xs, ord))


class _PerLeaf:
    """The same operations, leaf by leaf (the ``vmap`` path)."""

    @staticmethod
    def add(xs: List, ys, alpha=None) -> List:
        if isinstance(ys, (list, tuple)):
            if alpha is None:
                return [x + y for x, y in zip(xs, ys)]
            if _number(alpha):
                return [torch.add(x, y, alpha=alpha) for x, y in zip(xs, ys)]
            return [x + y * alpha for x, y in zip(xs, ys)]
        return [x + ys for x in xs]

    add_ = add

    @staticmethod
    def sub(xs: List, ys: List) -> List:
        return [x - y for x, y in zip(xs, ys)]

    @staticmethod
    def mul(xs: List, s) -> List:
        if isinstance(s, (list, tuple)):
            return [x * y for x, y in zip(xs, s)]
        return [x * s for x in xs]

    mul_ = mul

    @staticmethod
    def div(xs: List, s) -> List:
        if isinstance(s, (list, tuple)):
            return [x / y for x, y in zip(xs, s)]
        return [x / s for x in xs]

    div_ = div

    @staticmethod
    def lerp(xs: List, ys: List, w) -> List:
        return [torch.lerp(x, y, w) for x, y in zip(xs, ys)]

    @staticmethod
    def addcmul(xs: List, a: List, b: List, value=1.0) -> List:
        if _number(value):
            return [torch.addcmul(x, y, z, value=value) for x, y, z in zip(xs, a, b)]
        return [x + y * z * value for x, y, z in zip(xs, a, b)]

    addcmul_ = addcmul

    @staticmethod
    def sqrt(xs: List) -> List:
        return [torch.sqrt(x) for x in xs]

    @staticmethod
    def rsqrt(xs: List) -> List:
        return [torch.rsqrt(x) for x in xs]

    @staticmethod
    def reciprocal(xs: List) -> List:
        return [torch.reciprocal(x) for x in xs]

    @staticmethod
    def abs(xs: List) -> List:
        return [torch.abs(x) for x in xs]

    @staticmethod
    def neg(xs: List) -> List:
        return [torch.neg(x) for x in xs]

    @staticmethod
    def sign(xs: List) -> List:
        return [torch.sign(x) for x in xs]

    @staticmethod
    def maximum(xs: List, ys: List) -> List:
        return [torch.maximum(x, y) for x, y in zip(xs, ys)]

    @staticmethod
    def clamp(xs: List, lo=None, hi=None) -> List:
        return [torch.clamp(x, a, b) for (x, a), (_, b) in zip(_each(xs, lo), _each(xs, hi))]

    @staticmethod
    def scale_each(xs: List, scalars: Sequence) -> List:
        return [x * s for x, s in zip(xs, scalars)]

    @staticmethod
    def rpow(base: float, xs: List) -> List:
        return [torch.pow(base, x) for x in xs]

    @staticmethod
    def norms(xs: List, ord: float) -> List:
        return [torch.linalg.vector_norm(x, ord) for x in xs]


FOREACH = _Foreach()
PER_LEAF = _PerLeaf()
Ops = _Foreach | _PerLeaf


# torch 2.10's compiled ``_foreach_*`` ops fail on a 0-d tensor scalar (a held hyperparameter);
# there a compiled update runs leaf by leaf (inductor fuses those ops as well). From 2.11 on the
# ``_foreach_*`` path compiles.
COMPILED_FOREACH_TAKES_TENSOR_SCALARS = _compat.parse_torch_version(torch.__version__) >= (2, 11)


def for_leaves(*groups: Sequence) -> Ops:
    """``PER_LEAF`` when any tensor in ``groups`` (lists of leaves, or single tensors) is
    batched by ``vmap`` or requires grad (with grad mode on), or when compiling on a torch whose
    compiled ``_foreach_*`` ops refuse tensor scalars; else ``FOREACH``. Called once per update."""
    if not COMPILED_FOREACH_TAKES_TENSOR_SCALARS and _is_compiling():
        return PER_LEAF
    grad_mode = torch.is_grad_enabled()
    for g in groups:
        for x in (g if isinstance(g, (list, tuple)) else (g,)):
            if isinstance(x, torch.Tensor) and (is_batchedtensor(x) or (grad_mode and x.requires_grad)):
                return PER_LEAF
    return FOREACH


# Scalar arithmetic that works on numbers (host) and 0-d tensors (device, compiled) alike.

def ssqrt(x):
    return math.sqrt(x) if _number(x) else torch.sqrt(x)


def smax(x, lo):
    return max(lo, x) if _number(x) else torch.clamp(x, min=lo)


def select(cond, a, b):
    """``a if cond else b`` for a bool, ``torch.where`` for a tensor condition."""
    if _number(cond):
        return a if cond else b
    return torch.where(cond, a, b)
