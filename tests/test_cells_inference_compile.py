"""Compiled (inductor) recurrent layers give eager's numbers: forward-only inference in every
dtype, with and without ``lengths=`` and under ``torch.no_grad()``, and a training step with
``lengths=`` (values and gradients); a bad length raises in a compiled call too.
The float32 forward, the float64 training step and the LSTM gradient penalty are ``-m slow``
(long compiles)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, assert_trees_close

import cells
import fnnet as fn
from fnnet import random

# one of each recurrence: LSTM (2 layers, bidirectional; and with proj_size), GRU, RNN (relu)
LAYERS = (cells.LSTM(3, 5, num_layers=2, bidirectional=True), cells.LSTM(3, 5, proj_size=2),
          cells.GRU(3, 5, bidirectional=True), cells.RNN(3, 5, nonlinearity="relu"))
T, B = 6, 3


def _setup(dtype):
    params = [fn.tree.map(lambda p: p.to(dtype), layer.init(random.key(i))) for i, layer in enumerate(LAYERS)]
    x = torch.randn(T, B, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    return params, x


def _outputs(params, x, lengths):
    """Every layer's outputs and final states, with lengths; the plain LSTM also without them
    (at float32 on the CPU that is the native oneDNN kernel)."""
    outs = [layer.apply(p, x, lengths=lengths) for layer, p in zip(LAYERS, params)]
    return outs + [LAYERS[0].apply(params[0], x)]


def _training_outputs(params, x, lengths):
    """The layers but the 2-layer LSTM (its float32 training step: tests/test_cells.py)."""
    return [layer.apply(p, x, lengths=lengths) for layer, p in zip(LAYERS[1:], params[1:])]


@pytest.mark.parametrize("dtype", [torch.float64, pytest.param(torch.float32, marks=pytest.mark.slow)])
def test_forward_only_compiled_layers_equal_eager_in_every_dtype(dtype):
    params, x = _setup(dtype)
    lengths = torch.tensor([T, 2, 4])
    compiled = fn.jit(_outputs)(params, x, lengths)
    assert_trees_close({"o": compiled}, {"o": _outputs(params, x, lengths)}, dtype)


def test_compiled_inference_under_no_grad_equals_eager():
    params, x = _setup(torch.float32)
    lengths = torch.tensor([1, T, 3])
    with torch.no_grad():
        compiled = fn.jit(_outputs)(params, x, lengths)
        eager = _outputs(params, x, lengths)
    assert_trees_close({"o": compiled}, {"o": eager})
    assert not any(t.requires_grad for t in fn.tree.leaves({"o": compiled}))


@pytest.mark.slow  # ~50 s to compile; make test has the float32 LSTM one (tests/test_cells.py)
def test_compiled_training_step_with_lengths_matches_eager_values_and_gradients():
    params, x = _setup(torch.float64)
    lengths = torch.tensor([T, 1, 4])

    def loss(params, x, lengths):
        total = 0
        for out, finals in _training_outputs(params, x, lengths):
            total = total + out.square().mean()
            total = total + sum(s.sin().sum() for s in (finals if isinstance(finals, tuple) else (finals,)))
        return total

    step = fn.value_and_grad(loss, argnums=(0, 1))
    value, grads = fn.jit(step)(params, x, lengths)
    want_value, want_grads = step(params, x, lengths)
    assert_close(value, want_value)
    assert_trees_close({"g": grads}, {"g": want_grads})


def test_a_bad_length_raises_in_a_compiled_call_too():
    """The value check is an op of the compiled graph (nothing is read past the padded input)."""
    gru = cells.GRU(2, 3)
    params, x = gru.init(random.key(0)), torch.randn(4, 2, 2)
    run = fn.jit(lambda p, x, lengths: gru.apply(p, x, lengths=lengths)[0])
    assert_close(run(params, x, torch.tensor([4, 2])), gru.apply(params, x, lengths=torch.tensor([4, 2]))[0])
    for bad in ([5, 2], [0, 3], [-1, 1]):
        with pytest.raises(ValueError, match=r"GRU.*lengths must be in \[1, 4\]"):
            run(params, x, torch.tensor(bad))


@pytest.mark.parametrize("kind, dtype, wrt", [("LSTM", torch.float32, "x"), ("GRU", torch.float64, "weight_hh_l0")])
def test_a_compiled_gradient_wrt_the_input_or_one_weight_alone_equals_eager(kind, dtype, wrt):
    """The recurrences' autograd.Functions get fresh views of their inputs under compile:
    dynamo reads a compiled function's own inputs' requires_grad as before torch.func.grad
    marked them, and would skip the backward (a silently zero gradient). float32 LSTM: the
    oneDNN kernel; float64 GRU: the hand-written recurrence."""
    layer = getattr(cells, kind)(3, 4)
    params = fn.tree.map(lambda p: p.to(dtype), layer.init(random.key(0)))
    x = torch.randn(5, 2, 3, dtype=dtype)

    def loss(v, x):
        p = {**params, wrt: v} if wrt != "x" else params
        return layer.apply(p, x if wrt != "x" else v)[0].square().sum()
    start = x if wrt == "x" else params[wrt]
    grad = fn.grad(loss)
    compiled, eager = fn.jit(grad)(start, x), grad(start, x)
    assert eager.abs().max() > 0
    assert_close(compiled, eager)


@pytest.mark.parametrize("kind, dtype", [pytest.param("LSTM", torch.float32, marks=pytest.mark.slow),
                                         ("GRU", torch.float64)])
def test_a_gradient_penalty_through_the_layers_equals_the_step_by_step_one_eager_and_compiled(kind, dtype):
    """A second derivative (grad of grad): eagerly through the fused recurrence's differentiable
    backward; compiled, the layer steps the cell (dynamo would take the fused backward as a
    constant: silently partial gradients). Both give fused=False's numbers."""
    layer, stepped = getattr(cells, kind)(3, 4), getattr(cells, kind)(3, 4, fused=False)
    params = fn.tree.map(lambda p: p.to(dtype), layer.init(random.key(0)))
    x = torch.randn(3, 2, 3, dtype=dtype)

    def penalty(layer):
        def f(p):
            gx = fn.grad(lambda x: layer.apply(p, x)[0].square().sum())(x)
            return gx.square().sum()
        return fn.grad(f)
    want = penalty(stepped)(params)
    assert_trees_close(penalty(layer)(params), want)
    assert_trees_close(fn.jit(penalty(layer))(params), want)


