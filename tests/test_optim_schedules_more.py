"""The rest of torch's lr schedulers and optax's warm-up/join/piecewise schedules, as pure
functions of the step count: each equals its torch scheduler step for step (hypothesis draws
the arguments; 60 steps, past every end), or optax's formula written out here; a tensor count
gives the int count's value, and a compiled step evaluates them all for any count from one
graph."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from badinput import expect_clear_error
from hypothesis import given
from hypothesis import strategies as st

import fnnet as fn
from fnnet import optim

S = torch.optim.lr_scheduler
STEPS = 60

# lr_lambdas written so that they work on an int (torch) and a float64 tensor (a compiled count)
LAMBDAS = {
    "power": lambda e: 0.95 ** e,
    "inverse": lambda e: 1.0 / (1 + e),
    "sawtooth": lambda e: (e % 3 + 1) / 3,
}
# MultiplicativeLR's factors (called with ints only)
FACTORS = {
    "constant": lambda e: 0.9,
    "every_third": lambda e: 0.5 if e % 3 == 0 else 1.0,
    "slowing": lambda e: 1 - 1 / (e + 2),
}


def _sgd(lr: float, momentum: float = 0.0) -> torch.optim.SGD:
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr, momentum=momentum)


@st.composite
def factor_schedulers(draw, chainable: bool = False):
    """(snake name, kwargs) of a torch scheduler that multiplies the lr it finds (``chainable``)
    or of any scheduler with a closed form a restart can use (SequentialLR's sub-schedulers)."""
    kinds = ["step", "multi_step", "constant", "linear", "exponential", "polynomial"]
    if not chainable:
        kinds += ["cosine", "lambda"]
    kind = draw(st.sampled_from(kinds))
    if kind == "step":
        return "step_lr", dict(step_size=draw(st.integers(1, 8)), gamma=draw(st.sampled_from([0.1, 0.5, 0.9])))
    if kind == "multi_step":
        ms = sorted(draw(st.lists(st.integers(0, 50), max_size=5)))
        return "multi_step_lr", dict(milestones=ms, gamma=draw(st.sampled_from([0.1, 0.5, 0.9])))
    if kind == "constant":
        return "constant_lr", dict(factor=draw(st.floats(0.05, 1.0)), total_iters=draw(st.integers(1, 20)))
    if kind == "linear":
        return "linear_lr", dict(start_factor=draw(st.floats(0.05, 1.0)), end_factor=draw(st.floats(0.05, 1.0)),
                                 total_iters=draw(st.integers(1, 20)))
    if kind == "exponential":
        return "exponential_lr", dict(gamma=draw(st.floats(0.8, 0.999)))
    if kind == "polynomial":
        return "polynomial_lr", dict(total_iters=draw(st.integers(1, 40)), power=draw(st.sampled_from([0.5, 1.0, 2.0])))
    if kind == "cosine":
        return "cosine_annealing_lr", dict(T_max=draw(st.integers(1, 30)), eta_min=draw(st.sampled_from([0.0, 1e-3])))
    return "lambda_lr", dict(lr_lambda=LAMBDAS[draw(st.sampled_from(sorted(LAMBDAS)))])


TORCH = {"step_lr": S.StepLR, "multi_step_lr": S.MultiStepLR, "constant_lr": S.ConstantLR, "linear_lr": S.LinearLR,
         "exponential_lr": S.ExponentialLR, "polynomial_lr": S.PolynomialLR, "cosine_annealing_lr": S.CosineAnnealingLR,
         "lambda_lr": S.LambdaLR, "multiplicative_lr": S.MultiplicativeLR,
         "cosine_annealing_warm_restarts": S.CosineAnnealingWarmRestarts}


KINDS = ["single", "warm_restarts", "multiplicative", "cyclic", "sequential", "chained"]


@st.composite
def schedule_pairs(draw, kind):
    """(name, fnnet schedule, torch scheduler, optimizer, momentum schedule or None) of a ``kind``."""
    lr = draw(st.sampled_from([0.1, 1.0, 3e-4, 0.0]))
    if kind == "single":
        name, kw = draw(factor_schedulers())
        opt = _sgd(lr)
        return name, getattr(optim, name)(lr, **kw), TORCH[name](opt, **kw), opt, None
    if kind == "warm_restarts":
        kw = dict(T_0=draw(st.integers(1, 10)), T_mult=draw(st.integers(1, 3)), eta_min=draw(st.sampled_from([0.0, 1e-4])))
        opt = _sgd(lr)
        return kind, optim.cosine_annealing_warm_restarts(lr, **kw), S.CosineAnnealingWarmRestarts(opt, **kw), opt, None
    if kind == "multiplicative":
        f = FACTORS[draw(st.sampled_from(sorted(FACTORS)))]
        opt = _sgd(lr)
        return kind, optim.multiplicative_lr(lr, f, max_count=STEPS), S.MultiplicativeLR(opt, f), opt, None
    if kind == "cyclic":
        base = draw(st.sampled_from([1e-4, 0.01]))
        kw = dict(step_size_up=draw(st.integers(1, 10)), step_size_down=draw(st.one_of(st.none(), st.integers(0, 10))),
                  mode=draw(st.sampled_from(["triangular", "triangular2", "exp_range"])),
                  gamma=draw(st.sampled_from([1.0, 0.99, 0.9])))
        if draw(st.booleans()):
            kw.update(scale_fn=lambda x: 1 / (1 + 0.1 * x), scale_mode=draw(st.sampled_from(["cycle", "iterations"])))
        moms = dict(base_momentum=draw(st.sampled_from([0.8, 0.85])), max_momentum=draw(st.sampled_from([0.9, 0.95])))
        opt = _sgd(lr, momentum=0.9)
        return (kind, optim.cyclic_lr(base, lr, **kw), S.CyclicLR(opt, base, lr, **kw, **moms), opt,
                optim.cyclic_momentum(**moms, **kw))
    subs = draw(st.lists(factor_schedulers(chainable=kind == "chained"), min_size=1, max_size=3))
    opt = _sgd(lr)
    torch_subs = [TORCH[name](opt, **kw) for name, kw in subs]
    if kind == "sequential":
        milestones = sorted(draw(st.lists(st.integers(1, 40), min_size=len(subs) - 1, max_size=len(subs) - 1)))
        ours = optim.sequential_lr([getattr(optim, n)(lr, **kw) for n, kw in subs], milestones)
        return f"sequential {subs} {milestones}", ours, S.SequentialLR(opt, torch_subs, milestones), opt, None
    ours = optim.chained_scheduler(lr, [getattr(optim, n)(1.0, **kw) for n, kw in subs])
    return f"chained {subs}", ours, S.ChainedScheduler(torch_subs, opt), opt, None


@pytest.mark.parametrize("kind", KINDS)
@given(data=st.data())
def test_schedules_equal_torch_schedulers_step_for_step(kind, data):
    """``schedule(count)`` is the lr torch's scheduler holds after ``count`` calls of ``step()``,
    for an int count (float64 Python numbers) and an int64 tensor count; CyclicLR's momentum is
    :func:`optim.cyclic_momentum`."""
    name, schedule, sched, opt, momentum = data.draw(schedule_pairs(kind))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "step() before optimizer.step()" and friends
        for count in range(STEPS):
            expected = opt.param_groups[0]["lr"]
            assert schedule(count) == pytest.approx(expected, rel=1e-9, abs=1e-15), (name, count)
            got = schedule(torch.tensor(count))
            assert got.dtype == torch.float64, name
            assert float(got) == pytest.approx(expected, rel=1e-9, abs=1e-15), (name, count)
            if momentum is not None:
                m = opt.param_groups[0]["momentum"]
                assert momentum(count) == pytest.approx(m, rel=1e-12), (name, count)
                assert float(momentum(torch.tensor(count))) == pytest.approx(m, rel=1e-12), (name, count)
            opt.step()
            sched.step()


def test_cyclic_lr_and_momentum_drive_sgd_along_torchs_cyclic_lr_trajectory():
    """torch's CyclicLR sets the lr and the momentum after each step; here the lr is a schedule
    and the momentum is set from ``cyclic_momentum`` before each update."""
    kw = dict(step_size_up=3, step_size_down=2, mode="triangular2")
    opt = optim.sgd(optim.cyclic_lr(0.01, 0.1, **kw), momentum=0.9)
    momentum = optim.cyclic_momentum(0.8, 0.95, **kw)
    params = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    state = opt.init(params)
    w = params["w"].clone().requires_grad_()
    topt = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    tsched = S.CyclicLR(topt, 0.01, 0.1, base_momentum=0.8, max_momentum=0.95, **kw)

    def loss(w):
        return (w ** 2).sum() + w.prod()

    for count in range(12):
        state = optim.set_hyperparams(state, momentum=momentum(count))
        updates, state = opt.update(fn.grad(lambda p: loss(p["w"]))(params), state, params)
        params = optim.apply_updates(params, updates)
        topt.zero_grad()
        loss(w).backward()
        topt.step()
        tsched.step()
        torch.testing.assert_close(params["w"], w.detach(), rtol=1e-12, atol=1e-14, msg=f"step {count}")


def test_a_sequence_restarts_each_schedule_at_its_milestone():
    """The torch docs' example: ConstantLR(0.1, 2) for 2 steps, then ExponentialLR(0.9) from its start."""
    s = optim.sequential_lr([optim.constant_lr(1.0, 0.1, 2), optim.exponential_lr(1.0, 0.9)], milestones=[2])
    assert [round(s(c), 10) for c in range(5)] == [0.1, 0.1, 1.0, 0.9, 0.81]


def test_a_chain_is_the_lr_times_the_product_of_the_factors():
    """The torch docs' example: ConstantLR(0.1, 2) and ExponentialLR(0.9) on lr 1."""
    s = optim.chained_scheduler(1.0, [optim.constant_lr(1.0, 0.1, 2), optim.exponential_lr(1.0, 0.9)])
    expected = [0.1, 0.09, 0.81, 0.729, 0.6561]
    assert [s(c) for c in range(5)] == pytest.approx(expected, rel=1e-12)


def test_constant_lr_with_factor_0_holds_the_params_then_releases_them():
    """torch's ConstantLR divides by the factor when it ends; the closed form takes 0."""
    s = optim.constant_lr(0.5, factor=0.0, total_iters=3)
    assert [s(c) for c in range(5)] == [0.0, 0.0, 0.0, 0.5, 0.5]


def test_multiplicative_lr_past_its_table_is_nan_for_a_tensor_count_and_exact_for_an_int():
    s = optim.multiplicative_lr(1.0, lambda e: 0.5, max_count=4)
    assert float(s(torch.tensor(4))) == 0.5 ** 4
    assert math.isnan(float(s(torch.tensor(5))))
    assert s(10) == 0.5 ** 10
    assert float(optim.multiplicative_lr(1.0, lambda e: 0.5)(torch.tensor(6))) == 0.5 ** 6


def test_cosine_annealing_warm_restarts_finds_late_cycles_exactly():
    """Counts near the restarts of cycles 10..30 (T_0=3, T_mult=2): the tensor count's logarithm
    is corrected to the exact cycle an int count walks to."""
    s = optim.cosine_annealing_warm_restarts(1.0, T_0=3, T_mult=2)
    for n in range(10, 31):
        start = 3 * (2 ** n - 1)
        for c in (start - 1, start, start + 1):
            assert float(s(torch.tensor(c))) == s(c), c
        assert s(start) == 1.0


# -- optax ------------------------------------------------------------------------------------------

def optax_linear(init, end, steps, count):
    if steps <= 0:
        return init
    frac = 1 - min(max(count, 0), steps) / steps
    return (init - end) * frac + end


def optax_warmup_cosine(init, peak, warmup, decay, end, exponent, count):
    alpha = 0.0 if peak == 0.0 else end / peak
    if count < warmup:
        return optax_linear(init, peak, warmup, count)
    t = min(count - warmup, decay - warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * t / (decay - warmup)))
    return peak * ((1 - alpha) * cosine ** exponent + alpha)


