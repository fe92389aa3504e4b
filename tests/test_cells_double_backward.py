"""Second derivatives through the recurrent layers' fast paths equal the stepped loop's.

A gradient penalty (``fn.grad`` of a loss holding ``fn.grad`` w.r.t. the input), autograd of a
``fn.grad`` result, and plain ``create_graph=True`` run, eagerly, through ``cells.fused``'s
differentiable backward (``_RecurrenceBackward``, whose own backward is the
``cells::recurrence_double_backward`` op) and give the numbers of ``fused=False`` (the cell
stepped by ``fnnet.scan``, differentiated by autograd): float64 tight, float32 at rounding
level, for every layer type, bidirectional, 2 layers, ``lengths=``. The native (oneDNN) LSTM
hands a second derivative to ``cells.fused``. Compiled (inductor), a second derivative steps the
cell, because torch 2.13 differentiates a compiled autograd.Function's backward as a constant
(pinned below); its numbers equal eager's.
"""

from __future__ import annotations

from unittest import mock

import pytest
import torch
from conftest import assert_close, assert_trees_close

import cells
import fnnet as fn
from cells import fused, native
from fnnet import random

F64, F32 = torch.float64, torch.float32

LAYERS = {  # name -> (class, kwargs)
    "rnn_tanh": (cells.RNN, {}),
    "rnn_relu": (cells.RNN, {"nonlinearity": "relu"}),
    "gru": (cells.GRU, {}),
    "lstm": (cells.LSTM, {}),
    "lstm_proj": (cells.LSTM, {"proj_size": 2}),
}
SHAPES = {  # name -> (layer kwargs, T, lengths)
    "plain": ({}, 4, None),
    "bidirectional, 2 layers, lengths": ({"bidirectional": True, "num_layers": 2}, 5, [5, 1, 3]),
    "one step": ({"bidirectional": True}, 1, [1, 1, 1]),
}


def _layers(name: str, shape: str, dtype, **extra):
    cls, kw = LAYERS[name]
    more, T, lengths = SHAPES[shape]
    fast, stepped = cls(3, 4, **kw, **more, **extra), cls(3, 4, **kw, **more, fused=False)
    params = fn.tree.map(lambda p: p.to(dtype), fast.init(random.key(1)))
    x = torch.randn(T, 3, 3, dtype=dtype, generator=torch.Generator().manual_seed(2))
    return fast, stepped, params, x, (None if lengths is None else torch.tensor(lengths))


def _penalty(layer, lengths):
    """WGAN-GP's shape: ``fn.grad`` w.r.t. params and input of ``|d critic / d x|^2`` plus the
    critic (a nonlinear readout, so that every second-order term is non-zero)."""
    def critic(p, x):
        out, h = layer.apply(p, x, lengths=lengths)
        h = h[0] if isinstance(h, tuple) else h
        return out.tanh().sum() + h.square().sum()

    def loss(p, x):
        gx = fn.grad(critic, 1)(p, x)
        return gx.square().sum() + critic(p, x)
    return fn.grad(loss, (0, 1))


def _spy():
    return mock.patch.object(fused, "_run_double_backward", wraps=fused._run_double_backward)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("name", list(LAYERS))
def test_a_gradient_penalty_through_the_fused_path_equals_the_stepped_loop_float64(name, shape):
    fast, stepped, params, x, lengths = _layers(name, shape, F64)
    want = _penalty(stepped, lengths)(params, x)
    with _spy() as spy:
        got = _penalty(fast, lengths)(params, x)
    assert spy.call_count == fast.num_layers * fast.num_directions  # the fused double backward ran
    assert_trees_close(got[0], want[0])
    assert_close(got[1], want[1])
    assert want[1].abs().max() > 0 and want[0]["weight_ih_l0"].abs().max() > 0


@pytest.mark.parametrize("name, native_path", [("lstm", True), ("lstm", False), ("gru", True), ("rnn_tanh", True)])
def test_a_gradient_penalty_in_float32_equals_the_stepped_loop_at_rounding_level(name, native_path):
    """float32 on CPU: the LSTM's native (oneDNN) path sees the second derivative coming and
    runs cells.fused instead; oneDNN runs only the critic term, differentiated once."""
    fast, stepped, params, x, lengths = _layers(name, "bidirectional, 2 layers, lengths", F32,
                                                native=native_path)
    lengths = None  # the native path takes no lengths
    want = _penalty(stepped, lengths)(params, x)
    with _spy() as spy, mock.patch.object(native, "_forward_op", wraps=native._forward_op) as onednn:
        got = _penalty(fast, lengths)(params, x)
    assert spy.call_count == 4 and onednn.call_count == (4 if name == "lstm" and native_path else 0)
    assert_trees_close(got[0], want[0])
    assert_close(got[1], want[1])


@pytest.mark.parametrize("name", list(LAYERS))
def test_create_graph_true_through_the_fused_path_gives_the_stepped_loops_second_derivatives(name):
    """Plain autograd, unforeseeable by the layer: the fused backward finds out it is being
    differentiated and runs its differentiable form."""
    fast, stepped, params, x, lengths = _layers(name, "bidirectional, 2 layers, lengths", F64)

    def second(layer):
        p = {k: v.clone().requires_grad_() for k, v in params.items()}
        xr = x.clone().requires_grad_()
        out, _ = layer.apply(p, xr, lengths=lengths)
        gx, *gp = torch.autograd.grad(out.tanh().sum(), [xr, *p.values()], create_graph=True)
        penalty = gx.square().sum() + sum(g.square().sum() for g in gp)
        return torch.autograd.grad(penalty, [xr, *p.values()])
    want = second(stepped)
    with _spy() as spy:
        got = second(fast)
    assert spy.call_count == 4
    for g, w in zip(got, want):
        assert_close(g, w)


