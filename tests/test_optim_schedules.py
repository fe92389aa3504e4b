"""Schedules equal torch's lr schedulers step for step; reduce_on_plateau equals
ReduceLROnPlateau; an Adam step compiles; a vmapped ensemble equals separate runs."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_trees_close
from hypothesis import given
from hypothesis import strategies as st

import fnnet as fn
from fnnet import optim, random

S = torch.optim.lr_scheduler


@st.composite
def schedule_pairs(draw):
    """(name, fnnet schedule, torch scheduler on an SGD of the same lr, steps), drawn hyperparameters."""
    lr = draw(st.sampled_from([0.1, 1.0, 3e-4]))
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    name = draw(st.sampled_from(["step", "exponential", "cosine", "linear", "one_cycle"]))
    if name == "step":
        n, gamma = draw(st.integers(1, 10)), draw(st.sampled_from([0.1, 0.5, 0.9]))
        return name, optim.step_lr(lr, n, gamma), S.StepLR(opt, n, gamma), 45
    if name == "exponential":
        gamma = draw(st.floats(0.8, 0.999))
        return name, optim.exponential_lr(lr, gamma), S.ExponentialLR(opt, gamma), 45
    if name == "cosine":
        t_max, eta_min = draw(st.integers(1, 30)), draw(st.sampled_from([0.0, 1e-5]))
        return name, optim.cosine_annealing_lr(lr, t_max, eta_min), S.CosineAnnealingLR(opt, t_max, eta_min), 45
    if name == "linear":
        start, end = draw(st.floats(0.05, 1.0)), draw(st.floats(0.05, 1.0))
        n = draw(st.integers(1, 20))
        return name, optim.linear_lr(lr, start, end, n), S.LinearLR(opt, start, end, n), 45
    total, pct = draw(st.integers(20, 60)), draw(st.floats(0.1, 0.45))
    kw = dict(anneal_strategy=draw(st.sampled_from(["cos", "linear"])), div_factor=draw(st.sampled_from([25.0, 10.0])),
              final_div_factor=draw(st.sampled_from([1e4, 100.0])), three_phase=draw(st.booleans()))
    return (name, optim.one_cycle_lr(lr, total, pct, **kw),
            S.OneCycleLR(opt, lr, total_steps=total, pct_start=pct, cycle_momentum=False, **kw), total)


@given(pair=schedule_pairs())
def test_schedules_equal_torch_schedulers_step_for_step(pair):
    """``schedule(count)`` is the lr torch's scheduler holds after ``count`` calls of ``step()``,
    for an int count (float64) and an int64 tensor count (as inside a compiled step)."""
    name, schedule, sched, steps = pair
    opt = sched.optimizer
    for count in range(steps):
        expected = opt.param_groups[0]["lr"]
        assert float(schedule(count)) == pytest.approx(expected, rel=1e-9, abs=1e-12), (name, count)
        assert float(schedule(torch.tensor(count))) == pytest.approx(expected, rel=1e-9, abs=1e-12), (name, count)
        opt.step()
        sched.step()


def test_a_schedule_as_lr_drives_the_optimizer_like_a_torch_scheduler():
    params = {"w": torch.tensor([1.0, -2.0], dtype=torch.float64)}
    opt = optim.sgd(optim.step_lr(0.1, 3, 0.5))
    state = opt.init(params)
    w = params["w"].clone().requires_grad_()
    topt = torch.optim.SGD([w], 0.1)
    tsched = S.StepLR(topt, 3, 0.5)
    for _ in range(10):
        updates, state = opt.update(fn.grad(lambda p: (p["w"] ** 2).sum())(params), state, params)
        params = optim.apply_updates(params, updates)
        topt.zero_grad()
        (w ** 2).sum().backward()
        topt.step()
        tsched.step()
        torch.testing.assert_close(params["w"], w.detach(), rtol=1e-12, atol=1e-14)


@given(mode=st.sampled_from(["min", "max"]), threshold_mode=st.sampled_from(["rel", "abs"]),
       threshold=st.sampled_from([0.0, 1e-4, 0.05]), factor=st.sampled_from([0.1, 0.5]),
       patience=st.integers(0, 3), cooldown=st.integers(0, 2), min_lr=st.sampled_from([0.0, 0.2]),
       metrics=st.lists(st.sampled_from([1.0, 0.99, 0.9, 0.8, 1.1, 0.95]), min_size=5, max_size=30))
def test_reduce_on_plateau_scales_like_reduce_lr_on_plateau(mode, threshold_mode, threshold, factor, patience,
                                                           cooldown, min_lr, metrics):
    """lr 1, so the scale is torch's lr (and min_scale its min_lr); per epoch, a value, an update."""
    kw = dict(mode=mode, factor=factor, patience=patience, threshold=threshold, threshold_mode=threshold_mode,
              cooldown=cooldown)
    opt = optim.chain(optim.sgd(1.0), optim.reduce_on_plateau(**kw, min_scale=min_lr))
    params = {"w": torch.zeros(1)}
    state = opt.init(params)
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    tsched = S.ReduceLROnPlateau(topt, **kw, min_lr=min_lr)
    for epoch, value in enumerate(metrics):
        updates, state = opt.update({"w": torch.ones(1)}, state, params, value=value)
        tsched.step(value)
        assert -updates["w"].item() == pytest.approx(topt.param_groups[0]["lr"], rel=1e-6), epoch
    between, _ = opt.update({"w": torch.ones(1)}, state, params)  # no value: the scale is kept
    assert -between["w"].item() == pytest.approx(topt.param_groups[0]["lr"], rel=1e-6)


MLP = fn.Sequential(fn.Linear(4, 16), fn.tanh, fn.Linear(16, 1))


def _loss(p, x, y):
    return ((MLP.apply(p, x) - y) ** 2).mean()


def test_an_adam_train_step_compiles_in_one_graph_and_matches_eager():
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(1e-2, weight_decay=1e-3))
    params = MLP.init(random.key(0))
    x, y = random.normal(random.key(1), (32, 4)), random.normal(random.key(2), (32, 1))

    def step(params, state, x, y):
        loss, grads = fn.value_and_grad(_loss)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state, loss

    compiled = fn.jit(step)
    pe, se = params, opt.init(params)
    pc, sc = params, opt.init(params)
    for _ in range(3):
        pe, se, le = step(pe, se, x, y)
        pc, sc, lc = compiled(pc, sc, x, y)
    torch.testing.assert_close(lc, le)
    assert_trees_close(pc, pe, msg="params")
    assert_trees_close(sc, se, msg="optimizer state")


def test_an_ensemble_of_16_with_one_vmapped_optimizer_state_matches_16_separate_runs():
    opt = optim.adam(1e-2)
    members = [MLP.init(k) for k in random.split(random.key(0), 16)]
    x, y = random.normal(random.key(1), (16, 8, 4)), random.normal(random.key(2), (16, 8, 1))

    def step(params, state, x, y):
        grads = fn.grad(_loss)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state

    params = fn.tree.stack(members)
    state = fn.vmap(opt.init)(params)
    for _ in range(5):
        params, state = fn.vmap(step)(params, state, x, y)
    for i, p in enumerate(members):
        s = opt.init(p)
        for _ in range(5):
            p, s = step(p, s, x[i], y[i])
        assert_trees_close(fn.tree.unstack(params)[i], p, msg=f"member {i}")
