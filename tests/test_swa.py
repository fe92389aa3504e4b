"""Weight averaging equals ``torch.optim.swa_utils``: ``averaged`` is ``AveragedModel`` (SWA's
running mean, the EMA of ``get_ema_multi_avg_fn``, a custom ``avg_fn``; buffers averaged or kept
in sync), ``swa_lr`` is ``SWALR`` step for step, and ``update_bn`` recomputes BatchNorm statistics
as torch's does; an update compiles and equals eager."""

from __future__ import annotations

import warnings

import pytest
import torch
from badinput import expect_clear_error
from conftest import assert_trees_close
from hypothesis import given
from hypothesis import strategies as st
from torch.optim import swa_utils

import fnnet as fn
from fnnet import optim, random

D = torch.float64


def _torch_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(),
                               torch.nn.Linear(4, 2)).to(D)


def _randomize(model: torch.nn.Module, g: torch.Generator) -> None:
    """New weights and buffers, as training would leave them."""
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=D))
        bn = model[1]
        bn.running_mean.copy_(torch.randn(4, generator=g, dtype=D))
        bn.running_var.copy_(torch.rand(4, generator=g, dtype=D) + 0.5)
        bn.num_batches_tracked.copy_(torch.randint(0, 100, (), generator=g))


@given(kind=st.sampled_from(["swa", "ema", "custom"]), decay=st.sampled_from([0.0, 0.5, 0.9, 0.999, 1.0]),
       use_buffers=st.booleans(), updates=st.integers(0, 6), seed=st.integers(0, 2 ** 16))
def test_averaged_equals_averaged_model(kind, decay, use_buffers, updates, seed):
    """After each ``update_parameters``, the averaged params (and buffers: averaged with
    ``use_buffers``, else the model's) equal ``AveragedModel``'s; the first update copies."""
    model = _torch_model()
    if kind == "swa":
        twin, swa = swa_utils.AveragedModel(model, use_buffers=use_buffers), optim.averaged(use_buffers=use_buffers)
    elif kind == "ema":
        twin = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(decay),
                                       use_buffers=use_buffers)
        swa = optim.averaged("ema", decay=decay, use_buffers=use_buffers)
    else:  # torch's own per-leaf function as avg_fn
        f = swa_utils.get_ema_avg_fn(decay)
        twin, swa = swa_utils.AveragedModel(model, avg_fn=f, use_buffers=use_buffers), optim.averaged(f, use_buffers=use_buffers)
    avg = swa.init(fn.params_from_module(model), fn.state_from_module(model))
    g = torch.Generator().manual_seed(seed)
    for _ in range(updates):
        _randomize(model, g)
        twin.update_parameters(model)
        params, state = fn.params_from_module(model), fn.state_from_module(model)
        before = {k: v.clone() for k, v in fn.interop.flat(params).items()}
        avg = swa.update(avg, params, state)
        assert all(torch.equal(v, fn.interop.flat(params)[k]) for k, v in before.items()), "params changed"
    assert int(avg["n_averaged"]) == int(twin.n_averaged) == updates
    assert_trees_close(swa.params(avg), fn.params_from_module(twin.module), msg="averaged params")
    expected_state = fn.state_from_module(twin.module)
    got_state = swa.state(avg)
    assert_trees_close(got_state, expected_state, msg="averaged buffers")
    assert got_state["1"]["num_batches_tracked"].dtype == torch.int64
    assert torch.equal(got_state["1"]["num_batches_tracked"], expected_state["1"]["num_batches_tracked"])


def test_averaged_without_state_and_with_an_empty_tree():
    swa = optim.averaged()
    avg = swa.init({})
    avg = swa.update(swa.update(avg, {}), {})
    assert swa.params(avg) == {} and int(avg["n_averaged"]) == 2
    avg = swa.init({"w": torch.zeros(2, dtype=D)})
    for v in (1.0, 2.0, 6.0):
        avg = swa.update(avg, {"w": torch.full((2,), v, dtype=D)})
    torch.testing.assert_close(swa.params(avg)["w"], torch.full((2,), 3.0, dtype=D))


def test_an_averaged_update_compiles_and_equals_eager():
    """The first update (a copy) and later ones (the EMA) from one graph, with default inductor."""
    ema = optim.averaged("ema", decay=0.9)
    params = {"a": torch.randn(3, 2, dtype=D), "b": {"c": torch.randn(4, dtype=D)}}
    compiled = fn.jit(ema.update)
    eager_avg = compiled_avg = ema.init(params)
    for k in range(4):
        p = fn.tree.map(torch.add, params, fn.tree.full_like(params, k))
        eager_avg, compiled_avg = ema.update(eager_avg, p), compiled(compiled_avg, p)
        assert_trees_close(compiled_avg["params"], eager_avg["params"], msg=f"update {k}")
    assert int(compiled_avg["n_averaged"]) == 4


@given(lr=st.sampled_from([0.1, 1.0, 3e-4, 0.0]), target=st.sampled_from([0.0, 0.05, 0.5]),
       anneal_epochs=st.integers(0, 15), anneal_strategy=st.sampled_from(["cos", "linear"]))
