"""``fn.Stacked(block, n)``: the Sequential of ``n`` copies of ``block`` with its params stacked on
a leading axis and its layers run by ``scan``.

The contract: ``init`` gives layer ``i`` exactly ``block.init(split(key, n)[i])`` (what the
Sequential's init gives child ``"i"``); ``apply`` gives the Sequential's values, new state and
gradients on the same weights and key (dropout masks included); ``stack``/``unstack`` convert the
trees, so a ``torch.nn.Sequential`` of identical blocks loads; compiled without gradients the
block is traced once whatever ``n`` (the graph does not grow), and a compiled training step with
inductor equals eager.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fnnet as fn
from fnnet import _loop, random, tree
from badinput import expect_clear_error
from conftest import assert_close, assert_trees_close

nn = torch.nn
KEY = random.key(0)
D = 8
BLOCK = fn.Residual([fn.Linear(D, 16), fn.gelu, fn.Dropout(0.25), fn.Linear(16, D)])
BN_BLOCK = fn.Sequential(fn.Linear(D, D), fn.BatchNorm1d(D), fn.tanh)


def f64(t):
    return tree.map(lambda v: v.double() if v.is_floating_point() else v, t)


def x64(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def test_init_is_n_separate_inits_with_split_keys_and_the_sequentials_init():
    model = fn.Stacked(BLOCK, 5)
    params = model.init(KEY)
    assert tree.map(lambda v: tuple(v.shape), params) == tree.map(lambda v: (5, *v.shape), BLOCK.init(KEY))
    for i, k in enumerate(random.split(KEY, 5)):
        assert_trees_close(tree.map(lambda v, i=i: v[i], params), BLOCK.init(k))
    assert_trees_close(model.unstack(params), model.as_sequential().init(KEY))
    assert_trees_close(model.stack(model.unstack(params)), params)
    assert fn.param_shapes(model) == tree.map(lambda v: v.shape, params)


@pytest.mark.parametrize("train", [True, False])
def test_apply_equals_the_sequential_values_and_gradients_dropout_included(train):
    model = fn.Stacked(BLOCK, 4)
    seq = model.as_sequential()
    params = f64(model.init(KEY))
    x, k = x64(6, D), random.key(7)

    def loss(m, p):
        y = m.apply(p, x, key=k, train=train)
        return (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum()

    assert_close(model.apply(params, x, key=k, train=train), seq.apply(model.unstack(params), x, key=k, train=train))
    g = fn.grad(lambda p: loss(model, p))(params)
    g_seq = fn.grad(lambda p: loss(seq, p))(model.unstack(params))
    assert_trees_close(model.unstack(g), g_seq)


def test_a_stateful_block_threads_stacked_running_statistics_as_the_sequential_does():
    model = fn.Stacked(BN_BLOCK, 3)
    seq = model.as_sequential()
    params, state = f64(model.init(KEY)), f64(model.init_state())
    assert tree.paths(state) == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    assert state["1"]["running_mean"].shape == (3, D)
    x = x64(5, D)
    for train in (True, False):
        y, new_state = model.apply(params, x, state=state, train=train)
        y_seq, new_seq = seq.apply(model.unstack(params), x, state=model.unstack(state), train=train)
        assert_close(y, y_seq)
        assert_trees_close(model.unstack(new_state), new_seq)
    assert int(new_seq["2"]["1"]["num_batches_tracked"]) == 0 and \
        int(model.apply(params, x, state=state, train=True)[1]["1"]["num_batches_tracked"][2]) == 1
    with pytest.raises(ValueError, match="the block is stateful .* pass state=model.init_state"):
        model.apply(params, x, train=True)


def test_a_torch_sequential_of_identical_blocks_loads_and_gives_torchs_numbers():
    class TorchBlock(nn.Module):  # the twin of BLOCK without dropout
        def __init__(self):
            super().__init__()
            self.block = nn.Sequential(nn.Linear(D, 16), nn.GELU(), nn.Dropout(0.0), nn.Linear(16, D))

        def forward(self, x):
            return x + self.block(x)

    torch_seq = nn.Sequential(*[TorchBlock() for _ in range(3)]).double()
    model = fn.Stacked(BLOCK, 3)
    params = model.stack(fn.params_from_module(torch_seq))
    fn.check_params(model, params)
    x = x64(4, D)
    assert_close(model.apply(params, x), torch_seq(x))
    torch_seq.load_state_dict(fn.to_state_dict(model.unstack(f64(model.init(KEY)))))  # and back
    assert_close(model.apply(f64(model.init(KEY)), x), torch_seq(x))


def test_remat_recomputes_each_layer_and_keeps_values_and_gradients():
    model, remat = fn.Stacked(BLOCK, 3), fn.Stacked(BLOCK, 3, remat=True)
    params, x, k = f64(model.init(KEY)), x64(4, D), random.key(2)

    def loss(m):
        return lambda p: m.apply(p, x, key=k, train=True).square().sum()

    assert_trees_close(fn.grad(loss(remat))(params), fn.grad(loss(model))(params))
    leaves = tree.map(lambda v: v.detach().requires_grad_(), params)
    loss(remat)(leaves).backward()  # plain autograd: torch's checkpoint
    assert_trees_close(tree.map(lambda v: v.grad, leaves), fn.grad(loss(model))(params))
    bn = fn.Stacked(BN_BLOCK, 2, remat=True)
    pb, sb = f64(bn.init(KEY)), f64(bn.init_state())
    (_, s1), (_, s2) = bn.apply(pb, x, state=sb, train=True), fn.Stacked(BN_BLOCK, 2).apply(pb, x, state=sb, train=True)
    assert_trees_close(s1, s2)


def test_errors_name_stacked_and_what_was_expected():
    with pytest.raises(ValueError, match="Stacked: n must be >= 1, got 0"):
        fn.Stacked(BLOCK, 0)
    with pytest.raises(TypeError, match="Stacked: n must be an int, got float"):
        fn.Stacked(BLOCK, 2.0)
    with pytest.raises(TypeError, match=r"Stacked: unroll must be a bool or an int >= 1 \(layers per compiled "
                                        r"chunk\), got 0"):
        fn.Stacked(BLOCK, 2, unroll=0)
    with pytest.raises(TypeError, match="Stacked: expected an fnnet Module, a function or a list of them, got int"):
        fn.Stacked(3, 2)
    widen = fn.Stacked(fn.Linear(D, 2 * D), 2)
    with pytest.raises(ValueError, match=r"the block must map its input to an output of the same .*"
                                         r"got \[3, 16\] torch.float32 from \[3, 8\] torch.float32"):
        widen.apply(widen.init(KEY), torch.ones(3, D))
    model = fn.Stacked(BLOCK, 3)
    with pytest.raises(fn.ParamsError, match=r"'block.0.weight' has shape \[2, 16, 8\], expected \[3, 16, 8\]"):
        model.apply(fn.Stacked(BLOCK, 2).init(KEY), torch.ones(2, D))
    with pytest.raises(fn.ParamsError, match=r"expected the keys \['0', '1', '2'\] \(one per layer\), got \['0', '1'\]"):
        model.stack(fn.Stacked(BLOCK, 2).unstack(fn.Stacked(BLOCK, 2).init(KEY)))


def test_a_parameter_free_block_without_a_key_still_loops_n_times_and_lists_are_sequentials():
    model = fn.Stacked(lambda x: x * 2, 5)
    assert model.init(KEY) == {} and torch.equal(model.apply({}, torch.ones(2)), torch.full((2,), 32.0))
    listed = fn.Stacked([fn.Linear(D, D), torch.tanh], 2)
    assert listed.block == fn.Sequential(fn.Linear(D, D), torch.tanh)
    assert tree.paths(listed.init(KEY)) == ["0.weight", "0.bias"]


def _graph_size(model, params, x, grad=False):
    """Nodes in the graph dynamo captures (subgraphs included) for a forward without gradients,
    or for a ``fn.grad`` step."""
    sizes = []

    def backend(gm, example_inputs):
        sizes.append(sum(len(m.graph.nodes) for m in gm.modules() if isinstance(m, torch.fx.GraphModule)))
        return gm

    if grad:
        fn.jit(fn.grad(lambda p: model.apply(p, x).sum()), backend=backend, dynamic=False)(params)
    else:
        with torch.no_grad():
            fn.jit(model.apply, backend=backend, dynamic=False)(params, x)  # static: no symbolic sizes
    return sizes[0]


def test_compiled_inference_traces_the_block_once_whatever_the_depth():
    x = torch.randn(4, D)
    shallow, deep = fn.Stacked(BLOCK, 4), fn.Stacked(BLOCK, 16)
    assert _graph_size(shallow, shallow.init(KEY), x) == _graph_size(deep, deep.init(KEY), x)


@pytest.fixture
def traced_chunks(monkeypatch):
    """fnnet._loop's chunk bodies run as traced, without inductor: what these tests check is the
    outer graph and the loop's bookkeeping, not the inner compiler (one test below uses it)."""
    monkeypatch.setattr(_loop, "COMPILER", lambda gm, args: gm)


