"""fn.Linear on oneDNN's GEMM (fnnet/layers/_gemm.py) and fn.relu's cheap second derivative
(fnnet/layers/_relu.py).

The oneDNN path gives nn.Linear's numbers to float32 rounding (forward, every gradient, a
gradient penalty's second derivative), works under jvp, forward AD, vmap and jacrev, and compiled
(fn.jit with the inductor pass of jit_options) equals eager. float64 and "torch" never touch
oneDNN. Small shapes are forced onto oneDNN here (MIN_WORK = 0) so that the tests stay fast; the
`onednn` fixture also counts oneDNN calls, so a test cannot pass by not reaching the kernel.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import assert_close, assert_trees_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fnnet as fn
import losses
from fnnet.layers import _gemm, linear

nn = torch.nn
pytestmark = pytest.mark.skipif(not (_gemm._onednn_usable()), reason="torch built without oneDNN")


@pytest.fixture
def onednn(monkeypatch):
    """oneDNN for every float32 CPU matmul, however small; yields a list counting its calls."""
    calls = []
    raw = _gemm._raw
    monkeypatch.setattr(_gemm, "MIN_WORK", 0)
    monkeypatch.setattr(_gemm, "_raw", lambda *a: calls.append(1) or raw(*a))
    before = _gemm.get_gemm()
    linear.set_gemm("onednn")
    yield calls
    linear.set_gemm(before)


def twin(i, o, bias, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    tmod = nn.Linear(i, o, bias=bias).to(dtype)
    return fn.Linear(i, o, bias=bias), fn.params_from_module(tmod), tmod


def randn(seed, *shape, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@settings(max_examples=12, suppress_health_check=[HealthCheck.function_scoped_fixture])  # the fixture's count is cleared per example
@given(i=st.integers(1, 40), o=st.integers(1, 40), bias=st.booleans(),
       batch=st.sampled_from([(), (0,), (1,), (7,), (3, 5), (2, 0, 3)]), seed=st.integers(0, 2**31 - 1))
def test_onednn_linear_matches_nn_linear_values_and_grads(onednn, i, o, bias, batch, seed):
    layer, params, tmod = twin(i, o, bias, seed=seed)
    x = randn(seed, *batch, i)
    xt = x.clone().requires_grad_()
    y_t = tmod(xt)
    onednn.clear()
    y = layer(params, x)
    assert y.shape == y_t.shape
    assert_close(y, y_t.detach())
    assert onednn or x.numel() == 0, "the oneDNN kernel was not reached"  # an empty batch stays on F.linear
    g = randn(seed + 1, *y_t.shape)
    (y_t * g).sum().backward()
    gp, gx = fn.grad(lambda p, x: (layer(p, x) * g).sum(), argnums=(0, 1))(params, x)
    assert_close(gx, xt.grad)
    assert_trees_close(gp, fn.interop.nest({n: p.grad for n, p in tmod.named_parameters()}))


def critic_and_batch(width=24, batch=16, dtype=torch.float32, hidden=2):
    widths = [3, *[width] * hidden, 1]
    critic = fn.Sequential(*[m for a, b in itertools.pairwise(widths) for m in (fn.Linear(a, b), fn.relu)][:-1])
    params = fn.tree.map(lambda p: p.to(dtype), critic.init(fn.random.key(1)))
    real, fake = randn(2, batch, 3, dtype=dtype), randn(3, batch, 3, dtype=dtype)
    return critic, params, real, fake


def critic_step(critic):
    def loss(p, real, fake, key):
        w = losses.discriminator_loss(critic(p, real), critic(p, fake), "wasserstein")
        return w + 10.0 * losses.gradient_penalty(critic, p, real, fake, key)
    return fn.value_and_grad(loss)


def test_gradient_penalty_second_derivative_equals_the_default_path(onednn):
    critic, params, real, fake = critic_and_batch()
    step, key = critic_step(critic), fn.random.key(0)
    linear.set_gemm("torch")
    loss_t, grads_t = step(params, real, fake, key)
    linear.set_gemm("onednn")
    onednn.clear()
    loss_o, grads_o = step(params, real, fake, key)
    # forward 3 layers x 3 critic calls; the penalty's backward and its own backward add more
    assert len(onednn) > 9
    assert_close(loss_o, loss_t)
    assert_trees_close(grads_o, grads_t)


def test_classic_double_backward_through_the_onednn_path(onednn):
    """autograd.grad(create_graph=True) then .backward(): the backward's matmuls differentiate."""
    layer, params, tmod = twin(5, 7, True)
    x = randn(0, 6, 5)

    def second_order(f, p, w, b):
        xx = x.clone().requires_grad_()
        (gx,) = torch.autograd.grad(f(xx).tanh().sum(), xx, create_graph=True)
        gx.square().sum().backward()
        return w.grad, b.grad

    w, b = (params[k].clone().requires_grad_() for k in ("weight", "bias"))
    ours = second_order(lambda xx: layer({"weight": w, "bias": b}, xx), params, w, b)
    expected = second_order(tmod, params, tmod.weight, tmod.bias)
    for a, e in zip(ours, expected):
        assert_close(a, e)