@pytest.mark.parametrize("kind", ["GRU", pytest.param("LSTM", marks=pytest.mark.slow)])
def test_autograd_of_a_fn_grad_through_a_layer_gives_torchs_second_derivatives_eager_and_compiled(kind):
    """A penalty on an input gradient (fn.grad inside), differentiated by autograd outside
    (meta-learning, .backward() of a penalty): the layer's own backward is differentiated
    (eagerly the fused one, compiled the stepped cell's). Eager and fn.jit (inductor)
    give nn.GRU/nn.LSTM's create_graph=True gradients (the fused backward once silently
    dropped every term but weight_ih's)."""
    torch.manual_seed(0)
    net = getattr(torch.nn, kind)(3, 4).double()
    layer = getattr(cells, kind)(3, 4)
    x = torch.randn(5, 2, 3, dtype=torch.float64)

    xr = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(net(xr)[0].square().sum(), xr, create_graph=True)
    want = torch.autograd.grad(gx.square().sum(), list(net.parameters()))
    names = [n for n, _ in net.named_parameters()]

    def penalty(p):
        gx = fn.grad(lambda x: layer.apply(p, x)[0].square().sum())(x)
        return gx.square().sum()
    for wrap in (lambda f: f, fn.jit):
        p = {k: v.detach().clone().requires_grad_() for k, v in fn.params_from_module(net).items()}
        got = torch.autograd.grad(wrap(penalty)(p), [p[n] for n in names])
        for n, g, w in zip(names, got, want):
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10, msg=f"{kind} {n}")
