"""Classification and divergence losses, at parity with ``torch.nn.functional``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._util import (broadcasts_to, check_range, check_reduction, checked_values, eager_values, flag, float_input,
                    float_weight, number, same_shape, tensor, value_target)


def binary_cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                         reduction: str = "mean") -> torch.Tensor:
    """BCE on probabilities ``input`` in ``[0, 1]`` (logs clamped at -100, as torch: finite at 0
    and 1). input, target: ``[*]``; ``weight`` broadcasts to them."""
    name = "binary_cross_entropy"
    check_reduction(name, reduction)
    float_input(name, input)
    value_target(name, input, target, ints=False, same_dtype=True)
    same_shape(name, input, target)
    float_weight(name, input, weight)
    broadcasts_to(name, weight, input.shape, "weight")
    if eager_values() and input.device.type == "cpu":  # torch's kernels check too, from deep inside
        check_range(input.detach(), 0.0, 1.0, "losses.binary_cross_entropy: input must hold probabilities in [0, 1]")
    return F.binary_cross_entropy(input, target, weight, reduction=reduction)


def binary_cross_entropy_with_logits(input: torch.Tensor, target: torch.Tensor,
                                     weight: torch.Tensor | None = None, reduction: str = "mean",
                                     pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCE on logits, computed stably (log-sum-exp form). input, target: ``[*]``; ``weight``
    broadcasts to them; ``pos_weight`` (typically ``[C]``, classes in the last dim) weighs the
    positive term."""
    name = "binary_cross_entropy_with_logits"
    check_reduction(name, reduction)
    float_input(name, input)
    value_target(name, input, target, ints=False, same_dtype=True)
    same_shape(name, input, target)
    float_weight(name, input, weight)
    float_weight(name, input, pos_weight, "pos_weight")
    broadcasts_to(name, weight, input.shape, "weight")
    broadcasts_to(name, pos_weight, input.shape, "pos_weight")
    return F.binary_cross_entropy_with_logits(input, target, weight, reduction=reduction,
                                              pos_weight=pos_weight)


def _class_target(name: str, input: torch.Tensor, target: torch.Tensor,
                  weight: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
    """``(target, True)`` for class indices (any integer dtype, as int64), ``(target, False)``
    for class probabilities."""
    float_input(name, input)
    tensor(name, target, "target")
    float_weight(name, input, weight)
    if input.ndim == 0:
        raise ValueError(f"losses.{name}: input must be [C] or [N, C, d1, ...], got a scalar")
    classes = input.shape[0 if input.ndim == 1 else 1]
    if weight is not None and tuple(weight.shape) != (classes,):
        raise ValueError(f"losses.{name}: weight must have shape [{classes}] (one per class of input "
                         f"{list(input.shape)}), got {list(weight.shape)}")
    if target.is_floating_point():
        value_target(name, input, target, "class-probability target")  # any float dtype: torch promotes
        same_shape(name, input, target, "class-probability target")
        return target, False
    if target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"losses.{name}: target must hold class indices (an integer tensor) or "
                         f"class probabilities (a float tensor), got {target.dtype}")
    expected = () if input.ndim == 1 else (input.shape[0], *input.shape[2:])
    if tuple(target.shape) != expected:
        raise ValueError(f"losses.{name}: class-index target must have shape {list(expected)} for "
                         f"input {list(input.shape)} (classes in dim {0 if input.ndim == 1 else 1}), "
                         f"got {list(target.shape)}")
    return target.long(), True


def _checked_indices(name: str, target: torch.Tensor, classes: int, ignore_index: int) -> torch.Tensor:
    """``target`` with every index in ``[0, classes)`` or ``== ignore_index`` (torch's kernel
    refuses others from deep inside; a compiled graph may not): eagerly, or as a graph op."""
    if target.device.type != "cpu" or target.numel() == 0:  # torch's accelerator kernels assert on them
        return target
    message = f"losses.{name}: class indices must be in [0, {classes}) or ignore_index = {ignore_index}"
    ignored = target == ignore_index
    kept = checked_values(torch.where(ignored, torch.zeros_like(target), target), 0, classes - 1, message)
    return torch.where(ignored, target, kept) if torch.compiler.is_compiling() else target


def _ignore_index(name: str, ignore_index) -> int:
    return number(name, ignore_index, "ignore_index", integer=True)


def cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                  ignore_index: int = -100, reduction: str = "mean",
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Softmax cross entropy of logits, as ``F.cross_entropy``.

    input: ``[N, C, d1, ...]`` or ``[C]``; target: class indices ``[N, d1, ...]`` (any integer
    dtype) or class probabilities of the input's shape (float). ``weight``: ``[C]``. With indices and
    ``reduction="mean"`` the mean is weighted (divided by the sum of the target weights),
    ignored targets left out.
    """
    check_reduction("cross_entropy", reduction)
    target, indices = _class_target("cross_entropy", input, target, weight)
    ignore_index = _ignore_index("cross_entropy", ignore_index)
    label_smoothing = number("cross_entropy", label_smoothing, "label_smoothing", low=0.0)
    if label_smoothing > 1.0:
        raise ValueError(f"losses.cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if indices:
        target = _checked_indices("cross_entropy", target, input.shape[0 if input.ndim == 1 else 1], ignore_index)
    return F.cross_entropy(input, target, weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)


def nll(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
        ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """Negative log-likelihood of log-probabilities ``input`` ``[N, C, d1, ...]`` at class
    indices ``target`` ``[N, d1, ...]``, as ``F.nll_loss``."""
    check_reduction("nll", reduction)
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        raise TypeError(f"losses.nll: target must hold class indices (an integer tensor), got {target.dtype}")
    target, _ = _class_target("nll", input, target, weight)
    ignore_index = _ignore_index("nll", ignore_index)
    target = _checked_indices("nll", target, input.shape[0 if input.ndim == 1 else 1], ignore_index)
    return F.nll_loss(input, target, weight, ignore_index=ignore_index, reduction=reduction)


def kl_div(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
           log_target: bool = False) -> torch.Tensor:
    """``KL(target || exp(input))`` pointwise, ``input`` being log-probabilities, as ``F.kl_div``.
    ``"batchmean"`` (sum / batch size) is the mathematically right mean; ``"mean"`` averages
    over every element, as torch does."""
    check_reduction("kl_div", reduction, ("mean", "sum", "none", "batchmean"))
    float_input("kl_div", input)
    value_target("kl_div", input, target, ints=False)
    same_shape("kl_div", input, target)
    flag("kl_div", log_target, "log_target")
    if reduction == "mean":  # torch's value, without its deprecation warning
        return F.kl_div(input, target, reduction="none", log_target=log_target).mean()
    return F.kl_div(input, target, reduction=reduction, log_target=log_target)
