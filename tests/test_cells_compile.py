"""Compiled training steps of the sequence layers: one graph (fullgraph), the same numbers
as eager, and a graph whose size does not depend on the sequence length (the time loop runs
inside the cells.fused ops instead of being unrolled)."""

from __future__ import annotations


import torch
from conftest import assert_trees_close
from torch._dynamo.backends.common import aot_autograd

import cells
import fnnet as fn
from fnnet import random


def _lowered_graph_sizes():
    """A backend that records the size of the aten graph inductor would be given."""
    sizes = []

    def count(gm, example_inputs):
        sizes.append(len(gm.graph.nodes))
        return gm.forward
    return sizes, aot_autograd(fw_compiler=count)


def test_compiled_training_step_graph_does_not_grow_with_the_sequence_length():
    for layer in (cells.LSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2), cells.GRU(3, 5), cells.RNN(3, 5)):
        params = layer.init(random.key(0))
        sizes, backend = _lowered_graph_sizes()
        for T in (3, 40):
            x, lengths = torch.randn(T, 2, 3), torch.tensor([T, 1])

            def loss(p, x, lengths=lengths, layer=layer):
                out, h = layer.apply(p, x, lengths=lengths)
                return out.square().mean() + sum(s.sum() for s in (h if isinstance(h, tuple) else (h,)))
            step = fn.value_and_grad(loss)
            compiled = fn.jit(step, backend=backend, dynamic=False)(params, x)
            eager = step(params, x)
            assert_trees_close(compiled[1], eager[1], msg=type(layer).__name__)
        assert len(sizes) == 2 and sizes[0] == sizes[1], f"{type(layer).__name__}: graph grew with T: {sizes}"


def test_compiled_vmap_over_a_batch_of_param_sets_matches_eager():
    """torch.compile cannot vmap an autograd.Function yet ("ApplyTemplate" has no vmap support
    under dynamo), so under a compiled vmap (an ensemble) the layers step the cell, whatever
    fused says; eager vmap runs the fused recurrence (its generated vmap rule)."""
    for layer in (cells.LSTM(2, 3), cells.GRU(2, 3, bidirectional=True), cells.LSTM(2, 3, fused=False)):
        stacked = fn.tree.stack([layer.init(k) for k in random.split(random.key(0), 3)])
        x = torch.randn(4, 2, 2)

        def grads(p, layer=layer, x=x):
            return fn.grad(lambda p: layer.apply(p, x)[0].square().sum())(p)
        want = fn.vmap(grads)(stacked)
        got = fn.jit(fn.vmap(grads), backend="aot_eager")(stacked)
        assert_trees_close(got, want, msg=repr(layer))


def test_the_step_by_step_path_trains_compiled_as_eager_and_infers_with_the_body_traced_once():
    """fused=False: the cell's step under fnnet.scan. A compiled training step (inductor) equals
    eager (the loop is unrolled: torch's scan op is not trusted with gradients); compiled
    inference traces the step once, so its graph does not grow with T."""
    layer = cells.LSTM(3, 5, bidirectional=True, fused=False)
    params = fn.tree.map(lambda p: p.double(), layer.init(random.key(0)))
    x, lengths = torch.randn(4, 2, 3, dtype=torch.float64), torch.tensor([4, 2])
    step = fn.value_and_grad(lambda p, x: layer.apply(p, x, lengths=lengths)[0].square().mean())
    assert_trees_close({"s": fn.jit(step)(params, x)}, {"s": step(params, x)})
    sizes, backend = _lowered_graph_sizes()
    for T in (3, 12):
        x, lengths = torch.randn(T, 2, 3, dtype=torch.float64), torch.tensor([T, 2])
        infer = fn.jit(lambda p, x, lengths=lengths: layer.apply(p, x, lengths=lengths)[0], backend=backend,
                       dynamic=False)
        with torch.no_grad():
            assert_trees_close({"y": infer(params, x)}, {"y": layer.apply(params, x, lengths=lengths)[0]})
    assert len(sizes) == 2 and sizes[0] == sizes[1], f"graph grew with T: {sizes}"
