"""The ways an update runs besides eager ``_foreach``: leaf by leaf under ``vmap`` (ensembles)
and under autograd (differentiating through a step), compiled with hyperparameters as tensors,
and on low-precision params. Plus weight decay with a mask and the limits of set_hyperparams."""

from __future__ import annotations

import pytest
import torch
from badinput import expect_clear_error
from conftest import assert_trees_close

import fnnet as fn
from fnnet import optim

OPTIMIZERS = {
    "sgd": lambda lr: optim.sgd(lr, momentum=0.9, nesterov=True, weight_decay=0.01),
    "sgd_dampening": lambda lr: optim.sgd(lr, momentum=0.5, dampening=0.3),
    "adam": lambda lr: optim.adam(lr, weight_decay=0.05, amsgrad=True),
    "adamw": lambda lr: optim.adamw(lr, maximize=False),
    "adamax": lambda lr: optim.adamax(lr, weight_decay=0.02),
    "adagrad": lambda lr: optim.adagrad(lr, lr_decay=0.01, initial_accumulator_value=0.1),
    "rmsprop": lambda lr: optim.rmsprop(lr, centered=True, momentum=0.5, weight_decay=0.01),
    "rprop": lambda lr: optim.rprop(lr),
    "asgd": lambda lr: optim.asgd(lr, t0=2.0, lambd=0.01),
}


def _loss(p, target):
    return sum(((x - t) ** 2).sum() + 0.1 * torch.cos(x).sum() for x, t in zip(fn.tree.leaves(p), fn.tree.leaves(target)))


def _step(opt):
    def step(params, state, target):
        grads = fn.grad(_loss)(params, target)
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state
    return step


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_a_vmapped_ensemble_with_one_lr_per_member_matches_separate_runs(name):
    """Under vmap the update runs leaf by leaf (``_foreach`` has no batching rule); a vmapped
    state may hold one lr per member (``set_hyperparams`` with a tensor)."""
    lrs = [0.01, 0.05, 0.1]
    make = OPTIMIZERS[name]
    g = torch.Generator().manual_seed(0)
    members = [{"w": torch.randn(3, 2, generator=g, dtype=torch.float64),
                "b": torch.randn(2, generator=g, dtype=torch.float64)} for _ in lrs]
    targets = fn.tree.stack([fn.tree.map(lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype), m)
                             for m in members])
    opt = make(0.01)
    params, state = fn.tree.stack(members), fn.vmap(opt.init)(fn.tree.stack(members))
    if name != "rprop":  # rprop's lr only sets its initial step sizes
        state = optim.set_hyperparams(state, lr=torch.tensor(lrs, dtype=torch.float64))
    for _ in range(6):
        params, state = fn.vmap(_step(opt))(params, state, targets)
    for i, (p, lr) in enumerate(zip(members, lrs)):
        single = make(lr if name != "rprop" else 0.01)
        s = single.init(p)
        for _ in range(6):
            p, s = _step(single)(p, s, fn.tree.unstack(targets)[i])
        assert_trees_close(fn.tree.unstack(params)[i], p, msg=f"member {i}")
        assert_trees_close({k: v for k, v in fn.tree.unstack(state)[i].items() if k != "hyperparams"},
                           {k: v for k, v in s.items() if k != "hyperparams"}, msg=f"state {i}")


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_step_traces_as_one_graph_and_matches_eager(name):
    """fullgraph tracing (dynamo, without inductor to stay fast; the Adam test in
    test_optim_schedules runs inductor): hyperparameters and the count stay tensors."""
    from torch._dynamo.testing import CompileCounter

    opt = OPTIMIZERS[name](0.05)
    g = torch.Generator().manual_seed(2)
    target = {"w": torch.randn(3, 2, generator=g), "b": torch.randn(2, generator=g)}
    params = fn.tree.map(torch.zeros_like, target)
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = fn.jit(_step(opt), backend=counter)
    pe, se, pc, sc = params, opt.init(params), params, opt.init(params)
    for _ in range(4):
        pe, se = _step(opt)(pe, se, target)
        pc, sc = compiled(pc, sc, target)
    assert counter.frame_count == 1
    assert_trees_close(pc, pe, msg="params")
    assert_trees_close(sc, se, msg="state")