def optax_piecewise(init, boundaries_and_scales, count):
    v = init
    for b, s in sorted(boundaries_and_scales.items()):
        v = v if count < b else v * s
    return v


def _both(schedule, count):
    """The int count's value, after checking the tensor count gives the same."""
    value = schedule(count)
    assert float(schedule(torch.tensor(count))) == pytest.approx(value, rel=1e-12, abs=1e-15)
    return value


@given(init=st.sampled_from([0.0, 1e-4]), peak=st.sampled_from([0.0, 1e-3, 1.0]), warmup=st.integers(0, 15),
       extra=st.integers(1, 30), end=st.sampled_from([0.0, 1e-5]), exponent=st.sampled_from([1.0, 2.0, 0.5]))
def test_warmup_cosine_decay_schedule_is_optaxs(init, peak, warmup, extra, end, exponent):
    decay = warmup + extra
    s = optim.warmup_cosine_decay_schedule(init, peak, warmup, decay, end_value=end, exponent=exponent)
    for count in range(decay + 10):
        expected = optax_warmup_cosine(init, peak, warmup, decay, end, exponent, count)
        assert _both(s, count) == pytest.approx(expected, rel=1e-12, abs=1e-15), count
    assert _both(s, decay + 5) == pytest.approx(end if peak else 0.0, abs=1e-15)


