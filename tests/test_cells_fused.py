"""The hand-written VJPs of cells.fused equal differentiating the cells step by step (the
reference path: the cell's own ``step`` under ``fnnet.scan`` and autograd), for every cell
kind, with and without masks, in both directions, and under vmap."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cells
import fnnet as fn
from cells.fused import recurrence
from fnnet.scan import scan

F64 = torch.float64


def _setup(kind, T, B, H, P, seed):
    """Random xp, states and weights of one recurrence, and the cell whose step is the reference."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    if kind == "lstm":
        cell = cells.LSTMCell(1, H)
        w_hr = rand(P, H) if P else None
        states = (rand(B, P or H), rand(B, H))
        return cell, rand(T, B, 4 * H), states, rand(4 * H, P or H), None, w_hr, g
    if kind == "gru":
        return cells.GRUCell(1, H), rand(T, B, 3 * H), (rand(B, H),), rand(3 * H, H), rand(3 * H), None, g
    cell = cells.RNNCell(1, H, nonlinearity=kind.removeprefix("rnn_"))
    return cell, rand(T, B, H), (rand(B, H),), rand(H, H), None, None, g


def _reference(cell, xp, states, w_hh, b_hh, w_hr, mask, reverse):
    extra = (w_hr,) if w_hr is not None else ()

    def body(s, inp):
        x_t, m_t = inp
        s_in = s if len(s) > 1 else s[0]
        new, y = cell.step(w_hh, b_hh, x_t, s_in, *extra)
        new = new if isinstance(new, tuple) else (new,)
        return tuple(torch.where(m_t, a, b) for a, b in zip(new, s)), y * m_t
    finals, ys = scan(body, states, (xp, mask), reverse=reverse)
    return ys, finals


@settings(max_examples=40)
@given(kind=st.sampled_from(["lstm", "gru", "rnn_tanh", "rnn_relu"]), T=st.integers(1, 6), B=st.integers(1, 3),
       H=st.integers(1, 4), proj=st.booleans(), reverse=st.booleans(), masked=st.booleans(), seed=st.integers(0, 10**6))
def test_hand_written_vjp_equals_differentiating_the_cell_step_by_step(kind, T, B, H, proj, reverse, masked, seed):
    P = max(1, H - 1) if proj and kind == "lstm" and H > 1 else 0
    cell, xp, states, w_hh, b_hh, w_hr, g = _setup(kind, T, B, H, P, seed)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T).unsqueeze(1) < lengths).unsqueeze(-1)
    n = len(states)

    def weighted(run):  # a loss that weighs outputs and each final state differently
        def loss(xp, w_hh, b_hh, w_hr, *states):
            ys, finals = run(xp, states, w_hh, b_hh, w_hr)
            return ys.pow(2).sum() + sum((k + 2) * f.pow(2).sum() for k, f in enumerate(finals))
        return loss

    def ours(xp, states, w_hh, b_hh, w_hr):
        return recurrence(kind, xp, states, w_hh, b_hh, w_hr, mask if masked else None, reverse)

    def ref(xp, states, w_hh, b_hh, w_hr):
        return _reference(cell, xp, states, w_hh, b_hh, w_hr, mask if masked else torch.ones_like(mask), reverse)

    argnums = tuple(i for i, a in enumerate((xp, w_hh, b_hh, w_hr, *states)) if a is not None)
    args = (xp, w_hh, b_hh, w_hr, *states)
    (v1, g1), (v2, g2) = (fn.value_and_grad(weighted(f), argnums)(*args) for f in (ours, ref))
    assert_close(v1, v2)
    for a, b in zip(g1, g2):
        assert_close(a, b)
    assert len(g1) == len(argnums) and n in (1, 2)


def test_vmap_over_a_batch_of_weights_gradients_included():
    _, xp, states, w_hh, b_hh, _, _ = _setup("gru", 5, 2, 3, 0, seed=0)

    def loss(w):
        ys, (h,) = recurrence("gru", xp, states, w, b_hh, reverse=True)
        return ys.square().sum() + h.sum()
    ws = torch.stack([w_hh, 2 * w_hh, -w_hh])
    batched = fn.vmap(fn.grad(loss))(ws)
    for i in range(3):
        assert_close(batched[i], fn.grad(loss)(ws[i]))


def test_only_the_final_state_used_still_gives_gradients_to_every_input():
    _, xp, states, w_hh, _, _, _ = _setup("lstm", 4, 2, 3, 0, seed=1)
    grads = fn.grad(lambda xp, w, h, c: recurrence("lstm", xp, (h, c), w)[1][1].sum(), (0, 1, 2, 3))(
        xp, w_hh, *states)
    assert all(gr.abs().sum() > 0 for gr in grads)


def test_second_derivatives_through_the_hand_written_backward_equal_the_step_by_step_ones_and_a_third_is_refused():
    """The backward is differentiable once (its saved activations are differentiable outputs):
    grad of grad, grad of vjp and create_graph give the reference loop's second derivatives;
    a third derivative raises by name instead of silently wrong numbers; first-order
    transforms work as before."""
    cell, xp, states, w_hh, b_hh, _, _ = _setup("gru", 4, 2, 3, 0, seed=2)
    mask = torch.ones(4, 2, 1, dtype=torch.bool)

    def loss_of(fused):
        def loss(w):
            if fused:
                ys, (h,) = recurrence("gru", xp, states, w, b_hh, reverse=True)
            else:
                ys, (h,) = _reference(cell, xp, states, w, b_hh, None, mask, True)
            return ys.pow(3).sum() + h.sum()
        return loss

    def grad_of_grad(loss):
        return fn.grad(lambda w: fn.grad(loss)(w).square().sum())

    def grad_of_vjp(loss):
        return fn.grad(lambda w: torch.func.vjp(loss, w)[1](torch.ones((), dtype=F64))[0].square().sum())

    def create_graph(loss):
        def f(w):
            w = w.clone().requires_grad_()
            (g,) = torch.autograd.grad(loss(w), w, create_graph=True)
            return torch.autograd.grad(g.square().sum(), w)[0]
        return f

    for second in (grad_of_grad, grad_of_vjp, create_graph):
        want = second(loss_of(False))(w_hh)
        assert want.abs().max() > 0
        assert_close(second(loss_of(True))(w_hh), want)
    with pytest.raises(RuntimeError, match="third derivative.*fused=False"):
        fn.grad(lambda w: grad_of_grad(loss_of(True))(w).sum())(w_hh)
    assert torch.func.jacrev(loss_of(True))(w_hh).shape == w_hh.shape
    assert fn.vmap(fn.grad(loss_of(True)))(torch.stack([w_hh, w_hh])).shape == (2, *w_hh.shape)

    # both layer paths give a gradient penalty as nn.GRU computes it
    torch.manual_seed(0)
    theirs, x = nn.GRU(2, 3).double(), torch.randn(4, 2, 2, dtype=F64)
    params = fn.params_from_module(theirs)
    xt = x.clone().requires_grad_()
    (dx,) = torch.autograd.grad(theirs(xt)[0].pow(3).sum(), xt, create_graph=True)
    (want,) = torch.autograd.grad(dx.square().sum(), xt)
    for ours in (cells.GRU(2, 3, fused=False), cells.GRU(2, 3)):
        def critic(x, ours=ours):
            return ours.apply(params, x)[0].pow(3).sum()
        assert_close(fn.grad(lambda x: fn.grad(critic)(x).square().sum())(x), want)
