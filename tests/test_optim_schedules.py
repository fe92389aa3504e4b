"""Schedules equal torch's lr schedulers step for step; reduce_on_plateau equals
ReduceLROnPlateau; an Adam step compiles; a vmapped ensemble equals separate runs."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_trees_close

import fnnet as fn
from fnnet import optim, random

S = torch.optim.lr_scheduler
CASES = {
    "step": (lambda: optim.step_lr(0.1, 7, 0.5), lambda o: S.StepLR(o, 7, 0.5)),
    "exponential": (lambda: optim.exponential_lr(0.1, 0.93), lambda o: S.ExponentialLR(o, 0.93)),
    "cosine": (lambda: optim.cosine_annealing_lr(0.1, 20, 0.001), lambda o: S.CosineAnnealingLR(o, 20, 0.001)),
    "linear": (lambda: optim.linear_lr(0.1, 0.2, 1.0, 10), lambda o: S.LinearLR(o, 0.2, 1.0, 10)),
    "one_cycle": (lambda: optim.one_cycle_lr(0.1, 50), lambda o: S.OneCycleLR(o, 0.1, 50, cycle_momentum=False)),
    "one_cycle_3": (lambda: optim.one_cycle_lr(0.1, 50, 0.2, "linear", three_phase=True),
                    lambda o: S.OneCycleLR(o, 0.1, total_steps=50, pct_start=0.2, anneal_strategy="linear",
                                             cycle_momentum=False, three_phase=True)),
}


@pytest.mark.parametrize("name", CASES)
def test_schedules_equal_torch_schedulers_step_for_step(name):
    ours, theirs = CASES[name]
    schedule = ours()
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = theirs(opt)
    steps = 50 if name.startswith("one_cycle") else 45
    for count in range(steps):
        expected = opt.param_groups[0]["lr"]
        assert float(schedule(count)) == pytest.approx(expected, rel=1e-9, abs=1e-12), count
        assert float(schedule(torch.tensor(count))) == pytest.approx(expected, rel=1e-6, abs=1e-7), count  # float32
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


def test_reduce_on_plateau_scales_like_reduce_lr_on_plateau():
    opt = optim.chain(optim.sgd(1.0), optim.reduce_on_plateau(factor=0.5, patience=2, cooldown=1, min_scale=0.1))
    state = opt.init({"w": torch.zeros(1)})
    topt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    tsched = S.ReduceLROnPlateau(topt, factor=0.5, patience=2, cooldown=1, min_lr=0.1)
    losses = [1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.8, 0.85, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    for loss in losses:
        updates, state = opt.update({"w": torch.ones(1)}, state, {"w": torch.zeros(1)}, value=loss)
        tsched.step(loss)
        assert -updates["w"].item() == pytest.approx(topt.param_groups[0]["lr"])


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
