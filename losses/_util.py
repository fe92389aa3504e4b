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


def broadcasts_to(name: str, t: torch.Tensor | None, shape: torch.Size, what: str) -> None:
    """``t`` (a weight) may broadcast to ``shape`` but never enlarge it."""
    if t is None:
        return
    small, big = tuple(t.shape), tuple(shape)
    if len(small) > len(big) or any(s not in (1, b) for s, b in zip(reversed(small), reversed(big))):
        raise ValueError(f"losses.{name}: {what} of shape {list(small)} does not broadcast to the "
                         f"input's shape {list(big)}")


def reduce(x: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "mean":
        return x.mean()
    if reduction == "sum":
        return x.sum()
    return x
