"""Reductions and shape checks shared by the losses."""

from __future__ import annotations

import torch

REDUCTIONS = ("mean", "sum", "none")


def check_reduction(name: str, reduction: str, allowed: tuple = REDUCTIONS) -> None:
    if reduction not in allowed:
        raise ValueError(f"losses.{name}: reduction must be one of {allowed}, got {reduction!r}")


def same_shape(name: str, input: torch.Tensor, target: torch.Tensor, what: str = "target") -> None:
    """fnnet never broadcasts a loss silently (a [N, 1] prediction against a [N] target is
    the classic bug that torch only warns about)."""
    if input.shape != target.shape:
        raise ValueError(f"losses.{name}: {what} must have the input's shape {list(input.shape)}, "
                         f"got {list(target.shape)}")


def reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x
