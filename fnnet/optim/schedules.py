"""Learning-rate schedules as functions of the step count, matching ``torch.optim.lr_scheduler``.

``schedule(count)`` is the learning rate used by update number ``count + 1`` (count 0 is the
first update), i.e. the lr torch's scheduler holds after ``count`` calls to
``scheduler.step()``. Counts may be ints or int64 tensors (inside a compiled step).
Pass a schedule wherever an ``lr`` goes: ``optim.adam(optim.cosine_annealing_lr(1e-3, 100))``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

Schedule = Callable[[object], object]


def _f(count):
    """Counts in float64: a schedule is computed at full precision, then cast to the params' dtype."""
    return count.to(torch.float64) if isinstance(count, torch.Tensor) else float(count)


def _min(a, b):
    return torch.clamp(a, max=b) if isinstance(a, torch.Tensor) else min(a, b)


def constant(lr: float) -> Schedule:
    return lambda count: lr * (_f(count) * 0 + 1)


def step_lr(lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``lr * gamma ** (count // step_size)`` (``StepLR``)."""
    return lambda count: lr * gamma ** _f(count // step_size)


def exponential_lr(lr: float, gamma: float) -> Schedule:
    """``lr * gamma ** count`` (``ExponentialLR``)."""
    return lambda count: lr * gamma ** _f(count)


def cosine_annealing_lr(lr: float, T_max: int, eta_min: float = 0.0) -> Schedule:
    """``eta_min + (lr - eta_min) (1 + cos(pi count / T_max)) / 2`` (``CosineAnnealingLR``'s
    closed form, which its recursive updates follow to rounding)."""
    def schedule(count):
        c = _f(count)
        cos = torch.cos(c * math.pi / T_max) if isinstance(c, torch.Tensor) else math.cos(c * math.pi / T_max)
        return eta_min + (lr - eta_min) * (1 + cos) / 2
    return schedule


def linear_lr(lr: float, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
              total_iters: int = 5) -> Schedule:
    """``lr`` times a factor going linearly from ``start_factor`` to ``end_factor`` over
    ``total_iters`` steps, then constant (``LinearLR``)."""
    return lambda count: lr * (start_factor + (end_factor - start_factor)
                               * _min(_f(count), total_iters) / total_iters)


def one_cycle_lr(max_lr: float, total_steps: int, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 div_factor: float = 25.0, final_div_factor: float = 1e4,
                 three_phase: bool = False) -> Schedule:
    """``OneCycleLR``: warm up from ``max_lr / div_factor`` to ``max_lr`` over ``pct_start`` of
    the steps, then anneal to ``initial / final_div_factor`` (three_phase: back to the initial
    lr first). Momentum cycling is not included."""
    initial = max_lr / div_factor
    final = initial / final_div_factor
    if three_phase:
        ends = [float(pct_start * total_steps) - 1, float(2 * pct_start * total_steps) - 2, total_steps - 1]
        phases = [(initial, max_lr), (max_lr, initial), (initial, final)]
    else:
        ends = [float(pct_start * total_steps) - 1, total_steps - 1]
        phases = [(initial, max_lr), (max_lr, final)]

    def anneal(start, end, pct):
        if anneal_strategy == "linear":
            return (end - start) * pct + start
        cos = torch.cos(math.pi * pct) if isinstance(pct, torch.Tensor) else math.cos(math.pi * pct)
        return end + (start - end) / 2.0 * (cos + 1)

    def schedule(count):
        c = _f(count)
        lr, start = None, 0.0
        for end, (a, b) in zip(ends, phases):
            value = anneal(a, b, (c - start) / (end - start))
            if lr is None:
                lr = value
            elif isinstance(c, torch.Tensor):
                lr = torch.where(c > start, value, lr)  # torch: phase i once step_num > previous end
            elif c > start:
                lr = value
            start = end
        return lr

    return schedule