@given(init=st.sampled_from([0.0, 0.5]), peak=st.sampled_from([1e-3, 1.0]), warmup=st.integers(0, 15))
def test_warmup_constant_schedule_is_optaxs(init, peak, warmup):
    s = optim.warmup_constant_schedule(init, peak, warmup)
    for count in range(warmup + 10):
        assert _both(s, count) == pytest.approx(optax_linear(init, peak, warmup, count), rel=1e-12, abs=1e-15)


@given(init=st.sampled_from([1.0, 0.1]),
       table=st.dictionaries(st.integers(0, 40), st.sampled_from([0.0, 0.1, 0.5, 2.0]), max_size=4))
def test_piecewise_constant_schedule_is_optaxs(init, table):
    """Scales apply from their boundary on (count == boundary included), in boundary order."""
    s = optim.piecewise_constant_schedule(init, table)
    for count in range(50):
        assert _both(s, count) == pytest.approx(optax_piecewise(init, table, count), rel=1e-12), count
    assert optim.piecewise_constant_schedule(0.3)(7) == 0.3


@given(boundaries=st.lists(st.integers(0, 30), min_size=2, max_size=2).map(sorted))
def test_join_schedules_counts_each_schedule_from_its_boundary(boundaries):
    a, b = boundaries
    s = optim.join_schedules([optim.constant(1.0), optim.exponential_lr(1.0, 0.5), lambda c: 7.1], boundaries)
    for count in range(40):
        expected = 1.0 if count < a else 0.5 ** (count - a) if count < b else 7.1
        assert _both(s, count) == pytest.approx(expected, rel=1e-12), count  # 7.1 in float64, not float32