def test_an_update_is_differentiable_through_its_inputs():
    """Meta-gradients: d loss(params after one Adam step) / d params, via fn.grad (the update
    runs leaf by leaf, out of place), agrees with central finite differences."""
    opt = optim.adam(0.1, weight_decay=0.1)
    target = {"w": torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)}

    def after_two_steps(p):
        state = opt.init(p)
        for _ in range(2):
            updates, state = opt.update(fn.grad(_loss)(p, target), state, p)
            p = optim.apply_updates(p, updates)
        return _loss(p, target)

    w = torch.tensor([1.0, -2.0, 0.7], dtype=torch.float64)
    meta = fn.grad(after_two_steps)({"w": w})["w"]
    eps = 1e-6
    fd = torch.stack([(after_two_steps({"w": w + eps * e}) - after_two_steps({"w": w - eps * e})) / (2 * eps)
                      for e in torch.eye(3, dtype=torch.float64)])
    torch.testing.assert_close(meta, fd, rtol=1e-6, atol=1e-8)


def test_changing_lr_in_a_compiled_step_neither_recompiles_nor_diverges_from_eager():
    from torch._dynamo.testing import CompileCounter

    opt = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(0.05, weight_decay=0.01))
    target = {"w": torch.randn(4, 3), "b": torch.randn(3)}
    params = fn.tree.map(torch.zeros_like, target)
    counter = CompileCounter()
    torch._dynamo.reset()
    compiled = fn.jit(_step(opt), backend=counter)
    pe, se = params, opt.init(params)
    pc, sc = params, opt.init(params)
    for i in range(6):
        if i == 3:
            se, sc = optim.set_hyperparams(se, lr=0.01), optim.set_hyperparams(sc, lr=0.01)
        pe, se = _step(opt)(pe, se, target)
        pc, sc = compiled(pc, sc, target)
    assert counter.frame_count == 1, f"compiled {counter.frame_count} times"
    assert_trees_close(pc, pe, msg="params")