def test_float64_and_torch_mode_take_the_default_path_bit_for_bit(onednn):
    critic, params, real, fake = critic_and_batch(dtype=torch.float64)
    step, key = critic_step(critic), fn.random.key(0)
    onednn.clear()
    got = step(params, real, fake, key)
    assert not onednn
    linear.set_gemm("torch")
    critic32, params32, real32, fake32 = critic_and_batch()
    reference = critic_step(critic32)(params32, real32, fake32, key)
    assert not onednn
    linear.set_gemm("onednn")
    with torch.no_grad():
        expected = nn.functional.linear(real, params["0"]["weight"], params["0"]["bias"])
    assert torch.equal(fn.Linear(3, 24)(params["0"], real), expected)
    assert got[0].dtype == torch.float64 and reference[0].dtype == torch.float32


def test_jvp_forward_ad_vmap_and_jacrev_on_the_onednn_path(onednn):
    layer, params, _ = twin(6, 4, True)
    x, t = randn(0, 5, 6), randn(1, 5, 6)
    ref = lambda x: nn.functional.linear(x, params["weight"], params["bias"])
    onednn.clear()
    y, dy = fn.jvp(lambda x: layer(params, x), (x,), (t,))
    assert onednn
    assert_close(y, ref(x))
    assert_close(dy, t @ params["weight"].T)
    # a tangent on the weight and bias alone
    tw, tb = randn(2, 4, 6), randn(3, 4)
    _, dyp = fn.jvp(lambda w, b: layer({"weight": w, "bias": b}, x), (params["weight"], params["bias"]), (tw, tb))
    assert_close(dyp, x @ tw.T + tb)
    with torch.autograd.forward_ad.dual_level():
        d = torch.autograd.forward_ad.make_dual(x, t)
        assert_close(torch.autograd.forward_ad.unpack_dual(layer(params, d)).tangent, t @ params["weight"].T)
    xs = randn(4, 3, 5, 6)
    assert_close(fn.vmap(lambda x: layer(params, x))(xs), ref(xs))
    stacked = fn.tree.stack([params, fn.tree.map(lambda p: 2 * p, params)])  # an ensemble: batched weights
    ens = fn.vmap(lambda p: layer(p, x))(stacked)
    assert_close(ens[1], 2 * ref(x))
    onednn.clear()
    jac = torch.func.jacrev(lambda x: layer(params, x))(x[0])  # the backward runs under vmap
    assert onednn
    assert_close(jac, params["weight"])
    assert_close(fn.hessian(lambda x: layer(params, x).tanh().sum())(x[0]),
                 torch.func.hessian(lambda x: ref(x).tanh().sum())(x[0]))


