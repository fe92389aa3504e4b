"""Classification and divergence losses, at parity with ``torch.nn.functional``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._util import broadcasts_to, check_reduction, same_shape


def binary_cross_entropy(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                         reduction: str = "mean") -> torch.Tensor:
    """BCE on probabilities ``input`` in ``[0, 1]`` (logs clamped at -100, as torch: finite at 0
    and 1). input, target: ``[*]``; ``weight`` broadcasts to them."""
    check_reduction("binary_cross_entropy", reduction)
    same_shape("binary_cross_entropy", input, target)
    broadcasts_to("binary_cross_entropy", weight, input.shape, "weight")
    return F.binary_cross_entropy(input, target, weight, reduction=reduction)


def binary_cross_entropy_with_logits(input: torch.Tensor, target: torch.Tensor,
                                     weight: torch.Tensor | None = None, reduction: str = "mean",
                                     pos_weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCE on logits, computed stably (log-sum-exp form). input, target: ``[*]``; ``weight``
    broadcasts to them; ``pos_weight`` (typically ``[C]``, classes in the last dim) weighs the
    positive term."""
    name = "binary_cross_entropy_with_logits"
    check_reduction(name, reduction)
    same_shape(name, input, target)
    broadcasts_to(name, weight, input.shape, "weight")
    broadcasts_to(name, pos_weight, input.shape, "pos_weight")
    return F.binary_cross_entropy_with_logits(input, target, weight, reduction=reduction,
                                              pos_weight=pos_weight)


def _class_target(name: str, input: torch.Tensor, target: torch.Tensor,
                  weight: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
    """``(target, True)`` for class indices (any integer dtype, as int64), ``(target, False)``
    for class probabilities."""
    if input.ndim == 0:
        raise ValueError(f"losses.{name}: input must be [C] or [N, C, d1, ...], got a scalar")
    classes = input.shape[0 if input.ndim == 1 else 1]
    if weight is not None and tuple(weight.shape) != (classes,):
        raise ValueError(f"losses.{name}: weight must have shape [{classes}] (one per class of input "
                         f"{list(input.shape)}), got {list(weight.shape)}")
    if target.is_floating_point():
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
    target, _ = _class_target("cross_entropy", input, target, weight)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"losses.cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    return F.cross_entropy(input, target, weight, ignore_index=ignore_index, reduction=reduction,
                           label_smoothing=label_smoothing)


def nll(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
        ignore_index: int = -100, reduction: str = "mean") -> torch.Tensor:
    """Negative log-likelihood of log-probabilities ``input`` ``[N, C, d1, ...]`` at class
    indices ``target`` ``[N, d1, ...]``, as ``F.nll_loss``."""
    check_reduction("nll", reduction)
    target, indices = _class_target("nll", input, target, weight)
    if not indices:
        raise ValueError("losses.nll: target must hold class indices (an integer tensor)")
    return F.nll_loss(input, target, weight, ignore_index=ignore_index, reduction=reduction)


def kl_div(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean",
           log_target: bool = False) -> torch.Tensor:
    """``KL(target || exp(input))`` pointwise, ``input`` being log-probabilities, as ``F.kl_div``.
    ``"batchmean"`` (sum / batch size) is the mathematically right mean; ``"mean"`` averages
    over every element, as torch does."""
    check_reduction("kl_div", reduction, ("mean", "sum", "none", "batchmean"))
    same_shape("kl_div", input, target)
    if reduction == "mean":  # torch's value, without its deprecation warning
        return F.kl_div(input, target, reduction="none", log_target=log_target).mean()
    return F.kl_div(input, target, reduction=reduction, log_target=log_target)
