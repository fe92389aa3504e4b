"""tree.partition / combine (gradients w.r.t. a subset of the params), tree.ravel (one vector, a
Hessian over all params) and tree.at (a functional update by path)."""

from __future__ import annotations

import torch
from badinput import expect_clear_error
from conftest import assert_trees_close
from hypothesis import given
from hypothesis import strategies as st

import fnnet as fn
from fnnet import random, tree

D = torch.float64
MLP = fn.Sequential(fn.Linear(3, 4), fn.tanh, fn.Linear(4, 2))


def _loss(params, x):
    return (MLP.apply(params, x) ** 2).mean()


def _params():
    return fn.tree.astype(MLP.init(random.key(0)), D)


leaves = st.integers(0, 3).map(lambda n: torch.arange(float(n + 1), dtype=D))
trees = st.recursive(leaves, lambda kids: st.one_of(
    st.dictionaries(st.sampled_from(["a", "b", "w", "bias", "0"]), kids, min_size=1, max_size=3),
    st.lists(kids, min_size=1, max_size=3)), max_leaves=8)


@given(t=trees, pick=st.integers(0, 2 ** 8))
def test_partition_puts_each_leaf_in_exactly_one_half_and_combine_undoes_it(t, pick):
    paths = tree.paths(t)
    chosen = {p for i, p in enumerate(paths) if pick >> (i % 8) & 1}
    selected, rest = tree.partition(t, lambda path, leaf: path in chosen)
    assert tree.paths(selected) == [p for p in paths if p in chosen]  # a hole is an empty subtree
    assert tree.paths(rest) == [p for p in paths if p not in chosen]
    assert tree.structure(tree.combine(selected, rest)) == tree.structure(t)
    for (p, x), (q, y) in zip(tree.flatten_with_paths(tree.combine(selected, rest)), tree.flatten_with_paths(t)):
        assert p == q and x is y


def test_grads_of_the_selected_half_are_the_full_grads_at_those_paths():
    params, x = _params(), random.normal(random.key(1), (5, 3), dtype=D)
    selected, rest = tree.partition(params, lambda path, p: path.startswith("2.") or path == "0.bias")
    grads = fn.grad(lambda s: _loss(tree.combine(s, rest), x))(selected)
    full = dict(tree.flatten_with_paths(fn.grad(_loss)(params, x)))
    assert tree.paths(grads) == ["0.bias", "2.weight", "2.bias"]
    assert grads["0"]["weight"] is tree.HOLE
    for path, g in tree.flatten_with_paths(grads):
        torch.testing.assert_close(g, full[path], rtol=0, atol=0)


def test_combine_pairs_by_path_and_names_a_leaf_held_twice_or_never():
    a, b = torch.ones(2), torch.zeros(3)
    H = tree.HOLE
    assert tree.combine({"x": a, "y": H}, {"y": b, "x": H}) == {"x": a, "y": b}
    expect_clear_error(lambda: tree.combine({"x": a, "y": H}, {"x": H, "y": H}), match="neither .* at 'y'")
    expect_clear_error(lambda: tree.combine({"x": a, "y": b}, {"x": H, "y": b}), match="both .* at 'y'")
    expect_clear_error(lambda: tree.combine({"x": a}, {"x": H, "z": b}), match="'z'")


def test_partition_refuses_a_half_and_a_predicate_that_is_not_a_bool():
    half, _ = tree.partition({"a": torch.ones(1), "b": torch.ones(1)}, lambda p, x: p == "a")
    expect_clear_error(lambda: tree.partition(half, lambda p, x: True), match="hole at 'b'")
    assert tree.partition({"a": None}, lambda p, x: x is None) == ({"a": None}, {"a": tree.HOLE})  # None: a leaf
    expect_clear_error(lambda: tree.partition({"a": torch.ones(1)}, lambda p, x: torch.tensor(True)),
                       match="True or False")
    expect_clear_error(lambda: tree.partition({"a": torch.ones(1)}, "a"), match="predicate")


def test_partition_and_combine_of_an_empty_tree():
    assert tree.partition({}, lambda p, x: True) == ({}, {})
    assert tree.combine({}, {}) == {}


# -- ravel ------------------------------------------------------------------------------------------

def test_ravel_orders_by_sorted_keys_so_key_order_does_not_matter():
    t1 = {"w": torch.tensor([1.0, 2.0]), "b": {"z": torch.tensor([3.0]), "a": torch.tensor([[4.0, 5.0]])}}
    t2 = {"b": {"a": t1["b"]["a"], "z": t1["b"]["z"]}, "w": t1["w"]}
    v1, unravel1 = tree.ravel(t1)
    v2, _ = tree.ravel(t2)
    assert v1.tolist() == v2.tolist() == [4.0, 5.0, 3.0, 1.0, 2.0]
    back = unravel1(v1 * 10)
    assert list(back) == ["w", "b"] and list(back["b"]) == ["z", "a"]  # the tree's own structure
    assert back["b"]["a"].tolist() == [[40.0, 50.0]]