def test_compiled_critic_step_with_the_onednn_pass_equals_eager(onednn):
    """fn.jit (default inductor) of a WGAN-GP critic step, the pass from jit_options() putting its
    matmuls on oneDNN: loss and gradients equal eager's (with torch's GEMM) to float32 rounding."""
    critic, params, real, fake = critic_and_batch(hidden=1)  # one hidden layer: a shorter compile
    step, key = critic_step(critic), fn.random.key(0)
    options = linear.jit_options()
    assert options, "oneDNN is chosen: the pass is offered"
    compiled = fn.jit(step, **options)
    loss_c, grads_c = compiled(params, real, fake, key)
    onednn.clear()
    loss_c, grads_c = compiled(params, real, fake, key)
    assert len(onednn) >= 6, "the compiled step's matmuls run on oneDNN"
    linear.set_gemm("torch")
    loss_e, grads_e = step(params, real, fake, key)
    assert_close(loss_c, loss_e)
    assert_trees_close(grads_c, grads_e)


def test_compiled_auto_gives_each_matmul_class_its_measured_kernel(monkeypatch):
    """gemm="auto" under fn.jit: the pass times each matmul's class (sizes, which operands are
    stored transposed, bias) while compiling (real tensors under inductor's fake mode) and gives
    it the kernel answered fastest. The answers are pinned here: narrow matmuls (NARROW = 3: the
    2-input layer's and the 1-output layer's) on the transposed problem, the others on oneDNN when
    b is a transposed weight (x @ W^T), else torch's. A WGAN-GP critic step (second derivatives):
    loss and gradients equal eager's."""
    calls, raw = [], _gemm._raw
    monkeypatch.setattr(_gemm, "MIN_WORK", 0)
    monkeypatch.setattr(_gemm, "MIN_NARROW_WORK", 0)
    monkeypatch.setattr(_gemm, "NARROW", 3)
    monkeypatch.setattr(_gemm, "_raw", lambda a, bt, bias: calls.append(bt.is_contiguous()) or raw(a, bt, bias))
    monkeypatch.setattr(_gemm, "_measured", {})
    measure, answers, rewritten = _gemm._measure_class, [], []

    def answer(rows, inner, outer, a_transposed, b_transposed, bias, rounds):
        assert measure(rows, inner, outer, a_transposed, b_transposed, bias, rounds=1) in _gemm.KERNELS
        kernel = ("transposed" if min(rows, outer) <= 3 else "onednn" if b_transposed and bias < 2 else "torch")
        answers.append(kernel)
        return kernel

    monkeypatch.setattr(_gemm, "_measure_class", answer)
    transposed_product = _gemm._transposed_product
    monkeypatch.setattr(_gemm, "_transposed_product", lambda *a: rewritten.append(1) or transposed_product(*a))
    before = _gemm.get_gemm()
    linear.set_gemm("auto")
    try:
        critic, params, real, fake = critic_and_batch(hidden=1)  # 3 -> 24 -> 1, batch 16
        step, key = critic_step(critic), fn.random.key(0)
        torch._dynamo.reset()
        with torch._inductor.config.patch(fx_graph_cache=False), \
                torch._functorch.config.patch(enable_autograd_cache=False):  # the pass runs, not a cached graph
            compiled = fn.jit(step, **linear.jit_options())
            compiled(params, real, fake, key)
        calls.clear()
        loss_c, grads_c = compiled(params, real, fake, key)
        linear.set_gemm("torch")
        loss_e, grads_e = step(params, real, fake, key)
    finally:
        linear.set_gemm(before)
    assert set(answers) == {"torch", "onednn", "transposed"}, answers
    assert len(_gemm.measured()) == len(answers), "each class measured once"
    assert rewritten, "narrow matmuls were rewritten as the transposed problem"
    assert calls and all(calls), "only the classes answered oneDNN run on it (bt contiguous: b = W^T)"
    assert_close(loss_c, loss_e)
    assert_trees_close(grads_c, grads_e)


