"""Negative log-likelihoods of Gaussian and Poisson observations, as ``torch.nn.functional``."""

from __future__ import annotations

import math
import numbers

import torch

from ._util import (check_reduction, checked_values, flag, float_input, number, reduce, same_device, same_shape,
                    tensor, value_target)


def _var_shape(input: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    """``var`` shaped to broadcast against ``input``, by exactly torch's rules: the input's
    shape (one variance per prediction); the input's shape without its last dim (one per
    row, unsqueezed); or the input's number of dims with exactly one dim of size 1 where the
    input's differs (shared along that dim). Anything else is refused: a var that would
    broadcast some other way, or enlarge the loss, is a mistake."""
    if var.shape == input.shape:
        return var
    if input.ndim >= 1 and var.shape == input.shape[:-1]:
        return var.unsqueeze(-1)
    if var.ndim == input.ndim:
        differ = [(i, v) for i, v in zip(input.shape, var.shape) if i != v]
        if len(differ) == 1 and differ[0][1] == 1:
            return var
    raise ValueError(f"losses.gaussian_nll: var of shape {list(var.shape)} does not fit input "
                     f"{list(input.shape)}: give the input's shape, the input's shape without the last "
                     f"dim, or the input's shape with one dim set to 1")


def gaussian_nll(input: torch.Tensor, target: torch.Tensor, var, full: bool = False, eps: float = 1e-6,
                 reduction: str = "mean") -> torch.Tensor:
    """``0.5 (log max(var, eps) + (input - target)^2 / max(var, eps))`` (``+ 0.5 log 2 pi`` if
    ``full``), as ``F.gaussian_nll_loss``.

    input, target: the same shape ``[*]``. var: a float tensor ``>= 0`` of the input's shape
    (heteroscedastic), of the input's shape without its last dim or with one dim of size 1
    (shared along it), or a Python number ``>= 0``. The clamp at ``eps`` is outside autograd,
    as in torch: ``var``'s gradient is that of the unclamped formula. Written out here (the
    same ops in the same order as torch's) because torch's version checks ``var >= 0`` with
    a Python ``if`` that breaks a compiled graph; here the check is an op of the graph.
    """
    name = "gaussian_nll"
    check_reduction(name, reduction)
    float_input(name, input)
    value_target(name, input, target)
    same_shape(name, input, target)
    flag(name, full, "full")
    eps = number(name, eps, "eps", low=0.0)
    if isinstance(var, numbers.Real) and not isinstance(var, bool):
        var = float(number(name, var, "var", low=0.0))
        var = var * torch.ones_like(input)
    else:
        tensor(name, var, "var")
        same_device(name, input, var, "var")
        if not var.is_floating_point():
            raise TypeError(f"losses.gaussian_nll: var must be a floating-point tensor or a number, got {var.dtype}")
        var = _var_shape(input, var)
        var = checked_values(var, 0.0, math.inf, "losses.gaussian_nll: var must be >= 0 (and not NaN)")
    var = var.clone()
    with torch.no_grad():
        var.clamp_(min=eps)
    loss = 0.5 * (torch.log(var) + (input - target) ** 2 / var)
    if full:
        loss += 0.5 * math.log(2 * math.pi)
    return reduce(loss, reduction)


def poisson_nll(input: torch.Tensor, target: torch.Tensor, log_input: bool = True, full: bool = False,
                eps: float = 1e-8, reduction: str = "mean") -> torch.Tensor:
    """Poisson negative log-likelihood of counts ``target`` given rates, as ``F.poisson_nll_loss``:
    ``exp(input) - target * input`` for log-rates (``log_input=True``), else
    ``input - target * log(input + eps)``; ``full`` adds Stirling's approximation of
    ``log(target!)`` where ``target > 1``. input, target: the same shape ``[*]``.
    (torch's deprecated ``size_average``/``reduce`` are not taken: use ``reduction``.)"""
    name = "poisson_nll"
    check_reduction(name, reduction)
    float_input(name, input)
    value_target(name, input, target)
    same_shape(name, input, target)
    flag(name, log_input, "log_input")
    flag(name, full, "full")
    eps = number(name, eps, "eps", low=0.0)
    return torch.nn.functional.poisson_nll_loss(input, target, log_input=log_input, full=full, eps=eps,
                                                reduction=reduction)
