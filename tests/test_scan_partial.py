"""Under ``fn.jit`` with gradients, ``fn.scan(functools.partial(g, params, ...), carry, xs)`` runs
as fnnet._loop's compiled chunks (the tensors among the partial's arguments its constants): the
compiled graph does not grow with the length, and values and gradients are eager's. A step that
reads a tensor from outside its arguments is an error; a global it reads that changes compiles
the loop again; any other body is unrolled as before (torch < 2.12 too: dynamo cannot pass the
body's function to the loop there)."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st

import fnnet as fn
from fnnet import _compat, _loop

CHUNKS = _compat.DYNAMO_PASSES_OBJECTS  # torch >= 2.12: the chunked loop; before, unrolled
PATH = {"rfwd", "rbwd"} if CHUNKS else set()


def lstm_step(p, state, x_t):
    """A user's LSTM step: carry ``(h, c)``, ``x_t: [B, I]``, ys ``{"h": h, "norm": |h|}``."""
    h, c = state
    gates = x_t @ p["w_ih"].t() + h @ p["w_hh"].t() + p["b"]
    i, f, g, o = gates.chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    h = torch.sigmoid(o) * torch.tanh(c)
    return (h, c), {"h": h, "norm": h.norm(dim=-1)}


def lstm_params(i, h, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"w_ih": torch.randn(4 * h, i, generator=g, dtype=dtype) * 0.3,
            "w_hh": torch.randn(4 * h, h, generator=g, dtype=dtype) * 0.3,
            "b": torch.randn(4 * h, generator=g, dtype=dtype) * 0.1}


def lstm_loss(p, h0, x, reverse=False):
    (h, c), ys = fn.scan(functools.partial(lstm_step, p), (h0, torch.zeros_like(h0)), x, reverse=reverse)
    return ys["h"].square().mean() + ys["norm"].sum() + (h * c).sum()


def roles_since(before: set) -> set:
    """The chunk roles compiled for the loops registered since ``before``."""
    return {key[0][0] for h, lp in _loop._REGISTRY.items() if h not in before for key in lp.compiled}


class traced_chunks:
    """The chunks run as the traced graphs themselves (no inductor): a test's compiles stay quick."""

    def __enter__(self):
        self.saved, _loop.COMPILER = _loop.COMPILER, lambda gm, args: gm

    def __exit__(self, *exc):
        _loop.COMPILER = self.saved


@settings(max_examples=8, deadline=None)
@given(T=st.integers(1, 9), B=st.integers(1, 3), H=st.integers(1, 4), reverse=st.booleans(),
       seed=st.integers(0, 99))
def test_a_partial_body_trains_as_chunks_with_eager_values_and_gradients(T, B, H, reverse, seed):
    p, x = lstm_params(2, H, torch.float64, seed), torch.randn(T, B, 2, dtype=torch.float64)
    h0 = torch.randn(B, H, dtype=torch.float64)
    step = fn.value_and_grad(functools.partial(lstm_loss, reverse=reverse), argnums=(0, 1, 2))
    before = set(_loop._REGISTRY)
    with traced_chunks():
        value, grads = fn.jit(step, backend="aot_eager", dynamic=False)(p, h0, x)
    assert roles_since(before) == (PATH if T > 1 else set())  # one step: unrolled
    value_e, grads_e = step(p, h0, x)
    assert_close(value, value_e)
    for a, b in zip(fn.tree.leaves(grads), fn.tree.leaves(grads_e)):
        assert_close(a, b)


def test_with_inductor_values_and_gradients_are_eagers():
    p, x, h0 = lstm_params(3, 8, torch.float32), torch.randn(8, 4, 3), torch.randn(4, 8)
    step = fn.value_and_grad(lstm_loss, argnums=(0, 1, 2))
    before = set(_loop._REGISTRY)
    value, grads = fn.jit(step, dynamic=False)(p, h0, x)  # the outer graph and the chunks by inductor
    assert roles_since(before) == PATH
    value_e, grads_e = step(p, h0, x)
    assert_close(value, value_e)
    for a, b in zip(fn.tree.leaves(grads), fn.tree.leaves(grads_e)):
        assert_close(a, b)


def test_the_compiled_graph_does_not_grow_with_the_length():
    sizes = []

    def backend(gm, example_inputs):
        sizes.append(len(gm.graph.nodes))
        return gm.forward
    p, h0 = lstm_params(2, 3, torch.float32), torch.zeros(2, 3)
    with traced_chunks():
        for T in (4, 64):
            fn.jit(fn.grad(lstm_loss), backend=backend, dynamic=False)(p, h0, torch.randn(T, 2, 2))
    if CHUNKS:
        assert sizes[0] == sizes[1], f"graph sizes at T=4 and T=64: {sizes}"
    else:
        assert sizes[1] > sizes[0]


W = torch.randn(3, 3, requires_grad=True)
SCALE = 1.0


def reads_a_global_tensor(p, c, x_t):
    c = torch.tanh(c @ p + x_t @ W)
    return c, c


def reads_a_global_number(p, c, x_t):
    c = torch.tanh(c @ p * SCALE + x_t)
    return c, c


