"""On CPU at float32, cells.LSTM runs each layer and direction on oneDNN's fused LSTM, the
kernel nn.LSTM runs: the same numbers bit for bit, the same under fn.grad and fn.jit, and
the hand-written recurrence wherever that kernel does not apply."""

from __future__ import annotations

import warnings
from unittest import mock

import pytest
import torch
from conftest import assert_close, assert_trees_close
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cells
import fnnet as fn
from cells import native
from fnnet import random

pytestmark = pytest.mark.skipif(not native._HAVE_OP, reason="this torch build has no oneDNN RNN kernel")


def _spy():
    """Counts the layer-directions that ran on oneDNN."""
    return mock.patch.object(native, "lstm_layer", wraps=native.lstm_layer)


@settings(max_examples=max(30, settings.default.max_examples))
@given(i=st.integers(1, 4), h=st.integers(1, 5), layers=st.integers(1, 3), bidirectional=st.booleans(),
       batch_first=st.booleans(), bias=st.booleans(), batch=st.sampled_from([None, 1, 3]), T=st.integers(1, 5),
       with_h0=st.booleans(), seed=st.integers(0, 10**6))
def test_native_lstm_gives_nn_lstm_numbers_bit_for_bit(i, h, layers, bidirectional, batch_first, bias, batch, T,
                                                       with_h0, seed):
    torch.manual_seed(seed)
    kw = {"num_layers": layers, "bidirectional": bidirectional, "batch_first": batch_first, "bias": bias}
    theirs, ours = nn.LSTM(i, h, **kw), cells.LSTM(i, h, **kw)
    params = {k: v.requires_grad_() for k, v in fn.params_from_module(theirs).items()}
    n, b = layers * (2 if bidirectional else 1), batch or 1
    x = torch.randn(b, T, i) if batch_first else torch.randn(T, b, i)
    if batch is None:
        x = x[0] if batch_first else x[:, 0]
    x.requires_grad_()
    state = None
    if with_h0:
        shape = (n, b, h) if batch else (n, h)
        state = (torch.randn(shape, requires_grad=True), torch.randn(shape, requires_grad=True))

    with _spy() as spy:
        out_o, (h_o, c_o) = ours.apply(params, x, state)
    assert spy.call_count == n
    out_t, (h_t, c_t) = theirs(x, state)
    for a, c in ((out_o, out_t), (h_o, h_t), (c_o, c_t)):
        assert torch.equal(a, c)

    def loss(out, hn, cn):  # every output reaches the loss with its own weight
        return out.square().sum() + 2 * hn.sum() + 3 * cn.square().sum()
    wrt = [x, *(state or ())]
    g_o = torch.autograd.grad(loss(out_o, h_o, c_o), [*wrt, *params.values()])
    g_t = torch.autograd.grad(loss(out_t, h_t, c_t), [*wrt, *theirs.parameters()])
    for a, c in zip(g_o, g_t):
        assert_close(a, c, msg="gradient")  # the same kernels; sums across directions may reorder


@settings(max_examples=10)
@given(T=st.integers(1, 6), bidirectional=st.booleans(), seed=st.integers(0, 10**6))
def test_native_and_hand_written_recurrences_agree_at_float32(T, bidirectional, seed):
    torch.manual_seed(seed)
    kw = {"num_layers": 2, "bidirectional": bidirectional}
    params = cells.LSTM(3, 4, **kw).init(random.key(seed))
    x, h0 = torch.randn(T, 2, 3), (torch.randn(2 * (1 + bidirectional), 2, 4),) * 2

    def value_and_grads(layer):
        return fn.value_and_grad(lambda p, x: sum(o.square().sum() for o in fn.tree.leaves(layer.apply(p, x, h0))),
                                 argnums=(0, 1))(params, x)
    (v1, g1), (v2, g2) = value_and_grads(cells.LSTM(3, 4, **kw)), value_and_grads(cells.LSTM(3, 4, **kw, native=False))
    assert_close(v1, v2)
    assert_trees_close(g1[0], g2[0])
    assert_close(g1[1], g2[1])


