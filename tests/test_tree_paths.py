"""Trees are matched by path, never by position: the tree helpers, ``apply_updates``, every
optimizer's ``update``, ``chain``, ``multi_transform``, ``freeze`` and weight decay pair leaves
by their path, so a tree built in another key order gives torch's result, and a tree with a
missing, extra or misshaped leaf is an error naming the path (nothing is broadcast)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import fnnet as fn
from fnnet import optim, tree

from conftest import assert_trees_close


def reordered(t):
    """The same tree with every dict's keys in reverse insertion order (flattens differently)."""
    if isinstance(t, dict):
        return {k: reordered(t[k]) for k in reversed(list(t))}
    return t


def make_params(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    return {"encoder": {"weight": r(3, 2), "bias": r(3)}, "head": {"weight": r(1, 3), "bias": r(1)}}


def test_reordered_dicts_flatten_differently_which_is_why_positions_cannot_be_trusted():
    a = {"a": torch.ones(1), "b": torch.ones(2)}
    assert tree.structure(a) != tree.structure(reordered(a))
    assert [x.shape for x in tree.leaves(a)] != [x.shape for x in tree.leaves(reordered(a))]


def test_binary_tree_ops_pair_leaves_by_path_whatever_the_key_order():
    a, b = make_params(1), make_params(2)
    rb = reordered(b)
    for got, want in [(tree.add(a, rb), lambda x, y: x + y), (tree.sub(a, rb), lambda x, y: x - y),
                      (tree.mul(a, rb), lambda x, y: x * y), (tree.axpy(0.5, a, rb), lambda x, y: 0.5 * x + y),
                      (tree.map(lambda x, y: x - 2 * y, a, rb), lambda x, y: x - 2 * y)]:
        assert tree.paths(got) == tree.paths(a)  # the first tree's structure
        for (p, g), x, y in zip(tree.flatten_with_paths(got), tree.leaves(a), tree.leaves(b)):
            assert torch.equal(g, want(x, y)), p
    assert torch.equal(tree.vdot(a, rb), tree.vdot(a, b))
    stacked = tree.stack([a, rb])
    assert torch.equal(stacked["head"]["weight"], torch.stack([a["head"]["weight"], b["head"]["weight"]]))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "axpy", "vdot", "map", "stack"])
def test_every_binary_tree_op_names_the_missing_extra_or_misshaped_path(op):
    call = {"add": tree.add, "sub": tree.sub, "mul": tree.mul, "axpy": lambda x, y: tree.axpy(2.0, x, y),
            "vdot": tree.vdot, "map": lambda x, y: tree.map(torch.add, x, y),
            "stack": lambda x, y: tree.stack([x, y])}[op]
    a = make_params()
    missing = {"encoder": dict(a["encoder"]), "head": {"weight": a["head"]["weight"]}}
    extra = {**reordered(a), "tail": torch.zeros(2)}
    with pytest.raises(ValueError, match=r"no leaf at 'head\.bias'"):
        call(a, missing)
    with pytest.raises(ValueError, match=r"leaf at 'tail' \(shape \[2\]\)"):
        call(a, extra)
    if op != "map":  # map pairs leaves of any shapes (f decides); the arithmetic does not broadcast
        wrong = reordered({**a, "head": {"weight": a["head"]["weight"], "bias": torch.zeros(3, dtype=a["head"]["bias"].dtype)}})
        with pytest.raises(ValueError, match=r"at 'head\.bias', .* shape \[1\] and .* \[3\]"):
            call(a, wrong)


def test_a_one_element_leaf_is_not_broadcast_against_three_and_dtypes_may_differ():
    with pytest.raises(ValueError, match=r"shape \[1\] and b \[3\]"):
        tree.add({"w": torch.ones(1)}, {"w": torch.ones(3)})
    out = tree.add({"w": torch.ones(2)}, {"w": torch.ones(2, dtype=torch.float64)})  # torch's promotion
    assert out["w"].dtype == torch.float64


def test_vdot_of_different_trees_is_an_error_not_a_truncated_sum():
    a = {"x": torch.ones(2), "y": torch.ones(2)}
    with pytest.raises(ValueError, match="no leaf at 'y'"):
        tree.vdot(a, {"x": torch.ones(2)})


def test_apply_updates_given_in_another_key_order_adds_each_update_to_its_own_param():
    params = {"a": torch.tensor([2.0]), "b": torch.tensor([3.0])}
    new = optim.apply_updates(params, {"b": torch.tensor([1.0]), "a": torch.tensor([-5.0])})
    assert list(new) == ["a", "b"] and new["a"].item() == -3.0 and new["b"].item() == 4.0


