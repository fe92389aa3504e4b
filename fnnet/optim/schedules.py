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

from . import _check as C

Schedule = Callable[[object], object]


def _f(count):
    """Counts in float64: a schedule is computed at full precision, then cast to the params' dtype."""
    return count.to(torch.float64) if isinstance(count, torch.Tensor) else float(count)


def _min(a, b):
    return torch.clamp(a, max=b) if isinstance(a, torch.Tensor) else min(a, b)


def constant(lr: float) -> Schedule:
    C.nonneg("constant", "lr", lr)
    return lambda count: lr * (_f(count) * 0 + 1)


def step_lr(lr: float, step_size: int, gamma: float = 0.1) -> Schedule:
    """``lr * gamma ** (count // step_size)`` (``StepLR``); ``step_size`` a positive int."""
    C.nonneg("step_lr", "lr", lr)
    C.integer("step_lr", "step_size", step_size)
    C.nonneg("step_lr", "gamma", gamma)
    return lambda count: lr * gamma ** _f(count // step_size)


def exponential_lr(lr: float, gamma: float) -> Schedule:
    """``lr * gamma ** count`` (``ExponentialLR``)."""
    C.nonneg("exponential_lr", "lr", lr)
    C.nonneg("exponential_lr", "gamma", gamma)
    return lambda count: lr * gamma ** _f(count)


def cosine_annealing_lr(lr: float, T_max: int, eta_min: float = 0.0) -> Schedule:
    """``eta_min + (lr - eta_min) (1 + cos(pi count / T_max)) / 2`` (``CosineAnnealingLR``'s
    closed form, which its recursive updates follow to rounding). At ``count = T_max`` it is
    ``eta_min`` exactly (0 by default: an update then leaves the params unchanged)."""
    C.nonneg("cosine_annealing_lr", "lr", lr)
    C.integer("cosine_annealing_lr", "T_max", T_max)
    C.nonneg("cosine_annealing_lr", "eta_min", eta_min)
    def schedule(count):
        c = _f(count)
        cos = torch.cos(c * math.pi / T_max) if isinstance(c, torch.Tensor) else math.cos(c * math.pi / T_max)
        return eta_min + (lr - eta_min) * (1 + cos) / 2
    return schedule


def linear_lr(lr: float, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
              total_iters: int = 5) -> Schedule:
    """``lr`` times a factor going linearly from ``start_factor`` to ``end_factor`` over
    ``total_iters`` steps, then constant (``LinearLR``). torch's checks (``end_factor`` in
    [0, 1], ``start_factor`` at most 1), except that ``start_factor`` may be 0 — a warm-up from
    0, whose first update leaves the params unchanged — which torch's recursive form cannot
    compute and this closed form can."""
    C.nonneg("linear_lr", "lr", lr)
    C.number("linear_lr", "start_factor", start_factor, lo=0.0, hi=1.0)
    C.number("linear_lr", "end_factor", end_factor, lo=0.0, hi=1.0)
    C.integer("linear_lr", "total_iters", total_iters)
    return lambda count: lr * (start_factor + (end_factor - start_factor)
                               * _min(_f(count), total_iters) / total_iters)


def one_cycle_lr(max_lr: float, total_steps: int, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 div_factor: float = 25.0, final_div_factor: float = 1e4,
                 three_phase: bool = False) -> Schedule:
    """``OneCycleLR``: warm up from ``max_lr / div_factor`` to ``max_lr`` over ``pct_start`` of
    the steps, then anneal to ``initial / final_div_factor`` (three_phase: back to the initial
    lr first). Momentum cycling is not included. Checked as torch checks (``total_steps`` a
    positive int, ``pct_start`` in [0, 1], ``anneal_strategy`` ``"cos"`` or ``"linear"``), and
    ``pct_start * total_steps`` must not be 1, a warm-up of no steps (torch divides by zero)."""
    C.nonneg("one_cycle_lr", "max_lr", max_lr)
    C.integer("one_cycle_lr", "total_steps", total_steps)
    C.number("one_cycle_lr", "pct_start", pct_start, lo=0.0, hi=1.0)
    C.choice("one_cycle_lr", "anneal_strategy", anneal_strategy, ("cos", "linear"))
    C.number("one_cycle_lr", "div_factor", div_factor, lo=0.0, lo_open=True)
    C.number("one_cycle_lr", "final_div_factor", final_div_factor, lo=0.0, lo_open=True)
    C.flag("one_cycle_lr", "three_phase", three_phase)
    if float(pct_start * total_steps) == 1.0:
        raise ValueError(f"one_cycle_lr: pct_start * total_steps = {pct_start} * {total_steps} = 1 leaves the "
                         "warm-up phase no steps (torch's OneCycleLR divides by zero there)")
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
        if not isinstance(c, torch.Tensor):  # torch's loop: the first phase whose end is not passed
            start = 0.0
            for i, (end, (a, b)) in enumerate(zip(ends, phases)):
                if c <= end or i == len(phases) - 1:
                    return anneal(a, b, (c - start) / (end - start))
                start = end
        lr, start = None, 0.0
        for end, (a, b) in zip(ends, phases):
            value = anneal(a, b, (c - start) / (end - start))  # a phase of no steps: NaN, never selected
            lr = value if lr is None else torch.where(c > start, value, lr)  # phase i once c > previous end
            start = end
        return lr

    return schedule