def test_a_compiled_training_step_holds_two_opaque_ops_whatever_the_depth(traced_chunks):
    x = torch.randn(4, D)
    shallow, deep = fn.Stacked(BLOCK, 4), fn.Stacked(BLOCK, 16)
    assert _graph_size(shallow, shallow.init(KEY), x, grad=True) == _graph_size(deep, deep.init(KEY), x, grad=True)


def test_compiled_training_chunks_any_depth_with_a_remainder_and_equals_eager(traced_chunks):
    """``unroll=k``: chunks of k layers, the last one shorter when k does not divide n; values and
    gradients (dropout keys per layer) are eager's whatever k. The outer step runs on
    ``aot_eager`` (the chunking is what is checked; the inductor path is the test below)."""
    x, k = x64(3, D), random.key(3)
    for n, unroll in ((5, 2), (3, 8), (4, 1)):
        model = fn.Stacked(BLOCK, n, unroll=unroll)
        params = f64(model.init(KEY))

        def loss(p, x, model=model):
            return model.apply(p, x, key=k, train=True).sin().sum()
        step = fn.value_and_grad(loss, argnums=(0, 1))
        v, g = step(params, x)
        v_c, g_c = fn.jit(step, backend="aot_eager")(params, x)
        assert_close(v_c, v)
        assert_trees_close(g_c, g, msg=f"n={n} unroll={unroll}")
    stateful = fn.Stacked([*BN_BLOCK.layers, fn.Dropout(0.3)], 3, unroll=2)
    params, state = f64(stateful.init(KEY)), f64(stateful.init_state())

    def loss(p, s, x):
        y, new_state = stateful.apply(p, x, state=s, key=k, train=True)
        return y.square().mean(), new_state
    step = fn.value_and_grad(loss, argnums=(0, 2), has_aux=True)
    (v, s_e), g = step(params, state, x)
    (v_c, s_c), g_c = fn.jit(step, backend="aot_eager")(params, state, x)
    assert_close(v_c, v)
    assert_trees_close(g_c, g, msg="grads, with state")
    assert_trees_close(s_c, s_e, msg="state")


