"""``fn.checkpoint``: the forward of ``f`` recomputed in the backward instead of stored.

The contract: the same values and gradients as ``f`` (float64, to the bit where the same ops
run), under plain autograd, ``fn.grad`` (also differentiated twice), ``fn.vmap`` and ``fn.jit``
with inductor; that the forward really is recomputed (``f`` runs again in the backward) and
that fewer bytes are saved for the backward; and that randomness from explicit keys recomputes
to the same mask.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from hypothesis import given, settings
from hypothesis import strategies as st

import fnnet as fn
from fnnet import random, tree
from fnnet._compat import DYNAMO_PASSES_OBJECTS
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


_PEAK_SCRIPT = """
import gc, torch, fnnet as fn
from fnnet import random
block = fn.Sequential(fn.Linear(256, 1024), fn.tanh, fn.Linear(1024, 256))
params = [block.init(k) for k in random.split(random.key(0), 8)]
x = torch.randn(1024, 256)
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024
def peak(f):
    def loss(ps, x):
        h = x
        for p in ps:
            h = h + f(p, h)
        return (h * h).mean()
    step = fn.value_and_grad(loss)
    step(params, x)
    gc.collect()
    base = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")
    step(params, x)
    return status("VmHWM") - base
print(peak(block.apply), peak(fn.checkpoint(block.apply)))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures peak memory through Linux's /proc")
def test_under_eager_fn_grad_the_peak_memory_of_a_step_falls():
    # torch.func.grad differentiates with create_graph=True: a backward recorded as it runs would
    # keep each recomputed block alive until the gradient returns (the peak of no checkpoint)
    out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, check=True,
                         env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1"))
    plain, remat = map(float, out.stdout.split())
    assert remat < plain / 2, (plain, remat)


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


def test_a_compiled_fn_grad_step_with_inductor_recomputes_in_its_backward_and_equals_eager():
    counting = Counting()
    step = fn.jit(fn.value_and_grad(loss_with(fn.checkpoint(counting))))
    step(PARAMS, X, K)
    before = counting.calls
    value, g = step(PARAMS, X, K)
    # compiled, f runs inside fnnet::remat (each block's forward) and fnnet::remat_backward (each
    # block recomputed); traced into the graph, dynamo would replay only the forward's 2 calls,
    # which is what torch < 2.12 does (dynamo cannot hand it the ops: f inline, documented)
    assert counting.calls - before == (4 if DYNAMO_PASSES_OBJECTS else 2)
    ref_value, ref_g = fn.value_and_grad(loss_with(block))(PARAMS, X, K)
    assert_close(value, ref_value)
    assert_trees_close(g, ref_g)


W_OUTSIDE = torch.randn(D, D, dtype=torch.float64, requires_grad=True)
C_OUTSIDE = torch.linspace(0, 1, D, dtype=torch.float64)


def test_compiled_fn_grad_refuses_what_the_ops_cannot_differentiate_and_takes_constants():
    def reads_w(p, x):
        return torch.tanh(x @ W_OUTSIDE) * p

    def reads_constant(p, x):
        return torch.tanh(x * C_OUTSIDE) * p

    p = torch.ones(D, dtype=torch.float64)
    # a tensor from outside the step that requires grad would lose its gradient connection
    if DYNAMO_PASSES_OBJECTS:
        with pytest.raises(RuntimeError, match="'.*reads_w' reads a tensor that requires grad and is not one "
                                               "of its arguments"):
            fn.jit(fn.grad(lambda p, x: fn.checkpoint(reads_w)(p, x).sum()))(p, X)
    else:  # torch < 2.12: f inline, its gradients are the graph's own
        g = fn.jit(fn.grad(lambda p, x: fn.checkpoint(reads_w)(p, x).sum()))(p, X)
        assert_close(g, fn.grad(lambda p, x: reads_w(p, x).sum())(p, X))
    # one that does not is a constant, read when the step runs, as eagerly
    g = fn.jit(fn.grad(lambda p, x: fn.checkpoint(reads_constant)(p, x).sum()))(p, X)
    assert_close(g, fn.grad(lambda p, x: reads_constant(p, x).sum())(p, X))