def test_apply_updates_refuses_unrelated_keys_and_shapes_that_would_broadcast():
    params = {"a": torch.zeros(1), "b": torch.zeros(2)}
    with pytest.raises(ValueError, match="apply_updates: updates has no leaf at 'a'"):
        optim.apply_updates(params, {"x": torch.zeros(1), "y": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"apply_updates: at 'a', params has shape \[1\] and updates \[3\]"):
        optim.apply_updates(params, {"a": torch.zeros(3), "b": torch.zeros(2)})
    with pytest.raises(ValueError, match="updates has a leaf at 'c'"):
        optim.apply_updates(params, {"a": torch.zeros(1), "b": torch.zeros(2), "c": torch.zeros(1)})


def grad_fn(params, target):
    return tree.map(lambda p, t: 2 * (p - t), params, target)   # d/dp |p - t|^2, paired by path


def torch_run(opt_cls, params, target, steps, **kw):
    """torch.optim's trajectory; its per-step scalars (ASGD's eta) in float64 like the params."""
    flat = {p: x.clone().requires_grad_() for p, x in tree.flatten_with_paths(params)}
    tflat = dict(tree.flatten_with_paths(target))
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        opt = opt_cls(list(flat.values()), **kw)
        for _ in range(steps):
            opt.zero_grad()
            sum(((x - tflat[p]) ** 2).sum() for p, x in flat.items()).backward()
            opt.step()
    finally:
        torch.set_default_dtype(old)
    return fn.interop.nest({p: x.detach() for p, x in flat.items()})


OPTIMIZERS = {
    "sgd": (lambda: optim.sgd(0.05, momentum=0.9, weight_decay=0.01), torch.optim.SGD,
            {"lr": 0.05, "momentum": 0.9, "weight_decay": 0.01}),
    "adam": (lambda: optim.adam(0.05, amsgrad=True), torch.optim.Adam, {"lr": 0.05, "amsgrad": True}),
    "adamw": (lambda: optim.adamw(0.05), torch.optim.AdamW, {"lr": 0.05}),
    "rmsprop": (lambda: optim.rmsprop(0.01, centered=True, momentum=0.5), torch.optim.RMSprop,
                {"lr": 0.01, "centered": True, "momentum": 0.5}),
    "rprop": (lambda: optim.rprop(0.01), torch.optim.Rprop, {"lr": 0.01}),
    "asgd": (lambda: optim.asgd(0.05, t0=1), torch.optim.ASGD, {"lr": 0.05, "t0": 1}),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_grads_in_another_key_order_than_the_params_follow_torch(name):
    """Grads flatten in a different order from the params (and from the state, built from the
    params) at every step; each still lands in its own param's slots."""
    make, cls, kw = OPTIMIZERS[name]
    params, target = make_params(0), make_params(1)
    opt = make()
    state = opt.init(params)
    p = params
    for i in range(4):
        g = grad_fn(p, target)
        g = reordered(g) if i % 2 == 0 else g
        updates, state = opt.update(g, state, reordered(p) if i == 1 else p)
        p = optim.apply_updates(p, updates)
    assert tree.paths(p) == tree.paths(params)
    assert_trees_close(p, torch_run(cls, params, target, 4, **kw), msg=name)


def test_an_optimizer_update_names_the_path_where_grads_params_or_state_differ():
    params = make_params()
    opt = optim.adam(0.1)
    state = opt.init(params)
    g = grad_fn(params, make_params(1))
    bad_grads = {**g, "head": {"weight": g["head"]["weight"]}}
    with pytest.raises(ValueError, match=r"adam update: .* 'head\.bias'"):
        opt.update(bad_grads, state, params)
    wrong_shape = {**g, "head": {**g["head"], "bias": torch.zeros(3, dtype=torch.float64)}}
    with pytest.raises(ValueError, match=r"at 'head\.bias', grads has shape \[3\] and params \[1\]"):
        opt.update(wrong_shape, state, params)
    other_state = opt.init({"x": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"state\['exp_avg'\] has no leaf at 'encoder\.weight'"):
        opt.update(g, other_state, params)
    with pytest.raises(ValueError, match="must be this optimizer's init"):
        opt.update(g, (state,), params)


def test_chain_refuses_a_state_tuple_of_the_wrong_length():
    params = make_params()
    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(0.1))
    state = opt.init(params)
    g = grad_fn(params, make_params(1))
    with pytest.raises(ValueError, match="chain: the state must be the tuple of the 2"):
        opt.update(g, state[1:], params)
    with pytest.raises(ValueError, match="chain: .* got 3 entries"):
        opt.update(g, (*state, {}), params)
    updates, _ = opt.update(reordered(g), state, params)   # and reordered grads pass through the chain
    assert tree.paths(updates) == tree.paths(reordered(g))


def test_multi_transform_with_reordered_grads_and_label_tree_equals_torch_param_groups():
    params, target = make_params(0), make_params(1)
    labels = reordered({"encoder": {"weight": "fast", "bias": "slow"}, "head": {"weight": "fast", "bias": "slow"}})
    opt = optim.multi_transform({"fast": optim.sgd(0.1, momentum=0.9), "slow": optim.adam(0.01)}, labels)
    state = opt.init(params)
    p = params
    for _ in range(3):
        updates, state = opt.update(reordered(grad_fn(p, target)), state, p)
        p = optim.apply_updates(p, updates)
    flat = {k: x.clone().requires_grad_() for k, x in tree.flatten_with_paths(params)}
    tflat = dict(tree.flatten_with_paths(target))
    fast = [flat["encoder.weight"], flat["head.weight"]]
    slow = [flat["encoder.bias"], flat["head.bias"]]
    t_sgd, t_adam = torch.optim.SGD(fast, lr=0.1, momentum=0.9), torch.optim.Adam(slow, lr=0.01)
    for _ in range(3):
        for o in (t_sgd, t_adam):
            o.zero_grad()
        sum(((x - tflat[k]) ** 2).sum() for k, x in flat.items()).backward()
        t_sgd.step()
        t_adam.step()
    assert_trees_close(p, fn.interop.nest({k: x.detach() for k, x in flat.items()}))


def test_freeze_and_weight_decay_masks_given_as_reordered_trees_pick_the_right_leaves():
    params = make_params()
    g = grad_fn(params, make_params(1))
    frozen = reordered({"encoder": {"weight": True, "bias": True}, "head": {"weight": False, "bias": False}})
    opt = optim.freeze(optim.adamw(0.1, weight_decay=0.5), frozen)
    updates, _ = opt.update(reordered(g), opt.init(params), params)
    new = optim.apply_updates(params, updates)
    assert torch.equal(new["encoder"]["weight"], params["encoder"]["weight"])
    assert not torch.equal(new["head"]["weight"], params["head"]["weight"])
    mask = reordered({"encoder": {"weight": True, "bias": False}, "head": {"weight": True, "bias": False}})
    decay = optim.add_decayed_weights(0.5, mask)
    out, _ = decay.update(reordered(g), decay.init(params), params)
    assert torch.equal(out["encoder"]["bias"], g["encoder"]["bias"])
    assert torch.equal(out["encoder"]["weight"], g["encoder"]["weight"] + 0.5 * params["encoder"]["weight"])
    short_mask = optim.add_decayed_weights(0.5, {"encoder": {"weight": True, "bias": False}, "head": {"weight": True}})
    with pytest.raises(ValueError, match=r"add_decayed_weights: mask has no leaf at 'head\.bias'"):
        short_mask.update(g, {}, params)


@given(perm_seed=st.integers(0, 1000), n=st.integers(1, 6))
def test_apply_updates_is_order_free_for_any_key_permutation(perm_seed, n):
    g = torch.Generator().manual_seed(perm_seed)
    params = {f"k{i}": torch.randn(i + 1, generator=g) for i in range(n)}
    updates = {f"k{i}": torch.randn(i + 1, generator=g) for i in range(n)}
    order = torch.randperm(n, generator=g).tolist()
    shuffled = {f"k{i}": updates[f"k{i}"] for i in order}
    new = optim.apply_updates(params, shuffled)
    for k in params:
        assert torch.equal(new[k], params[k] + updates[k])


def test_compiled_update_with_reordered_grads_matches_eager():
    """Under fn.jit (inductor) the matching runs at trace time; values equal eager's."""
    params, target = make_params(0, torch.float32), make_params(1, torch.float32)
    opt = optim.adam(0.05)

    def step(p, s, t):
        updates, s = opt.update(reordered(grad_fn(p, t)), s, p)
        return optim.apply_updates(p, updates), s

    pe, se = params, opt.init(params)
    pc, sc = params, opt.init(params)
    jstep = fn.jit(step)
    for _ in range(2):
        pe, se = step(pe, se, target)
        pc, sc = jstep(pc, sc, target)
    assert_trees_close(pc, pe)
