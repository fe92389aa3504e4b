"""optax's building blocks and wrappers (``fnnet.optim.blocks``, ``fnnet.optim.wrappers``): each
against optax's published update rule, written out here per leaf in float64 over 20+ steps with
hyperparameters drawn by hypothesis; AdamW's mask against torch's param groups; the wrappers'
bookkeeping (skips, counts, accumulation, slow weights); the optax-style chain under ``fn.jit``
(inductor) without recompiling; ``fn.jit`` past dynamo's recompile limit; and bad input."""

from __future__ import annotations


import pytest
import torch
from badinput import expect_clear_error
from conftest import assert_trees_close
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fnnet as fn
from fnnet import optim, random
from fnnet import tree as T

F64 = torch.float64
STEPS = 24
SETTINGS = settings(max_examples=12, deadline=None)


def _params():
    return {"layer": {"weight": torch.linspace(-1, 1, 6, dtype=F64).reshape(3, 2),
                      "bias": torch.tensor([0.5, -0.25, 2.0], dtype=F64)}}


def _grads(seed: int, steps: int = STEPS, scale: float = 1.0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"layer": {"weight": scale * torch.randn(3, 2, generator=g, dtype=F64),
                       "bias": scale * torch.randn(3, generator=g, dtype=F64)}} for _ in range(steps)]


def _updates(opt, grads: list[dict], params=None) -> list[dict]:
    """The updates ``opt`` gives for each gradient in turn, at fixed params."""
    params = _params() if params is None else params
    state, out = opt.init(params), []
    for g in grads:
        u, state = opt.update(g, state, params)
        out.append(u)
    return out


def _reference(rule, grads: list[dict]) -> list[dict]:
    """``rule(t, g, slots) -> update`` per leaf (``slots`` a dict the rule keeps its moments in)."""
    slots = {path: {} for path in T.paths(grads[0])}
    out = []
    for t, g in enumerate(grads, 1):
        out.append(T.map_with_path(lambda path, x, t=t: rule(t, x, slots[path]), g))
    return out


def _assert_steps_close(got: list[dict], want: list[dict], **tol) -> None:
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        if tol:
            for path, x, y in zip(T.paths(a), T.leaves(a), T.leaves(T.map(lambda v, w: w, a, b))):
                torch.testing.assert_close(x, y, **tol, msg=lambda m, i=i, path=path: f"step {i + 1} {path}\n{m}")
        else:
            assert_trees_close(a, b, msg=f"step {i + 1}")


# ---------------------------------------------------------------------------- the blocks, formula

decay_rate = st.floats(0.0, 0.99)
small = st.sampled_from([0.0, 1e-8, 1e-3, 0.1])


@SETTINGS
@given(b1=decay_rate, b2=st.floats(0.0, 0.999), eps=small, eps_root=small, nesterov=st.booleans(),
       seed=st.integers(0, 2**16))
def test_scale_by_adam_is_optax_rule(b1, b2, eps, eps_root, nesterov, seed):
    def rule(t, g, s):
        s["mu"] = (1 - b1) * g + b1 * s.get("mu", 0.0)
        s["nu"] = (1 - b2) * g ** 2 + b2 * s.get("nu", 0.0)
        if nesterov:
            mu_hat = b1 * s["mu"] / (1 - b1 ** (t + 1)) + (1 - b1) * g / (1 - b1 ** t)
        else:
            mu_hat = s["mu"] / (1 - b1 ** t)
        nu_hat = s["nu"] / (1 - b2 ** t)
        return mu_hat / (torch.sqrt(nu_hat + eps_root) + eps)

    grads = _grads(seed)
    opt = optim.scale_by_adam(b1, b2, eps, eps_root, nesterov=nesterov)
    _assert_steps_close(_updates(opt, grads), _reference(rule, grads))


@SETTINGS
@given(b1=decay_rate, b2=st.floats(0.0, 0.999), eps=small, eps_root=small, bc_mu=st.booleans(),
       bc_nu=st.booleans(), seed=st.integers(0, 2**16))