def test_per_class_measurement_is_cached_and_keyed_by_mode(monkeypatch):
    """gemm_for times a class once per process (also under a fake mode, as inside inductor's
    pass) among the kernels that apply to it; the pass's cache key changes with the mode, so that
    a graph compiled under "onednn" is not reused under "auto"."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setattr(_gemm, "_measured", {})
    monkeypatch.setattr(_gemm, "MIN_WORK", 0)
    monkeypatch.setattr(_gemm, "MIN_NARROW_WORK", 0)
    with FakeTensorMode():
        first = _gemm.gemm_for(16, 8, 8, True, False, 1, rounds=1)
    assert first in ("torch", "onednn", "transposed")
    assert _gemm.measured() == {(16, 8, 8, True, False, 1): first}
    monkeypatch.setattr(_gemm, "_measure_class", lambda *a, **k: pytest.fail("measured twice"))
    assert _gemm.gemm_for(16, 8, 8, True, False, 1) == first
    assert _gemm.onednn_faster_for(16, 8, 8, True, False, True) is (first == "onednn")
    monkeypatch.setattr(_gemm, "MIN_WORK", 1 << 24)
    monkeypatch.setattr(_gemm, "MIN_NARROW_WORK", 1 << 16)
    assert _gemm._candidates(512, 400, 400, 1) == ("torch", "onednn")      # big: oneDNN weighed
    assert _gemm._candidates(512, 400, 400, 2) == ("torch",)               # not with a 2-d bias
    assert _gemm._candidates(400, 512, 2, 0) == ("torch", "transposed")    # narrow: 2 output columns
    assert _gemm._candidates(16, 8, 8, 0) == ("torch",)                    # too small to matter
    before = _gemm.get_gemm()
    try:
        uuids = []
        for mode in ("auto", "onednn"):
            linear.set_gemm(mode)
            uuids.append(linear.jit_options()["options"]["post_grad_custom_post_pass"].uuid())
    finally:
        linear.set_gemm(before)
    assert uuids[0] != uuids[1]


def test_set_gemm_and_the_environment_variable_choose(onednn, monkeypatch):
    layer, params, _ = twin(8, 8, True)
    x = randn(0, 4, 8)
    linear.set_gemm("torch")
    onednn.clear()
    assert torch.equal(layer(params, x), nn.functional.linear(x, params["weight"], params["bias"]))
    assert not onednn and linear.jit_options() == {}
    linear.set_gemm("onednn")
    layer(params, x)
    assert onednn
    for bad in ("mkl", "", None, "ONEDNN"):
        with pytest.raises(ValueError, match="set_gemm"):
            linear.set_gemm(bad)
    assert linear.get_gemm() == "onednn"
    assert _gemm.mode_from_env({}) == "auto"
    assert _gemm.mode_from_env({"FNNET_GEMM": "torch"}) == "torch"
    with pytest.raises(ValueError, match="FNNET_GEMM"):
        _gemm.mode_from_env({"FNNET_GEMM": "fastest"})


def test_the_choice_logic(monkeypatch):
    """oneDNN only for float32 CPU matmuls of at least MIN_WORK multiply-adds, when chosen: "onednn"
    always, "auto" when the probe measured it faster and no torch.func transform is active, "torch"
    never, nor without oneDNN."""
    cpu, big = torch.device("cpu"), (512, 400, 400)
    probe = _gemm.onednn_measured_faster.__wrapped__  # the measurement itself, uncached
    for mode, usable, measured, expected in [("onednn", True, False, True), ("auto", True, True, True),
                                             ("auto", True, False, False), ("torch", True, True, False),
                                             ("onednn", False, True, False), ("auto", False, True, False)]:
        monkeypatch.setattr(_gemm, "_mode", mode)
        monkeypatch.setattr(_gemm, "_onednn_usable", lambda usable=usable: usable)
        monkeypatch.setattr(_gemm, "onednn_measured_faster", lambda measured=measured: measured)
        assert _gemm.applies(torch.float32, cpu, *big) is expected, (mode, usable, measured)
    monkeypatch.setattr(_gemm, "_onednn_usable", lambda: True)
    monkeypatch.setattr(_gemm, "_mode", "auto")
    monkeypatch.setattr(_gemm, "onednn_measured_faster", lambda: True)
    inside = fn.grad(lambda x: x.sum() * _gemm.applies(torch.float32, cpu, *big))(torch.ones(2))
    assert torch.equal(inside, torch.zeros(2)), "auto: not inside a torch.func transform"
    monkeypatch.setattr(_gemm, "_mode", "onednn")
    inside = fn.grad(lambda x: x.sum() * _gemm.applies(torch.float32, cpu, *big))(torch.ones(2))
    assert torch.equal(inside, torch.ones(2)), "onednn: inside transforms too"
    assert not _gemm.applies(torch.float64, cpu, *big)
    assert not _gemm.applies(torch.bfloat16, cpu, *big)
    assert not _gemm.applies(torch.float32, torch.device("cuda"), *big)
    assert not _gemm.applies(torch.float32, torch.device("meta"), *big)
    assert not _gemm.applies(torch.float32, cpu, 32, 64, 64)       # below MIN_WORK
    assert not _gemm.applies(torch.float32, cpu, 0, 400, 400)      # an empty batch
    assert _gemm.applies(torch.float32, cpu, 256, 256, 256)        # exactly MIN_WORK
    assert not _gemm.applies(torch.float32, cpu, 255, 256, 256)
    assert probe(rows=64, inner=64, outer=64, rounds=1) in (True, False)


# -- fn.relu ---------------------------------------------------------------------------------------

SPECIAL = torch.tensor([-0.0, 0.0, float("nan"), -1.5, 2.0, float("inf"), -float("inf"), 1e-45, -1e-45])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_relu_values_bit_for_bit_and_its_gradient(dtype):
    x = torch.cat([SPECIAL, randn(0, 50)]).to(dtype)
    bits = {torch.bfloat16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}[dtype]
    assert torch.equal(fn.relu(x).view(bits), torch.relu(x).view(bits))  # -0.0 stays -0.0, NaN stays NaN
    g = randn(1, x.shape[0]).to(dtype)
    xt = x.clone().requires_grad_()
    (torch.nn.functional.relu(xt) * g).sum().backward()
    assert torch.equal(fn.grad(lambda x: (fn.relu(x) * g).sum())(x), xt.grad)  # 0 at x == 0, g at NaN


def test_relu_second_derivative_jvp_vmap_and_compiled():
    critic, params, real, fake = critic_and_batch(dtype=torch.float64)
    step, key = critic_step(critic), fn.random.key(0)
    ours = step(params, real, fake, key)

    def torch_relu_loss(p, real, fake, key):
        def D(p, x):
            for i in range(3):
                x = nn.functional.linear(x, p[str(2 * i)]["weight"], p[str(2 * i)]["bias"])
                x = torch.relu(x) if i < 2 else x
            return x
        w = losses.discriminator_loss(D(p, real), D(p, fake), "wasserstein")
        return w + 10.0 * losses.gradient_penalty(D, p, real, fake, key)

    expected = fn.value_and_grad(torch_relu_loss)(params, real, fake, key)
    assert_close(ours[0], expected[0])
    assert_trees_close(ours[1], expected[1])
    x, t = randn(0, 4, 5), randn(1, 4, 5)
    x[0, :2] = 0.0
    y, dy = fn.jvp(fn.relu, (x,), (t,))
    assert torch.equal(y, torch.relu(x)) and torch.equal(dy, torch.where(x > 0, t, 0.0))
    assert torch.equal(fn.vmap(fn.relu)(x), torch.relu(x))
    f = lambda x: fn.value_and_grad(lambda x: (fn.relu(x) ** 2).sum())(x)
    for a, e in zip(fn.jit(f)(x), f(x)):
        assert torch.equal(a, e)
    assert torch.equal(fn.jit(fn.vmap(fn.relu))(x), torch.relu(x))
