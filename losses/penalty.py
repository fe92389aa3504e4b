"""Gradient penalties on a critic's input gradient: WGAN-GP and R1, through ``torch.func``.

Both are pure functions of the critic's params, so ``fn.value_and_grad`` of a critic loss
that contains them differentiates twice (through the input gradient) and the whole
critic step compiles in one graph under ``fn.jit(fullgraph=True)`` (tested on torch 2.13).
The classic spelling, ``torch.autograd.grad(..., create_graph=True)``, does not compile at
all: ``torch.compile`` of the step, of the step with compiled autograd, or of the critic
alone, each raises "aot_autograd does not currently support double backward" (pytorch/pytorch
#91469, #183603); ``benchmarks/losses.py`` tries all three on every run.

The input gradient is that of ``critic(params, x).sum()`` w.r.t. the batch ``x`` (a ``vjp``
with ones): for a critic that scores each sample on its own (no BatchNorm across the batch),
row ``i`` of it is sample ``i``'s gradient, which is what ``vmap(grad(...))`` would compute,
at the cost of one backward pass over the batch.

Cost: differentiating the penalty w.r.t. the params runs the critic's backward backwards.
``F.relu``'s backward formula has a (zero) derivative w.r.t. its input, and autograd and
inductor both push those zeros back through every layer: four extra 400x400 matmuls of the
course's critic, 17% of the step's FLOPs. An activation whose backward does not depend
differentiably on its input (e.g. ``torch.where(x <= 0, 0.0, x)``) avoids them.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Callable

import torch
import torch.func

from fnnet import random

from ._util import float_input, number, same_device

INTERPOLATIONS = ("uniform", "real", "fake")


def _input_grad(name: str, critic: Callable, params: Any, x: torch.Tensor) -> torch.Tensor:
    """Per-sample ``d critic / d x``, the same shape as ``x``."""
    if not callable(critic):
        raise TypeError(f"losses.{name}: critic must be a Module or a function (params, x) -> scores, "
                        f"got {type(critic).__name__}")
    if x.ndim == 0:
        raise ValueError(f"losses.{name}: the batch must be [N, ...], got a scalar")

    def total_score(x):
        scores = critic(params, x)
        # A critic that averaged its scores would silently scale every gradient by 1/N.
        if tuple(scores.shape) not in ((x.shape[0],), (x.shape[0], 1)):
            raise ValueError(f"losses.{name}: the critic must give one score per sample, [N] or "
                             f"[N, 1] with N = {x.shape[0]}, got {list(scores.shape)}")
        return scores.sum()

    return torch.func.grad(total_score)(x)


def safe_norm(g: torch.Tensor) -> torch.Tensor:
    """Per-row 2-norm of ``g`` ``[N, ...]`` -> ``[N]``, with gradient 0 (not NaN) at a zero row.
    The double ``where`` keeps the value exact elsewhere."""
    float_input("safe_norm", g, "g")
    if g.ndim == 0:
        raise ValueError("losses.safe_norm: g must be [N, ...] (one row per sample), got a scalar")
    sq = g.flatten(1).square().sum(1)
    nonzero = sq > 0
    return torch.where(nonzero, torch.sqrt(torch.where(nonzero, sq, torch.ones_like(sq))),
                       torch.zeros_like(sq))


def _pair(name: str, real: torch.Tensor, fake: torch.Tensor) -> None:
    float_input(name, real, "real")
    float_input(name, fake, "fake")
    same_device(name, real, fake, "fake")
    if real.dtype != fake.dtype:
        raise TypeError(f"losses.{name}: real ({real.dtype}) and fake ({fake.dtype}) must have one dtype")
    if real.shape != fake.shape:
        raise ValueError(f"losses.{name}: real {list(real.shape)} and fake {list(fake.shape)} must have the "
                         f"same shape")
    if real.ndim == 0:
        raise ValueError(f"losses.{name}: real and fake must be batches [N, ...], got scalars")


def interpolate(real: torch.Tensor, fake: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """``eps * real + (1 - eps) * fake`` with ``eps ~ U[0, 1)`` drawn per sample from ``key``.
    real, fake: ``[N, ...]``, the same shape and dtype."""
    _pair("interpolate", real, fake)
    eps = random.uniform(key.to(real.device), (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
    return eps * real + (1.0 - eps) * fake


def gradient_penalty(critic: Callable, critic_params: Any, real: torch.Tensor, fake: torch.Tensor,
                     key: torch.Tensor | None = None, *, target: float = 1.0,
                     interpolation: str = "uniform") -> torch.Tensor:
    """WGAN-GP's ``E[(||grad_x D(x_hat)||_2 - target)^2]``.

    critic: an fnnet Module or any ``(params, x) -> scores`` (``[N]`` or ``[N, 1]``).
    real, fake: ``[N, ...]`` (the same shape). ``x_hat`` is a per-sample random interpolate of
    the two drawn from ``key`` (``interpolation="uniform"``), or ``real`` / ``fake`` themselves.
    Finite, with finite gradients, when the critic is constant in ``x`` (penalty ``target^2``).
    Multiply by lambda (10 in the paper) yourself. ``fn.value_and_grad`` of a critic loss that
    contains it, w.r.t. ``critic_params``, compiles in one graph under ``fn.jit``.
    """
    if not isinstance(interpolation, str) or interpolation not in INTERPOLATIONS:
        raise ValueError(f"losses.gradient_penalty: interpolation must be one of {INTERPOLATIONS}, "
                         f"got {interpolation!r}")
    _pair("gradient_penalty", real, fake)
    target = number("gradient_penalty", target, "target")
    if interpolation == "uniform":
        if key is None:
            raise ValueError("losses.gradient_penalty: interpolation='uniform' needs a key")
        x = interpolate(real, fake, key)
    else:
        x = real if interpolation == "real" else fake
    g = _input_grad("gradient_penalty", critic, critic_params, x)
    return ((safe_norm(g) - target) ** 2).mean()


def r1_penalty(critic: Callable, critic_params: Any, real: torch.Tensor) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): ``E[||grad_x D(x)||^2]`` on real data. Multiply by
    ``gamma / 2`` yourself."""
    float_input("r1_penalty", real, "real")
    g = _input_grad("r1_penalty", critic, critic_params, real)
    return g.flatten(1).square().sum(1).mean()
