"""Connectionist temporal classification, as ``F.ctc_loss``, with the checks torch leaves out.

torch's kernel reads a label outside ``[0, C)`` from whatever memory is there, takes a label
equal to ``blank`` as a blank, truncates float labels, and flattens a ``[1, N]`` length tensor:
each gives a finite, silently wrong loss. Here each is an error naming the argument.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fnnet import _check

from ._util import check_reduction, eager_values, flag, float_input, index_target, number, tensor

NAME = "ctc"


def _lengths(x, what: str, batch: int | None) -> torch.Tensor:
    """Lengths as torch takes them (an integer tensor, or a list/tuple of ints) -> a 1-D tensor
    ``[N]`` (``[1]`` for an unbatched input, which may also give a 0-dim tensor)."""
    if isinstance(x, (list, tuple)):
        x = torch.tensor([_check.integer("losses.ctc", what, v, expected="an integer tensor or a list of ints",
                                         shown=list(x)) for v in x], dtype=torch.long)
    tensor(NAME, x, what)
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"losses.ctc: {what} must be integers, got {x.dtype}")
    n = 1 if batch is None else batch
    if (batch is None and x.shape not in ((), (1,))) or (batch is not None and tuple(x.shape) != (n,)):
        want = "[] or [1] (one sequence)" if batch is None else f"[{n}] (one per sequence)"
        raise ValueError(f"losses.ctc: {what} must have shape {want}, got {list(x.shape)}")
    return x


def ctc(log_probs: torch.Tensor, targets: torch.Tensor, input_lengths, target_lengths, blank: int = 0,
        reduction: str = "mean", zero_infinity: bool = False) -> torch.Tensor:
    """CTC loss, as ``F.ctc_loss``.

    log_probs: ``[T, N, C]`` (or ``[T, C]`` for one sequence), log-softmaxed over classes.
    targets: padded ``[N, S]``, or the ``N`` label sequences concatenated,
    ``[sum(target_lengths)]`` (unbatched: ``[target_length]``); any integer dtype; labels in
    ``[0, C)`` and never ``blank`` (padding past a sequence's length is not read).
    input_lengths, target_lengths: ``[N]`` integer tensors or lists of ints,
    ``0 <= input_lengths <= T``, ``target_lengths >= 0`` (``<= S`` when padded).
    reduction ``"mean"``: each loss divided by its target length (at least 1), then the
    batch mean; ``"none"``: ``[N]``. An impossible alignment (a target longer than its input
    allows) costs ``inf``, or 0 with its gradient with ``zero_infinity=True``.

    The label checks read the data: eager only (``F.ctc_loss`` does not compile in one graph
    on torch 2.13 anyway: its output shapes depend on the lengths' values).
    """
    check_reduction(NAME, reduction)
    float_input(NAME, log_probs, "log_probs")
    if log_probs.ndim not in (2, 3):
        raise ValueError(f"losses.ctc: log_probs must be [T, N, C] or [T, C], got {list(log_probs.shape)}")
    T, C = log_probs.shape[0], log_probs.shape[-1]
    batch = log_probs.shape[1] if log_probs.ndim == 3 else None
    if log_probs.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"losses.ctc: log_probs must be float32 or float64 (torch's CTC kernels), "
                        f"got {log_probs.dtype}")
    if log_probs.numel() == 0:
        raise ValueError(f"losses.ctc: log_probs must not be empty (torch refuses T = 0, N = 0 and C = 0), "
                         f"got {list(log_probs.shape)}")
    blank = number(NAME, blank, "blank", integer=True)
    if not 0 <= blank < C:
        raise ValueError(f"losses.ctc: blank must be a class of log_probs, in [0, {C}), got {blank}")
    flag(NAME, zero_infinity, "zero_infinity")
    index_target(NAME, log_probs, targets, "targets")
    input_lengths = _lengths(input_lengths, "input_lengths", batch)
    target_lengths = _lengths(target_lengths, "target_lengths", batch)
    n = 1 if batch is None else batch
    padded = targets.ndim == 2  # an unbatched [S] is read as concatenated: S == target_length
    if batch is None and targets.ndim != 1:
        raise ValueError(f"losses.ctc: targets of one sequence must be [target_length], got {list(targets.shape)}")
    if batch is not None and targets.ndim not in (1, 2):
        raise ValueError(f"losses.ctc: targets must be padded [N, S] or concatenated [sum(target_lengths)], "
                         f"got {list(targets.shape)}")
    if batch is not None and targets.ndim == 2 and targets.shape[0] != n:
        raise ValueError(f"losses.ctc: padded targets must have {n} rows (one per sequence of log_probs "
                         f"{list(log_probs.shape)}), got {list(targets.shape)}")
    if eager_values():
        _check_values(targets, input_lengths.reshape(n), target_lengths.reshape(n), T, C, blank, padded, n)
    return F.ctc_loss(log_probs, targets, input_lengths, target_lengths, blank=blank, reduction=reduction,
                      zero_infinity=zero_infinity)


def _check_values(targets: torch.Tensor, input_lengths: torch.Tensor, target_lengths: torch.Tensor,
                  T: int, C: int, blank: int, padded: bool, n: int) -> None:
    if input_lengths.numel() and not bool(((input_lengths >= 0) & (input_lengths <= T)).all()):
        raise ValueError(f"losses.ctc: input_lengths must be in [0, {T}] (T of log_probs), "
                         f"got {input_lengths.tolist()}")
    if bool((target_lengths < 0).any()):
        raise ValueError(f"losses.ctc: target_lengths must be >= 0, got {target_lengths.tolist()}")
    if padded:
        S = targets.shape[-1]
        if bool((target_lengths > S).any()):
            raise ValueError(f"losses.ctc: target_lengths must be at most S = {S} (padded targets "
                             f"{list(targets.shape)}), got {target_lengths.tolist()}")
        rows = targets.reshape(n, S)
        used = torch.arange(S, device=targets.device) < target_lengths.reshape(-1, 1).to(targets.device)
        labels = rows[used]
    else:
        total = int(target_lengths.sum())
        if targets.numel() != total:
            raise ValueError(f"losses.ctc: concatenated targets must hold sum(target_lengths) = {total} "
                             f"labels, got {targets.numel()}")
        labels = targets
    wrong = (labels < 0) | (labels >= C) | (labels == blank)
    if bool(wrong.any()):
        raise ValueError(f"losses.ctc: target labels must be in [0, {C}) and not blank = {blank}, "
                         f"got {labels[wrong][:8].tolist()}")