def test_scale_by_amsgrad_is_optax_rule(b1, b2, eps, eps_root, bc_mu, bc_nu, seed):
    def rule(t, g, s):
        s["mu"] = (1 - b1) * g + b1 * s.get("mu", 0.0)
        s["nu"] = (1 - b2) * g ** 2 + b2 * s.get("nu", 0.0)
        mu_hat = s["mu"] / (1 - b1 ** t) if bc_mu else s["mu"]
        nu_eff = s["nu"] / (1 - b2 ** t) if bc_nu else s["nu"]
        s["nu_max"] = torch.maximum(s.get("nu_max", torch.zeros_like(g)), nu_eff)
        return mu_hat / (torch.sqrt(s["nu_max"] + eps_root) + eps)

    grads = _grads(seed, scale=3.0)
    opt = optim.scale_by_amsgrad(b1, b2, eps, eps_root, bias_correction_mu=bc_mu, bias_correction_nu=bc_nu)
    _assert_steps_close(_updates(opt, grads), _reference(rule, grads))


@SETTINGS
@given(decay=decay_rate, eps=st.sampled_from([1e-8, 1e-3, 0.1]), initial_scale=st.sampled_from([0.0, 0.5]),
       eps_in_sqrt=st.booleans(), bias_correction=st.booleans(), centered=st.booleans(),
       seed=st.integers(0, 2**16))
def test_scale_by_rms_and_stddev_are_optax_rules(decay, eps, initial_scale, eps_in_sqrt, bias_correction,
                                                  centered, seed):
    # centred and debiased, the first step's variance is g^2 - g^2: 0 up to rounding, whose sign
    # decides whether sqrt(var) (eps outside the root) is a NaN, in optax as here
    assume(not (centered and bias_correction and not eps_in_sqrt))
    # centred with a decay near 0, nu - mu^2 = g^2 d (1 - d) is rounding noise (decay 2e-16 gave a
    # 20% difference through sqrt): the rule is ill-conditioned there, in optax as here
    assume(not centered or decay == 0.0 or decay > 1e-3)
    def rule(t, g, s):
        s["nu"] = (1 - decay) * g ** 2 + decay * s.get("nu", initial_scale)
        s["mu"] = (1 - decay) * g + decay * s.get("mu", 0.0)
        nu_hat = s["nu"] / (1 - decay ** t) if bias_correction else s["nu"]
        mu_hat = s["mu"] / (1 - decay ** t) if bias_correction else s["mu"]
        var = nu_hat - mu_hat ** 2 if centered else nu_hat
        scaling = 1 / torch.sqrt(var + eps) if eps_in_sqrt else 1 / (torch.sqrt(var) + eps)
        return scaling * g

    grads = _grads(seed)
    block = optim.scale_by_stddev if centered else optim.scale_by_rms
    opt = block(decay, eps, initial_scale, eps_in_sqrt, bias_correction)
    # nu - mu^2 cancels (a decay near 0 leaves d (1 - d) (g - mu)^2): rounding there is relative to g^2
    tol = {"rtol": 1e-7, "atol": 1e-10} if centered else {}
    _assert_steps_close(_updates(opt, grads), _reference(rule, grads), **tol)


@SETTINGS
@given(decay=st.floats(0.0, 1.5), nesterov=st.booleans(), seed=st.integers(0, 2**16))
def test_trace_is_optax_rule(decay, nesterov, seed):
    def rule(t, g, s):
        s["trace"] = g + decay * s.get("trace", 0.0)
        return g + decay * s["trace"] if nesterov else s["trace"]

    grads = _grads(seed)
    _assert_steps_close(_updates(optim.trace(decay, nesterov), grads), _reference(rule, grads))


@SETTINGS
@given(decay=decay_rate, debias=st.booleans(), seed=st.integers(0, 2**16))
def test_ema_is_optax_rule_debiased_or_not(decay, debias, seed):
    def rule(t, g, s):
        s["ema"] = (1 - decay) * g + decay * s.get("ema", 0.0)
        return s["ema"] / (1 - decay ** t) if debias else s["ema"]

    grads = _grads(seed)
    _assert_steps_close(_updates(optim.ema(decay, debias), grads), _reference(rule, grads))


def test_debiased_ema_of_a_constant_is_that_constant_from_the_first_step():
    """The point of debiasing: the zero start is divided out (``ema / (1 - decay^t)``)."""
    g = {"w": torch.full((4,), 3.0, dtype=F64)}
    for u in _updates(optim.ema(0.9), [g] * 5, params=g):
        torch.testing.assert_close(u["w"], g["w"], rtol=1e-14, atol=0)
    first = _updates(optim.ema(0.9, debias=False), [g], params=g)[0]
    torch.testing.assert_close(first["w"], 0.1 * g["w"], rtol=1e-14, atol=0)