def test_compiled_step_on_the_native_kernel_matches_eager_with_params_straight_from_the_tree():
    """Regression: dynamo inlines an autograd.Function whose inputs all look like they need no
    gradient, and under a compiled torch.func.grad the params are such inputs - the gradients
    came out silently wrong until the layer passed one of them through a view."""
    lstm = cells.LSTM(3, 8)
    params = lstm.init(random.key(0))
    x = torch.randn(7, 4, 3)

    def loss(p, x):
        out, (h, c) = lstm.apply(p, x)
        return out.square().mean() + h.sum() + c.mean()
    for transform in (fn.grad, fn.value_and_grad):
        assert_trees_close(fn.jit(transform(loss))(params, x), transform(loss)(params, x))
    # torch.compile itself (not fn.jit) keeps torch.func.grad as it is: the case the view is for
    torch._dynamo.reset()
    compiled = torch.compile(torch.func.grad(loss), fullgraph=True, backend="aot_eager")
    assert_trees_close(compiled(params, x), fn.grad(loss)(params, x))
    # (before torch 2.13 a compiled gradient runs cells.fused instead, with a warning: see below)
    expected = 1 if native.COMPILES_WITH_GRAD else 0
    assert _compiled_ops(fn.grad(loss), params, x).count("cells.onednn_lstm.default") == expected


def test_a_torch_that_cannot_compile_the_native_kernel_in_a_gradient_falls_back_with_one_warning(monkeypatch):
    """torch <= 2.12: dynamo fails on the op inside a compiled torch.func.grad; the compiled
    step then runs cells.fused's recurrence (no native op in its graph), warns once, and its
    gradients equal eager's native ones. Eager and compiled inference keep the native kernel."""
    monkeypatch.setattr(native, "COMPILES_WITH_GRAD", False)
    monkeypatch.setattr(native, "_warned", [False])
    torch._dynamo.reset()
    lstm = cells.LSTM(3, 8)
    params = lstm.init(random.key(0))
    x = torch.randn(7, 4, 3)

    def loss(p, x):
        out, (h, c) = lstm.apply(p, x)
        return out.square().mean() + h.sum() + c.mean()
    with pytest.warns(RuntimeWarning, match="cannot compile the native"):
        ops = _compiled_ops(fn.grad(loss), params, x)
    assert "cells.onednn_lstm.default" not in ops
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # once: no second warning
        assert_trees_close(fn.jit(fn.grad(loss))(params, x), fn.grad(loss)(params, x))
        with torch.no_grad():
            assert _compiled_ops(lambda p, x: lstm.apply(p, x)[0], params, x).count("cells.onednn_lstm.default") == 1