def test_swa_lr_equals_swalr_step_for_step(lr, target, anneal_epochs, anneal_strategy):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = swa_utils.SWALR(opt, target, anneal_epochs=anneal_epochs, anneal_strategy=anneal_strategy)
    ours = optim.swa_lr(lr, target, anneal_epochs=anneal_epochs, anneal_strategy=anneal_strategy)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for count in range(anneal_epochs + 20):
            expected = opt.param_groups[0]["lr"]
            assert ours(count) == pytest.approx(expected, rel=1e-9, abs=1e-15), count
            assert float(ours(torch.tensor(count))) == pytest.approx(expected, rel=1e-9, abs=1e-15), count
            opt.step()
            sched.step()


# -- update_bn --------------------------------------------------------------------------------------

def _bn_models(m_outer, m_inner):
    model = fn.Sequential(fn.Sequential(fn.Linear(3, 5), fn.BatchNorm1d(5, momentum=m_inner)), fn.relu,
                          fn.Linear(5, 4), fn.BatchNorm1d(4, momentum=m_outer))
    twin = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.BatchNorm1d(5, momentum=m_inner)),
                               torch.nn.ReLU(), torch.nn.Linear(5, 4), torch.nn.BatchNorm1d(4, momentum=m_outer)).to(D)
    params = fn.tree.astype(model.init(random.key(1)), D)
    g = torch.Generator().manual_seed(3)
    state = fn.tree.map(lambda x: torch.rand(x.shape, generator=g, dtype=D) if x.is_floating_point()
                        else torch.full_like(x, 7), model.init_state())
    twin.load_state_dict(fn.to_state_dict(params, state))
    return model, params, state, twin


@given(m_outer=st.sampled_from([None, 0.1, 0.5, 1.0]), m_inner=st.sampled_from([None, 0.3]),
       sizes=st.lists(st.integers(2, 9), min_size=0, max_size=5), tuples=st.booleans())
def test_update_bn_equals_torchs(m_outer, m_inner, sizes, tuples):
    """Running statistics (the cumulative average over the batches), ``num_batches_tracked`` (the
    number of batches) and the model's own momentum afterwards: torch's, float64, to rounding."""
    model, params, state, twin = _bn_models(m_outer, m_inner)
    g = torch.Generator().manual_seed(len(sizes))
    xs = [torch.randn(n, 3, generator=g, dtype=D) for n in sizes]
    batches = [(x, torch.zeros(len(x))) for x in xs] if tuples else xs
    new = optim.update_bn(model, params, state, batches)
    twin.eval()
    swa_utils.update_bn(batches, twin)
    assert_trees_close(new, fn.state_from_module(twin), msg="state")
    assert twin[3].momentum == m_outer and not twin.training
    assert int(new["3"]["num_batches_tracked"]) == len(sizes)
    assert_trees_close(params, fn.tree.astype(model.init(random.key(1)), D), msg="params untouched")


def test_update_bn_without_batch_norm_returns_the_state_and_refuses_momentum_0():
    model = fn.Sequential(fn.Linear(3, 2), fn.relu)
    params = model.init(random.key(0))
    assert optim.update_bn(model, params, {}, [torch.randn(4, 3)]) == {}
    frozen = fn.Sequential(fn.Linear(3, 2), fn.BatchNorm1d(2, momentum=0.0))
    expect_clear_error(lambda: optim.update_bn(frozen, frozen.init(random.key(0)), frozen.init_state(),
                                               [torch.randn(4, 3)]), match="momentum=0")


@pytest.mark.parametrize("call, match", [
    (lambda: optim.averaged("mean"), "avg_fn"),
    (lambda: optim.averaged(0.99), "avg_fn"),
    (lambda: optim.averaged("ema", decay=1.5), "decay"),
    (lambda: optim.averaged(use_buffers=1), "use_buffers"),
    (lambda: optim.averaged().update({"w": torch.zeros(2)}, {"w": torch.zeros(2)}), "init"),
    (lambda: optim.averaged().update(optim.averaged().init({"w": torch.zeros(2)}), {"v": torch.zeros(2)}), "no leaf at 'w'"),
    (lambda: optim.averaged().update(optim.averaged().init({"w": torch.zeros(2)}), {"w": torch.zeros(3)}), "shape"),
    (lambda: optim.averaged().update(optim.averaged().init({"w": torch.zeros(2)}), {"w": torch.zeros(2)},
                                     {"s": torch.zeros(1)}), "state"),
    (lambda: optim.swa_lr(0.1, 0.05, anneal_epochs=-1), "anneal_epochs"),
    (lambda: optim.swa_lr(0.1, 0.05, anneal_epochs=2.0), "anneal_epochs"),
    (lambda: optim.swa_lr(0.1, 0.05, anneal_strategy="exp"), "anneal_strategy"),
    (lambda: optim.swa_lr(0.1, -0.05), "swa_lr"),
    (lambda: optim.update_bn(torch.nn.Linear(2, 2), {}, {}, []), "Module"),
    (lambda: optim.update_bn(fn.BatchNorm1d(2), {}, {}, []), "running_mean"),
])
def test_bad_arguments_are_refused(call, match):
    expect_clear_error(call, match=match)