@SETTINGS
@given(lr=st.sampled_from([0.0, 1e-3, 0.5]), scheduled=st.booleans(), flip_sign=st.booleans(),
       seed=st.integers(0, 2**16))
def test_scale_by_learning_rate_multiplies_by_minus_lr_or_its_schedule(lr, scheduled, flip_sign, seed):
    schedule = optim.cosine_annealing_lr(lr, 10)
    sign = -1.0 if flip_sign else 1.0
    grads = _grads(seed)
    opt = optim.scale_by_learning_rate(schedule if scheduled else lr, flip_sign=flip_sign)
    want = [T.map(lambda g, i=i: sign * (schedule(i) if scheduled else lr) * g, gi) for i, gi in enumerate(grads)]
    _assert_steps_close(_updates(opt, grads), want)
    assert optim.scale_by_learning_rate(None).init(_params()) == {}   # optax: None is the identity


def test_scale_by_learning_rate_holds_lr_for_set_hyperparams():
    opt = optim.chain(optim.scale_by_adam(), optim.scale_by_learning_rate(0.1))
    params, (g,) = _params(), _grads(0, 1)
    state = optim.set_hyperparams(opt.init(params), lr=0.0)
    u, _ = opt.update(g, state, params)
    assert torch.equal(optim.apply_updates(params, u)["layer"]["weight"], params["layer"]["weight"])


@SETTINGS
@given(max_delta=st.floats(0.0, 2.0), seed=st.integers(0, 2**16))
def test_clip_clamps_each_element_to_max_delta(max_delta, seed):
    grads = _grads(seed, steps=1)
    want = T.map(lambda g: torch.clamp(g, -max_delta, max_delta), grads[0])
    assert_trees_close(_updates(optim.clip(max_delta), grads)[0], want)


@SETTINGS
@given(max_norm=st.floats(0.01, 5.0), scale=st.sampled_from([0.01, 1.0, 10.0]), seed=st.integers(0, 2**16))
def test_clip_by_global_norm_with_eps_0_is_optax_rule_and_default_is_torch(max_norm, scale, seed):
    g = _grads(seed, steps=1, scale=scale)[0]
    norm = torch.sqrt(sum((x ** 2).sum() for x in T.leaves(g)))
    optax_rule = T.map(lambda t: t if norm < max_norm else t / norm * max_norm, g)
    assert_trees_close(_updates(optim.clip_by_global_norm(max_norm, eps=0.0), [g])[0], optax_rule)
    torch_rule = T.map(lambda t: t * min(1.0, max_norm / (float(norm) + 1e-6)), g)
    assert_trees_close(_updates(optim.clip_by_global_norm(max_norm), [g])[0], torch_rule)


@SETTINGS
@given(wd=st.floats(0.0, 0.5), seed=st.integers(0, 2**16))
def test_add_decayed_weights_with_a_schedule_and_each_mask_form(wd, seed):
    """optax's ``weight_decay`` schedule of the count; masks as a bool tree, a prefix tree,
    ``f(path, leaf)`` and optax's ``f(params) -> bool tree`` all mean the same."""
    params, grads = _params(), _grads(seed, steps=4)
    schedule = optim.exponential_lr(wd, 0.5)
    want = [{"layer": {"weight": g["layer"]["weight"] + schedule(i) * params["layer"]["weight"],
                       "bias": g["layer"]["bias"]}} for i, g in enumerate(grads)]
    masks = [{"layer": {"bias": False, "weight": True}},
             lambda path, p: path.endswith("weight"),
             lambda p: T.map(lambda x: x.ndim > 1, p)]
    for mask in masks:
        _assert_steps_close(_updates(optim.add_decayed_weights(schedule, mask), grads, params), want)
    everything = optim.add_decayed_weights(wd, {"layer": True})   # a prefix: one bool for the subtree
    assert_trees_close(_updates(everything, grads[:1], params)[0], T.map(lambda g, p: g + wd * p, grads[0], params))