@pytest.mark.skipif(not CHUNKS, reason="unrolled on this torch: the global tensor gets its gradient as eagerly")
def test_a_tensor_the_step_reads_from_outside_its_arguments_is_an_error_naming_the_step():
    """Its gradient could not be taken (the chunks differentiate their inputs alone): an error,
    not a silently missing gradient."""
    def loss(p, x):
        return fn.scan(functools.partial(reads_a_global_tensor, p), torch.zeros(2, 3), x)[1].sum()
    with traced_chunks(), pytest.raises(Exception, match=r"partial\(reads_a_global_tensor, \.\.\.\) reads a tensor "
                                                         "that is not one of its inputs"):
        fn.jit(fn.grad(loss), backend="aot_eager")(torch.eye(3, requires_grad=True), torch.randn(5, 2, 3))


def test_a_global_number_the_step_reads_changes_and_the_loop_follows_it():
    global SCALE

    def loss(p, x):
        return fn.scan(functools.partial(reads_a_global_number, p), torch.zeros(2, 3), x)[1].square().sum()
    step = fn.jit(fn.value_and_grad(loss), backend="aot_eager", dynamic=False)
    p, x = torch.randn(3, 3) * 0.5, torch.randn(6, 2, 3)
    try:
        with traced_chunks():
            for scale in (1.0, 3.0):
                SCALE = scale  # what the step reads, changed between two calls of the compiled step
                value, grad = step(p, x)
                value_e, grad_e = fn.value_and_grad(loss)(p, x)
                assert_close(value, value_e)
                assert_close(grad, grad_e)
    finally:
        SCALE = 1.0


def module_step(model, p, c, x_t):
    return torch.tanh(model.apply(p, c) + x_t), None


def test_a_module_among_the_arguments_and_a_step_without_ys():
    model = fn.Linear(3, 3)
    p = model.init(fn.random.key(0))

    def loss(p, x):
        c, ys = fn.scan(functools.partial(module_step, model, p), torch.zeros(2, 3), x)
        assert ys is None
        return c.square().sum()
    x = torch.randn(7, 2, 3)
    before = set(_loop._REGISTRY)
    with traced_chunks():
        grads = fn.jit(fn.grad(loss), backend="aot_eager", dynamic=False)(p, x)
    assert roles_since(before) == PATH
    for a, b in zip(fn.tree.leaves(grads), fn.tree.leaves(fn.grad(loss)(p, x))):
        assert_close(a, b)


def test_other_bodies_are_unrolled():
    """A closure, or a partial holding an argument no constant can stand for (a set), is unrolled:
    no loop is registered, and values are eager's."""
    w = torch.randn(3, 3) * 0.5

    def closure(c, x_t):
        return torch.tanh(c @ w + x_t), c

    def with_a_set(p, tags, c, x_t):
        return torch.tanh(c @ p + x_t), c
    x = torch.randn(5, 2, 3)
    for f in (lambda p: closure, lambda p: functools.partial(with_a_set, p, {"a"})):
        def loss(p, f=f):
            return fn.scan(f(p), torch.zeros(2, 3), x)[1].sum()
        before = set(_loop._REGISTRY)
        assert_close(fn.jit(fn.grad(loss), backend="aot_eager")(w), fn.grad(loss)(w))
        assert set(_loop._REGISTRY) == before


@pytest.mark.skipif(not CHUNKS, reason="unrolled on this torch")
def test_unroll_k_sets_the_steps_per_compiled_chunk():
    p, h0, x = lstm_params(2, 3, torch.float64), torch.zeros(2, 3, dtype=torch.float64), torch.randn(7, 2, 2,
                                                                                                   dtype=torch.float64)

    def loss(p):
        (_, c), ys = fn.scan(functools.partial(lstm_step, p), (h0, h0), x, unroll=3)
        return ys["h"].sum() + c.sum()
    before = set(_loop._REGISTRY)
    with traced_chunks():
        grad = fn.jit(fn.grad(loss), backend="aot_eager", dynamic=False)(p)
    assert {key[0][1] for h, lp in _loop._REGISTRY.items() if h not in before for key in lp.compiled} == {3, 1}
    for a, b in zip(fn.tree.leaves(grad), fn.tree.leaves(fn.grad(loss)(p))):
        assert_close(a, b)


def two_weight_step(scale, c, x_t, *, weights, bias):
    c = torch.tanh(c @ weights["z"]["hh"] + x_t @ weights["a"] * scale + bias)
    return c, (c, weights["z"]["hh"].sum())


def test_tensors_given_by_keyword_and_in_nested_dicts_reach_their_own_slots():
    """Weights of one shape under keys out of sorted order, by keyword and nested: each reaches
    the slot it came from (a swap would be silent here: the shapes agree), gradients eager's."""
    g = torch.Generator().manual_seed(3)
    weights = {"z": {"hh": torch.randn(3, 3, generator=g, dtype=torch.float64)},
               "a": torch.randn(3, 3, generator=g, dtype=torch.float64)}
    bias, x = torch.randn(3, generator=g, dtype=torch.float64), torch.randn(6, 2, 3, generator=g, dtype=torch.float64)

    def loss(weights, bias):
        f = functools.partial(two_weight_step, 0.5, weights=weights, bias=bias)
        c, (cs, sums) = fn.scan(f, torch.zeros(2, 3, dtype=torch.float64), x)
        return cs.square().sum() + c.sum() + sums.sum()
    step = fn.value_and_grad(loss, argnums=(0, 1))
    before = set(_loop._REGISTRY)
    with traced_chunks():
        value, grads = fn.jit(step, backend="aot_eager", dynamic=False)(weights, bias)
    assert roles_since(before) == PATH
    value_e, grads_e = step(weights, bias)
    assert_close(value, value_e)
    for a, b in zip(fn.tree.leaves(grads), fn.tree.leaves(grads_e)):
        assert_close(a, b)
