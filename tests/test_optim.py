"""Every optimizer follows its torch.optim namesake step for step on random problems."""

from __future__ import annotations

import contextlib
from unittest import mock

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fnnet as fn
from fnnet import optim

STEPS = 30


def _problem(seed: int, shapes: list[tuple], dtype):
    """Several leaves and a smooth, non-quadratic loss with a different curvature per leaf."""
    g = torch.Generator().manual_seed(seed)
    params = {f"w{i}": torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for i, s in enumerate(shapes)}
    targets = {k: torch.randn(v.shape, generator=g, dtype=torch.float64).to(dtype) for k, v in params.items()}

    def loss_fn(p):
        return sum(((i + 1) * (x - targets[k]) ** 2).sum() + 0.1 * torch.cos(x).sum()
                   for i, (k, x) in enumerate(p.items()))

    return params, loss_fn


def _torch_run(params, loss_fn, make_opt, steps=STEPS, between=None):
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    opt = make_opt(list(leaves.values()))
    out = []
    for i in range(steps):
        opt.zero_grad()
        loss_fn(leaves).backward()
        opt.step()
        if between:
            between(i, opt)
        out.append({k: v.detach().clone() for k, v in leaves.items()})
    return out, opt


def _scalars_on_device(on: bool):
    """Eager CPU updates read hyperparameters as Python numbers; on an accelerator and under
    ``fn.jit`` they stay 0-d tensors and take the unfused formulas. ``on`` forces that path here."""
    return mock.patch("fnnet.optim._ops.host_scalars", lambda count: False) if on else contextlib.nullcontext()


def _fn_run(params, loss_fn, opt, steps=STEPS, between=None, device_scalars=False):
    state = opt.init(params)
    out = []
    with _scalars_on_device(device_scalars):
        for i in range(steps):
            grads = fn.grad(loss_fn)(params)
            updates, state = opt.update(grads, state, params)
            params = optim.apply_updates(params, updates)
            if between:
                state = between(i, state)
            out.append(params)
    return out, state


