"""One params check for every module: the outermost ``apply`` of any layer, cell, combinator or
user model compares the params (and state) tree with what ``init`` (``init_state``) builds, by
path, and refuses missing, extra and misshaped leaves with a ParamsError naming the path and the
expected shape. Computed once per module, made once per call (not per layer), at trace time
only under ``fn.jit``, and blind to a ``vmap`` batch axis."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pytest
import torch

import cells
import fnnet as fn
import fnnet.module as M
from fnnet import random, tree
from badinput import expect_clear_error

nn = torch.nn
KEY = random.key(0)


def mlp():
    return fn.Sequential(fn.Linear(2, 4), fn.relu, fn.Linear(4, 1))


def test_extra_keys_under_a_sequential_are_refused_with_their_path():
    model = mlp()
    params = model.init(KEY)
    params["2"]["scale"] = torch.ones(1)
    with pytest.raises(fn.ParamsError, match=r"unexpected '2.scale' \(shape \[1\]\)"):
        model.apply(params, torch.ones(3, 2))
    params = model.init(KEY)
    params["5"] = {"weight": torch.ones(1)}
    with pytest.raises(fn.ParamsError, match=r"unexpected '5.weight'"):
        model.apply(params, torch.ones(3, 2))


def test_params_under_a_parameterless_slot_are_refused_naming_the_slot():
    model = mlp()
    params = model.init(KEY)
    params["1"] = {"weight": torch.ones(4)}
    with pytest.raises(fn.ParamsError, match=r"unexpected '1.weight' \(shape \[4\]\): Lambda\(relu\) has no parameters"):
        model.apply(params, torch.ones(3, 2))
    params["1"] = {}  # an empty slot carries nothing: harmless
    assert model.apply(params, torch.ones(3, 2)).shape == (3, 1)


def test_missing_and_misshaped_params_name_the_path_and_the_expected_shape():
    model = mlp()
    params = model.init(KEY)
    del params["0"]["bias"]
    params["2"]["weight"] = torch.ones(4, 1)
    with pytest.raises(fn.ParamsError) as err:
        model.apply(params, torch.ones(3, 2))
    assert "missing '0.bias' (expected shape [4])" in str(err.value)
    assert "'2.weight' has shape [4, 1], expected [1, 4]" in str(err.value)
    with pytest.raises(fn.ParamsError, match=r"'weight' is a float, expected a tensor of shape \[4, 2\]"):
        fn.Linear(2, 4).apply({"weight": 1.0, "bias": torch.ones(4)}, torch.ones(2))
    with pytest.raises(fn.ParamsError, match=r"params for Sequential must be a nested dict of tensors, got list"):
        model.apply([params["0"], params["2"]], torch.ones(3, 2))


def test_layernorm_without_affine_refuses_weights():
    ln = fn.LayerNorm(3, elementwise_affine=False)
    assert ln.init(KEY) == {}
    with pytest.raises(fn.ParamsError, match=r"unexpected 'weight' \(shape \[3\]\)"):
        ln.apply({"weight": torch.ones(3), "bias": torch.zeros(3)}, torch.ones(2, 3))
    assert ln.apply({}, torch.ones(2, 3)).shape == (2, 3)


def test_batchnorm_state_of_the_wrong_shape_or_with_missing_entries_is_refused():
    model = fn.Sequential(fn.Linear(2, 3), fn.BatchNorm1d(3))
    params, state = model.init(KEY), model.init_state()
    x = torch.randn(5, 2)
    bad = {"1": dict(state["1"], running_mean=torch.zeros(4))}
    with pytest.raises(fn.ParamsError, match=r"(?s)state do not fit Sequential.*'1.running_mean' has shape \[4\], expected \[3\]"):
        model.apply(params, x, state=bad, train=True)
    missing = {"1": {k: v for k, v in state["1"].items() if k != "num_batches_tracked"}}
    with pytest.raises(fn.ParamsError, match=r"missing '1.num_batches_tracked' \(expected shape \[\]\)"):
        model.apply(params, x, state=missing, train=True)
    bn = fn.BatchNorm1d(3)
    with pytest.raises(fn.ParamsError, match=r"missing 'running_var'"):
        bn.apply(bn.init(KEY), torch.randn(4, 3), state={"running_mean": torch.zeros(3),
                                                          "num_batches_tracked": torch.tensor(0)})


def test_lstm_params_are_checked_by_the_same_mechanism_learned_initial_state_included():
    lstm = cells.LSTM(3, 4, num_layers=2)
    params = lstm.init(KEY)
    x = torch.randn(5, 2, 3)
    with pytest.raises(fn.ParamsError, match=r"unexpected 'weight_ih_l2' \(shape \[16, 4\]\)"):
        lstm.apply(dict(params, weight_ih_l2=torch.ones(16, 4)), x)
    learned = cells.LSTM(3, 4, learn_initial_state=True)
    p = learned.init(KEY)
    assert {"h0", "c0"} <= set(p)
    learned.apply(p, x)
    with pytest.raises(fn.ParamsError, match=r"missing 'c0' \(expected shape \[1, 4\]\)"):
        learned.apply({k: v for k, v in p.items() if k != "c0"}, x)


@dataclass(frozen=True)
class Scaled(fn.Module):
    """The documented way to add a parameter of one's own: override init, call super().init."""

    fc: fn.Linear

    def init(self, key):
        k_fc, _ = random.split(key)
        params = super().init(k_fc)
        params["scale"] = torch.full((self.fc.out_features,), 2.0, device=key.device)
        return params

    def apply(self, params, x, *, key=None, train=False):
        return self.fc(params["fc"], x) * params["scale"]