def test_adamw_mask_follows_torch_param_groups_without_decay_where_masked_out():
    params = _params()
    grads = _grads(1, steps=STEPS)
    w = params["layer"]["weight"].clone().requires_grad_()
    b = params["layer"]["bias"].clone().requires_grad_()
    twin = torch.optim.AdamW([{"params": [w]}, {"params": [b], "weight_decay": 0.0}], lr=0.05, weight_decay=0.3)
    opt = optim.adamw(0.05, weight_decay=0.3, mask=lambda path, p: p.ndim > 1)
    state = opt.init(params)
    for g in grads:
        w.grad, b.grad = g["layer"]["weight"].clone(), g["layer"]["bias"].clone()
        twin.step()
        u, state = opt.update(g, state, params)
        params = optim.apply_updates(params, u)
    assert_trees_close(params, {"layer": {"weight": w.detach(), "bias": b.detach()}})


EVERY_BLOCK_AND_WRAPPER = {
    "scale_by_adam": lambda: optim.scale_by_adam(nesterov=True), "scale_by_amsgrad": optim.scale_by_amsgrad,
    "scale_by_rms": optim.scale_by_rms, "scale_by_stddev": optim.scale_by_stddev,
    "trace": lambda: optim.trace(0.9), "ema": lambda: optim.ema(0.9),
    "scale_by_learning_rate": lambda: optim.scale_by_learning_rate(0.1), "clip": lambda: optim.clip(1.0),
    "masked (nothing selected)": lambda: optim.masked(optim.scale_by_adam(), lambda path, p: False),
    "apply_if_finite": lambda: optim.apply_if_finite(optim.scale_by_adam(), 1),
    "MultiSteps": lambda: optim.MultiSteps(optim.scale_by_adam(), 2),
    "lookahead": lambda: optim.lookahead(optim.scale_by_adam(), 2, 0.5),
    "adamw(mask=)": lambda: optim.adamw(mask=lambda path, p: p.ndim > 1),
}


@pytest.mark.parametrize("name", EVERY_BLOCK_AND_WRAPPER)
def test_zero_gradients_give_zero_updates_and_an_empty_tree_steps(name):
    """Zero gradients (eps > 0) move nothing; a tree with no leaves (an empty param group, a mask
    that selects nothing) steps without error, only the counts moving."""
    opt = EVERY_BLOCK_AND_WRAPPER[name]()
    params = {"layer": {"weight": torch.zeros(3, 2, dtype=F64), "bias": torch.zeros(3, dtype=F64)}}
    zeros = T.map(torch.zeros_like, params)
    state = opt.init(params)
    for _ in range(3):
        u, state = opt.update(zeros, state, params)
        assert all(torch.equal(x, torch.zeros_like(x)) for x in T.leaves(u)), name
    empty_state = opt.init({})
    for _ in range(2):
        u, empty_state = opt.update({}, empty_state, {})
        assert u == {}


# ---------------------------------------------------------------------------- the wrappers

def test_masked_with_a_path_function_transforms_only_the_selected_leaves_and_keeps_no_state_for_others():
    grads = _grads(2)
    opt = optim.masked(optim.scale_by_adam(), lambda path, p: path.endswith("weight"))
    got = _updates(opt, grads)
    want = _updates(optim.scale_by_adam(), [{"layer.weight": g["layer"]["weight"]} for g in grads],
                    params={"layer.weight": _params()["layer"]["weight"]})
    for u, v, g in zip(got, want, grads):
        torch.testing.assert_close(u["layer"]["weight"], v["layer.weight"], rtol=0, atol=0)
        assert u["layer"]["bias"] is g["layer"]["bias"]                  # passed through, untouched
    state = opt.init(_params())
    assert T.paths(state["inner_state"]["mu"]) == ["layer.weight"]
    # optax's mask forms select the same leaves
    for mask in ({"layer": {"weight": True, "bias": False}}, lambda p: T.map(lambda x: x.ndim == 2, p)):
        _assert_steps_close(_updates(optim.masked(optim.scale_by_adam(), mask), grads), got)


