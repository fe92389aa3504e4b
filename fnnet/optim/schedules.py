"""Learning-rate schedules as functions of the step count, matching ``torch.optim.lr_scheduler``.

``schedule(count)`` is the learning rate used by update number ``count + 1`` (count 0 is the
first update), i.e. the lr torch's scheduler holds after ``count`` calls to
``scheduler.step()``. Counts may be ints or int64 tensors (inside a compiled step).
Pass a schedule wherever an ``lr`` goes: ``optim.adam(optim.cosine_annealing_lr(1e-3, 100))``.
"""

from __future__ import annotations

import itertools
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


# -- the rest of torch.optim.lr_scheduler ---------------------------------------------------------
# Each works on a Python int count (Python floats out, torch's own arithmetic) and on an int64
# tensor count (float64 tensors out): no Python branch on a tensor count, so a compiled step
# traces a schedule once and never recompiles for a new count.

def _is_t(x) -> bool:
    return isinstance(x, torch.Tensor)


def _where(cond, a, b):
    """``a if cond else b``, elementwise for a tensor condition (both sides are computed)."""
    if _is_t(cond):
        return torch.where(cond, a, b)
    return a if cond else b


def _floor(x):
    return torch.floor(x) if _is_t(x) else math.floor(x)


def _cos(x):
    return torch.cos(x) if _is_t(x) else math.cos(x)


def _clip(x, lo, hi):
    return torch.clamp(x, lo, hi) if _is_t(x) else max(lo, min(hi, x))


def _callable(owner: str, name: str, value) -> None:
    if not callable(value):
        raise TypeError(f"{owner}: {name} must be a function of the step count, got {type(value).__name__}")


def _ints(owner: str, name: str, values) -> list:
    """A list of ints ``>= 0`` in increasing order (a repeat allowed: torch's MultiStepLR counts it twice)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{owner}: {name} must be a list of ints, got {type(values).__name__}")
    values = list(values)
    for i, v in enumerate(values):
        C.integer(owner, f"{name}[{i}]", v, lo=0)
    if any(b < a for a, b in itertools.pairwise(values)):
        raise ValueError(f"{owner}: {name} must be increasing, got {values}")
    return values


def lambda_lr(lr: float, lr_lambda: Callable) -> Schedule:
    """``lr * lr_lambda(count)`` (``LambdaLR``). ``lr_lambda`` receives a Python int count as
    torch gives it, and a tensor count (inside a compiled step) as a float64 tensor holding the
    integer, so that ``0.95 ** count`` stays in float64 (written with torch ops, it compiles)."""
    C.nonneg("lambda_lr", "lr", lr)
    _callable("lambda_lr", "lr_lambda", lr_lambda)
    return lambda count: lr * lr_lambda(_f(count) if _is_t(count) else count)


def multiplicative_lr(lr: float, lr_lambda: Callable, max_count: int | None = None) -> Schedule:
    """``lr * lr_lambda(1) * lr_lambda(2) * ... * lr_lambda(count)`` (``MultiplicativeLR``: each
    ``step()`` multiplies the lr by ``lr_lambda(epoch)``), multiplied left to right as torch does.

    A product of arbitrary factors has no closed form, so it is a cumulative table,
    ``table[c] = table[c - 1] * lr_lambda(c)``, built from Python-int calls of ``lr_lambda`` as
    torch makes them, memoized (each factor is computed once; the schedule stays a pure function of
    the count). An int count (eager steps) extends the table as far as needed. With
    ``max_count``, a tensor count reads the table built at construction (no host sync, so it
    compiles), and a tensor count past ``max_count`` reads NaN, never a held value; without it,
    an eager tensor count is read as an int and a compiled step refuses it. For a constant factor
    ``exponential_lr(lr, factor)`` is the closed form."""
    C.nonneg("multiplicative_lr", "lr", lr)
    _callable("multiplicative_lr", "lr_lambda", lr_lambda)
    if max_count is not None:
        C.integer("multiplicative_lr", "max_count", max_count, lo=0)
    table = [lr]

    def extend(c: int) -> None:
        while len(table) <= c:
            table.append(table[-1] * float(lr_lambda(len(table))))

    if max_count is not None:
        extend(max_count)
        frozen = torch.tensor(table, dtype=torch.float64)

    def schedule(count):
        if not _is_t(count):
            C.integer("multiplicative_lr", "count", count, lo=0)
            extend(count)
            return table[count]
        if max_count is None:
            if torch.compiler.is_compiling():
                raise ValueError("multiplicative_lr: a tensor count inside a compiled step needs max_count= "
                                 "(the last count the table of products is built for)")
            return torch.tensor(schedule(int(count)), dtype=torch.float64, device=count.device)
        t = frozen.to(count.device)
        at = t.gather(0, torch.clamp(count, 0, max_count).reshape(1)).reshape(count.shape)  # no data-dependent index
        return torch.where(count <= max_count, at, torch.nan)

    return schedule


def multi_step_lr(lr: float, milestones, gamma: float = 0.1) -> Schedule:
    """``lr * gamma ** (number of milestones <= count)`` (``MultiStepLR``). ``milestones``: ints
    in increasing order, as torch documents; a repeated milestone decays twice, as torch's does."""
    C.nonneg("multi_step_lr", "lr", lr)
    milestones = _ints("multi_step_lr", "milestones", milestones)
    C.nonneg("multi_step_lr", "gamma", gamma)

    def schedule(count):
        passed = sum((count >= m for m in milestones), _f(count) * 0)  # bisect_right, branch-free
        return lr * gamma ** passed
    return schedule


