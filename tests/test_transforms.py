"""Transforms: JAX's conventions for grad/value_and_grad, compiled training steps that match
eager (fullgraph: no graph breaks), and vmap'd ensembles that match separate runs."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, assert_trees_close

import fnnet as fn
from fnnet import random, tree

nn = torch.nn


def test_value_and_grad_returns_value_first_as_jax_does_and_has_aux_nests_it():
    w, x = torch.tensor([1.0, 2.0]), torch.tensor([3.0, -1.0])
    value, g = fn.value_and_grad(lambda w: (w * x).sum() ** 2)(w)
    assert value.item() == 1.0 and torch.equal(g, 2 * (w * x).sum() * x)
    (value, aux), g = fn.value_and_grad(lambda w: ((w * x).sum(), {"pred": w * x}), has_aux=True)(w)
    assert value.item() == 1.0 and torch.equal(aux["pred"], w * x) and torch.equal(g, x)
    g, aux = fn.grad(lambda w: ((w * x).sum(), w.sum()), has_aux=True)(w)
    assert torch.equal(g, x) and aux.item() == 3.0


def test_grad_with_an_argnums_tuple_returns_a_tuple_of_pytree_grads():
    params, x = {"a": torch.tensor(2.0), "b": [torch.tensor(3.0)]}, torch.tensor(5.0)

    def f(p, x, scale):
        return scale * p["a"] * p["b"][0] * x

    gp, gx = fn.grad(f, argnums=(0, 1))(params, x, 2.0)
    assert gp["a"].item() == 30.0 and gp["b"][0].item() == 20.0 and gx.item() == 12.0
    _, (gp2, gx2) = fn.value_and_grad(f, argnums=[0, 1])(params, x, 2.0)
    assert gp2["a"].item() == 30.0 and gx2.item() == 12.0


# -- training steps ---------------------------------------------------------------------------

MLP = fn.Sequential(fn.Linear(2, 16), fn.tanh, fn.Linear(16, 16), fn.relu, fn.Linear(16, 3))


@dataclass(frozen=True)
class CourseCNN(fn.Module):
    conv1: fn.Conv2d = fn.Conv2d(1, 10, kernel_size=5)
    conv2: fn.Conv2d = fn.Conv2d(10, 20, kernel_size=5)
    mp: fn.MaxPool2d = fn.MaxPool2d(2)
    fc: fn.Linear = fn.Linear(320, 10)

    def apply(self, params, x, *, key=None, train=False):
        x = fn.relu(self.mp(None, self.conv1(params["conv1"], x)))
        x = fn.relu(self.mp(None, self.conv2(params["conv2"], x)))
        return self.fc(params["fc"], x.flatten(1))


def sgd_step(model, lr):
    def loss_fn(params, x, y):
        return F.cross_entropy(model.apply(params, x), y)

    def step(params, x, y):
        loss, grads = fn.value_and_grad(loss_fn)(params, x, y)
        return tree.map(lambda p, g: p - lr * g, params, grads), loss

    return step


def data(seed, n, shape, classes):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g)


def run(step, params, batches):
    losses = []
    for x, y in batches:
        params, loss = step(params, x, y)
        losses.append(loss)
    return params, torch.stack(losses)


def test_mlp_train_step_compiles_fullgraph_and_matches_eager_and_torch_optim_sgd():
    step = sgd_step(MLP, lr=0.1)
    params = MLP.init(random.key(0))
    batches = [data(s, 32, (2,), 3) for s in range(4)]
    eager_params, eager_losses = run(step, params, batches)
    compiled_params, compiled_losses = run(fn.jit(step), params, batches)
    assert_close(compiled_losses, eager_losses)
    assert_trees_close(compiled_params, eager_params)
    # and the same trajectory as nn.Module + torch.optim.SGD from the same weights
    tmod = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    tmod.load_state_dict(fn.to_state_dict(params))
    opt = torch.optim.SGD(tmod.parameters(), lr=0.1)
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(tmod(x), y).backward()
        opt.step()
    assert_trees_close(fn.params_from_module(tmod), eager_params)
    assert eager_losses[-1] < eager_losses[0]


def test_course_cnn_train_step_compiles_fullgraph_and_matches_eager():
    model = CourseCNN()
    step = sgd_step(model, lr=0.05)
    params = model.init(random.key(1))
    batches = [data(s, 8, (1, 28, 28), 10) for s in range(2)]
    eager_params, eager_losses = run(step, params, batches)
    compiled_params, compiled_losses = run(fn.jit(step), params, batches)
    assert_close(compiled_losses, eager_losses)
    assert_trees_close(compiled_params, eager_params)


def test_vmapped_ensemble_of_8_mlps_trains_in_one_call_and_matches_8_separate_runs():
    step = sgd_step(MLP, lr=0.1)
    members = [MLP.init(k) for k in random.split(random.key(2), 8)]
    ensemble = tree.stack(members)  # every leaf gets a leading axis of 8
    # each member sees its own data: x [8, 16, 2], y [8, 16]
    batches = [(torch.stack([data(100 * s + m, 16, (2,), 3)[0] for m in range(8)]),
                torch.stack([data(100 * s + m, 16, (2,), 3)[1] for m in range(8)])) for s in range(3)]
    ens_step = fn.vmap(step)
    for x, y in batches:
        ensemble, losses = ens_step(ensemble, x, y)
    assert losses.shape == (8,)
    for m, params in enumerate(members):
        params, _ = run(step, params, [(x[m], y[m]) for x, y in batches])
        assert_trees_close(tree.unstack(ensemble)[m], params, msg=f"member {m}")
    # the members were initialised from different keys, so they are different models
    assert not torch.equal(tree.unstack(ensemble)[0]["0"]["weight"], tree.unstack(ensemble)[1]["0"]["weight"])


def test_jit_of_grad_and_value_and_grad_compiles_many_different_functions_in_one_process():
    """Each grad / value_and_grad wrapper has its own code object, so compiling a dozen of them
    does not exhaust dynamo's per-code-object recompile limit (8)."""
    x = torch.randn(3)
    for i in range(12):
        def f(x, i=i):
            return (x * (i + 1)).square().sum()
        with torch._dynamo.config.patch(error_on_recompile=False, recompile_limit=8):
            value, grad = fn.jit(fn.value_and_grad(f), backend="eager")(x)
            grad_only = fn.jit(fn.grad(f), backend="eager")(x)
        torch.testing.assert_close(value, f(x))
        torch.testing.assert_close(grad, 2 * (i + 1) ** 2 * x)
        torch.testing.assert_close(grad_only, grad)


