"""Mixed precision: a dtype policy over a whole model, and dynamic loss scaling as
``torch.amp.GradScaler`` does it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fnnet as fn
from fnnet import optim, random
from tests.badinput import expect_clear_error

BF16 = fn.Policy(param_dtype=torch.float32, compute_dtype=torch.bfloat16, output_dtype=torch.float32)


def _mlp():
    model = fn.Sequential(fn.Linear(3, 16), fn.relu, fn.Linear(16, 2))
    tmod = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    return model, tmod


# -- the policy ------------------------------------------------------------------------------

def test_params_are_the_models_tree_stored_in_param_dtype():
    model, _ = _mlp()
    mixed = fn.MixedPrecision(model, fn.Policy(param_dtype=torch.float64, compute_dtype=torch.float32))
    p, q = mixed.init(random.key(0)), model.init(random.key(0))
    assert fn.tree.paths(p) == fn.tree.paths(q)
    assert all(v.dtype == torch.float64 for v in fn.tree.leaves(p))
    assert all(torch.equal(a, b.double()) for a, b in zip(fn.tree.leaves(p), fn.tree.leaves(q)))


def test_bfloat16_compute_equals_the_torch_module_cast_to_bfloat16_with_float32_gradients():
    model, tmod = _mlp()
    mixed = fn.MixedPrecision(model, BF16)
    params = fn.params_from_module(tmod)
    x = torch.randn(5, 3)
    y = mixed.apply(params, x)
    t16 = torch.nn.Sequential(*[m for m in tmod]).to(torch.bfloat16)
    ref = t16(x.bfloat16())
    assert y.dtype == torch.float32
    assert torch.equal(y, ref.float())

    grads = fn.grad(lambda p: mixed.apply(p, x).square().sum())(params)
    ref.float().square().sum().backward()
    for name, g in fn.to_state_dict(grads).items():
        assert g.dtype == torch.float32  # the master params' dtype
        assert torch.equal(g, dict(t16.named_parameters())[name].grad.float()), name


def test_integer_inputs_and_masks_pass_through_uncast():
    emb = fn.MixedPrecision(fn.Embedding(10, 4), BF16)
    p = emb.init(random.key(1))
    ids = torch.tensor([[1, 2], [3, 9]])
    out = emb.apply(p, ids)
    assert out.dtype == torch.float32
    assert torch.equal(out, p["weight"].bfloat16().float()[ids])


def test_running_statistics_thread_through_and_come_back_in_param_dtype():
    model = fn.MixedPrecision(fn.Sequential(fn.Linear(3, 4), fn.BatchNorm1d(4)), BF16)
    params, state = model.init(random.key(2)), model.init_state()
    x = torch.randn(8, 3)
    y, new_state = model.apply(params, x, state=state, train=True)
    assert y.dtype == torch.float32
    ref_y, ref_state = model.model.apply(BF16.cast_to_compute(params), x.bfloat16(),
                                         state=BF16.cast_to_compute(state), train=True)
    assert torch.equal(y, ref_y.float())
    for (path, a), b in zip(fn.tree.flatten_with_paths(new_state), fn.tree.leaves(ref_state)):
        assert a.dtype == (torch.float32 if b.is_floating_point() else b.dtype), path
        assert torch.equal(a, b.to(a.dtype)), path
    expect_clear_error(lambda: model.apply(params, x), match="MixedPrecision.*stateful.*state=")


def test_policy_and_wrapper_arguments_are_checked():
    expect_clear_error(lambda: fn.Policy(compute_dtype=torch.int32), match="Policy: compute_dtype")
    expect_clear_error(lambda: fn.Policy(param_dtype="float32"), match="Policy: param_dtype")
    expect_clear_error(lambda: fn.MixedPrecision(fn.Linear(2, 2), "bf16"), match="MixedPrecision: policy")


def test_mixed_precision_compiles_with_inductor_and_matches_eager():
    model, _ = _mlp()
    mixed = fn.MixedPrecision(model, BF16)
    params = mixed.init(random.key(3))
    x = torch.randn(6, 3)

    def step(p, x):
        return fn.value_and_grad(lambda p: mixed.apply(p, x).square().mean())(p)

    (l0, g0), (l1, g1) = step(params, x), fn.jit(step)(params, x)
    assert torch.allclose(l0, l1, rtol=1e-2)
    for a, b in zip(fn.tree.leaves(g0), fn.tree.leaves(g1)):
        assert b.dtype == torch.float32
        assert torch.allclose(a, b, rtol=2e-2, atol=1e-3)


# -- dynamic loss scaling against torch.amp.GradScaler -----------------------------------------

def _scaler_run(make_torch_opt, make_opt, steps=12, **scaler_kw):
    """The same MLP trained by torch (GradScaler) and fnnet (dynamic_loss_scale), with batches
    whose scaled gradients overflow float32 at steps 2, 3 and 7."""
    torch.manual_seed(0)
    model, tmod = _mlp()
    params = fn.params_from_module(tmod)
    topt = make_torch_opt(tmod.parameters())
    scaler = torch.amp.GradScaler("cpu", **scaler_kw)
    opt = optim.dynamic_loss_scale(make_opt(), **scaler_kw)
    state = opt.init(params)
    for t in range(steps):
        x, y = torch.randn(4, 3), torch.randn(4, 2)
        if t in (2, 3, 7):
            x = x * 1e36  # finite loss, gradients that overflow once scaled
        topt.zero_grad()
        scaler.scale(F.mse_loss(tmod(x), y)).backward()
        scaler.step(topt)
        scaler.update()

        grads = fn.grad(lambda p, x=x, y=y, s=state["scale"]: F.mse_loss(model.apply(p, x), y) * s)(params)
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)

        assert float(state["scale"]) == scaler.get_scale(), t
        assert int(state["growth_tracker"]) == int(scaler._get_growth_tracker()), t
        for name, p in tmod.named_parameters():
            assert torch.allclose(fn.to_state_dict(params)[name], p.detach(), rtol=1e-6, atol=1e-7), (t, name)
    return state


@pytest.mark.parametrize("which", ["sgd", "adam"])
def test_dynamic_loss_scale_follows_grad_scaler_skips_backs_off_and_grows(which):
    if which == "sgd":
        state = _scaler_run(lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
                            lambda: optim.sgd(0.1, momentum=0.9), init_scale=2.0 ** 10, growth_interval=3)
    else:
        state = _scaler_run(lambda ps: torch.optim.Adam(ps, lr=1e-2), lambda: optim.adam(1e-2),
                            init_scale=2.0 ** 10, growth_interval=3)
    assert int(state["inner"]["count"]) == 12 - 3  # the three overflowing steps were skipped


def test_dynamic_loss_scale_compiled_with_inductor_skips_like_eager():
    model, _ = _mlp()
    params = model.init(random.key(4))
    opt = optim.dynamic_loss_scale(optim.adam(1e-2), init_scale=2.0 ** 8, growth_interval=2)

    def step(params, state, x, y):
        grads = fn.grad(lambda p: F.mse_loss(model.apply(p, x), y) * state["scale"])(params)
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state

    compiled = fn.jit(step)
    pe, se = params, opt.init(params)
    pc, sc = params, opt.init(params)
    g = torch.Generator().manual_seed(0)
    for t in range(5):
        x, y = torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g)
        if t == 1:
            x = x * 1e36
        pe, se = step(pe, se, x, y)
        pc, sc = compiled(pc, sc, x, y)
        assert float(se["scale"]) == float(sc["scale"]) and int(se["inner"]["count"]) == int(sc["inner"]["count"])
        for a, b in zip(fn.tree.leaves(pe), fn.tree.leaves(pc)):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    assert int(se["inner"]["count"]) == 4


def test_dynamic_loss_scale_arguments_are_checked_as_grad_scaler_would():
    inner = optim.sgd(0.1)
    expect_clear_error(lambda: optim.dynamic_loss_scale(inner, init_scale=0.0), match="init_scale")
    expect_clear_error(lambda: optim.dynamic_loss_scale(inner, growth_factor=1.0), match="growth_factor")
    expect_clear_error(lambda: optim.dynamic_loss_scale(inner, backoff_factor=1.5), match="backoff_factor")
    expect_clear_error(lambda: optim.dynamic_loss_scale(inner, growth_interval=0), match="growth_interval")
    expect_clear_error(lambda: optim.dynamic_loss_scale("adam"), match="inner must be a GradientTransformation")


def test_half_gradients_are_unscaled_in_float32_as_grad_scaler_does():
    """At a scale of 2**25 the reciprocal is 0 in float16: unscaling must multiply in float32
    (GradScaler's kernel), or every float16 gradient would silently become 0."""
    params = {"w": torch.zeros(3, dtype=torch.float16)}
    opt = optim.dynamic_loss_scale(optim.sgd(1.0), init_scale=2.0 ** 25)
    state = opt.init(params)
    grads = {"w": torch.full((3,), 2.0 ** 15, dtype=torch.float16)}   # a gradient of 2**-10, scaled
    updates, state = opt.update(grads, state, params)
    assert torch.equal(updates["w"], torch.full((3,), -(2.0 ** -10), dtype=torch.float16))