def constant_lr(lr: float, factor: float = 1.0 / 3, total_iters: int = 5) -> Schedule:
    """``lr * factor`` for ``count < total_iters``, then ``lr`` (``ConstantLR``); ``factor`` in
    [0, 1] as torch checks. ``total_iters`` must be >= 1: at 0 torch's steps keep the factor
    forever while its closed form never applies it. ``factor=0`` (torch's steps divide by it)
    holds the params for ``total_iters`` updates."""
    C.nonneg("constant_lr", "lr", lr)
    C.number("constant_lr", "factor", factor, lo=0.0, hi=1.0)
    C.integer("constant_lr", "total_iters", total_iters)
    return lambda count: lr * _where(count < total_iters, factor + _f(count) * 0, 1.0 + _f(count) * 0)


def polynomial_lr(lr: float, total_iters: int = 5, power: float = 1.0) -> Schedule:
    """``lr * (1 - min(count, total_iters) / total_iters) ** power`` (``PolynomialLR``'s closed
    form, which its recursive steps follow to rounding): 0 from ``total_iters`` on. ``power``
    >= 0 (a negative power makes the last lr infinite)."""
    C.nonneg("polynomial_lr", "lr", lr)
    C.integer("polynomial_lr", "total_iters", total_iters)
    C.nonneg("polynomial_lr", "power", power)
    return lambda count: lr * (1.0 - _min(_f(count), total_iters) / total_iters) ** power


def cosine_annealing_warm_restarts(lr: float, T_0: int, T_mult: int = 1, eta_min: float = 0.0) -> Schedule:
    """SGDR (``CosineAnnealingWarmRestarts``): ``eta_min + (lr - eta_min) (1 + cos(pi T_cur / T_i)) / 2``
    where cycle ``i`` lasts ``T_i = T_0 T_mult^i`` steps and ``T_cur`` counts the steps since its
    start. Cycle ``n`` starts at ``T_0 (T_mult^n - 1) / (T_mult - 1)`` (``n T_0`` for ``T_mult = 1``);
    a tensor count finds ``n`` by a logarithm corrected by one either way, so ``T_cur`` and ``T_i``
    are the exact integers torch's steps count (float64 integers, exact below 2^53)."""
    C.nonneg("cosine_annealing_warm_restarts", "lr", lr)
    C.integer("cosine_annealing_warm_restarts", "T_0", T_0)
    C.integer("cosine_annealing_warm_restarts", "T_mult", T_mult)
    C.nonneg("cosine_annealing_warm_restarts", "eta_min", eta_min)

    def cycle(count):
        """(T_cur, T_i) at ``count``."""
        if not _is_t(count):
            if T_mult == 1:
                return count % T_0, T_0
            t_cur, t_i = count, T_0
            while t_cur >= t_i:
                t_cur, t_i = t_cur - t_i, t_i * T_mult
            return t_cur, t_i
        c = _f(count)
        if T_mult == 1:
            return torch.remainder(c, T_0), c * 0 + T_0
        start = lambda n: T_0 * (T_mult ** n - 1) / (T_mult - 1)
        n = torch.floor(torch.log(c / T_0 * (T_mult - 1) + 1) / math.log(T_mult))
        n = n - (c < start(n)).to(c.dtype)  # the logarithm may land one cycle off either way
        n = n + (c >= start(n + 1)).to(c.dtype)
        return c - start(n), T_0 * T_mult ** n

    def schedule(count):
        t_cur, t_i = cycle(count)
        return eta_min + (lr - eta_min) * (1 + _cos(math.pi * t_cur / t_i)) / 2
    return schedule