def test_multisteps_k3_is_one_inner_step_on_the_mean_of_three_gradients():
    params, grads = _params(), _grads(3, steps=9)
    inner = optim.adam(0.1, weight_decay=0.01)
    ms = optim.MultiSteps(inner, every_k_schedule=3)
    assert isinstance(ms, optim.GradientTransformation)
    state, inner_state, ref_params = ms.init(params), inner.init(params), params
    for i, g in enumerate(grads):
        u, state = ms.update(g, state, params)
        if i % 3 < 2:
            assert all(torch.equal(x, torch.zeros_like(x)) for x in T.leaves(u))
            assert not bool(ms.has_updated(state))
        else:
            mean = T.map(lambda a, b, c: (a + b + c) / 3, *grads[i - 2:i + 1])
            v, inner_state = inner.update(mean, inner_state, ref_params)
            assert_trees_close(u, v)
            assert bool(ms.has_updated(state))
            ref_params = optim.apply_updates(ref_params, v)
        params = optim.apply_updates(params, u)
    assert_trees_close(params, ref_params)
    assert int(state["gradient_step"]) == 3 and int(state["mini_step"]) == 0


def test_multisteps_sums_without_grad_mean_and_takes_k_from_a_schedule():
    params, grads = _params(), _grads(4, steps=5)
    ms = optim.MultiSteps(optim.scale_by_learning_rate(1.0), lambda step: 2 if step == 0 else 3,
                          use_grad_mean=False)
    got = _updates(ms, grads, params)
    first = T.map(lambda a, b: -(a + b), grads[0], grads[1])
    second = T.map(lambda a, b, c: -(a + b + c), *grads[2:5])
    assert_trees_close(got[1], first)
    assert_trees_close(got[4], second)


def test_apply_if_finite_skips_a_nan_step_counts_it_and_resumes():
    params, grads = _params(), _grads(5, steps=6)
    bad = T.map(lambda g: g.clone(), grads[2])
    bad["layer"]["bias"][1] = float("nan")
    inner = optim.adam(0.1)
    opt = optim.apply_if_finite(inner, max_consecutive_errors=2)
    state, inner_state = opt.init(params), inner.init(params)
    for i, g in enumerate(grads[:2] + [bad] + grads[3:]):
        u, state = opt.update(g, state, params)
        if i == 2:
            assert all(torch.equal(x, torch.zeros_like(x)) for x in T.leaves(u))
            assert not bool(state["last_finite"]) and int(state["notfinite_count"]) == 1
            assert int(state["inner_state"]["count"]) == 2            # the inner state did not move
        else:
            v, inner_state = inner.update(g, inner_state, params)
            assert_trees_close(u, v)
    assert bool(state["last_finite"]) and int(state["notfinite_count"]) == 0
    assert int(state["total_notfinite"]) == 1


def test_apply_if_finite_applies_after_max_consecutive_errors():
    params = _params()
    inf = T.map(lambda p: torch.full_like(p, float("inf")), params)
    opt = optim.apply_if_finite(optim.scale_by_learning_rate(1.0), max_consecutive_errors=2)
    state = opt.init(params)
    for i in range(4):
        u, state = opt.update(inf, state, params)
        applied = not torch.equal(u["layer"]["bias"], torch.zeros(3, dtype=F64))
        assert applied == (i >= 2), f"call {i}: applied={applied}"
    assert int(state["total_notfinite"]) == 4 and int(state["notfinite_count"]) == 4


@SETTINGS
@given(k=st.integers(1, 4), alpha=st.floats(0.0, 1.0), reset_state=st.booleans(), seed=st.integers(0, 2**16))
def test_lookahead_follows_optax_fast_and_slow_params(k, alpha, reset_state, seed):
    """optax's ``LookaheadParams(fast, slow)`` updates written out; fnnet's params are ``fast`` and
    ``state["slow"]`` is ``slow``."""
    fast_opt = optim.chain(optim.trace(0.9), optim.scale_by_learning_rate(0.1))
    opt = optim.lookahead(fast_opt, sync_period=k, slow_step_size=alpha, reset_state=reset_state)
    params = _params()
    state = opt.init(params)
    fast, slow, fast_state = params, params, fast_opt.init(params)
    for step, g in enumerate(_grads(seed, steps=STEPS)):
        u, fast_state = fast_opt.update(g, fast_state, fast)
        sync = step % k == k - 1
        diff = T.map(lambda f, x, s: f + x - s, fast, u, slow)
        slow = T.map(lambda s, d, sync=sync: s + alpha * sync * d, slow, diff)
        fast = T.map(lambda f, x, d, sync=sync: f + x - sync * (1 - alpha) * d, fast, u, diff)
        if reset_state and sync:
            fast_state = fast_opt.init(params)
        v, state = opt.update(g, state, params)
        params = optim.apply_updates(params, v)
        assert_trees_close(params, fast, msg=f"fast, step {step}")
        assert_trees_close(state["slow"], slow, msg=f"slow, step {step}")


