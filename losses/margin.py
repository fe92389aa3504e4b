"""Margin and embedding losses, as ``torch.nn.functional``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._util import check_reduction, same_shape


def margin_ranking(input1: torch.Tensor, input2: torch.Tensor, target: torch.Tensor,
                   margin: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """``max(0, -target * (input1 - input2) + margin)``; all three of the same shape."""
    check_reduction("margin_ranking", reduction)
    same_shape("margin_ranking", input1, input2, "input2")
    same_shape("margin_ranking", input1, target)
    return F.margin_ranking_loss(input1, input2, target, margin=margin, reduction=reduction)


def hinge_embedding(input: torch.Tensor, target: torch.Tensor, margin: float = 1.0,
                    reduction: str = "mean") -> torch.Tensor:
    """``x`` where ``target == 1``, ``max(0, margin - x)`` where ``target == -1``."""
    check_reduction("hinge_embedding", reduction)
    same_shape("hinge_embedding", input, target)
    return F.hinge_embedding_loss(input, target, margin=margin, reduction=reduction)


def cosine_embedding(input1: torch.Tensor, input2: torch.Tensor, target: torch.Tensor,
                     margin: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """input1, input2: ``[N, D]`` (or ``[D]``); target ``[N]`` of +-1."""
    check_reduction("cosine_embedding", reduction)
    same_shape("cosine_embedding", input1, input2, "input2")
    if tuple(target.shape) != tuple(input1.shape[:-1]):
        raise ValueError(f"losses.cosine_embedding: target must have shape {list(input1.shape[:-1])}, "
                         f"got {list(target.shape)}")
    return F.cosine_embedding_loss(input1, input2, target, margin=margin, reduction=reduction)