def _cyclic(owner: str, step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode):
    """The height of ``CyclicLR``'s triangle at a count, in [0, 1] times the scale:
    ``(scale_factor(count), scale(count))``, as torch's ``get_lr`` computes them."""
    C.integer(owner, "step_size_up", step_size_up)
    if step_size_down is not None:
        C.integer(owner, "step_size_down", step_size_down, lo=0)
    if scale_fn is None:
        C.choice(owner, "mode", mode, ("triangular", "triangular2", "exp_range"))
        scale_mode = "iterations" if mode == "exp_range" else "cycle"
    else:
        _callable(owner, "scale_fn", scale_fn)
        C.choice(owner, "scale_mode", scale_mode, ("cycle", "iterations"))
    C.number(owner, "gamma", gamma, lo=0.0)
    up = float(step_size_up)
    total = up + (float(step_size_down) if step_size_down is not None else up)
    ratio = up / total

    def scale(x):
        if scale_fn is not None:
            return scale_fn(x)
        if mode == "triangular":
            return 1.0
        if mode == "triangular2":
            return 1 / (2.0 ** (x - 1))
        return gamma ** x

    def height(count):
        c = _f(count)
        cycle = _floor(1 + c / total)
        x = 1.0 + c / total - cycle
        # both branches are computed for a tensor: a ratio of 1 (no down phase) divides by 0 in the unused one
        factor = _where(x <= ratio, x / ratio, (x - 1) / (ratio - 1) if ratio != 1 else x * 0)
        return factor, scale(cycle if scale_mode == "cycle" else c)

    return height


def cyclic_lr(base_lr: float, max_lr: float, step_size_up: int = 2000, step_size_down: int | None = None,
              mode: str = "triangular", gamma: float = 1.0, scale_fn: Callable | None = None,
              scale_mode: str = "cycle") -> Schedule:
    """``CyclicLR``: ``base_lr + (max_lr - base_lr) * h * scale``, where ``h`` rises from 0 to 1 over
    ``step_size_up`` steps and falls back over ``step_size_down`` (default: the same), and
    ``scale`` is 1 (``"triangular"``), halves each cycle (``"triangular2"``), is
    ``gamma ** count`` (``"exp_range"``), or ``scale_fn`` of the cycle number (from 1) or of the
    count (``scale_mode``), which then overrides ``mode``; a tensor count gives ``scale_fn`` a
    float64 tensor. torch's CyclicLR also cycles momentum (``cycle_momentum=True``); here that is
    its own schedule, :func:`cyclic_momentum`, set each step with ``set_hyperparams``."""
    C.nonneg("cyclic_lr", "base_lr", base_lr)
    C.nonneg("cyclic_lr", "max_lr", max_lr)
    height = _cyclic("cyclic_lr", step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)

    def schedule(count):
        factor, scale = height(count)
        return base_lr + (max_lr - base_lr) * factor * scale
    return schedule


def cyclic_momentum(base_momentum: float = 0.8, max_momentum: float = 0.9, step_size_up: int = 2000,
                    step_size_down: int | None = None, mode: str = "triangular", gamma: float = 1.0,
                    scale_fn: Callable | None = None, scale_mode: str = "cycle") -> Schedule:
    """The momentum ``CyclicLR(cycle_momentum=True)`` sets, cycled against the lr:
    ``max_momentum - (max_momentum - base_momentum) * h * scale`` with :func:`cyclic_lr`'s ``h``
    and ``scale`` (the same arguments). fnnet's optimizers take a fixed momentum, so set it each
    step: ``state = optim.set_hyperparams(state, momentum=cyclic_momentum(...)(count))`` (torch
    sets it from its first step; for Adam, it is ``betas[0]``)."""
    C.number("cyclic_momentum", "base_momentum", base_momentum, lo=0.0)
    C.number("cyclic_momentum", "max_momentum", max_momentum, lo=0.0)
    height = _cyclic("cyclic_momentum", step_size_up, step_size_down, mode, gamma, scale_fn, scale_mode)

    def schedule(count):
        factor, scale = height(count)
        return max_momentum - (max_momentum - base_momentum) * factor * scale
    return schedule