# ---------------------------------------------------------------------------- compiled

def _mlp_problem():
    model = fn.Sequential(fn.Linear(4, 16), fn.relu, fn.Linear(16, 1))
    params = model.init(random.key(0))
    x = random.normal(random.key(1), (32, 4))
    y = x.sum(dim=1, keepdim=True).sin()

    def loss(p):
        return ((model.apply(p, x) - y) ** 2).mean()
    return params, loss


def _train(step, params, state, n):
    losses = []
    for _ in range(n):
        params, state, loss = step(params, state)
        losses.append(loss)
    return params, state, torch.stack(losses)


def test_optax_style_chain_trains_an_mlp_under_jit_without_recompiling_and_matches_eager():
    from torch._dynamo.testing import CompileCounterWithBackend

    params, loss = _mlp_problem()
    decay_mask = lambda path, p: p.ndim > 1     # weights decay, biases do not
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.scale_by_adam(),
                      optim.add_decayed_weights(1e-2, decay_mask),
                      optim.scale_by_learning_rate(optim.cosine_annealing_lr(1e-2, 8)))

    def step(params, state):
        value, grads = fn.value_and_grad(loss)(params)
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state, value

    counter = CompileCounterWithBackend("inductor")
    compiled = fn.jit(step, backend=counter)
    pe, se, le = _train(step, params, opt.init(params), 6)
    pc, sc, lc = _train(compiled, params, opt.init(params), 6)
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times"
    assert lc[-1] < lc[0]
    torch.testing.assert_close(lc, le, rtol=1e-5, atol=1e-6)
    assert_trees_close(pc, pe, msg="params")
    assert_trees_close(sc, se, msg="state")


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_wrappers_under_jit_select_without_graph_breaks_or_recompiles_and_match_eager(backend):
    """MultiSteps, apply_if_finite and lookahead decide per step with ``torch.where`` under
    ``fn.jit``: one graph for all steps (accumulating, emitting, a NaN batch skipped, syncing)."""
    from torch._dynamo.testing import CompileCounterWithBackend

    x = torch.linspace(-1, 1, 24).reshape(8, 3)
    params = {"w": torch.full((3, 1), 0.1), "b": torch.zeros(1)}

    def loss(p):   # a linear model: the compile cost is the wrappers'
        return ((x @ p["w"] + p["b"] - x.sum(1, keepdim=True).sin()) ** 2).mean()

    inner = optim.chain(optim.scale_by_adam(), optim.scale_by_learning_rate(1e-2))
    opt = optim.lookahead(optim.apply_if_finite(optim.MultiSteps(inner, 2), 3), sync_period=2, slow_step_size=0.5)

    def step(params, state, poison):
        value, grads = fn.value_and_grad(loss)(params)
        grads = T.map(lambda g: g + poison, grads)
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state, value

    counter = CompileCounterWithBackend(backend)
    compiled = fn.jit(step, backend=counter)
    runs = {}
    for name, f in (("eager", step), ("compiled", compiled)):
        p, s = params, opt.init(params)
        for i in range(7):
            p, s, _ = f(p, s, torch.tensor(float("nan") if i == 3 else 0.0))
        runs[name] = (p, s)
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times"
    assert int(runs["eager"][1]["fast_state"]["total_notfinite"]) == 1
    assert_trees_close(runs["compiled"][0], runs["eager"][0], msg="params")
    assert_trees_close(runs["compiled"][1], runs["eager"][1], msg="state")


def test_jit_serves_more_optimizer_structures_than_dynamos_recompile_limit():
    """One step given 10 optimizers of different structures (dynamo keeps 8 versions per code
    object, and a ninth is a hard error under fullgraph=True): past the limit, one compiled
    function per static configuration; each gives eager's numbers."""
    params = {"w": torch.linspace(-1, 1, 3, dtype=F64)}
    grads = {"w": torch.tensor([0.5, -2.0, 1.0], dtype=F64)}

    def step(opt, params, state):
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state

    compiled = fn.jit(step, backend="eager")
    for i in range(1, 11):
        opt = optim.chain(*[optim.scale(1.0 / n) for n in range(1, i + 1)])
        want, _ = step(opt, params, opt.init(params))
        got, _ = compiled(opt, params, opt.init(params))
        assert_trees_close(got, want, msg=f"a chain of {i}")


