"""fnnet.tree: the pytree helpers that params, grads and optimizer states go through."""

from __future__ import annotations

import collections

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fnnet as fn
from fnnet import tree

nn = torch.nn


def sample_tree(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return {"encoder": {"0": {"weight": torch.randn(3, 2, generator=g), "bias": torch.randn(3, generator=g)}},
            "heads": [torch.randn(4, generator=g), (torch.randn(2, 2, generator=g),)],
            "step": torch.tensor(3)}


def test_flatten_with_paths_names_leaves_as_a_state_dict_does():
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 1)))
    params = fn.params_from_module(net)
    assert tree.paths(params) == [n for n, _ in net.named_parameters()] == \
        ["0.weight", "0.bias", "2.0.weight", "2.0.bias"]
    assert tree.paths(sample_tree()) == ["encoder.0.weight", "encoder.0.bias", "heads.0", "heads.1.0", "step"]


def test_flatten_unflatten_round_trip_and_structure_equality():
    t = sample_tree()
    flat, spec = tree.flatten(t)
    back = tree.unflatten(spec, flat)
    assert tree.same_structure(back, t) and all(a is b for a, b in zip(tree.leaves(back), tree.leaves(t)))
    other = sample_tree()
    other["heads"].append(torch.zeros(1))
    assert not tree.same_structure(t, other)


@given(n=st.integers(1, 5), dim=st.integers(0, 1), seed=st.integers(0, 100))
def test_stack_then_unstack_gives_back_the_trees(n, dim, seed):
    trees = [sample_tree(seed + i) for i in range(n)]
    if dim == 1:  # a scalar leaf has no dim 1 to stack along
        trees = [{k: v for k, v in t.items() if k != "step"} for t in trees]
    stacked = tree.stack(trees, dim)
    assert stacked["encoder"]["0"]["weight"].shape[dim] == n
    back = tree.unstack(stacked, dim)
    assert len(back) == n
    for a, b in zip(back, trees):
        assert tree.same_structure(a, b)
        assert all(torch.equal(x, y) for x, y in zip(tree.leaves(a), tree.leaves(b)))


def test_stack_refuses_trees_of_different_structure():
    a, b = sample_tree(), sample_tree()
    del b["step"]
    with pytest.raises(ValueError, match="tree.stack: tree 1 has no leaf at .step."):
        tree.stack([a, b])


@given(seed=st.integers(0, 1000), scale=st.floats(1e-3, 1e3))
def test_global_norm_is_the_total_norm_clip_grad_norm_measures(seed, scale):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    for p in net.parameters():
        p.grad = torch.randn_like(p) * scale
    grads = fn.interop.nest({n: p.grad.clone() for n, p in net.named_parameters()})
    total = nn.utils.clip_grad_norm_(net.parameters(), max_norm=float("inf"))
    torch.testing.assert_close(tree.global_norm(grads), total)


def test_arithmetic_helpers_work_leafwise():
    a, b = sample_tree(1), sample_tree(2)
    for got, want in [(tree.add(a, b), lambda x, y: x + y), (tree.sub(a, b), lambda x, y: x - y),
                      (tree.mul(a, b), lambda x, y: x * y), (tree.axpy(0.5, a, b), lambda x, y: 0.5 * x + y)]:
        for g, x, y in zip(tree.leaves(got), tree.leaves(a), tree.leaves(b)):
            assert torch.equal(g, want(x, y))
    assert torch.equal(tree.vdot(a, b), sum((x * y).sum() for x, y in zip(tree.leaves(a), tree.leaves(b))))
    assert tree.size(a) == 6 + 3 + 4 + 4 + 1
    assert all(torch.equal(z, torch.zeros_like(x)) for z, x in zip(tree.leaves(tree.zeros_like(a)), tree.leaves(a)))
    cast = tree.astype(a, torch.float64)
    assert cast["encoder"]["0"]["weight"].dtype == torch.float64 and cast["step"].dtype == torch.int64


def test_map_with_path_sees_the_dotted_paths_and_named_tuples_are_nodes():
    State = collections.namedtuple("State", ["mu", "nu"])
    t = {"opt": State(mu=torch.ones(2), nu=torch.zeros(2))}
    seen = []
    out = tree.map_with_path(lambda p, x: seen.append(p) or x + 1, t)
    assert seen == ["opt.mu", "opt.nu"] and isinstance(out["opt"], State)
    assert tree.all_finite(t) and not tree.all_finite({"x": torch.tensor([float("nan")])})


def test_global_norm_of_float16_leaves_accumulates_wide_and_returns_torch_s_dtype():
    # squares of 300 overflow float16 (max 65504); the norm, 600, does not
    big = {"a": torch.full((4,), 300.0, dtype=torch.float16)}
    assert tree.global_norm(big).dtype == torch.float16 and tree.global_norm(big).item() == 600.0
    # a float16 first leaf next to a float32 one: float32 (torch.stack's promotion), never inf
    mixed = [torch.full((2,), 1e4, dtype=torch.float16), torch.ones(2)]
    ref = torch.linalg.vector_norm(torch.cat([x.double() for x in mixed]))
    out = tree.global_norm(mixed)
    p = [torch.nn.Parameter(torch.zeros_like(x)) for x in mixed]
    for q, x in zip(p, mixed):
        q.grad = x.clone()
    assert out.dtype == nn.utils.clip_grad_norm_(p, float("inf")).dtype == torch.float32
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=0)
    # beyond float16's range: inf in float16 (torch's dtype), finite with wide=True
    huge = [torch.full((2,), 6e4, dtype=torch.float16)]
    assert torch.isinf(tree.global_norm(huge)) and tree.global_norm(huge, wide=True).item() == pytest.approx(6e4 * 2 ** 0.5)


def test_clipping_float16_grads_whose_norm_overflows_float16_clips_instead_of_zeroing():
    grads = {"w": torch.full((2,), 6e4, dtype=torch.float16)}
    clipped, _ = fn.optim.clip_by_global_norm(1.0).update(grads, {})
    assert clipped["w"].dtype == torch.float16
    torch.testing.assert_close(clipped["w"].float(), torch.full((2,), 2 ** -0.5), rtol=1e-3, atol=0)


def test_map_takes_is_leaf_and_pairs_several_trees_by_path():
    t = {"pair": (torch.ones(2), torch.zeros(2)), "x": (torch.ones(1), torch.ones(1))}
    out = tree.map(lambda pair: pair[0] + pair[1], t, is_leaf=lambda x: isinstance(x, tuple))
    assert torch.equal(out["pair"], torch.ones(2)) and torch.equal(out["x"], torch.full((1,), 2.0))
    a = {"x": torch.ones(2), "y": torch.ones(3)}
    b = {"y": torch.zeros(3), "x": torch.zeros(2)}
    assert tree.paths(tree.map(torch.sub, a, b)) == ["x", "y"]
    assert tree.paths(tree.map(lambda *xs: sum(xs), a, b, dict(a))) == ["x", "y"]