def _compiled_ops(f, *args):
    """The ops of the forward graph that ``fn.jit(f)`` hands to its compiler (a mock cannot
    be traced, so this is how a compiled step is seen to run on the native kernel)."""
    from torch._dynamo.backends.common import aot_autograd
    ops = []

    def record(gm, example_inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward
    fn.jit(f, backend=aot_autograd(fw_compiler=record))(*args)
    return ops


def test_compiled_graph_of_the_native_lstm_does_not_grow_with_the_sequence_length():
    from test_cells_compile import _lowered_graph_sizes
    lstm = cells.LSTM(3, 5, num_layers=2, bidirectional=True)
    params = lstm.init(random.key(0))
    sizes, backend = _lowered_graph_sizes()
    for T in (3, 40):
        x = torch.randn(T, 2, 3)
        step = fn.value_and_grad(lambda p, x: lstm.apply(p, x)[0].square().mean())
        assert_trees_close(fn.jit(step, backend=backend, dynamic=False)(params, x)[1], step(params, x)[1])
    assert len(sizes) == 2 and sizes[0] == sizes[1], f"graph grew with T: {sizes}"


def test_inference_without_gradients_is_nn_lstm_inference():
    """Without gradients oneDNN runs its inference kernel (no workspace), as nn.LSTM does: the
    same numbers as nn.LSTM under no_grad, and within rounding of the training kernel's."""
    theirs = nn.LSTM(3, 6, num_layers=2)
    lstm, params = cells.LSTM(3, 6, num_layers=2), fn.params_from_module(theirs)
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        out, (h, c) = lstm.apply(params, x)
        compiled, _ = fn.jit(lstm.apply)(params, x)
        ref, (h_t, c_t) = theirs(x)
    assert torch.equal(out, ref) and torch.equal(h, h_t) and torch.equal(c, c_t)
    assert_close(compiled, ref)
    assert_close(out, lstm.apply(params, x)[0])


@pytest.mark.parametrize("case", ["float64", "proj_size", "lengths", "vmap", "onednn disabled", "native=False"])
def test_the_hand_written_recurrence_runs_where_the_native_kernel_does_not_apply(case):
    layer = cells.LSTM(3, 4, proj_size=2 if case == "proj_size" else 0, native=case != "native=False")
    params = layer.init(random.key(0))
    x = torch.randn(5, 2, 3, dtype=torch.float64 if case == "float64" else torch.float32)
    if case == "float64":
        params = fn.tree.map(lambda p: p.double(), params)
    lengths = torch.tensor([5, 2]) if case == "lengths" else None
    with _spy() as spy:
        if case == "vmap":
            stacked = fn.tree.stack([params, params])
            out = fn.vmap(lambda p: layer.apply(p, x)[0])(stacked)[1]
        elif case == "onednn disabled":
            # the flag's own setter: its flags() context also toggles TF32 and warns, and the
            # attribute refuses once torch.testing._internal (module_db) has frozen global flags
            torch._C._set_mkldnn_enabled(False)
            try:
                out = layer.apply(params, x)[0]
            finally:
                torch._C._set_mkldnn_enabled(True)
        else:
            out = layer.apply(params, x, lengths=lengths)[0]
    assert spy.call_count == 0
    theirs = nn.LSTM(3, 4, proj_size=2 if case == "proj_size" else 0).to(x.dtype)
    theirs.load_state_dict(fn.to_state_dict(params))
    if lengths is not None:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
        ref = nn.utils.rnn.pad_packed_sequence(theirs(packed)[0], total_length=5)[0]
    else:
        ref = theirs(x)[0]
    assert_close(out, ref)


def test_a_second_derivative_runs_on_cells_fused_foreseen_or_not():
    """oneDNN's backward is not differentiable. Nested fn.grad: the layer sees the second
    derivative coming and runs cells.fused instead (whose backward is; oneDNN's forward does
    not run). Plain autograd with create_graph=True cannot be seen coming: the native backward
    reruns the layer on cells.fused and differentiates that. Both give fused=False's numbers."""
    lstm = cells.LSTM(2, 3)
    params = lstm.init(random.key(0))
    x = torch.randn(4, 2, 2)

    def grad_norm(layer):
        def f(p):
            g = fn.grad(lambda p: layer.apply(p, x)[0].square().sum())(p)
            return sum(v.square().sum() for v in g.values())
        return f
    want = fn.grad(grad_norm(cells.LSTM(2, 3, fused=False)))(params)
    with mock.patch.object(native, "_forward_op", wraps=native._forward_op) as spy:
        assert_trees_close(fn.grad(grad_norm(lstm))(params), want)
    assert spy.call_count == 0

    def create_graph(layer):
        p = {k: v.clone().requires_grad_() for k, v in params.items()}
        g = torch.autograd.grad(layer.apply(p, x)[0].square().sum(), list(p.values()), create_graph=True)
        return dict(zip(p, torch.autograd.grad(sum(v.square().sum() for v in g), list(p.values()))))
    with mock.patch.object(native, "_forward_op", wraps=native._forward_op) as spy:
        got = create_graph(lstm)
    assert spy.call_count == 1  # the forward ran on oneDNN; its backward reran on cells.fused
    assert_trees_close(got, want)
