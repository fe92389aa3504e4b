"""Margin and embedding losses, as ``torch.nn.functional``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._util import (broadcasts_to, check_reduction, checked_values, eager_values, float_input, float_weight,
                    index_target, number, reduce, same_device, same_shape, value_target)


def _plus_minus_one(name: str, target: torch.Tensor) -> None:
    """torch's hinge/cosine embedding losses read any label other than +1 as "not 1" and "not
    -1" at once (a 0 label silently adds both branches): eagerly, refuse them."""
    if eager_values() and target.numel() and not bool(((target == 1) | (target == -1)).all()):
        bad = target[(target != 1) & (target != -1)]
        raise ValueError(f"losses.{name}: target must hold 1 or -1, got {bad.flatten()[:8].tolist()}")


def margin_ranking(input1: torch.Tensor, input2: torch.Tensor, target: torch.Tensor,
                   margin: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """``max(0, -target * (input1 - input2) + margin)``; all three of the same shape."""
    name = "margin_ranking"
    check_reduction(name, reduction)
    float_input(name, input1, "input1")
    float_input(name, input2, "input2")
    same_device(name, input1, input2, "input2")
    value_target(name, input1, target)
    same_shape(name, input1, input2, "input2")
    same_shape(name, input1, target)
    margin = number(name, margin, "margin")
    return F.margin_ranking_loss(input1, input2, target, margin=margin, reduction=reduction)


def hinge_embedding(input: torch.Tensor, target: torch.Tensor, margin: float = 1.0,
                    reduction: str = "mean") -> torch.Tensor:
    """``x`` where ``target == 1``, ``max(0, margin - x)`` where ``target == -1``; input and
    target of the same shape, target of +-1 (checked eagerly)."""
    name = "hinge_embedding"
    check_reduction(name, reduction)
    float_input(name, input)
    value_target(name, input, target)
    same_shape(name, input, target)
    margin = number(name, margin, "margin")
    _plus_minus_one(name, target)
    return F.hinge_embedding_loss(input, target, margin=margin, reduction=reduction)


def cosine_embedding(input1: torch.Tensor, input2: torch.Tensor, target: torch.Tensor,
                     margin: float = 0.0, reduction: str = "mean") -> torch.Tensor:
    """input1, input2: ``[N, D]`` (or ``[D]``); target ``[N]`` of +-1 (checked eagerly)."""
    name = "cosine_embedding"
    check_reduction(name, reduction)
    float_input(name, input1, "input1")
    float_input(name, input2, "input2")
    same_device(name, input1, input2, "input2")
    value_target(name, input1, target)
    if input1.ndim not in (1, 2):
        raise ValueError(f"losses.cosine_embedding: input1 must be [N, D] or [D], got {list(input1.shape)}")
    same_shape(name, input1, input2, "input2")
    if tuple(target.shape) != tuple(input1.shape[:-1]):
        raise ValueError(f"losses.cosine_embedding: target must have shape {list(input1.shape[:-1])}, "
                         f"got {list(target.shape)}")
    margin = number(name, margin, "margin")
    _plus_minus_one(name, target)
    return F.cosine_embedding_loss(input1, input2, target, margin=margin, reduction=reduction)


def soft_margin(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """``log(1 + exp(-target * input))``, as ``F.soft_margin_loss``; input and target (labels
    +-1, any real accepted as torch does) of the same shape."""
    name = "soft_margin"
    check_reduction(name, reduction)
    float_input(name, input)
    value_target(name, input, target)
    same_shape(name, input, target)
    return F.soft_margin_loss(input, target, reduction=reduction)


def multilabel_soft_margin(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None,
                           reduction: str = "mean") -> torch.Tensor:
    """Per-class logistic loss averaged over the classes, as ``F.multilabel_soft_margin_loss``.

    input: ``[N, C]`` (classes in the last dim; ``[C]`` for one sample); target of the same
    shape, 1 for the classes present, 0 for the others (float or integer); ``weight``
    (one per class, ``[C]``) broadcasts to the input. ``reduction="none"``: ``[N]``.
    """
    name = "multilabel_soft_margin"
    check_reduction(name, reduction)
    float_input(name, input)
    value_target(name, input, target)
    if input.ndim == 0:
        raise ValueError("losses.multilabel_soft_margin: input must be [N, C] or [C], got a scalar")
    same_shape(name, input, target)
    float_weight(name, input, weight)
    broadcasts_to(name, weight, input.shape, "weight")
    return F.multilabel_soft_margin_loss(input, target, weight, reduction=reduction)


def _classes(name: str, input: torch.Tensor) -> int:
    """torch's ``[N, C]`` / ``[C]`` (/ a 0-dim single score) layout with ``C >= 1``."""
    if input.ndim > 2 or (input.ndim >= 1 and input.shape[-1] == 0):
        raise ValueError(f"losses.{name}: input must be [N, C] or [C] with C >= 1, got {list(input.shape)}")
    return input.shape[-1] if input.ndim else 1


def multi_margin(input: torch.Tensor, target: torch.Tensor, p: int = 1, margin: float = 1.0,
                 weight: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Multi-class hinge loss, as ``F.multi_margin_loss``: per sample,
    ``sum_{i != y} max(0, w[y] (margin - x[y] + x[i]))^p / C``.

    input: ``[N, C]`` (or ``[C]``); target: class indices ``[N]`` (``[]``), any integer dtype,
    in ``[0, C)`` (checked eagerly and in a compiled graph); p: 1 or 2; weight: ``[C]``.
    Over an empty batch the mean is nan and the sum 0, as for every loss (torch's kernel returns
    whatever was in memory).
    """
    name = "multi_margin"
    check_reduction(name, reduction)
    float_input(name, input)
    index_target(name, input, target)
    C = _classes(name, input)
    expected = tuple(input.shape[:1]) if input.ndim == 2 else ()
    if tuple(target.shape) != expected:
        raise ValueError(f"losses.multi_margin: target must have shape {list(expected)} for input "
                         f"{list(input.shape)} (one class index per sample), got {list(target.shape)}")
    p = number(name, p, "p", integer=True)
    if p not in (1, 2):
        raise ValueError(f"losses.multi_margin: p must be 1 or 2, got {p}")
    margin = number(name, margin, "margin")
    float_weight(name, input, weight)
    if weight is not None and tuple(weight.shape) != (C,):
        raise ValueError(f"losses.multi_margin: weight must have shape [{C}] (one per class), got {list(weight.shape)}")
    target = checked_values(target.long(), 0, C - 1, f"losses.multi_margin: target must hold class indices in [0, {C})",
                            kernel_checks_on_accelerators=True)
    if reduction != "none" and input.numel() == 0:  # torch 2.13 returns uninitialized memory
        return reduce(F.multi_margin_loss(input, target, p=p, margin=margin, weight=weight, reduction="none"),
                      reduction)
    return F.multi_margin_loss(input, target, p=p, margin=margin, weight=weight, reduction=reduction)


def multilabel_margin(input: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Multi-label hinge loss, as ``F.multilabel_margin_loss``: per sample,
    ``sum_{j in targets} sum_{i not in targets} max(0, 1 - (x[j] - x[i])) / C``.

    input: ``[N, C]`` (or ``[C]``); target of the same shape, any integer dtype: the sample's
    class indices first, ended by -1 (``[3, 0, -1, 1]``: classes 3 and 0); every entry in
    ``[-1, C)`` (checked eagerly and in a compiled graph, as torch's kernel checks them).
    Compiled, the formula below is used: torch 2.13's decomposition counts the entries after
    the -1 too (a silently wrong loss under ``torch.compile``). Over an empty batch the mean is
    nan and the sum 0 (torch's kernel returns whatever was in memory).
    """
    name = "multilabel_margin"
    check_reduction(name, reduction)
    float_input(name, input)
    index_target(name, input, target)
    C = _classes(name, input)
    same_shape(name, input, target)
    target = checked_values(target.long(), -1, C - 1,
                            f"losses.multilabel_margin: target must hold class indices in [0, {C}) or -1",
                            kernel_checks_on_accelerators=True)
    if torch.compiler.is_compiling():
        return _multilabel_margin(input, target, reduction)
    if reduction != "none" and input.numel() == 0:  # torch 2.13 returns uninitialized memory
        return reduce(F.multilabel_margin_loss(input, target, reduction="none"), reduction)
    return F.multilabel_margin_loss(input, target, reduction=reduction)


def _multilabel_margin(input: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    """The same loss in tensor ops: ``[N, k, i]`` hinge terms of target position ``k`` (before
    the first -1) against non-target class ``i``. Gradient as torch's kernel (0 at the hinge)."""
    x, t = torch.atleast_2d(input), torch.atleast_2d(target)
    C = x.shape[-1]
    listed = torch.cumprod((t >= 0).long(), dim=-1).bool()  # [N, C]: positions before the first -1
    idx = torch.where(listed, t, 0)
    is_target = ((idx.unsqueeze(-1) == torch.arange(C, device=t.device)) & listed.unsqueeze(-1)).any(1)  # [N, C]
    hinge = F.relu(1.0 - x.gather(-1, idx).unsqueeze(-1) + x.unsqueeze(-2))  # [N, k, i]
    keep = listed.unsqueeze(-1) & ~is_target.unsqueeze(-2)
    loss = torch.where(keep, hinge, torch.zeros_like(hinge)).sum((-2, -1)) / C
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss.reshape(input.shape[:-1])

