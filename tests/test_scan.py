"""fnnet.scan has jax.lax.scan's semantics over pytrees, differentiates (also w.r.t. weights
closed over by the body), batches, and compiles; without gradients it compiles the body once."""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import assert_close
from hypothesis import given
from hypothesis import strategies as st

import fnnet as fn
from fnnet.scan import scan

scan_module = importlib.import_module("fnnet.scan")  # fnnet.scan is also the function


def rnn_body(w):
    """A small pytree-carrying body: carry {"h": [B, H], "steps": []}, x (a [B, H], b [B])."""
    def f(carry, x):
        a, b = x
        h = torch.tanh(carry["h"] @ w + a * b.unsqueeze(-1))
        return {"h": h, "steps": carry["steps"] + 1}, (h.sum(-1), {"h": h})
    return f


def python_loop(f, carry, xs, T, reverse=False):
    ys = [None] * T
    for t in (reversed(range(T)) if reverse else range(T)):
        carry, ys[t] = f(carry, fn.tree.map(lambda x, t=t: x[t], xs))
    return carry, fn.tree.map(lambda *y: torch.stack(y), *ys)


@given(T=st.integers(1, 6), B=st.integers(1, 3), H=st.integers(1, 4), reverse=st.booleans(), seed=st.integers(0, 99))
def test_scan_matches_a_python_loop_over_pytrees(T, B, H, reverse, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(H, H, generator=g, dtype=torch.float64)
    xs = (torch.randn(T, B, H, generator=g, dtype=torch.float64), torch.randn(T, B, generator=g, dtype=torch.float64))
    carry = {"h": torch.zeros(B, H, dtype=torch.float64), "steps": torch.zeros((), dtype=torch.float64)}
    got_carry, got_ys = scan(rnn_body(w), carry, xs, reverse=reverse)
    want_carry, want_ys = python_loop(rnn_body(w), carry, xs, T, reverse)
    assert fn.tree.same_structure(got_ys, want_ys) and got_ys[0].shape == (T, B)
    for a, b in zip(fn.tree.leaves((got_carry, got_ys)), fn.tree.leaves((want_carry, want_ys))):
        assert_close(a, b)
    assert got_carry["steps"].item() == T


def test_reverse_runs_from_the_last_step_and_stores_each_y_at_its_own_index():
    xs = torch.arange(1.0, 6.0)
    total, partial = scan(lambda c, x: (c + x, c + x), torch.zeros(()), xs, reverse=True)
    assert total.item() == 15.0
    assert partial.tolist() == [15.0, 14.0, 12.0, 9.0, 5.0]  # suffix sums


def test_xs_none_with_length_and_a_body_without_outputs():
    carry, ys = scan(lambda c, x: (c * 2, None), torch.ones(()), None, length=4)
    assert carry.item() == 16.0 and ys is None
    carry, ys = scan(lambda c, x: (c + 1, c), torch.zeros(2), length=3)
    assert ys.tolist() == [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]


def test_empty_scan_returns_the_initial_carry():
    carry, ys = scan(lambda c, x: (c + x, x), torch.ones(3), torch.empty(0, 3))
    assert carry.tolist() == [1.0, 1.0, 1.0] and ys is None


def test_bad_arguments_say_what_is_wrong():
    with pytest.raises(ValueError, match="give xs or length"):
        scan(lambda c, x: (c, x), torch.zeros(()), None)
    with pytest.raises(ValueError, match="same leading length 3; leaf 1 has shape \\[4\\]"):
        scan(lambda c, x: (c, x), torch.zeros(()), (torch.zeros(3), torch.zeros(4)))
    with pytest.raises(ValueError, match="length=5 but xs has leading length 3"):
        scan(lambda c, x: (c, x), torch.zeros(()), torch.zeros(3), length=5)
    with pytest.raises(ValueError, match="no leaves"):
        scan(lambda c, x: (c, x), torch.zeros(()), {})


def _closed_over_weight_loss(w, xs):
    """The initial carry does not require grad; only the weight closed over by the body does
    (the case whose gradient torch's scan op silently zeroed, pytorch/pytorch#184528)."""
    carry, ys = scan(lambda h, x: (torch.tanh(h @ w + x),) * 2, torch.zeros(2, 3), xs)
    return ys.square().sum() + carry.sum()


def _closed_over_weight_reference(w, xs):
    h, total = torch.zeros(2, 3), 0.0
    for x in xs:
        h = torch.tanh(h @ w + x)
        total = total + h.square().sum()
    return total + h.sum()


def test_gradient_reaches_weights_closed_over_by_the_body_eager_and_compiled():
    w, xs = torch.randn(3, 3), torch.randn(5, 2, 3)
    want = fn.grad(_closed_over_weight_reference)(w, xs)
    assert want.abs().sum() > 0
    assert_close(fn.grad(_closed_over_weight_loss)(w, xs), want)
    compiled = fn.jit(fn.grad(_closed_over_weight_loss), backend="aot_eager")
    assert_close(compiled(w, xs), want)


def test_vmap_over_a_batch_of_weights_matches_one_at_a_time():
    ws, xs = torch.randn(4, 3, 3), torch.randn(5, 2, 3)
    batched = fn.vmap(lambda w: fn.grad(_closed_over_weight_loss)(w, xs))(ws)
    for i in range(4):
        assert_close(batched[i], fn.grad(_closed_over_weight_loss)(ws[i], xs))


def _graph_sizes():
    sizes = []

    def backend(gm, example_inputs):
        sizes.append(sum(len(m.graph.nodes) for m in gm.modules() if isinstance(m, torch.fx.GraphModule)))
        return gm.forward
    return sizes, backend


@pytest.mark.skipif(scan_module._scan_hop is None, reason="this torch has no scan higher-order op")
def test_compiled_without_gradients_the_body_is_traced_once_whatever_the_length():
    w = torch.randn(4, 4)
    carry0 = {"h": torch.zeros(3, 4), "steps": torch.zeros(())}
    sizes, backend = _graph_sizes()
    for T in (4, 64):
        xs = (torch.randn(T, 3, 4), torch.randn(T, 3))
        compiled = fn.jit(lambda c, xs: scan(rnn_body(w), c, xs, reverse=True), backend=backend, dynamic=False)
        with torch.no_grad():
            got = compiled(carry0, xs)
            want = scan(rnn_body(w), carry0, xs, reverse=True)
        for a, b in zip(fn.tree.leaves(got), fn.tree.leaves(want)):
            assert_close(a, b)
    assert sizes[0] == sizes[1], f"graph grew with the length: {sizes}"


@pytest.mark.skipif(scan_module._scan_hop is None, reason="this torch has no scan higher-order op")
def test_compiled_without_gradients_carries_that_alias_pass_through_or_bodies_without_y():
    """What torch's scan op refuses - outputs aliasing inputs, initial carry leaves that are one
    tensor - and what it lacks - None ys, xs=None - all work (through aot_autograd, where the
    op checks aliasing)."""
    def f(xs):
        zero = torch.zeros(2)
        c, ys = scan(lambda c, x: ((c[0] + x, c[1], c[2]), c[0]), (zero, torch.ones(()), zero), xs)
        n, none = scan(lambda n, x: (n * 2, None), torch.ones(()), length=3)
        return c, ys, n, none

    with torch.no_grad():
        (c, keep, same), ys, n, none = fn.jit(f, backend="aot_eager")(torch.ones(4, 2))
    assert c.tolist() == [4.0, 4.0] and keep.item() == 1.0 and same.tolist() == [0.0, 0.0]
    assert ys[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0] and n.item() == 8.0 and none is None


def test_vmap_of_scan_compiles_with_and_without_gradients():
    w, h0s, xs = torch.randn(4, 4), torch.randn(3, 2, 4), torch.randn(5, 2, 4)

    def f(h0, xs):
        return scan(lambda h, x: (torch.tanh(h @ w + x),) * 2, h0, xs)

    batched = fn.vmap(f, in_dims=(0, None))
    with torch.no_grad():  # torch's scan op, batched
        got = fn.jit(batched, backend="aot_eager")(h0s, xs)
    for a, b in zip(fn.tree.leaves(got), fn.tree.leaves(batched(h0s, xs))):
        assert_close(a, b)
    grads = fn.vmap(fn.grad(lambda h, xs: f(h, xs)[1].sum()), in_dims=(0, None))
    assert_close(fn.jit(grads, backend="aot_eager")(h0s, xs), grads(h0s, xs))


needs_op_gradients = pytest.mark.skipif(scan_module._scan_hop is None or not scan_module._HOP_GRADIENTS_RIGHT,
                                        reason="this torch's scan op is not used with gradients")


@needs_op_gradients
def test_a_compiled_training_step_traces_the_body_once_whatever_the_length():
    """fn.jit(fn.value_and_grad(loss)) with a scan inside: the graph is the same at T=4 and
    T=64, and the value and gradients equal eager ones (weights closed over included)."""
    w = torch.randn(4, 4, dtype=torch.float64)
    sizes, backend = _graph_sizes()
    for T in (4, 64):
        xs = (torch.randn(T, 3, 4, dtype=torch.float64), torch.randn(T, 3, dtype=torch.float64))

        def loss(w, h0, xs):
            carry, (s, hs) = scan(rnn_body(w), {"h": h0, "steps": torch.zeros((), dtype=w.dtype)}, xs)
            return s.square().mean() + hs["h"].sum() + carry["h"].square().sum()
        step = fn.value_and_grad(loss, argnums=(0, 1))
        h0 = torch.randn(3, 4, dtype=torch.float64)
        got, want = fn.jit(step, backend=backend, dynamic=False)(w, h0, xs), step(w, h0, xs)
        assert_close(got[0], want[0])
        for a, b in zip(got[1], want[1]):
            assert_close(a, b)
    assert sizes[0] == sizes[1], f"graph grew with the length: {sizes}"


@needs_op_gradients
def test_closed_over_weights_get_their_gradient_when_the_initial_carry_needs_none():
    """pytorch/pytorch#184528: torch's scan op once zeroed the part of a closed-over weight's
    gradient that flows through the carry when the initial carry did not require grad."""
    x = torch.tensor([0.11, -0.37, 0.23, 0.41, -0.19], dtype=torch.float64)

    def loss(a):
        carry, ys = scan(lambda c, x_t: ((a * c + x_t),) * 2, torch.zeros((), dtype=torch.float64), x)
        return ys.square().sum() + carry
    a = torch.tensor(0.7, dtype=torch.float64)
    want = fn.grad(loss)(a)  # eager: the Python loop
    assert_close(fn.jit(fn.grad(loss), backend="aot_eager")(a), want)
    assert_close(fn.jit(fn.grad(loss))(a), want)


@pytest.mark.skipif(scan_module._scan_hop is None, reason="this torch has no scan higher-order op")
@given(T=st.integers(2, 9), unroll=st.sampled_from([True, 2, 3, 4]), reverse=st.booleans())
def test_unroll_k_traces_k_steps_once_and_runs_the_leftover_steps_after(T, unroll, reverse):
    """unroll=k (as in jax.lax.scan): a body of k steps traced once, T not a multiple of k
    included; unroll=True unrolls the whole loop. The same numbers as eager either way."""
    torch._dynamo.reset()  # every example compiles the same code object anew
    w = torch.randn(4, 4, dtype=torch.float64)
    xs = (torch.randn(T, 3, 4, dtype=torch.float64), torch.randn(T, 3, dtype=torch.float64))
    carry0 = {"h": torch.zeros(3, 4, dtype=torch.float64), "steps": torch.zeros((), dtype=torch.float64)}

    def f(c, xs):
        return scan(rnn_body(w), c, xs, reverse=reverse, unroll=unroll)
    with torch.no_grad():
        got = fn.jit(f, backend="aot_eager", dynamic=False)(carry0, xs)
    want = python_loop(rnn_body(w), carry0, xs, T, reverse)
    for a, b in zip(fn.tree.leaves(got), fn.tree.leaves(want)):
        assert_close(a, b)


@pytest.mark.skipif(scan_module._scan_hop is None, reason="this torch has no scan higher-order op")
def test_unroll_true_unrolls_the_loop_and_false_traces_one_step():
    w = torch.randn(4, 4)
    carry0 = {"h": torch.zeros(3, 4), "steps": torch.zeros(())}
    for unroll, grows in ((True, True), (False, False), (1, False)):
        sizes, backend = _graph_sizes()
        for T in (4, 8):
            xs = (torch.randn(T, 3, 4), torch.randn(T, 3))
            with torch.no_grad():
                fn.jit(lambda c, xs, unroll=unroll: scan(rnn_body(w), c, xs, unroll=unroll), backend=backend,
                       dynamic=False)(carry0, xs)
        assert (sizes[1] > sizes[0]) == grows, f"unroll={unroll}: graph sizes {sizes}"


def test_unroll_must_be_a_bool_or_a_positive_int():
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="unroll must be"):
            scan(lambda c, x: (c, x), torch.zeros(()), torch.ones(3), unroll=bad)