def test_compiled_grads_equal_eager_ones_with_aux_argnums_tuples_and_nested_grads():
    """Under fn.jit, fn.grad gives eager's numbers, pytrees, aux and argnums included; a grad
    nested inside it (a penalty on an input gradient) carries the outer gradient through it."""
    mlp = fn.Sequential(fn.Linear(3, 8), fn.tanh, fn.Linear(8, 1))
    params = mlp.init(random.key(0))
    x = torch.randn(5, 3, dtype=torch.float64)
    params = tree.map(lambda p: p.double(), params)

    def loss(p, x):
        out = mlp.apply(p, x)
        dx = fn.grad(lambda x: mlp.apply(p, x).sum())(x)  # depends on p: its gradient must reach p
        return out.square().mean() + dx.square().sum(), {"out": out}

    for transform in (fn.value_and_grad(loss, argnums=(0, 1), has_aux=True), fn.grad(loss, has_aux=True)):
        eager, compiled = transform(params, x), fn.jit(transform, backend="aot_eager")(params, x)
        assert_trees_close({"r": compiled}, {"r": eager})
    g = fn.jit(fn.grad(lambda p: loss(p, x)[0]), backend="aot_eager")(params)
    g_without_penalty = fn.grad(lambda p: mlp.apply(p, x).square().mean())(params)
    assert not torch.allclose(g["0"]["weight"], g_without_penalty["0"]["weight"])