def test_a_custom_parameter_added_in_init_is_expected_by_the_check():
    model = Scaled(fn.Linear(3, 2))
    params = model.init(KEY)
    assert tree.paths(params) == ["fc.weight", "fc.bias", "scale"]
    x = torch.randn(4, 3)
    assert torch.equal(model.apply(params, x), fn.Linear(3, 2).apply(params["fc"], x) * 2.0)
    with pytest.raises(fn.ParamsError, match=r"missing 'scale' \(expected shape \[2\]\)"):
        model.apply({"fc": params["fc"]}, x)
    with pytest.raises(fn.ParamsError, match=r"'scale' has shape \[3\], expected \[2\]"):
        model.apply(dict(params, scale=torch.ones(3)), x)
    assert fn.param_shapes(model)["scale"] == (2,)


def test_the_check_runs_once_per_outermost_call_and_the_spec_is_computed_once(monkeypatch):
    calls = []
    fits = M._fits
    monkeypatch.setattr(M, "_fits", lambda spec, given: (calls.append(given), fits(spec, given))[1])
    inits = []

    @dataclass(frozen=True)
    class Counted(fn.Module):
        fc: fn.Linear

        def init(self, key):
            inits.append(1)
            return super().init(key)

        def apply(self, params, x, *, key=None, train=False):
            return self.fc(params["fc"], x)

    model = fn.Sequential(Counted(fn.Linear(2, 3)), fn.relu, fn.Linear(3, 1))
    params = model.init(KEY)
    inits.clear()
    for _ in range(3):
        model.apply(params, torch.ones(2))
    assert sum(c is params for c in calls) == 3  # one check of the whole tree per call
    assert not any(c is params["0"] or c is params["2"] for c in calls)  # children skip theirs
    assert inits == [1]  # the expected tree is built once (on the meta device), then cached