# -- compiled ---------------------------------------------------------------------------------------

def test_every_new_schedule_compiles_once_and_gives_eager_values_for_every_count():
    """One inductor graph (fullgraph) evaluates every schedule at a 0-d count tensor; 70 counts
    (past every end) reuse it; the values equal eager's int-count values."""
    schedules = [
        optim.lambda_lr(0.1, lambda e: 0.95 ** e),
        optim.multiplicative_lr(0.1, lambda e: 0.9 if e % 2 else 1.0, max_count=80),
        optim.multi_step_lr(0.1, [3, 10, 10, 40], 0.5),
        optim.constant_lr(0.1, 0.25, 7),
        optim.polynomial_lr(0.1, 30, 2.0),
        optim.cosine_annealing_warm_restarts(0.1, 3, 2, 1e-4),
        optim.cosine_annealing_warm_restarts(0.1, 5),
        optim.cyclic_lr(1e-3, 0.1, 4, 6, mode="triangular2"),
        optim.cyclic_lr(1e-3, 0.1, 5, mode="exp_range", gamma=0.97),
        optim.cyclic_momentum(0.8, 0.9, 4, 6),
        optim.sequential_lr([optim.linear_lr(0.1, 0.1, 1.0, 5), optim.cosine_annealing_lr(0.1, 40)], [5]),
        optim.chained_scheduler(0.1, [optim.constant_lr(1.0, 0.5, 4), optim.step_lr(1.0, 10, 0.5)]),
        optim.warmup_cosine_decay_schedule(0.0, 0.1, 10, 50, end_value=1e-4),
        optim.warmup_constant_schedule(0.0, 0.1, 8),
        optim.join_schedules([optim.constant(0.1), optim.exponential_lr(0.1, 0.9)], [20]),
        optim.piecewise_constant_schedule(0.1, {10: 0.5, 30: 0.1}),
        optim.swa_lr(0.1, 0.01, anneal_epochs=12, anneal_strategy="linear"),
    ]

    @fn.jit
    def all_at(count):
        return torch.stack([torch.as_tensor(s(count), dtype=torch.float64) for s in schedules])

    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    for count in range(70):
        got = all_at(torch.tensor(count))
        expected = torch.tensor([float(s(count)) for s in schedules], dtype=torch.float64)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15, msg=f"count {count}")
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])


