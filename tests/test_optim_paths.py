"""The ways an update runs besides eager ``_foreach``: leaf by leaf under ``vmap`` (ensembles)
and under autograd (differentiating through a step), compiled with hyperparameters as tensors,
and on low-precision params. Plus weight decay with a mask and the limits of set_hyperparams."""

from __future__ import annotations

import pytest
import torch
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
