"""``fn.checkpoint``: the forward of ``f`` recomputed in the backward instead of stored.

The contract: the same values and gradients as ``f`` (float64, to the bit where the same ops
run), under plain autograd, ``fn.grad`` (also differentiated twice), ``fn.vmap`` and ``fn.jit``
with inductor; that the forward really is recomputed (``f`` runs again in the backward) and
that fewer bytes are saved for the backward; and that randomness from explicit keys recomputes
to the same mask.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fnnet as fn
from fnnet import random, tree
from badinput import expect_clear_error
from conftest import assert_close, assert_trees_close

D = 16
MODEL = fn.Sequential(fn.Linear(D, 32), fn.tanh, fn.Dropout(0.25), fn.Linear(32, D), fn.tanh)
PARAMS = tree.astype(MODEL.init(random.key(0)), torch.float64)
X = torch.randn(8, D, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
K = random.key(3)


def block(params, x, key):
    return MODEL.apply(params, x, key=key, train=True)


def loss_with(f):
    def loss(params, x, key):
        h = f(params, x, key)
        h = f(params, h, random.fold_in(key, 1))
        return (h * torch.linspace(-1, 1, h.numel(), dtype=h.dtype).reshape(h.shape)).sum()
    return loss


class Counting:
    """``block`` that counts its calls (the recomputation shows as a second call)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, params, x, key):
        self.calls += 1
        return block(params, x, key)