def test_ravel_promotes_mixed_dtypes_and_unravel_casts_each_piece_back():
    t = {"f": torch.tensor([0.5], dtype=torch.float32), "d": torch.tensor([0.25], dtype=D),
         "i": torch.tensor([3, 4], dtype=torch.int64)}
    v, unravel = tree.ravel(t)
    assert v.dtype == D and v.tolist() == [0.25, 0.5, 3.0, 4.0]
    back = unravel(v)
    assert {k: x.dtype for k, x in back.items()} == {"f": torch.float32, "d": D, "i": torch.int64}
    assert_trees_close(back, t, msg="round trip")
    expect_clear_error(lambda: unravel(v[:3]), match="4 elements")
    expect_clear_error(lambda: unravel(v.reshape(2, 2)), match="1-D")
    expect_clear_error(lambda: unravel(v.float()), match="float64")
    expect_clear_error(lambda: tree.ravel({"a": 1.0}), match="tensors")


def test_ravel_of_an_empty_tree():
    v, unravel = tree.ravel({"a": {}, "b": []})
    assert v.shape == (0,) and unravel(v) == {"a": {}, "b": []}


def test_a_hessian_over_all_params_through_ravel():
    """``hessian(loss . unravel)`` equals the Hessian of the same loss written on the vector by hand
    (sorted-key order: b.c, then w)."""
    t = {"w": torch.tensor([0.3, -1.2], dtype=D), "b": {"c": torch.tensor([0.7, 0.1, 2.0], dtype=D)}}

    def loss(p):
        return (p["w"] ** 2).sum() * p["b"]["c"].sum() + torch.sin(p["w"][0] * p["b"]["c"][2])

    def by_hand(v):
        c, w = v[:3], v[3:]
        return (w ** 2).sum() * c.sum() + torch.sin(w[0] * c[2])

    v, unravel = tree.ravel(t)
    h = torch.func.hessian(lambda v: loss(unravel(v)))(v)
    torch.testing.assert_close(h, torch.func.hessian(by_hand)(v), rtol=1e-12, atol=1e-12)
    assert h.shape == (5, 5)


def test_subset_grads_and_ravel_compile_and_equal_eager():
    """Inside one inductor graph: grads w.r.t. the selected half, and a loss on a raveled vector."""
    params = {"w": torch.tensor([[0.5, -1.0], [2.0, 0.25]], dtype=D), "b": torch.tensor([0.1, -0.3], dtype=D)}
    x = torch.tensor([1.0, 2.0], dtype=D)

    def loss(p):
        return torch.tanh(x @ p["w"] + p["b"]).pow(2).sum()

    selected, rest = tree.partition(params, lambda path, p: path == "w")
    v, unravel = tree.ravel(params)

    def both(selected, rest, v):
        return fn.grad(lambda s: loss(tree.combine(s, rest)))(selected), fn.grad(lambda v: loss(unravel(v)))(v)

    (g, gv), (g_eager, gv_eager) = fn.jit(both)(selected, rest, v), both(selected, rest, v)
    assert g["b"] is tree.HOLE
    torch.testing.assert_close(g["w"], g_eager["w"])
    torch.testing.assert_close(gv, gv_eager)
    torch.testing.assert_close(gv, torch.cat([fn.grad(loss)(params)[k].reshape(-1) for k in ("b", "w")]))


# -- at ---------------------------------------------------------------------------------------------

def test_at_replaces_one_leaf_in_a_new_tree_and_leaves_the_original_untouched():
    params = _params()
    w = params["2"]["weight"]
    new = tree.at(params, "2.bias", torch.zeros(2, dtype=D))
    assert torch.equal(new["2"]["bias"], torch.zeros(2, dtype=D))
    assert params["2"]["bias"] is not new["2"]["bias"] and not torch.equal(params["2"]["bias"], new["2"]["bias"])
    assert new["2"]["weight"] is w and new["0"] is params["0"]  # what the path does not cross is shared
    assert new is not params and new["2"] is not params["2"]
    assert tree.at(params, ("2", "weight"), 1.0)["2"]["weight"] == 1.0
    assert tree.at({"a.b": [1, 2]}, ("a.b", 1), 5) == {"a.b": [1, 5]}
    assert tree.at({"x": (1, 2)}, "x.0", 7) == {"x": (7, 2)}


def test_at_names_a_missing_path():
    params = _params()
    expect_clear_error(lambda: tree.at(params, "1.weight", 0), match="no key '1' at '<root>'.*keys there")
    expect_clear_error(lambda: tree.at(params, "2.scale", 0), match="no key 'scale' at '2'")
    expect_clear_error(lambda: tree.at({"a": [1, 2]}, "a.2", 0), match="no index '2'")
    expect_clear_error(lambda: tree.at({"a": [1, 2]}, "a.x", 0), match="no index 'x'")
    expect_clear_error(lambda: tree.at(params, "2.bias.0", 0), match="past a leaf")
    expect_clear_error(lambda: tree.at(params, 2, 0), match="path")