def test_pin_a_closure_over_a_traced_tensor_does_not_compile_under_fn_grad():
    # dynamo cannot hand the ops a function closing over a traced tensor (the ops could not
    # differentiate it): the step fails to compile. If this ever compiles, check the gradient
    # reaches w through fnnet::remat before relaxing the test.
    w = torch.randn(D, D, dtype=torch.float64)
    step = fn.jit(fn.grad(lambda w, x: fn.checkpoint(lambda h: torch.tanh(h @ w))(x).sum()))
    if not DYNAMO_PASSES_OBJECTS:  # torch < 2.12: f inline, the gradient reaches w through the graph
        assert_close(step(w, X), fn.grad(lambda w, x: torch.tanh(x @ w).sum())(w, X))
        return
    with pytest.raises(Exception, match="closure"):
        step(w, X)


def test_pin_torch_checkpoint_does_not_trace_inside_a_compiled_torch_func_grad():
    # why the compiled fn.grad step needs its own ops: torch's checkpoint op is traced by AOT
    # with saved-tensor hooks, which torch.func refuses (pytorch/pytorch#122729). If torch fixes
    # this, its checkpoint may replace fnnet::remat there (measure memory first).
    def loss(params, x, key):
        return torch.utils.checkpoint.checkpoint(block, params, x, key, use_reentrant=False,
                                                 preserve_rng_state=False).sum()
    try:  # (torch 2.11 stops earlier, at the side effect of fnnet's apply inside the checkpoint HOP)
        with pytest.raises(Exception, match="saved tensor hooks|Mutating a variable from outside the scope"):
            torch.compile(torch.func.grad(loss), backend="aot_eager", fullgraph=True)(PARAMS, X, K)
    finally:
        # the failed compile leaves torch.func's "hooks disabled" state behind (its context manager
        # is not exited): every later torch.utils.checkpoint in the process would raise
        torch._C._autograd._saved_tensors_hooks_enable()


@pytest.mark.slow  # inductor on a second-order graph: minutes on 2 busy cores
def test_compiled_grad_of_grad_runs_f_inline_with_eager_values():
    # nested gradients: fnnet::remat_backward cannot be differentiated again, so f is traced
    # into the graph (no memory saved, the values and gradients are eager's)
    def grad_norm(f):
        return lambda p: tree.vdot(fn.grad(loss_with(f))(p, X, K), fn.grad(loss_with(f))(p, X, K))
    g = fn.jit(fn.grad(grad_norm(fn.checkpoint(block))))(PARAMS)
    assert_trees_close(g, fn.grad(grad_norm(block))(PARAMS))


@pytest.mark.slow  # a second inductor compile (the partitioner's recompute), a minute on 2 busy cores
def test_compiled_with_inductor_under_plain_autograd_values_and_gradients_equal_eager():
    g_ref = fn.grad(loss_with(block))(PARAMS, X, K)
    params = tree.map(lambda p: p.detach().requires_grad_(), PARAMS)
    value = fn.jit(loss_with(fn.checkpoint(block)))(params, X, K)  # plain autograd through a compiled loss
    value.backward()
    assert_close(value.detach(), loss_with(block)(PARAMS, X, K))
    assert_trees_close(tree.map(lambda p: p.grad, params), g_ref)


W3 = torch.randn(2, D, D, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) / 4
POLICY_PARAMS = {"mlp": PARAMS, "w": W3}


def dots_block(params, x, key):
    """Two unbatched matmuls (addmm, in the MLP) and a batched one (bmm)."""
    h = MODEL.apply(params["mlp"], x, key=key, train=True)
    return torch.tanh(torch.bmm(h.reshape(2, 4, D), params["w"])).reshape(x.shape)


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def backward_ops(f):
    """The ops the backward of ``loss_with(f)`` runs (plain autograd), and the gradients."""
    params = tree.map(lambda p: p.detach().requires_grad_(), POLICY_PARAMS)
    value = loss_with(f)(params, X, K)
    with CountOps() as counted:
        value.backward()
    return value.detach(), tree.map(lambda p: p.grad, params), counted.ops


@pytest.mark.parametrize("name, recomputed", [
    ("everything_saveable", set()),
    ("nothing_saveable", {"addmm", "bmm", "tanh"}),
    ("dots_saveable", {"tanh"}),
    ("dots_with_no_batch_dims_saveable", {"bmm", "tanh"}),
])
def test_each_named_policy_recomputes_what_it_does_not_save_with_the_same_gradients(name, recomputed):
    ref_value, ref_grads, ref_ops = backward_ops(dots_block)
    policy = getattr(fn.checkpoint_policies, name)
    value, grads, ops = backward_ops(fn.checkpoint(dots_block, policy=policy))
    assert torch.equal(value, ref_value)
    assert_trees_close(grads, ref_grads)
    # ops the backward runs beyond the backward of f itself: the recomputed forward
    assert {"addmm", "bmm", "tanh"} & set(ops - ref_ops) == recomputed, (name, ops - ref_ops)
    assert repr(policy) == f"fn.checkpoint_policies.{name}"