def test_low_precision_params_keep_float32_hyperparameters_and_follow_torch():
    """0.999 in bfloat16 is 0.996 and 1e-8 in float16 is 0: hyperparameters are held in float32
    (torch computes with Python floats, in float32 for these dtypes)."""
    opt = optim.adam(1e-2)
    w = torch.linspace(-1, 1, 8).to(torch.bfloat16)
    state = opt.init({"w": w})
    assert state["hyperparams"]["beta2"].dtype == torch.float32
    assert state["hyperparams"]["beta2"].item() == pytest.approx(0.999, rel=1e-7)
    tw = w.clone().requires_grad_()
    topt = torch.optim.Adam([tw], 1e-2)
    params = {"w": w}
    for _ in range(5):
        grads = {"w": (params["w"].float() ** 3).to(torch.bfloat16)}
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
        tw.grad = (tw.detach().float() ** 3).to(torch.bfloat16)
        topt.step()
        assert params["w"].dtype == torch.bfloat16
        torch.testing.assert_close(params["w"], tw.detach(), rtol=1.6e-2, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_adam_on_half_precision_params_with_large_grads_moves_every_element_like_torch(dtype):
    """Adam's denominator is sqrt(v) / (bias correction * step size): in float16 that overflows
    for |g| of about 1e3 and the update becomes -0 — a param silently not moving. In float16
    the step follows torch's order of operations instead."""
    opt = optim.adam(1e-3)
    params = {"w": torch.zeros(4, dtype=dtype)}
    grads = {"w": torch.tensor([1000.0, 1.0, -3000.0, 0.0], dtype=dtype)}
    state = opt.init(params)
    tw = params["w"].clone().requires_grad_()
    topt = torch.optim.Adam([tw], 1e-3)
    for _ in range(3):
        updates, state = opt.update(grads, state, params)
        params = optim.apply_updates(params, updates)
        tw.grad = grads["w"].clone()
        topt.step()
    # the 0 gradient: eps = 1e-8 is 0 in float16, so 0 / 0 is NaN there — in torch as here
    torch.testing.assert_close(params["w"], tw.detach(), rtol=1e-2, atol=1e-5, equal_nan=True)
    assert (params["w"][[0, 1, 2]] != 0).all()


def test_add_decayed_weights_with_a_mask_equals_torch_groups_without_decay_on_biases():
    g = torch.Generator().manual_seed(1)
    params = {"w": torch.randn(3, 2, generator=g, dtype=torch.float64),
              "bias": torch.randn(2, generator=g, dtype=torch.float64)}
    target = fn.tree.map(lambda x: torch.randn(x.shape, generator=g, dtype=x.dtype), params)
    opt = optim.chain(optim.add_decayed_weights(0.1, mask=lambda path, p: not path.endswith("bias")),
                      optim.sgd(0.05, momentum=0.9))
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    topt = torch.optim.SGD([{"params": [leaves["w"]], "weight_decay": 0.1}, {"params": [leaves["bias"]]}],
                           0.05, momentum=0.9)
    state = opt.init(params)
    for _ in range(10):
        params, state = _step(opt)(params, state, target)
        topt.zero_grad()
        _loss(leaves, target).backward()
        topt.step()
    assert_trees_close(params, {k: v.detach() for k, v in leaves.items()})


def test_set_hyperparams_refuses_what_the_optimizer_does_not_hold():
    """A weight_decay or momentum of 0 decides which arithmetic runs, so it is not held: setting
    it later would be silently ignored, hence an error; likewise a scheduled lr."""
    params = {"w": torch.zeros(2)}
    with pytest.raises(KeyError, match="weight_decay"):
        optim.set_hyperparams(optim.adam(0.1).init(params), weight_decay=0.1)
    with pytest.raises(KeyError, match="momentum"):
        optim.set_hyperparams(optim.sgd(0.1).init(params), momentum=0.9)
    with pytest.raises(KeyError, match="lr"):
        optim.set_hyperparams(optim.sgd(optim.exponential_lr(0.1, 0.9)).init(params), lr=0.2)
    state = optim.set_hyperparams(optim.adam(0.1, weight_decay=0.01).init(params), weight_decay=0.2)
    assert state["hyperparams"]["weight_decay"].item() == pytest.approx(0.2)


# -- degenerate hyperparameters: lr = 0 (held, scheduled, per member) leaves params unchanged, as torch

ZERO_LR = {
    "sgd": (lambda lr: optim.sgd(lr, momentum=0.9, weight_decay=0.1),
            lambda ps, lr: torch.optim.SGD(ps, lr, momentum=0.9, weight_decay=0.1)),
    "adam": (lambda lr: optim.adam(lr, weight_decay=0.1, amsgrad=True),
             lambda ps, lr: torch.optim.Adam(ps, lr, weight_decay=0.1, amsgrad=True)),
    "adamw": (lambda lr: optim.adamw(lr, weight_decay=0.1), lambda ps, lr: torch.optim.AdamW(ps, lr, weight_decay=0.1)),
    "adamax": (lambda lr: optim.adamax(lr), lambda ps, lr: torch.optim.Adamax(ps, lr)),
    "adagrad": (lambda lr: optim.adagrad(lr), lambda ps, lr: torch.optim.Adagrad(ps, lr)),
    "rmsprop": (lambda lr: optim.rmsprop(lr, centered=True), lambda ps, lr: torch.optim.RMSprop(ps, lr, centered=True)),
    "asgd": (lambda lr: optim.asgd(lr), lambda ps, lr: torch.optim.ASGD(ps, lr)),
}


def _params_and_grads(dtype=torch.float32, n=3):
    """Params and ``n`` steps of grads, some elements exactly 0 (where Adam's v is 0: 0/0 if lr
    were divided into the denominator)."""
    g = torch.Generator().manual_seed(3)
    params = {"w": torch.randn(4, 3, generator=g, dtype=dtype), "b": torch.randn(3, generator=g, dtype=dtype)}
    grads = [fn.tree.map(lambda x: torch.randn(x.shape, generator=g, dtype=dtype) * (torch.arange(x.numel()).reshape(x.shape) % 3 != 0), params)
             for _ in range(n)]
    return params, grads


@pytest.mark.parametrize("name", ZERO_LR)
def test_lr_zero_leaves_params_exactly_unchanged_as_torch_does(name):
    ours, theirs = ZERO_LR[name]
    params, grads = _params_and_grads()
    opt = ours(0.0)
    p, state = params, opt.init(params)
    for g in grads:
        updates, state = opt.update(g, state, p)
        p = optim.apply_updates(p, updates)
    tp = {k: v.clone().requires_grad_() for k, v in params.items()}
    topt = theirs(list(tp.values()), 0.0)
    for g in grads:
        for k, v in tp.items():
            v.grad = g[k].clone()
        topt.step()
    for k in params:
        assert torch.equal(p[k], params[k]), k
        assert torch.equal(tp[k].detach(), params[k]), k   # torch: the same


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop"])
def test_lr_zero_for_one_member_of_a_vmapped_ensemble_leaves_that_member_unchanged(name):
    ours, _ = ZERO_LR[name]
    params, grads = _params_and_grads()
    members = fn.tree.stack([params, params])
    opt = ours(0.1)
    state = optim.set_hyperparams(fn.vmap(opt.init)(members), lr=torch.tensor([0.0, 0.1]))

    def step(p, s, g):
        updates, s = opt.update(g, s, p)
        return optim.apply_updates(p, updates), s

    for g in grads:
        members, state = fn.vmap(step, in_dims=(0, 0, None))(members, state, g)
    first, second = fn.tree.unstack(members)
    assert all(torch.equal(first[k], params[k]) for k in params)
    assert not torch.equal(second["w"], params["w"])


def test_schedules_that_reach_zero_leave_params_unchanged_and_follow_torch_until_then():
    params, grads = _params_and_grads(torch.float64, n=4)
    # cosine at T_max = 3: the 4th update has lr exactly 0
    opt = optim.adamw(optim.cosine_annealing_lr(0.1, T_max=3), weight_decay=0.1)
    p, state, traj = params, opt.init(params), []
    for g in grads:
        updates, state = opt.update(g, state, p)
        p = optim.apply_updates(p, updates)
        traj.append(p)
    assert all(torch.equal(traj[3][k], traj[2][k]) for k in params)
    tp = {k: v.clone().requires_grad_() for k, v in params.items()}
    topt = torch.optim.AdamW(list(tp.values()), 0.1, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=3)
    for g, ours in zip(grads, traj):
        for k, v in tp.items():
            v.grad = g[k].clone()
        topt.step()
        sched.step()
        assert_trees_close(ours, {k: v.detach() for k, v in tp.items()})
    # a linear warm-up from 0 (start_factor=0: torch's LinearLR refuses it): the first update is a no-op
    opt = optim.adam(optim.linear_lr(0.1, start_factor=0.0, total_iters=4))
    updates, _ = opt.update(grads[0], opt.init(params), params)
    assert all(torch.equal(optim.apply_updates(params, updates)[k], params[k]) for k in params)


def test_compiled_steps_with_lr_reaching_zero_leave_params_unchanged_and_equal_eager():
    """fn.jit (inductor): the schedule and a held lr set to 0 are tensors in the graph."""
    params, grads = _params_and_grads(n=3)
    for opt, zero_at in [(optim.adamw(optim.cosine_annealing_lr(0.1, T_max=2), weight_decay=0.1), 2),
                         (optim.adam(0.1, weight_decay=0.1), 1)]:
        def step(p, s, g, opt=opt):
            updates, s = opt.update(g, s, p)
            return optim.apply_updates(p, updates), s

        jstep = fn.jit(step)
        pe, se = params, opt.init(params)
        pc, sc = params, opt.init(params)
        for i, g in enumerate(grads):
            if zero_at == 1 and i == 1:  # set_hyperparams(lr=0): no recompile, held as a tensor
                se, sc = optim.set_hyperparams(se, lr=0.0), optim.set_hyperparams(sc, lr=0.0)
            before = pc
            pe, se = step(pe, se, g)
            pc, sc = jstep(pc, sc, g)
            assert_trees_close(pc, pe)
            if i >= zero_at:
                assert all(torch.equal(pc[k], before[k]) for k in params), (opt, i)


# -- set_hyperparams on param groups: only the named group changes; an unnamed change must be unambiguous

def test_set_hyperparams_changes_only_the_named_group_and_refuses_an_ambiguous_change():
    params = {"w": torch.ones(2), "b": torch.ones(1)}
    opt = optim.multi_transform({"decay": optim.adamw(0.1), "no_decay": optim.adam(0.1)},
                                lambda path, p: "no_decay" if path == "b" else "decay")
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"'lr' is held by 2 optimizer states .*group="):
        optim.set_hyperparams(state, lr=0.01)
    new = optim.set_hyperparams(state, group="decay", lr=0.01)
    assert new["decay"]["hyperparams"]["lr"].item() == pytest.approx(0.01)
    assert new["no_decay"]["hyperparams"]["lr"].item() == pytest.approx(0.1)
    # weight_decay is held by the adamw group only: unambiguous without a name
    new = optim.set_hyperparams(state, weight_decay=0.5)
    assert new["decay"]["hyperparams"]["weight_decay"].item() == 0.5
    with pytest.raises(KeyError, match="no optimizer state under group 'nope'"):
        optim.set_hyperparams(state, group="nope", lr=0.01)
    # in a chain, a position names the group; freeze's trainable group is "train"
    chained = optim.chain(optim.clip_by_global_norm(1.0), opt).init(params)
    assert optim.set_hyperparams(chained, group="no_decay", lr=0.2)[1]["no_decay"]["hyperparams"]["lr"].item() \
        == pytest.approx(0.2)
    frozen = optim.freeze(optim.adam(0.1), lambda path, p: path == "b").init(params)
    assert optim.set_hyperparams(frozen, lr=0.3)["train"]["hyperparams"]["lr"].item() == pytest.approx(0.3)