def test_compiled_grad_of_grad_through_a_stack_equals_eager(traced_chunks):
    """fn.grad of fn.grad under fn.jit: the opaque loop's backward would be taken as a constant by
    the outer level (the second derivative silently 0); the stack runs the unrolled scan there."""
    model = fn.Stacked([fn.Linear(D, D), fn.tanh], 2)
    params, x = f64(model.init(KEY)), x64(3, D)

    def penalty(p):
        g = fn.grad(lambda q: model.apply(q, x).square().sum())(p)
        return sum(v.square().sum() for v in tree.leaves(g))
    eager = fn.grad(penalty)(params)
    assert all(v.abs().max() > 0 for v in tree.leaves(eager))
    assert_trees_close(fn.jit(fn.grad(penalty))(params), eager)


MLP = fn.Residual([fn.Linear(D, 16), fn.relu, fn.Linear(16, D)])  # two matmuls per layer forward


def _matmuls(gm) -> int:
    return sum(n.op == "call_function" and str(n.target).split(".")[1] in ("mm", "addmm", "bmm")
               for n in gm.graph.nodes)


def _chunk_graphs(step, *args) -> dict:
    """``{(role, steps): matmuls}`` of the chunk graphs ``fnnet._loop`` traces for the loops a
    compiled run of ``step`` creates (the chunks traced, not compiled)."""
    before = set(_loop._REGISTRY)
    # static shapes: fn.value_and_grad's wrapper is one code object for every test in the process,
    # and dynamo would make its sizes symbolic after another test's shapes (the recompute path)
    fn.jit(step, backend="aot_eager", dynamic=False)(*args)
    new = [lp for h, lp in _loop._REGISTRY.items() if h not in before]
    assert new, "the loop's handle existed before: use a model no other test uses"
    return {key[0][:2]: _matmuls(gm) for lp in new for key, gm in lp.compiled.items()}


def test_compiled_training_backward_runs_only_the_steps_backward_on_saved_residuals(traced_chunks):
    """Each layer's forward runs once, in fnnet::loop, which keeps its residuals; fnnet::loop_backward
    runs the backward part of the layer's partitioned step: its chunks hold the backward's two
    matmuls per Linear (d input, d weight), none of the forward's (no recomputation)."""
    model = fn.Stacked(MLP, 5, unroll=3)
    params, x = f64(model.init(KEY)), x64(3, D)
    step = fn.value_and_grad(lambda p, x: model.apply(p, x).sin().sum(), argnums=(0, 1))
    assert _chunk_graphs(step, params, x) == {("rfwd", 3): 2 * 3, ("rfwd", 2): 2 * 2,
                                              ("rbwd", 3): 4 * 3, ("rbwd", 2): 4 * 2}
    v, g = step(params, x)
    v_c, g_c = fn.jit(step, backend="aot_eager")(params, x)
    assert_close(v_c, v)
    assert_trees_close(g_c, g)