def test_a_thread_inside_an_apply_does_not_switch_the_check_off_for_another_thread():
    entered, release = threading.Event(), threading.Event()

    @dataclass(frozen=True)
    class Waits(fn.Module):
        def apply(self, params, x, *, key=None, train=False):
            entered.set()
            release.wait(10)
            return x

    t = threading.Thread(target=lambda: Waits().apply({}, torch.ones(1)))
    t.start()
    entered.wait(10)
    try:
        with pytest.raises(fn.ParamsError):
            fn.Linear(2, 3).apply({"weight": torch.ones(3, 2)}, torch.ones(2))
    finally:
        release.set()
        t.join()


def test_vmap_over_stacked_params_checks_each_member_and_unstacked_use_is_refused():
    model = mlp()
    stacked = tree.stack([model.init(random.key(i)) for i in range(3)])
    x = torch.randn(5, 2)
    ys = fn.vmap(model.apply, in_dims=(0, None))(stacked, x)
    for i in range(3):
        torch.testing.assert_close(ys[i], model.apply(tree.map(lambda t, i=i: t[i], stacked), x))
    with pytest.raises(fn.ParamsError, match=r"'0.weight' has shape \[3, 4, 2\], expected \[4, 2\]"):
        model.apply(stacked, x)


def test_jit_of_apply_compiles_in_one_graph_and_matches_eager_values_and_gradients():
    model = fn.Sequential(fn.Linear(3, 5), fn.tanh, fn.LayerNorm(5), fn.Linear(5, 2))
    params = model.init(KEY)
    x = torch.randn(4, 3)

    def loss(p, x):
        return model.apply(p, x).square().sum()

    step = fn.jit(fn.value_and_grad(loss))  # inductor, fullgraph=True: a graph break fails
    value, grads = step(params, x)
    ref_value, ref_grads = fn.value_and_grad(loss)(params, x)
    torch.testing.assert_close(value, ref_value)
    for path, g in tree.flatten_with_paths(grads):
        torch.testing.assert_close(g, dict(tree.flatten_with_paths(ref_grads))[path])
    bad = dict(params, **{"1": {"weight": torch.ones(5)}})
    with pytest.raises(Exception, match=r"(?s)params do not fit Sequential.*unexpected '1.weight'"):
        fn.jit(model.apply, backend="eager")(bad, x)


def test_check_params_and_apply_give_the_same_message():
    model = mlp()
    params = model.init(KEY)
    params["0"]["weight"] = torch.ones(2, 4)
    with pytest.raises(fn.ParamsError) as by_check:
        fn.check_params(model, params)
    with pytest.raises(fn.ParamsError) as by_apply:
        model.apply(params, torch.ones(2))
    assert str(by_check.value) == str(by_apply.value)


def test_an_input_of_another_dtype_than_the_params_is_named_at_the_outermost_call():
    model = fn.Sequential(fn.Linear(3, 4), fn.relu, fn.Linear(4, 1))
    params = model.init(random.key(0))                  # float32
    x = torch.randn(2, 3, dtype=torch.float64)
    expect_clear_error(lambda: model.apply(params, x), match=r"Sequential: the input is torch.float64 but the params "
                                                             r"are torch.float32")
    expect_clear_error(lambda: fn.Linear(3, 4).apply(params["0"], input=x), match=r"Linear\(.*\): the input is")
    with pytest.raises(TypeError, match="the input is torch.float64 but the params are torch.float32"):
        fn.jit(model.apply)(params, x)                     # before compiling, as itself
    assert model.apply(fn.tree.astype(params, torch.float64), x).dtype == torch.float64
    emb = fn.Embedding(5, 2)                                 # integer inputs are not checked
    assert emb.apply(emb.init(random.key(1)), torch.tensor([1, 2])).shape == (2, 2)


def test_a_model_mixing_param_dtypes_on_purpose_is_not_second_guessed():
    layer = fn.Linear(3, 2)
    params = layer.init(random.key(2))
    mixed = {"weight": params["weight"], "bias": params["bias"].double()}
    with pytest.raises(RuntimeError):  # torch's own error: the model asked for it
        layer.apply(mixed, torch.randn(1, 3, dtype=torch.float64))