# -- frozen layers: Embedding.from_pretrained(freeze=True) stays frozen under weight decay, as in torch

def test_a_pretrained_frozen_embedding_stays_unchanged_under_adamw_weight_decay_like_torch():
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(10, 4, generator=g, dtype=torch.float64)
    emb, emb_params = fn.Embedding.from_pretrained(vectors)          # freeze=True by default
    model = fn.Sequential(emb, fn.Linear(4, 2))
    params = {"0": emb_params, "1": fn.tree.map(lambda x: x.double(), model[1].init(fn.random.key(1)))}
    idx = torch.tensor([[1, 2, 3], [4, 5, 1]])
    target = torch.randn(2, 3, 2, generator=g, dtype=torch.float64)
    loss = lambda p: ((model.apply(p, idx) - target) ** 2).mean()
    assert optim.frozen_paths(model) == ["0.weight"]

    opt = optim.freeze(optim.adamw(0.1, weight_decay=0.5), model)
    p, state = params, opt.init(params)
    for _ in range(3):
        updates, state = opt.update(fn.grad(loss)(p), state, p)
        p = optim.apply_updates(p, updates)

    tm = torch.nn.Sequential(torch.nn.Embedding.from_pretrained(vectors.clone()), torch.nn.Linear(4, 2).double())
    tm[1].load_state_dict(fn.to_state_dict(params["1"]))
    topt = torch.optim.AdamW(tm.parameters(), 0.1, weight_decay=0.5)   # skips the frozen table
    for _ in range(3):
        topt.zero_grad()
        ((tm(idx) - target) ** 2).mean().backward()
        topt.step()
    assert torch.equal(p["0"]["weight"], vectors) and torch.equal(tm[0].weight, vectors)
    assert_trees_close(p["1"], {k: v.detach() for k, v in fn.params_from_module(tm[1]).items()})
    # without freeze the decoupled decay would shrink the pretrained table: the reason for the helper
    plain = optim.adamw(0.1, weight_decay=0.5)
    u, _ = plain.update(fn.grad(loss)(params), plain.init(params), params)
    assert not torch.equal(optim.apply_updates(params, u)["0"]["weight"], vectors)
    with pytest.raises(ValueError, match=r"freeze: the model marks \['0\.weight'\] frozen"):
        opt.init({"1": params["1"]})


@pytest.mark.parametrize("make", [lambda: optim.adam(1e-3), lambda: optim.sgd(0.1, momentum=0.9),
                                  lambda: optim.nadam(1e-3)], ids=["adam", "sgd", "nadam"])
def test_a_gradient_of_another_dtype_than_its_param_is_named_by_path(make):
    params = {"a": {"w": torch.zeros(2, dtype=torch.float64)}, "b": torch.zeros(3)}
    opt = make()
    state = opt.init(params)
    grads = {"b": torch.ones(3), "a": {"w": torch.ones(2)}}  # a.w float32 against a float64 param
    expect_clear_error(lambda: opt.update(grads, state, params), match=r"'a\.w' is torch\.float32, its param is torch\.float64")