def _join(owner: str, names: tuple[str, str], schedules, boundaries) -> Schedule:
    """``schedules[i](count - boundaries[i - 1])`` for the last boundary ``<= count`` (``schedules[0]``
    before the first): optax's ``join_schedules`` loop of ``where(count < boundary, ...)``, which
    for increasing boundaries is torch's ``SequentialLR`` (``bisect_right`` of the milestones)."""
    if isinstance(schedules, (str, bytes)) or not hasattr(schedules, "__iter__"):
        raise TypeError(f"{owner}: {names[0]} must be a list of schedules, got {type(schedules).__name__}")
    schedules = list(schedules)
    if not schedules:
        raise ValueError(f"{owner}: {names[0]} must hold at least one schedule")
    for i, s in enumerate(schedules):
        _callable(owner, f"{names[0]}[{i}]", s)
    boundaries = _ints(owner, names[1], boundaries)
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(f"{owner}: expected {len(schedules) - 1} {names[1]} (one fewer than the {names[0]}), "
                         f"got {len(boundaries)}")

    def at(s, count):
        """``s(count)``; for a tensor count a float64 tensor even if ``s`` gives a number (``torch.where``
        of two numbers would be float32)."""
        out = s(count)
        return torch.full((), out, dtype=torch.float64, device=count.device) if not _is_t(out) else out

    def schedule(count):
        if not _is_t(count):
            i = sum(count >= b for b in boundaries)  # the last boundary <= count (they increase)
            return schedules[i](count - (boundaries[i - 1] if i else 0))
        out = at(schedules[0], count)
        for b, s in zip(boundaries, schedules[1:]):
            # a later schedule is also evaluated before its boundary, at a negative count, and not selected
            out = torch.where(count < b, out, at(s, count - b))
        return out
    return schedule


def sequential_lr(schedulers, milestones) -> Schedule:
    """``SequentialLR``: ``schedulers[i]`` from ``milestones[i - 1]`` on, counting from 0 again
    there (each schedule carries its own lr). ``milestones``: increasing ints, one fewer than the
    schedulers. torch restarts a scheduler at its milestone from its closed form; its
    ``MultiplicativeLR`` alone restarts from the lr reached, which this does not copy."""
    return _join("sequential_lr", ("schedulers", "milestones"), schedulers, milestones)


def chained_scheduler(lr: float, schedulers) -> Schedule:
    """``ChainedScheduler``: ``lr * schedulers[0](count) * schedulers[1](count) * ...``, where each
    schedule is built with ``lr=1.0`` and so is a factor. torch's chained schedulers share one
    optimizer and each ``step()`` multiplies the lr it finds by its own factor, so the chain is
    the base lr times the product of the factors — for its multiplicative ("chainable")
    schedulers: step, multi_step, constant, linear, exponential, polynomial, multiplicative.
    (The others set the lr outright, so in torch the last of them wins: use that one alone.)

        optim.chained_scheduler(0.1, [optim.constant_lr(1.0, 0.1, 2), optim.exponential_lr(1.0, 0.9)])
    """
    C.nonneg("chained_scheduler", "lr", lr)
    if isinstance(schedulers, (str, bytes)) or not hasattr(schedulers, "__iter__"):
        raise TypeError(f"chained_scheduler: schedulers must be a list of schedules, got {type(schedulers).__name__}")
    schedulers = list(schedulers)
    if not schedulers:
        raise ValueError("chained_scheduler: schedulers must hold at least one schedule")
    for i, s in enumerate(schedulers):
        _callable("chained_scheduler", f"schedulers[{i}]", s)

    def schedule(count):
        out = lr * (_f(count) * 0 + 1)
        for s in schedulers:
            out = out * s(count)
        return out
    return schedule


# -- optax's schedules ------------------------------------------------------------------------------

def _linear_schedule(init_value: float, end_value: float, transition_steps: int) -> Schedule:
    """optax's ``linear_schedule`` (``polynomial_schedule`` with power 1, no delay): ``init_value``
    to ``end_value`` over ``transition_steps``, then held; constant ``init_value`` if the
    transition has no steps."""
    if transition_steps <= 0:
        return lambda count: init_value + _f(count) * 0

    def schedule(count):
        c = _clip(_f(count), 0, transition_steps)
        frac = 1 - c / transition_steps
        return (init_value - end_value) * frac ** 1 + end_value
    return schedule