@pytest.fixture(autouse=True)
def _torch_scalars_in_float64():
    """torch.optim keeps some per-step scalars (ASGD's eta, the step) as tensors of the default
    dtype; float64 parity needs them in float64 as well."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


shapes = st.lists(st.tuples(st.integers(1, 4), st.integers(1, 3)), min_size=1, max_size=3)
DTYPES = st.sampled_from([torch.float64, torch.float32])
common = dict(seed=st.integers(0, 10**6), shapes=shapes, dtype=DTYPES, maximize=st.booleans(),
              device_scalars=st.booleans())


def _check(fn_traj, torch_traj, dtype):
    """float64: the whole trajectory, tight. float32: rounding differences are amplified along
    a trajectory (sign-like updates near a minimum flip on the last bit), so the first 10 steps,
    at rounding level."""
    tol = {"rtol": 1e-9, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    steps = len(fn_traj) if dtype == torch.float64 else 10
    for step, (a, b) in enumerate(zip(fn_traj[:steps], torch_traj[:steps])):
        for k in a:
            torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, k=k, step=step: f"step {step} {k}: {m}")


@given(**common, lr=st.floats(1e-3, 0.1), momentum=st.sampled_from([0.0, 0.5, 0.9]),
       dampening=st.sampled_from([0.0, 0.3]), nesterov=st.booleans(), wd=st.sampled_from([0.0, 0.01]))
def test_sgd_follows_torch(seed, shapes, dtype, maximize, device_scalars, lr, momentum, dampening, nesterov, wd):
    if nesterov and (momentum == 0 or dampening != 0):
        dampening, momentum = 0.0, 0.9
    params, loss_fn = _problem(seed, shapes, dtype)
    f = (lambda p: -loss_fn(p)) if maximize else loss_fn
    kw = dict(momentum=momentum, dampening=dampening, weight_decay=wd, nesterov=nesterov, maximize=maximize)
    a, _ = _fn_run(params, f, optim.sgd(lr, **kw), device_scalars=device_scalars)
    b, _ = _torch_run(params, f, lambda ps: torch.optim.SGD(ps, lr, **kw))
    _check(a, b, dtype)


@given(**common, lr=st.floats(1e-3, 0.1), b1=st.sampled_from([0.0, 0.8, 0.9]), b2=st.sampled_from([0.99, 0.999]),
       wd=st.sampled_from([0.0, 0.05]), amsgrad=st.booleans(), decoupled=st.booleans())
def test_adam_and_adamw_follow_torch(seed, shapes, dtype, maximize, device_scalars, lr, b1, b2, wd, amsgrad, decoupled):
    params, loss_fn = _problem(seed, shapes, dtype)
    f = (lambda p: -loss_fn(p)) if maximize else loss_fn
    kw = dict(betas=(b1, b2), eps=1e-8, weight_decay=wd, amsgrad=amsgrad, maximize=maximize)
    ours, theirs = (optim.adamw, torch.optim.AdamW) if decoupled else (optim.adam, torch.optim.Adam)
    a, _ = _fn_run(params, f, ours(lr, **kw), device_scalars=device_scalars)
    b, _ = _torch_run(params, f, lambda ps: theirs(ps, lr, **kw))
    _check(a, b, dtype)


@given(**common, lr=st.floats(1e-3, 0.1), wd=st.sampled_from([0.0, 0.05]))
def test_adamax_follows_torch(seed, shapes, dtype, maximize, device_scalars, lr, wd):
    params, loss_fn = _problem(seed, shapes, dtype)
    f = (lambda p: -loss_fn(p)) if maximize else loss_fn
    a, _ = _fn_run(params, f, optim.adamax(lr, weight_decay=wd, maximize=maximize), device_scalars=device_scalars)
    b, _ = _torch_run(params, f, lambda ps: torch.optim.Adamax(ps, lr, weight_decay=wd, maximize=maximize))
    _check(a, b, dtype)


@given(**common, lr=st.floats(1e-3, 0.5), lr_decay=st.sampled_from([0.0, 0.01]), wd=st.sampled_from([0.0, 0.05]),
       init_acc=st.sampled_from([0.0, 0.1]), eps=st.sampled_from([1e-10, 1e-6]))
def test_adagrad_follows_torch(seed, shapes, dtype, maximize, device_scalars, lr, lr_decay, wd, init_acc, eps):
    params, loss_fn = _problem(seed, shapes, dtype)
    f = (lambda p: -loss_fn(p)) if maximize else loss_fn
    kw = dict(lr_decay=lr_decay, weight_decay=wd, initial_accumulator_value=init_acc, eps=eps, maximize=maximize)
    a, _ = _fn_run(params, f, optim.adagrad(lr, **kw), device_scalars=device_scalars)
    b, _ = _torch_run(params, f, lambda ps: torch.optim.Adagrad(ps, lr, **kw))
    _check(a, b, dtype)


@given(**common, lr=st.floats(1e-3, 0.05), alpha=st.sampled_from([0.9, 0.99]), centered=st.booleans(),
       momentum=st.sampled_from([0.0, 0.5]), wd=st.sampled_from([0.0, 0.05]))
def test_rmsprop_follows_torch(seed, shapes, dtype, maximize, device_scalars, lr, alpha, centered, momentum, wd):
    params, loss_fn = _problem(seed, shapes, dtype)
    f = (lambda p: -loss_fn(p)) if maximize else loss_fn
    kw = dict(alpha=alpha, eps=1e-8, weight_decay=wd, momentum=momentum, centered=centered, maximize=maximize)
    a, _ = _fn_run(params, f, optim.rmsprop(lr, **kw), device_scalars=device_scalars)
    b, _ = _torch_run(params, f, lambda ps: torch.optim.RMSprop(ps, lr, **kw))
    _check(a, b, dtype)


@given(**common, lr=st.floats(1e-3, 0.1), etas=st.sampled_from([(0.5, 1.2), (0.3, 1.5)]),
       sizes=st.sampled_from([(1e-6, 50.0), (1e-3, 0.2)]))
def test_rprop_follows_torch(seed, shapes, dtype, maximize, device_scalars, lr, etas, sizes):
    params, loss_fn = _problem(seed, shapes, dtype)
    f = (lambda p: -loss_fn(p)) if maximize else loss_fn
    a, _ = _fn_run(params, f, optim.rprop(lr, etas, sizes, maximize=maximize), device_scalars=device_scalars)
    b, _ = _torch_run(params, f, lambda ps: torch.optim.Rprop(ps, lr, etas, sizes, maximize=maximize))
    _check(a, b, dtype)


@given(**common, lr=st.floats(1e-3, 0.05), lambd=st.sampled_from([1e-4, 0.05]), alpha=st.sampled_from([0.75, 0.5]),
       t0=st.sampled_from([1e6, 5.0]), wd=st.sampled_from([0.0, 0.05]))
def test_asgd_follows_torch_including_the_averaged_params(seed, shapes, dtype, maximize, device_scalars, lr, lambd, alpha, t0, wd):
    params, loss_fn = _problem(seed, shapes, dtype)
    f = (lambda p: -loss_fn(p)) if maximize else loss_fn
    kw = dict(lambd=lambd, alpha=alpha, t0=t0, weight_decay=wd, maximize=maximize)
    a, state = _fn_run(params, f, optim.asgd(lr, **kw), device_scalars=device_scalars)
    b, opt = _torch_run(params, f, lambda ps: torch.optim.ASGD(ps, lr, **kw))
    _check(a, b, dtype)
    torch_ax = {k: opt.state[p]["ax"] for k, p in zip(params, opt.param_groups[0]["params"])}
    _check([state["ax"]], [torch_ax], dtype)


def test_chain_of_clipping_and_adam_equals_clip_grad_norm_then_adam():
    params, loss_fn = _problem(0, [(3, 2), (4,)], torch.float64)
    opt = optim.chain(optim.clip_by_global_norm(0.5), optim.adam(0.05))

    def clip_then_step(ps):
        class Clipped(torch.optim.Adam):
            def step(self, closure=None):
                torch.nn.utils.clip_grad_norm_(ps, 0.5)
                return super().step(closure)
        return Clipped(ps, 0.05)

    a, _ = _fn_run(params, loss_fn, opt)
    b, _ = _torch_run(params, loss_fn, clip_then_step)
    _check(a, b, torch.float64)


@pytest.mark.parametrize("norm_type", [2.0, 1.0, float("inf")])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_by_global_norm_equals_clip_grad_norm_(norm_type, max_norm):
    g = {"a": torch.tensor([3.0, -4.0]), "b": {"c": torch.tensor([[1.0, -2.0], [0.5, 6.0]])}}
    clipped, _ = optim.clip_by_global_norm(max_norm, norm_type).update(g, {})
    ps = [torch.nn.Parameter(torch.zeros_like(x)) for x in fn.tree.leaves(g)]
    for p, x in zip(ps, fn.tree.leaves(g)):
        p.grad = x.clone()
    torch.nn.utils.clip_grad_norm_(ps, max_norm, norm_type)
    for ours, p in zip(fn.tree.leaves(clipped), ps):
        torch.testing.assert_close(ours, p.grad, rtol=0, atol=0)


def test_clip_by_value_equals_clip_grad_value_and_scale_by_schedule_counts_from_zero():
    g = {"a": torch.tensor([3.0, -4.0, 0.2]), "b": torch.tensor([[-0.1, 7.0]])}
    clipped, _ = optim.clip_by_value(0.5).update(g, {})
    ps = [torch.nn.Parameter(torch.zeros_like(x)) for x in fn.tree.leaves(g)]
    for p, x in zip(ps, fn.tree.leaves(g)):
        p.grad = x.clone()
    torch.nn.utils.clip_grad_value_(ps, 0.5)
    for ours, p in zip(fn.tree.leaves(clipped), ps):
        assert torch.equal(ours, p.grad)
    t = optim.scale_by_schedule(optim.exponential_lr(1.0, 0.5))
    state = t.init(g)
    for count in range(3):
        scaled, state = t.update(g, state)
        torch.testing.assert_close(scaled["a"], g["a"] * 0.5 ** count)


def test_clip_by_global_norm_raises_on_a_nonfinite_norm_only_when_asked():
    g = {"a": torch.tensor([float("nan"), 1.0])}
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.clip_by_global_norm(1.0, error_if_nonfinite=True).update(g, {})
    clipped, _ = optim.clip_by_global_norm(1.0).update(g, {})  # torch scales by the NaN norm
    assert torch.isnan(clipped["a"]).all()


def test_two_param_groups_with_different_lr_and_weight_decay_match_torch():
    params, loss_fn = _problem(3, [(3, 2), (4,)], torch.float64)
    opt = optim.multi_transform({"fast": optim.sgd(0.05, momentum=0.9, weight_decay=0.1),
                                 "slow": optim.sgd(0.01, momentum=0.9)},
                                lambda path, p: "fast" if path == "w0" else "slow")
    a, _ = _fn_run(params, loss_fn, opt)
    b, _ = _torch_run(params, loss_fn, lambda ps: torch.optim.SGD(
        [{"params": [ps[0]], "lr": 0.05, "weight_decay": 0.1}, {"params": [ps[1]], "lr": 0.01}], momentum=0.9))
    _check(a, b, torch.float64)


def test_a_frozen_subtree_stays_bit_identical_and_has_no_optimizer_state():
    params = {"encoder": {"w": torch.tensor([-0.0, 1.5, -2.0, float("nan")])}, "head": {"w": torch.randn(2)}}
    opt = optim.freeze(optim.adam(0.1), lambda path, p: path.startswith("encoder"))
    state = opt.init(params)
    assert fn.tree.paths(state["train"]["exp_avg"]) == ["head.w"] and not fn.tree.leaves(state["frozen"])
    before = params["encoder"]["w"].clone()
    for _ in range(3):
        grads = fn.grad(lambda p: (p["encoder"]["w"] ** 2).nansum() + (p["head"]["w"] ** 2).sum())(params)
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
    assert torch.equal(params["encoder"]["w"].view(torch.int32), before.view(torch.int32)), "bits changed"
    assert not torch.equal(params["head"]["w"], torch.zeros(2))


def test_changing_lr_mid_run_through_the_state_matches_torch_param_group_lr():
    params, loss_fn = _problem(5, [(3,), (2, 2)], torch.float64)

    def ours(i, state):
        return optim.set_hyperparams(state, lr=0.002) if i == 9 else state

    def theirs(i, opt):
        if i == 9:
            opt.param_groups[0]["lr"] = 0.002

    a, _ = _fn_run(params, loss_fn, optim.adam(0.05), between=ours)
    b, _ = _torch_run(params, loss_fn, lambda ps: torch.optim.Adam(ps, 0.05), between=theirs)
    _check(a, b, torch.float64)
    with pytest.raises(KeyError, match="no optimizer state holds"):
        optim.set_hyperparams(optim.adam(0.1).init(params), nesterov=True)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
@pytest.mark.parametrize("problem", ["quadratic", "rosenbrock"])
def test_lbfgs_follows_torch(line_search_fn, problem):
    """Params of two leaves (flattened in tree order, as torch flattens its param list); each
    step is one ``LBFGS.step(closure)``: same params, loss and evaluation counts, step by step."""
    A = torch.tensor([[3.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 2.0]], dtype=torch.float64)

    def flat(p):
        return torch.cat([p["a"], p["b"]])

    def loss_fn(p):
        x = flat(p)
        if problem == "quadratic":
            return 0.5 * x @ A @ x - x.sum()
        return ((1 - x[:-1]) ** 2 + 100 * (x[1:] - x[:-1] ** 2) ** 2).sum()

    params = {"a": torch.tensor([-1.5, 2.0], dtype=torch.float64), "b": torch.tensor([0.5], dtype=torch.float64)}
    opt = optim.lbfgs(1.0, max_iter=10, history_size=5, line_search_fn=line_search_fn)
    state = opt.init(params)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    torch_opt = torch.optim.LBFGS(list(leaves.values()), 1.0, max_iter=10, history_size=5,
                                  line_search_fn=line_search_fn)

    def closure():
        torch_opt.zero_grad()
        loss = loss_fn(leaves)
        loss.backward()
        return loss

    for step in range(8):
        params, state, loss = opt.step(loss_fn, params, state)
        torch_loss = torch_opt.step(closure)
        for k in params:
            torch.testing.assert_close(params[k], leaves[k].detach(), rtol=1e-10, atol=1e-12, msg=f"step {step} {k}")
        torch.testing.assert_close(loss, torch_loss.detach(), rtol=1e-10, atol=1e-12)
        torch_state = torch_opt.state[torch_opt.param_groups[0]["params"][0]]
        assert (int(state["n_iter"]), int(state["func_evals"])) == (torch_state["n_iter"], torch_state["func_evals"])
    assert all(isinstance(x, torch.Tensor) for x in fn.tree.leaves(state)), "the state is a tree of tensors"
    if line_search_fn == "strong_wolfe":
        expected = torch.ones(3, dtype=torch.float64) if problem == "rosenbrock" else \
            torch.linalg.solve(A, torch.ones(3, dtype=torch.float64))
        torch.testing.assert_close(flat(params), expected, atol=1e-3, rtol=0)


def test_lbfgs_history_is_bounded_by_history_size():
    def loss_fn(p):
        return ((p["x"] - torch.arange(6.0, dtype=torch.float64)) ** 4).sum()

    params = {"x": torch.zeros(6, dtype=torch.float64)}
    opt = optim.lbfgs(0.5, max_iter=12, history_size=3)
    params, state, _ = opt.step(loss_fn, params, opt.init(params))
    assert len(state["old_dirs"]) == len(state["old_stps"]) == len(state["ro"]) == 3