def test_a_policy_on_the_first_float32_matmuls_of_a_process_equals_no_checkpoint():
    # the eager GEMM choice is measured on first use (timing matmuls, fnnet.layers._gemm): inside
    # the checkpointed forward they would be cached by the policy and replayed into the wrong ops
    from fnnet.layers import _gemm
    model = fn.Sequential(fn.Linear(384, 384), fn.tanh, fn.Linear(384, 384))
    params = model.init(random.key(0))
    x = torch.randn(512, 384, generator=torch.Generator().manual_seed(0))

    def grads(f):
        ps = tree.map(lambda p: p.detach().requires_grad_(), params)
        f(ps, x).square().mean().backward()
        return tree.map(lambda p: p.grad, ps)
    before = _gemm.get_gemm()
    _gemm.onednn_measured_faster.cache_clear()
    _gemm.set_gemm("auto")
    try:
        g = grads(fn.checkpoint(model.apply, policy=fn.checkpoint_policies.dots_saveable))
        assert_trees_close(g, grads(model.apply))
    finally:
        _gemm.set_gemm(before)


def test_a_policy_inside_a_compiled_fn_grad_warns_and_recomputes_everything():
    from fnnet import remat
    remat._warn_policy_ignored.cache_clear()  # once per process: the eager route may have warned
    remat._warn_inline.cache_clear()
    step = fn.jit(fn.value_and_grad(loss_with(fn.checkpoint(dots_block, policy=fn.checkpoint_policies
                                                            .dots_saveable))), backend="aot_eager")
    # torch < 2.12 traces f inline (dynamo cannot hand it the ops): the policy is not applied either
    match = "eager or compiled, a policy cannot be honoured" if DYNAMO_PASSES_OBJECTS else "f is traced inline"
    with pytest.warns(UserWarning, match=match):
        value, g = step(POLICY_PARAMS, X, K)
    ref_value, ref_g = fn.value_and_grad(loss_with(dots_block))(POLICY_PARAMS, X, K)
    assert_close(value, ref_value)
    assert_trees_close(g, ref_g)


def test_a_policy_where_compiled_f_runs_inline_warns_rather_than_being_dropped():
    """Compiled under vmap (or a grad of grad, or on torch < 2.12) f is traced inline: neither
    rematerialized nor saved by its policy. Saying so once beats ignoring the policy silently;
    the values are eager's."""
    from fnnet import remat
    remat._warn_inline.cache_clear()
    xs = torch.stack([X, 2 * X])
    f = fn.checkpoint(lambda x: torch.tanh(x @ W3[0]), policy=fn.checkpoint_policies.dots_saveable)
    with pytest.warns(UserWarning, match="f is traced inline: it is not rematerialized and its policy is not applied"):
        out = fn.jit(fn.vmap(f), backend="aot_eager")(xs)
    assert_close(out, torch.tanh(xs @ W3[0]))


@pytest.mark.slow  # inductor with torch's selective checkpoint: a minute on 2 busy cores
def test_a_named_policy_compiled_with_inductor_under_plain_autograd_equals_eager():
    _, ref_grads, _ = backward_ops(dots_block)
    params = tree.map(lambda p: p.detach().requires_grad_(), POLICY_PARAMS)
    step = fn.jit(loss_with(fn.checkpoint(dots_block, policy=fn.checkpoint_policies.dots_saveable)))
    value = step(params, X, K)
    value.backward()
    assert_close(value.detach(), loss_with(dots_block)(POLICY_PARAMS, X, K))
    assert_trees_close(tree.map(lambda p: p.grad, params), ref_grads)


@settings(max_examples=20)
@given(f=st.sampled_from([3, None, "f", torch.ones(2)]),
       policy=st.sampled_from(["dots", 3, [torch.tanh], [None], (torch.ops.aten.mm.default, "x")]))
def test_bad_arguments_are_clear_errors(f, policy):
    expect_clear_error(lambda: fn.checkpoint(f), match="checkpoint: f must be callable", suite="remat")
    expect_clear_error(lambda: fn.checkpoint(block, policy=policy), match="checkpoint: policy must be",
                       suite="remat")