def test_remat_true_keeps_recomputing_each_chunk_in_the_compiled_backward(traced_chunks):
    """``remat=True`` asks for rematerialization: the forward keeps the chunk-boundary activations
    only, and each backward chunk recomputes its forward (three matmuls per Linear); the same
    numbers."""
    model = fn.Stacked(MLP, 4, unroll=2, remat=True)
    params, x = f64(model.init(KEY)), x64(3, D)
    step = fn.value_and_grad(lambda p, x: model.apply(p, x).sin().sum(), argnums=(0, 1))
    assert _chunk_graphs(step, params, x) == {("fwd", 2): 2 * 2, ("vjp", 2): 6 * 2}
    v, g = step(params, x)
    v_c, g_c = fn.jit(step, backend="aot_eager")(params, x)
    assert_close(v_c, v)
    assert_trees_close(g_c, g)


def test_a_symbolic_batch_size_after_a_recompile_recomputes_with_the_same_numbers(traced_chunks):
    """One step's residuals have the step's shapes; after a recompile over the batch size those are
    symbolic, and the loop keeps the recompute path there (the same numbers)."""
    model = fn.Stacked(MLP, 3, unroll=2)
    params = f64(model.init(KEY))
    torch._dynamo.reset()  # the first compile static (dynamo's automatic dynamic sizes start afresh)
    step = fn.jit(fn.value_and_grad(lambda p, x: model.apply(p, x).sin().sum(), argnums=(0, 1)),
                  backend="aot_eager")
    roles = set()
    for b in (2, 3, 5):
        x = x64(b, D, seed=b)
        before = {h: set(lp.compiled) for h, lp in _loop._REGISTRY.items()}
        v_c, g_c = step(params, x)
        v, g = fn.value_and_grad(lambda p, x: model.apply(p, x).sin().sum(), argnums=(0, 1))(params, x)
        assert_close(v_c, v)
        assert_trees_close(g_c, g, msg=f"batch {b}")
        roles |= {key[0][0] for h, lp in _loop._REGISTRY.items() for key in lp.compiled
                  if key not in before.get(h, ())}
    assert {"rfwd", "rbwd", "fwd", "vjp"} <= roles


@pytest.mark.slow  # traces 16 unrolled blocks twice (half a minute on 2 busy cores)
def test_unrolled_graphs_grow_with_depth_the_sequential_and_unroll_true():
    x = torch.randn(4, D)
    seq4, seq16 = fn.Stacked(BLOCK, 4).as_sequential(), fn.Stacked(BLOCK, 16).as_sequential()
    assert _graph_size(seq16, seq16.init(KEY), x) > 3 * _graph_size(seq4, seq4.init(KEY), x)
    shallow, deep = fn.Stacked(BLOCK, 4, unroll=True), fn.Stacked(BLOCK, 16, unroll=True)
    assert _graph_size(deep, deep.init(KEY), x, grad=True) > 2 * _graph_size(shallow, shallow.init(KEY), x, grad=True)


def test_compiled_with_inductor_inference_and_training_equal_eager():
    """Default inductor, also for fnnet._loop's chunks: a stateful block (running statistics
    threaded and returned stacked), one layer per chunk (dropout keys and chunks of several
    layers are checked above on the traced chunks: inductor takes minutes on Threefry's ops)."""
    model, plain = fn.Stacked(BN_BLOCK, 3), fn.Stacked(BLOCK, 5)  # with and without state
    params, state, x = f64(model.init(KEY)), f64(model.init_state()), x64(6, D)
    p_plain = f64(plain.init(KEY))

    def infer(params, state, p_plain, x):
        return model.apply(params, x, state=state, train=False)[0], plain.apply(p_plain, x)

    with torch.no_grad():
        y, y_plain = fn.jit(infer)(params, state, p_plain, x)
    assert_close(y, model.apply(params, x, state=state, train=False)[0])
    assert_close(y_plain, plain.apply(p_plain, x))

    chunked = fn.Stacked(BN_BLOCK, 3, unroll=1)

    def loss(p, s, x):
        y, new_state = chunked.apply(p, x, state=s, train=True)
        return y.square().mean(), new_state

    step = fn.value_and_grad(loss, argnums=(0, 2), has_aux=True)
    (v, s_e), g = step(params, state, x)
    before = set(_loop._REGISTRY)
    # static shapes: a symbolic batch (after another test's shapes) would take the recompute path
    (v_c, s_c), g_c = fn.jit(step, dynamic=False)(params, state, x)
    assert {key[0][0] for h, lp in _loop._REGISTRY.items() if h not in before for key in lp.compiled} == \
        {"rfwd", "rbwd"}  # the residual path, compiled by inductor
    assert_close(v_c, v)
    assert_trees_close(g_c, g, msg="grads")
    assert_trees_close(s_c, s_e, msg="state")