# -- bad input --------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, match", [
    (lambda: optim.cosine_annealing_warm_restarts(0.1, T_0=0), "T_0"),
    (lambda: optim.cosine_annealing_warm_restarts(0.1, T_0=-3), "T_0"),
    (lambda: optim.cosine_annealing_warm_restarts(0.1, T_0=3, T_mult=0), "T_mult"),
    (lambda: optim.cosine_annealing_warm_restarts(0.1, T_0=2.5), "T_0"),
    (lambda: optim.multi_step_lr(0.1, [10, 5]), "milestones must be increasing"),
    (lambda: optim.multi_step_lr(0.1, [-1, 5]), r"milestones\[0\]"),
    (lambda: optim.multi_step_lr(0.1, 5), "milestones"),
    (lambda: optim.constant_lr(0.1, factor=1.5), "factor"),
    (lambda: optim.constant_lr(0.1, total_iters=0), "total_iters"),
    (lambda: optim.polynomial_lr(0.1, total_iters=0), "total_iters"),
    (lambda: optim.polynomial_lr(0.1, power=-1.0), "power"),
    (lambda: optim.lambda_lr(0.1, 0.5), "lr_lambda"),
    (lambda: optim.multiplicative_lr(-0.1, lambda e: 0.9), "lr"),
    (lambda: optim.cyclic_lr(0.1, 1.0, mode="sine"), "mode"),
    (lambda: optim.cyclic_lr(0.1, 1.0, step_size_up=0), "step_size_up"),
    (lambda: optim.cyclic_lr(0.1, 1.0, scale_fn=lambda x: 1.0, scale_mode="epochs"), "scale_mode"),
    (lambda: optim.sequential_lr([optim.constant(0.1)], [3]), "milestones"),
    (lambda: optim.sequential_lr([], []), "at least one"),
    (lambda: optim.sequential_lr([optim.constant(0.1), optim.constant(0.2)], [5.0]), r"milestones\[0\]"),
    (lambda: optim.sequential_lr([optim.constant(0.1), 0.2], [5]), r"schedulers\[1\]"),
    (lambda: optim.chained_scheduler(0.1, []), "at least one"),
    (lambda: optim.join_schedules([optim.constant(0.1)] * 3, [8, 4]), "boundaries must be increasing"),
    (lambda: optim.warmup_cosine_decay_schedule(0.0, 1.0, 10, 10), "decay_steps"),
    (lambda: optim.warmup_cosine_decay_schedule(0.0, 1.0, -1, 10), "warmup_steps"),
    (lambda: optim.warmup_constant_schedule(0.0, float("nan"), 3), "peak_value"),
    (lambda: optim.piecewise_constant_schedule(1.0, {10: -0.5}), "boundaries_and_scales"),
    (lambda: optim.piecewise_constant_schedule(1.0, [(10, 0.5)]), "dict"),
    (lambda: optim.multiplicative_lr(1.0, lambda e: 0.5)(-1), "count"),
])
def test_bad_arguments_are_refused_naming_the_schedule_and_argument(call, match):
    expect_clear_error(call, match=match)


def test_a_compiled_multiplicative_lr_without_max_count_is_refused():
    """Eager, a tensor count is read as an int; traced, it has no value to extend the table to:
    the compile fails naming max_count (dynamo wraps the ValueError)."""
    s = optim.multiplicative_lr(1.0, lambda e: 0.5)
    with pytest.raises(Exception, match="max_count"):
        fn.jit(lambda c: s(c))(torch.tensor(3))