def test_compiled_gradient_of_a_function_that_ignores_its_argument_is_zero_as_eager():
    def f(p, q):
        return (q * 2).sum() + 3.0
    p, q = torch.randn(2), torch.randn(3)
    for argnums in (0, (0, 1)):
        got = fn.jit(fn.grad(f, argnums=argnums), backend="aot_eager")(p, q)
        assert_trees_close({"g": got}, {"g": fn.grad(f, argnums=argnums)(p, q)})


def test_jit_nests_a_jitted_value_and_grad_inside_a_jitted_function():
    inner = fn.jit(fn.value_and_grad(lambda x: (x * 2).square().sum()), backend="eager")
    outer = fn.jit(lambda x: inner(x)[1] + 1, backend="eager")
    assert torch.equal(outer(torch.ones(2)), torch.full((2,), 9.0))


def test_jit_of_grad_keeps_the_graph_to_a_tensor_that_requires_grad_as_eager():
    """Differentiating through a compiled gradient (meta-learning): fn.jit(fn.grad(f))(p, w)
    stays connected to w, and the gradient of anything computed from it w.r.t. w is eager's
    (inductor)."""
    x = torch.randn(6, 3, dtype=torch.float64)

    def loss(p, w):
        return torch.tanh(x @ (p * w)).square().sum()
    p = torch.randn(3, 2, dtype=torch.float64)
    w0 = torch.randn(3, 2, dtype=torch.float64)
    results = []
    for g in (fn.grad(loss), fn.jit(fn.grad(loss))):
        w = w0.clone().requires_grad_()
        inner = g(p, w)
        assert inner.requires_grad and inner.grad_fn is not None
        (outer,) = torch.autograd.grad((inner * p).sum(), w)
        results.append((inner.detach(), outer))
    assert_trees_close({"r": results[1]}, {"r": results[0]})
    assert results[0][1].abs().sum() > 0




def test_jit_keeps_closed_over_tensors_that_require_grad_connected_as_eager():
    """A weight closed over by a jitted function (and by a jitted gradient) gets the gradient eager
    gives it: fn.jit does not detach what it did not create (inductor)."""
    x = torch.randn(4, 3, dtype=torch.float64)
    w0 = torch.randn(3, dtype=torch.float64)
    results = []
    for wrap in (lambda f: f, fn.jit):
        w = w0.clone().requires_grad_()

        def f(x, w=w):
            return torch.sin(x @ w).square().sum()
        wrap(f)(x).backward()
        g_x = wrap(fn.grad(f))(x)  # depends on w through the closure
        (g_w,) = torch.autograd.grad(g_x.sum(), w)
        results.append((w.grad, g_x.detach(), g_w))
    assert_trees_close({"r": results[1]}, {"r": results[0]})


def test_an_error_raised_while_jit_traces_reaches_the_caller_as_itself():
    """A params tree that does not fit, under fn.jit: the ParamsError naming the path, not dynamo's
    "Observed exception" wrapper."""
    model = fn.Sequential(fn.Linear(2, 3), fn.relu)
    params = model.init(random.key(0))
    params["0"]["weight"] = torch.zeros(3, 5)
    with pytest.raises(fn.ParamsError, match=r"'0.weight' has shape \[3, 5\], expected \[3, 2\]"):
        fn.jit(model.apply, backend="eager")(params, torch.ones(4, 2))

    def f(x):
        if x.shape[0] != 3:
            raise ValueError("f: expected 3 rows")
        return x
    with pytest.raises(ValueError, match="expected 3 rows"):
        fn.jit(f, backend="eager")(torch.ones(2))