BAD = [0, -3, 2.5, True, "4", None, torch.tensor(3)]


@settings(max_examples=30)
@given(n=st.sampled_from(BAD), flag=st.sampled_from([1, 0, "yes", None, 1.0]),
       unroll=st.sampled_from([0, -2, "yes", None, 1.0, 2.5]))
def test_bad_hyperparameters_are_clear_errors(n, flag, unroll):
    expect_clear_error(lambda: fn.Stacked(BLOCK, n), match="Stacked: n must be", suite="stack")
    expect_clear_error(lambda: fn.Stacked(BLOCK, 2, remat=flag), match="Stacked: remat must be a bool",
                       suite="stack")
    expect_clear_error(lambda: fn.Stacked(BLOCK, 2, unroll=unroll), match="Stacked: unroll must be a bool or an int",
                       suite="stack")


@settings(max_examples=20)
@given(n=st.integers(1, 4), other=st.integers(1, 5), width=st.integers(1, 9), rank=st.integers(1, 3))
def test_params_and_inputs_that_do_not_fit_are_clear_errors(n, other, width, rank):
    model = fn.Stacked([fn.Linear(D, D), fn.tanh], n)
    if other != n:  # params of another depth
        expect_clear_error(lambda: model.apply(fn.Stacked(model.block, other).init(KEY), torch.ones(2, D)),
                           match=r"'0.weight' has shape", suite="stack")
        expect_clear_error(lambda: model.stack(fn.Stacked(model.block, other).unstack(
            fn.Stacked(model.block, other).init(KEY))), match="expected the keys", suite="stack")
    if width != D:  # an input the block cannot take
        expect_clear_error(lambda: model.apply(model.init(KEY), torch.ones(*[2] * (rank - 1), width)),
                           match="Linear", suite="stack")
    wide = fn.Stacked(fn.Linear(D, D + width), n)  # a block that changes the shape
    expect_clear_error(lambda: wide.apply(wide.init(KEY), torch.ones(2, D)),
                       match="the block must map its input to an output of the same", suite="stack")
    expect_clear_error(lambda: fn.Stacked(BN_BLOCK, n).apply(fn.Stacked(BN_BLOCK, n).init(KEY), torch.ones(3, D)),
                       match="pass state=model.init_state", suite="stack")


_OTHER_PROCESS = """
import sys, torch
import fnnet as fn
from fnnet import _loop, random
_loop.COMPILER = lambda gm, args: gm  # the chunks uncompiled: only the step's outer graph goes to inductor
model = fn.Stacked(fn.Sequential([fn.Linear(3, 3), fn.tanh]), 8, remat=True, unroll=int(sys.argv[1]))
params, x = model.init(random.key(0)), torch.randn(2, 3)
step = fn.value_and_grad(lambda p, x: model.apply(p, x).square().sum())
compiled, eager = fn.jit(step, dynamic=False)(params, x), step(params, x)
torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
"""


def test_a_step_compiled_in_another_process_is_not_taken_for_this_ones_loop(tmp_path):
    """Inductor caches a compiled graph on disk keyed by its code and constants, and a loop's
    handle is one of them; what the graph cannot see (here the chunk length, which sets how many
    boundary carries the forward op returns) differs between two processes. The second process,
    with the first one's cache, compiles its own step (default inductor) and gets eager's
    numbers; with handles numbered 0, 1, ... in every process it ran the first one's graph and
    failed on its output sizes."""
    root = pathlib.Path(__file__).resolve().parent.parent
    env = os.environ | {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1",
                        "TORCHINDUCTOR_AUTOGRAD_CACHE": "1", "PYTHONPATH": str(root)}
    for unroll in (2, 4):
        out = subprocess.run([sys.executable, "-c", _OTHER_PROCESS, str(unroll)], cwd=root, env=env,
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-3000:]