def test_autograd_of_a_fn_grad_result_through_the_fused_path_equals_torchs():
    """A penalty on an input gradient (fn.grad inside), differentiated by autograd outside
    (meta-learning, .backward() of a penalty): nn.LSTM's create_graph=True numbers."""
    torch.manual_seed(0)
    net = torch.nn.LSTM(3, 4, bidirectional=True).double()
    layer = cells.LSTM(3, 4, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=F64)
    xr = x.clone().requires_grad_()
    (gx,) = torch.autograd.grad(net(xr)[0].tanh().sum(), xr, create_graph=True)
    want = torch.autograd.grad(gx.square().sum(), list(net.parameters()))

    p = {k: v.detach().clone().requires_grad_() for k, v in fn.params_from_module(net).items()}
    with _spy() as spy:
        gx = fn.grad(lambda x: layer.apply(p, x)[0].tanh().sum())(x)
        got = torch.autograd.grad(gx.square().sum(), [p[n] for n, _ in net.named_parameters()])
    assert spy.call_count == 2
    for g, w in zip(got, want):
        assert_close(g, w)


def test_an_empty_batch_gives_zero_second_derivatives():
    fast, stepped, params, _, _ = _layers("gru", "plain", F64)
    x = torch.zeros(4, 0, 3, dtype=F64)
    got, want = _penalty(fast, None)(params, x), _penalty(stepped, None)(params, x)
    assert_trees_close(got[0], want[0])
    assert got[1].shape == x.shape


def test_a_third_derivative_steps_the_cell():
    """The fused double backward is not differentiable again: under three nested fn.grad the
    layer steps the cell (fused=False's numbers), and the fused path itself refuses by name."""
    fast, stepped, params, x, _ = _layers("gru", "plain", F64)

    def third(layer):
        def f(x):
            return fn.grad(lambda x: layer.apply(params, x)[0].pow(3).sum())(x).square().sum()
        return fn.grad(lambda x: fn.grad(f)(x).sin().sum())
    with _spy() as spy:
        got = third(fast)(x)
    assert spy.call_count == 0
    assert_close(got, third(stepped)(x))
    xp = torch.randn(4, 3, 12, dtype=F64)
    w = params["weight_hh_l0"]

    def loss(xp):
        return fused.recurrence("gru", xp, (torch.zeros(3, 4, dtype=F64),), w)[0].pow(3).sum()
    with pytest.raises(RuntimeError, match="third derivative.*fused=False"):
        fn.grad(lambda xp: fn.grad(lambda xp: fn.grad(loss)(xp).square().sum())(xp).sum())(xp)


@pytest.mark.slow  # minutes of inductor on 2 cores; make test's compiled GP through the layers is
# test_cells_inference_compile's gradient-penalty case
def test_a_compiled_gradient_penalty_step_equals_eager_under_inductor():
    """fn.jit (default inductor backend, fullgraph) of a WGAN-GP critic step through an LSTM
    with lengths: values and gradients equal the eager step (which runs the fused double
    backward; compiled, the layer steps the cell). Short, so that it compiles in seconds: a
    compiled second derivative unrolls the stepped cell."""
    layer = cells.LSTM(3, 4)
    params = fn.tree.map(lambda p: p.double(), layer.init(random.key(1)))
    x, head = torch.randn(3, 2, 3, dtype=F64), torch.randn(4, dtype=F64)
    lengths = torch.tensor([3, 1])

    def step(p, x):
        def critic(p, x):
            out, (h, _) = layer.apply(p, x, lengths=lengths)
            return h[0] @ head + out.tanh().sum((0, 2))

        def loss(p):
            gx = fn.grad(lambda x: critic(p, x).sum())(x)
            return (gx.square().sum((0, 2)).sqrt() - 1).square().mean() - critic(p, x).mean()
        return fn.value_and_grad(loss)(p)
    with _spy() as spy:
        value, grads = step(params, x)
    assert spy.call_count == 1
    c_value, c_grads = fn.jit(step)(params, x)
    assert_close(c_value, value)
    assert_trees_close(c_grads, grads)
    assert all(g.abs().max() > 0 for g in grads.values())


class _Cube(torch.autograd.Function):
    """``x ** 3`` whose backward reads a saved output (``x ** 2``), differentiable."""

    @staticmethod
    def forward(x):
        return x ** 3, x ** 2

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[1])
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, dy, dsq):
        (sq,) = ctx.saved_tensors
        dx = 0 if dy is None else 3 * sq * dy
        return dx if dsq is None else dx + 2 * sq.sqrt() * dsq


def test_torch_bug_a_compiled_second_derivative_through_an_autograd_function_is_silently_zero():
    """Pins why a compiled second derivative steps the cell (cells.fused.steps_the_cell): under
    torch.compile, grad of grad through an autograd.Function (traced as one, here: its input a
    view) gives zeros where eager gives 36 x^3 (torch 2.13). Fails once torch computes it:
    then compiled gradient penalties can run the fused double backward too."""
    def penalty(x):
        g = fn.grad(lambda x: _Cube.apply(x.view(x.shape))[0].sum())(x)
        return g.square().sum()
    x = torch.rand(4, dtype=F64) + 0.5
    assert_close(fn.grad(penalty)(x), 36 * x ** 3)
    assert torch.equal(fn.jit(fn.grad(penalty))(x), torch.zeros_like(x))
