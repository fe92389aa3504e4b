"""fnnet.scan has jax.lax.scan's semantics over pytrees (it is, by definition, a Python loop),
differentiates (also w.r.t. weights closed over by the body), batches, and compiles: compiled
values and gradients are eager's, with the default (inductor) backend; without gradients the
body is traced once."""

from __future__ import annotations

import importlib

import pytest
import torch
from conftest import assert_close, assert_trees_close
from hypothesis import given, settings
from hypothesis import strategies as st

import cells
import fnnet as fn
from fnnet import random
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
    with pytest.raises(ValueError, match="same leading length \\(3\\); xs leaf '1' has shape \\[4\\]"):
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


def test_a_carry_that_changes_shape_dtype_or_structure_is_refused_eagerly_as_compiled():
    for body, match in ((lambda c, x: (torch.cat([c, x]), x), r"carry leaf '' came back from f as \[2\]"),
                        (lambda c, x: (c.double(), x), "torch.float64"),
                        (lambda c, x: ((c, c), x), "same structure"),
                        (lambda c, x: c, "pair")):
        with pytest.raises((ValueError, TypeError), match=match):
            scan(body, torch.zeros(1), torch.ones(3, 1))


def test_a_compiled_training_step_equals_eager_and_does_not_trace_the_op():
    """fn.jit(fn.value_and_grad(loss)) with a scan inside: value and gradients are eager's
    (weights closed over included), and the loop is unrolled (the op is not trusted with
    gradients: see test_torchs_scan_op_still_gets_chained_gradients_wrong_under_inductor)."""
    w = torch.randn(4, 4, dtype=torch.float64)
    sizes, backend = _graph_sizes()
    for T in (4, 8):
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
    assert sizes[1] > sizes[0], f"the loop with gradients is unrolled: graph sizes {sizes}"


def test_closed_over_weights_get_their_gradient_when_the_initial_carry_needs_none():
    """The initial carry does not require grad, only the weight closed over by the body (the
    case torch's scan op once silently zeroed, pytorch/pytorch#184528); inductor included."""
    x = torch.tensor([0.11, -0.37, 0.23, 0.41, -0.19], dtype=torch.float64)

    def loss(a):
        carry, ys = scan(lambda c, x_t: ((a * c + x_t),) * 2, torch.zeros((), dtype=torch.float64), x)
        return ys.square().sum() + carry
    a = torch.tensor(0.7, dtype=torch.float64)
    want = fn.grad(loss)(a)  # eager: the Python loop
    assert_close(fn.jit(fn.grad(loss))(a), want)
    a_leaf = a.clone().requires_grad_()
    fn.jit(loss)(a_leaf).backward()  # a compiled forward, then autograd's backward
    assert_close(a_leaf.grad, want)


def _two_scans(w1, w2, xs, use_op):
    """A 2-layer tanh recurrence, the second scanning the first's outputs; ``use_op``: through
    torch's scan op directly, else a Python loop."""
    def layer(w, xs):
        h0 = torch.zeros(xs.shape[1:], dtype=xs.dtype)
        if use_op:
            return scan_module._scan_hop(lambda h, x: (lambda n: (n.clone(), n.clone()))(torch.tanh(h @ w + x)),
                                         h0, xs)[1]
        return scan(lambda h, x: (torch.tanh(h @ w + x),) * 2, h0, xs)[1]
    return layer(w2, layer(w1, xs))[-1].square().sum()


@pytest.mark.skipif(scan_module._scan_hop is None, reason="this torch has no scan higher-order op")
def test_torchs_scan_op_still_gets_chained_gradients_wrong_under_inductor():
    """Why fnnet.scan keeps torch's op away from gradients (pytorch/pytorch#153679): two chained
    scans differentiated under inductor give wrong gradients on the installed torch. When this
    test fails, torch is fixed: let fnnet.scan use the op with gradients on such versions (a
    test of fnnet.scan's compiled gradients will then check the op)."""
    g = torch.Generator().manual_seed(0)
    w1, w2 = (torch.randn(16, 16, generator=g) * 0.5 for _ in range(2))
    xs = torch.randn(20, 3, 16, generator=g)
    want = torch.func.grad(_two_scans, argnums=(0, 1))(w1, w2, xs, False)
    a, b = w1.clone().requires_grad_(), w2.clone().requires_grad_()
    torch.compile(_two_scans, fullgraph=True)(a, b, xs, True).backward()
    errors = [((got - ref).abs().max() / ref.abs().max()).item() for got, ref in zip((a.grad, b.grad), want)]
    assert max(errors) > 1e-2, f"torch's scan op now differentiates right under inductor: {errors}"


def test_fnnet_scan_gets_the_chained_gradients_right_under_inductor():
    """The case above (shorter, float64) through fnnet.scan: fn.jit (inductor) equals eager."""
    g = torch.Generator().manual_seed(0)
    w1, w2 = (torch.randn(16, 16, generator=g, dtype=torch.float64) * 0.5 for _ in range(2))
    xs = torch.randn(8, 3, 16, generator=g, dtype=torch.float64)
    grads = fn.grad(lambda w1, w2: _two_scans(w1, w2, xs, False), argnums=(0, 1))
    for got, want in zip(fn.jit(grads)(w1, w2), grads(w1, w2)):
        assert_close(got, want)