def _cosine_decay(init_value: float, decay_steps: int, alpha: float, exponent: float) -> Schedule:
    """optax's ``cosine_decay_schedule``: ``init ((1 - alpha) ((1 + cos(pi t / T)) / 2) ** exponent + alpha)``
    with ``t = min(count, T)``."""
    def schedule(count):
        c = _min(_f(count), float(decay_steps))
        cosine = 0.5 * (1 + _cos(math.pi * c / decay_steps))
        return init_value * ((1 - alpha) * cosine ** exponent + alpha)
    return schedule


def warmup_constant_schedule(init_value: float, peak_value: float, warmup_steps: int) -> Schedule:
    """optax's: linear from ``init_value`` to ``peak_value`` over ``warmup_steps``, then constant."""
    C.nonneg("warmup_constant_schedule", "init_value", init_value)
    C.nonneg("warmup_constant_schedule", "peak_value", peak_value)
    C.integer("warmup_constant_schedule", "warmup_steps", warmup_steps, lo=0)
    return _linear_schedule(init_value, peak_value, warmup_steps)


def warmup_cosine_decay_schedule(init_value: float, peak_value: float, warmup_steps: int, decay_steps: int,
                                 end_value: float = 0.0, exponent: float = 1.0) -> Schedule:
    """optax's: linear warm-up from ``init_value`` to ``peak_value`` over ``warmup_steps``, then a
    cosine decay to ``end_value`` at ``decay_steps`` (which includes the warm-up), held after:
    ``end + (peak - end) ((1 + cos(pi t / (decay_steps - warmup_steps))) / 2) ** exponent``, as
    optax computes it (``peak * ((1 - alpha) c ** exponent + alpha)``, ``alpha = end / peak``)."""
    owner = "warmup_cosine_decay_schedule"
    C.nonneg(owner, "init_value", init_value)
    C.nonneg(owner, "peak_value", peak_value)
    C.integer(owner, "warmup_steps", warmup_steps, lo=0)
    C.integer(owner, "decay_steps", decay_steps, lo=1)
    C.nonneg(owner, "end_value", end_value)
    C.number(owner, "exponent", exponent)
    if decay_steps <= warmup_steps:
        raise ValueError(f"{owner}: decay_steps (the whole schedule, warm-up included) must exceed warmup_steps, "
                         f"got decay_steps={decay_steps}, warmup_steps={warmup_steps}")
    alpha = 0.0 if peak_value == 0.0 else end_value / peak_value
    return _join(owner, ("schedules", "boundaries"),
                 [_linear_schedule(init_value, peak_value, warmup_steps),
                  _cosine_decay(peak_value, decay_steps - warmup_steps, alpha, exponent)], [warmup_steps])


def join_schedules(schedules, boundaries) -> Schedule:
    """optax's: ``schedules[i](count - boundaries[i - 1])`` once ``count >= boundaries[i - 1]``
    (each schedule counts from 0 at its boundary). ``boundaries``: increasing ints, one fewer
    than the schedules (the same as :func:`sequential_lr`)."""
    return _join("join_schedules", ("schedules", "boundaries"), schedules, boundaries)


def piecewise_constant_schedule(init_value: float, boundaries_and_scales: dict | None = None) -> Schedule:
    """optax's: ``init_value`` times the product of the scales of every boundary ``<= count``
    (``{100: 0.1, 200: 0.1}``: 1/10 from count 100, 1/100 from 200), computed as optax does:
    boundaries in order, ``v = v * [count < b] + (1 - [count < b]) * scale * v``. Boundaries are
    ints >= 0, scales non-negative (optax's check)."""
    owner = "piecewise_constant_schedule"
    C.nonneg(owner, "init_value", init_value)
    items: list = []
    if boundaries_and_scales is not None:
        if not isinstance(boundaries_and_scales, dict):
            raise TypeError(f"{owner}: boundaries_and_scales must be a dict {{step: scale}}, got "
                            f"{type(boundaries_and_scales).__name__}")
        for b, s in boundaries_and_scales.items():
            C.integer(owner, "a boundary (key of boundaries_and_scales)", b, lo=0)
            C.nonneg(owner, f"boundaries_and_scales[{b}]", s)
        items = sorted(boundaries_and_scales.items())

    def schedule(count):
        c = _f(count)
        v = init_value + c * 0
        for b, s in items:
            before = torch.clamp(torch.sign(b - c), min=0.0) if _is_t(c) else max(0.0, float(b > c) - float(b < c))
            v = v * before + (1 - before) * s * v
        return v
    return schedule