def saved_bytes(fun, *args):
    """Bytes autograd keeps for the backward of ``fun(*args)`` (each storage counted once)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fun(*args)
    return out, sum(seen.values())


def test_plain_autograd_recomputes_saves_less_and_gives_the_same_gradients():
    counting = Counting()
    ref_params = tree.map(lambda p: p.detach().requires_grad_(), PARAMS)
    ref, ref_bytes = saved_bytes(loss_with(block), ref_params, X, K)
    ref.backward()
    params = tree.map(lambda p: p.detach().requires_grad_(), PARAMS)
    value, bytes_ = saved_bytes(loss_with(fn.checkpoint(counting)), params, X, K)
    assert counting.calls == 2  # forward only
    value.backward()
    assert counting.calls == 4  # each block's forward ran again in the backward
    assert torch.equal(value, ref)
    assert_trees_close(tree.map(lambda p: p.grad, params), tree.map(lambda p: p.grad, ref_params))
    assert bytes_ < ref_bytes / 2, (bytes_, ref_bytes)


def test_a_policy_keeps_the_outputs_of_the_ops_it_names():
    ref_params = tree.map(lambda p: p.detach().requires_grad_(), PARAMS)
    ref, all_bytes = saved_bytes(loss_with(block), ref_params, X, K)
    ref.backward()
    _, none_bytes = saved_bytes(loss_with(fn.checkpoint(block)), PARAMS, X, K)
    params = tree.map(lambda p: p.detach().requires_grad_(), PARAMS)
    value, mm_bytes = saved_bytes(loss_with(fn.checkpoint(block, policy=[torch.ops.aten.mm.default,
                                                                         torch.ops.aten.addmm.default])),
                                  params, X, K)
    value.backward()
    assert torch.equal(value, ref)
    assert_trees_close(tree.map(lambda p: p.grad, params), tree.map(lambda p: p.grad, ref_params))
    assert none_bytes < mm_bytes < all_bytes, (none_bytes, mm_bytes, all_bytes)


def test_under_fn_grad_it_recomputes_and_gives_the_same_gradients_also_differentiated_again():
    counting = Counting()
    g_ref = fn.grad(loss_with(block))(PARAMS, X, K)
    g = fn.grad(loss_with(fn.checkpoint(counting)))(PARAMS, X, K)
    assert counting.calls == 4
    assert_trees_close(g, g_ref)

    def grad_norm(f):
        return lambda p: tree.vdot(fn.grad(loss_with(f))(p, X, K), fn.grad(loss_with(f))(p, X, K))
    assert_trees_close(fn.grad(grad_norm(fn.checkpoint(block)))(PARAMS), fn.grad(grad_norm(block))(PARAMS))


def test_under_fn_vmap_a_batch_of_keys_gives_the_same_values_and_gradients():
    keys = random.split(K, 3)
    ref = fn.vmap(fn.value_and_grad(loss_with(block)), in_dims=(None, None, 0))(PARAMS, X, keys)
    out = fn.vmap(fn.value_and_grad(loss_with(fn.checkpoint(block))), in_dims=(None, None, 0))(PARAMS, X, keys)
    assert_close(out[0], ref[0])
    assert_trees_close(out[1], ref[1])
    ys = fn.vmap(fn.checkpoint(block), in_dims=(None, 0, None))(PARAMS, X[None].expand(2, -1, -1), K)
    assert_close(ys[1], block(PARAMS, X, K))


def test_pytrees_in_and_out_and_non_float_tensors_pass_through():
    def f(p, batch):
        h = torch.tanh(batch["x"] @ p["w"])
        return {"h": h, "idx": batch["idx"] * 2, "sum": h.sum()}

    p = {"w": torch.randn(3, 3, dtype=torch.float64)}
    batch = {"x": torch.randn(2, 3, dtype=torch.float64), "idx": torch.arange(2)}

    def total(x):  # leaves that are not tensors come back as f returned them, on either route
        out = fn.checkpoint(lambda x: {"y": x * 2, "n": 3, "none": None})(x)
        assert out["n"] == 3 and out["none"] is None
        return out["y"].sum()
    assert torch.equal(fn.grad(total)(torch.ones(2)), torch.full((2,), 2.0))  # torch.func route
    assert total(torch.ones(2, requires_grad=True)) == 4.0  # plain autograd
    out = fn.checkpoint(f)(p, batch)
    assert torch.equal(out["idx"], torch.tensor([0, 2])) and torch.equal(out["h"], f(p, batch)["h"])
    g = fn.grad(lambda p: fn.checkpoint(f)(p, batch)["sum"])(p)
    assert_close(g["w"], fn.grad(lambda p: f(p, batch)["sum"])(p)["w"])


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="checkpoint: f must be callable, got int"):
        fn.checkpoint(3)
    with pytest.raises(TypeError, match="checkpoint: policy must be None, a list of torch ops"):
        fn.checkpoint(block, policy="dots")
    with pytest.warns(UserWarning, match="inside torch.func transforms .* a policy cannot be honoured"):
        fn.grad(loss_with(fn.checkpoint(block, policy=[torch.ops.aten.mm.default])))(PARAMS, X, K)


def test_a_compiled_fn_grad_step_with_inductor_equals_eager():
    g = fn.jit(fn.grad(loss_with(fn.checkpoint(block))))(PARAMS, X, K)
    assert_trees_close(g, fn.grad(loss_with(block))(PARAMS, X, K))


@pytest.mark.slow  # a second inductor compile (the partitioner's recompute), a minute on 2 busy cores
def test_compiled_with_inductor_under_plain_autograd_values_and_gradients_equal_eager():
    g_ref = fn.grad(loss_with(block))(PARAMS, X, K)
    params = tree.map(lambda p: p.detach().requires_grad_(), PARAMS)
    value = fn.jit(loss_with(fn.checkpoint(block)))(params, X, K)  # plain autograd through a compiled loss
    value.backward()
    assert_close(value.detach(), loss_with(block)(PARAMS, X, K))
    assert_trees_close(tree.map(lambda p: p.grad, params), g_ref)


@settings(max_examples=20)
@given(f=st.sampled_from([3, None, "f", torch.ones(2)]),
       policy=st.sampled_from(["dots", 3, [torch.tanh], [None], (torch.ops.aten.mm.default, "x")]))
def test_bad_arguments_are_clear_errors(f, policy):
    expect_clear_error(lambda: fn.checkpoint(f), match="checkpoint: f must be callable", suite="remat")
    expect_clear_error(lambda: fn.checkpoint(block, policy=policy), match="checkpoint: policy must be",
                       suite="remat")