def _body_and_carry(name, H, B):
    """A body of carry [B, H] (an LSTM cell: ``(h, c)``) and its initial carry: a tanh
    recurrence, a linear one, or cells.LSTMCell."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(H, H, generator=g, dtype=torch.float64) * 0.4
    z = torch.full((B, H), 0.1, dtype=torch.float64)
    if name == "tanh":
        return (lambda h, x: (torch.tanh(h @ w + x),) * 2), z
    if name == "linear":
        return (lambda h, x: (h @ w + x, 2 * h)), z
    cell = cells.LSTMCell(H, H)
    p = fn.tree.map(lambda t: t.double(), cell.init(random.key(1)))

    def lstm(hc, x):
        h, c = cell.apply(p, x, hc)
        return (h, c), h
    return lstm, (z, -z)


def _losses_through(body):
    """Gradients w.r.t. xs and h0 of a loss on the final carry, on ys, and on both."""
    def run(xs, h0):
        return scan(body, h0, xs)

    def carry_loss(xs, h0):
        return sum(c.square().sum() for c in fn.tree.leaves(run(xs, h0)[0]))

    def ys_loss(xs, h0):
        return run(xs, h0)[1].sin().sum()

    def both(xs, h0):
        return carry_loss(xs, h0) + ys_loss(xs, h0)
    return lambda xs, h0: tuple(fn.grad(f, argnums=(0, 1))(xs, h0) for f in (carry_loss, ys_loss, both))


@pytest.mark.parametrize("T", [2, pytest.param(32, marks=pytest.mark.slow)])
@pytest.mark.parametrize("name", ["tanh", "linear", "lstm"])
def test_compiled_gradients_through_scan_equal_eager_for_carry_ys_and_mixed_losses(name, T):
    """Inductor: fn.jit(fn.grad) through fnnet.scan equals eager for losses on the final carry,
    on ys and on both, w.r.t. the scanned inputs and the initial carry."""
    body, h0 = _body_and_carry(name, H=5, B=3)
    xs = torch.randn(T, 3, 5, dtype=torch.float64)
    grads = _losses_through(body)
    assert_trees_close({"g": fn.jit(grads)(xs, h0)}, {"g": grads(xs, h0)}, msg=f"{name} T={T}")


def test_compiled_tanh_recurrence_gradient_w_r_t_a_closed_over_weight_at_t32():
    """The issue's case, in make test: a loss on the final carry of tanh(h @ W + x), T=32."""
    H, B, T = 16, 3, 32
    w = torch.randn(H, H, dtype=torch.float64) * 0.5
    xs = torch.randn(T, B, H, dtype=torch.float64)

    def loss(w):
        h, _ = scan(lambda h, x: (torch.tanh(h @ w + x),) * 2, torch.zeros(B, H, dtype=torch.float64), xs)
        return h.square().sum()
    assert_close(fn.jit(fn.grad(loss))(w), fn.grad(loss)(w))


def test_compiled_inference_runs_the_op_and_equals_eager_with_inductor():
    """Forward only (nothing requires grad): the body is traced once, and inductor's values are
    eager's, with and without torch.no_grad()."""
    w = torch.randn(4, 4, dtype=torch.float64)
    carry0 = {"h": torch.zeros(3, 4, dtype=torch.float64), "steps": torch.zeros((), dtype=torch.float64)}
    xs = (torch.randn(12, 3, 4, dtype=torch.float64), torch.randn(12, 3, dtype=torch.float64))
    want = scan(rnn_body(w), carry0, xs, reverse=True)
    compiled = fn.jit(lambda c, xs: scan(rnn_body(w), c, xs, reverse=True))
    for grad_mode in (torch.no_grad, torch.enable_grad):
        with grad_mode():
            got = compiled(carry0, xs)
        for a, b in zip(fn.tree.leaves(got), fn.tree.leaves(want)):
            assert_close(a, b)
    sizes, backend = _graph_sizes()
    for T in (4, 16):  # grad mode on, nothing requires grad: still traced once
        xs = (torch.randn(T, 3, 4), torch.randn(T, 3))
        c0 = fn.tree.map(lambda t: t.float(), carry0)
        fn.jit(lambda c, xs: scan(rnn_body(w.float()), c, xs), backend=backend, dynamic=False)(c0, xs)
    assert sizes[0] == sizes[1], f"graph grew with the length: {sizes}"


@pytest.mark.skipif(scan_module._scan_hop is None, reason="this torch has no scan higher-order op")
@settings(max_examples=6)  # each example compiles anew
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
    for bad, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), ("2", TypeError)):
        with pytest.raises(error, match=r"^scan: unroll must be True, False or an int >= 1, got"):
            scan(lambda c, x: (c, x), torch.zeros(()), torch.ones(3), unroll=bad)


def test_compiled_inference_without_ys_gives_none_as_eager():
    """f returning y=None under fn.jit without gradients: torch's op with no ys failed in
    inductor ("getitem is not an OpOverload"); the body gives a placeholder, dropped."""
    def f(c, x):
        return torch.tanh(c + x), None

    def run(c, xs):
        with torch.no_grad():
            return fn.scan(f, c, xs)

    c, xs = torch.zeros(3), torch.randn(6, 3)
    carry, ys = fn.jit(run)(c, xs)
    want, none = run(c, xs)
    assert ys is None and none is None
    torch.testing.assert_close(carry, want)
