"""Metrics the course reports (no gradients flow through them)."""

from __future__ import annotations

import torch

from ._util import flag, index_target, number, tensor


def accuracy(logits: torch.Tensor, target: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Fraction of ``argmax(logits, dim) == target``. logits ``[N, C, ...]``, target ``[N, ...]``."""
    tensor("accuracy", logits, "logits")
    index_target("accuracy", logits, target)
    if logits.ndim == 0:
        raise ValueError("losses.accuracy: logits must be [N, C, ...] or [C], got a scalar")
    number("accuracy", dim, "dim", integer=True)
    if logits.ndim == 1:
        dim = 0
    if not -logits.ndim <= dim < logits.ndim:
        raise ValueError(f"losses.accuracy: dim must be in [{-logits.ndim}, {logits.ndim}), got {dim}")
    pred = logits.argmax(dim)
    if pred.shape != target.shape:
        raise ValueError(f"losses.accuracy: target must have shape {list(pred.shape)} for logits "
                         f"{list(logits.shape)}, got {list(target.shape)}")
    return (pred == target).to(torch.get_default_dtype()).mean()


def binary_accuracy(scores: torch.Tensor, target: torch.Tensor, *, from_logits: bool = True,
                    threshold: float = 0.5) -> torch.Tensor:
    """Fraction of correct 0/1 predictions from logits (``> 0``) or probabilities
    (``> threshold``); scores and target of the same shape. A float target counts as 1 above
    0.5, so smoothed labels (0.1 / 0.9) score as their hard labels."""
    tensor("binary_accuracy", scores, "scores")
    tensor("binary_accuracy", target, "target")
    flag("binary_accuracy", from_logits, "from_logits")
    threshold = number("binary_accuracy", threshold, "threshold")
    if scores.is_complex() or target.is_complex():
        raise TypeError("losses.binary_accuracy: scores and target must be real tensors")
    if scores.shape != target.shape:
        raise ValueError(f"losses.binary_accuracy: target must have the scores' shape "
                         f"{list(scores.shape)}, got {list(target.shape)}")
    pred = scores > 0 if from_logits else scores > threshold
    truth = target > 0.5 if target.is_floating_point() else target.bool()
    return (pred == truth).to(torch.get_default_dtype()).mean()