def test_jit_names_the_fix_when_only_shapes_exhaust_the_recompile_limit():
    compiled = fn.jit(lambda x: x * 2, backend="eager", dynamic=False)
    with pytest.raises(RuntimeError, match="dynamic=True"):
        for n in range(1, 20):
            compiled(torch.ones(n))


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("call, match", [
    (lambda: optim.trace(-0.1), "trace: decay"),
    (lambda: optim.ema(1.0), "ema: decay"),
    (lambda: optim.ema(-0.5, debias=False), "ema: decay"),
    (lambda: optim.scale_by_adam(b1=1.0), "scale_by_adam: b1"),
    (lambda: optim.scale_by_adam(eps=-1e-8), "scale_by_adam: eps"),
    (lambda: optim.scale_by_adam(nesterov=1), "scale_by_adam: nesterov"),
    (lambda: optim.scale_by_amsgrad(b2=1.5), "scale_by_amsgrad: b2"),
    (lambda: optim.scale_by_rms(decay=-0.1), "scale_by_rms: decay"),
    (lambda: optim.scale_by_rms(eps=float("nan")), "scale_by_rms: eps"),
    (lambda: optim.scale_by_stddev(initial_scale=-1.0), "scale_by_stddev: initial_scale"),
    (lambda: optim.scale_by_learning_rate(-1e-3), "scale_by_learning_rate: learning_rate"),
    (lambda: optim.scale_by_learning_rate("0.1"), "scale_by_learning_rate: learning_rate"),
    (lambda: optim.clip(-1.0), "clip: max_delta"),
    (lambda: optim.clip_by_global_norm(1.0, eps=-1.0), "clip_by_global_norm: eps"),
    (lambda: optim.add_decayed_weights(0.1, mask=3), "add_decayed_weights: mask"),
    (lambda: optim.masked(optim.adam, mask=True), "masked: inner"),
    (lambda: optim.masked(optim.adam(), mask="weight"), "masked: mask"),
    (lambda: optim.apply_if_finite(optim.adam(), -1), "apply_if_finite: max_consecutive_errors"),
    (lambda: optim.apply_if_finite(lambda g: g, 1), "apply_if_finite: inner"),
    (lambda: optim.MultiSteps(optim.adam(), 0), "MultiSteps: every_k_schedule"),
    (lambda: optim.MultiSteps(optim.adam(), 2.0), "MultiSteps: every_k_schedule"),
    (lambda: optim.MultiSteps(torch.optim.Adam, 2), "MultiSteps: opt"),
    (lambda: optim.lookahead(optim.sgd(0.1), 0, 0.5), "lookahead: sync_period"),
    (lambda: optim.lookahead(optim.sgd(0.1), 2, 1.5), "lookahead: slow_step_size"),
    (lambda: optim.lookahead(None, 2, 0.5), "lookahead: fast_optimizer"),
    (lambda: optim.adamw(mask=1.0), "adamw: mask"),
])
def test_bad_hyperparameters_are_refused_at_construction(call, match):
    expect_clear_error(call, match=match)


def test_bad_masks_states_and_schedules_are_refused_at_update():
    params, (g,) = _params(), _grads(0, 1)
    half = optim.masked(optim.scale_by_adam(), {"layer": {"weight": True}})        # misses layer.bias
    expect_clear_error(lambda: half.init(params), match=r"masked: mask has no leaf at 'layer\.bias'")
    not_bool = optim.masked(optim.scale_by_adam(), lambda path, p: 1)
    expect_clear_error(lambda: not_bool.init(params), match="masked: mask must hold True or False")
    zero_k = optim.MultiSteps(optim.adam(), lambda step: 0)
    expect_clear_error(lambda: zero_k.update(g, zero_k.init(params), params), match="MultiSteps")
    opt = optim.apply_if_finite(optim.adam(), 1)
    expect_clear_error(lambda: opt.update(g, optim.adam().init(params), params), match="apply_if_finite: the state")
    la = optim.lookahead(optim.sgd(0.1), 2, 0.5)
    expect_clear_error(lambda: la.update(g, la.init(params)), match="lookahead needs params")
    adw = optim.adamw(mask=lambda path, p: "yes")
    expect_clear_error(lambda: adw.update(g, adw.init(params), params), match="adamw: mask must hold True or False")
