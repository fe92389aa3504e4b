"""The Module protocol and combinators: params trees named as torch.nn names them, state
threaded explicitly, and bad params or inputs caught with errors that say what was expected."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import fnnet as fn
from fnnet import random, tree

nn = torch.nn
KEY = random.key(0)


@dataclass(frozen=True)
class MLP(fn.Module):
    fc1: fn.Linear
    act: fn.Module
    fc2: fn.Linear

    def apply(self, params, x, *, key=None, train=False):
        return self.fc2(params["fc2"], self.act(params.get("act", {}), self.fc1(params["fc1"], x)))


def test_user_dataclass_init_names_children_by_field_and_skips_parameter_free_ones():
    model = MLP(fn.Linear(2, 5), fn.ReLU(), fn.Linear(5, 1))
    params = model.init(KEY)
    assert tree.paths(params) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert model.apply(params, torch.ones(4, 2)).shape == (4, 1)
    hash(model)  # frozen dataclasses: hashable, so torch.compile treats them as constants


def test_sequential_keys_are_positions_as_in_nn_sequential():
    model = fn.Sequential(fn.Linear(2, 4), fn.relu, fn.Dropout(0.1), fn.Linear(4, 1))
    torch_names = [n for n, _ in nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Dropout(0.1), nn.Linear(4, 1))
                   .named_parameters()]
    assert tree.paths(model.init(KEY)) == torch_names == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert len(model) == 4 and isinstance(model[1], fn.Lambda)


def test_sequential_threads_batchnorm_state_and_demands_it():
    model = fn.Sequential(fn.Linear(3, 4), fn.BatchNorm1d(4), fn.relu)
    assert model.stateful and not fn.Sequential(fn.Linear(3, 4)).stateful
    params, state = model.init(KEY), model.init_state()
    assert tree.paths(state) == ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
    _, new_state = model.apply(params, torch.randn(6, 3), state=state, train=True)
    assert new_state["1"]["num_batches_tracked"].item() == 1 and state["1"]["num_batches_tracked"].item() == 0
    with pytest.raises(ValueError, match="pass state=model.init_state"):
        model.apply(params, torch.randn(6, 3))


def test_residual_adds_the_shortcut_and_concat_joins_branches_on_channels():
    block = fn.Sequential(fn.Conv2d(3, 3, 3, padding=1), fn.relu)
    x = torch.randn(2, 3, 5, 5)
    res = fn.Residual(block, activation=fn.relu)
    p = res.init(KEY)
    assert torch.equal(res.apply(p, x), torch.relu(block.apply(p["block"], x) + x))
    proj = fn.Residual(fn.Conv2d(3, 6, 3, padding=1), shortcut=fn.Conv2d(3, 6, 1))
    pp = proj.init(KEY)
    assert set(pp) == {"block", "shortcut"} and proj.apply(pp, x).shape == (2, 6, 5, 5)
    cat = fn.Concat(fn.Conv2d(3, 2, 1), fn.AvgPool2d(3, 1, 1), fn.Conv2d(3, 4, 1))
    pc = cat.init(KEY)
    assert set(pc) == {"0", "2"}
    y = cat.apply(pc, x)
    assert y.shape == (2, 9, 5, 5) and torch.equal(y[:, 2:5], fn.AvgPool2d(3, 1, 1).apply({}, x))


def test_check_params_names_missing_extra_and_misshapen_paths():
    model = fn.Sequential(fn.Linear(2, 3), fn.relu, fn.Linear(3, 1))
    good = model.init(KEY)
    fn.check_params(model, good)
    bad = {"0": {"weight": torch.ones(3, 2)}, "1": {"weight": torch.ones(1, 3)},
           "2": {"weight": torch.ones(1, 4), "bias": torch.ones(1)}}
    with pytest.raises(fn.ParamsError) as err:
        fn.check_params(model, bad)
    msg = str(err.value)
    assert "missing '0.bias' (expected shape [3])" in msg
    assert "unexpected '1.weight'" in msg
    assert "'2.weight' has shape [1, 4], expected [1, 3]" in msg
    bn = fn.Sequential(fn.BatchNorm1d(3))
    with pytest.raises(fn.ParamsError, match="(?s)state do not fit.*missing '0.running_var'"):
        bn.check(bn.init(KEY), {"0": {"running_mean": torch.zeros(3)}})


def test_a_layer_given_the_wrong_params_says_which_and_what_shape_it_expected():
    layer = fn.Linear(3, 2)
    with pytest.raises(fn.ParamsError, match=r"(?s)Linear\(in_features=3.*missing 'bias' \(expected shape \[2\]\)"):
        layer.apply({"weight": torch.ones(2, 3)}, torch.ones(3))
    with pytest.raises(fn.ParamsError, match=r"'weight' has shape \[3, 2\], expected \[2, 3\]"):
        layer.apply({"weight": torch.ones(3, 2), "bias": torch.ones(2)}, torch.ones(3))
    with pytest.raises(fn.ParamsError, match=r"unexpected 'scale' \(shape \[1\]\)"):
        layer.apply({"weight": torch.ones(2, 3), "bias": torch.ones(2), "scale": torch.ones(1)}, torch.ones(3))


@pytest.mark.parametrize("layer, x, expected", [
    (fn.Linear(3, 4), torch.ones(2, 5), r"Linear\(in_features=3.*expected input \[\.\.\., 3\], got \[2, 5\]"),
    (fn.Conv2d(3, 4, 3), torch.ones(2, 2, 5, 5), r"Conv2d\(in_channels=3.*expected input \[N, 3, \*, \*\].*got \[2, 2, 5, 5\]"),
    (fn.Conv1d(3, 4, 3), torch.ones(2, 3, 4, 4), r"Conv1d.*got \[2, 3, 4, 4\]"),
    (fn.BatchNorm2d(4), torch.ones(2, 3, 5, 5), r"BatchNorm2d\(num_features=4.*4 channels.*got \[2, 3, 5, 5\]"),
    (fn.LayerNorm(6), torch.ones(2, 5), r"LayerNorm.*expected input \[\.\.\., 6\], got \[2, 5\]"),
    (fn.Embedding(10, 3), torch.ones(4), r"Embedding.*integer indices"),
    (fn.MaxPool2d(2), torch.ones(5), r"MaxPool2d.*expected input \[N, C, \*, \*\] or unbatched \[C, \*, \*\], got \[5\]"),
])
def test_a_wrong_input_size_names_the_layer_and_the_expected_shape(layer, x, expected):
    params = layer.init(KEY)
    kwargs = {"state": layer.init_state()} if layer.stateful else {}
    with pytest.raises(ValueError, match=expected):
        layer.apply(params, x, **kwargs)


def test_a_wrong_input_deep_in_a_sequential_names_the_inner_layer():
    model = fn.Sequential(fn.Linear(2, 4), fn.relu, fn.Linear(5, 1))
    with pytest.raises(ValueError, match=r"Linear\(in_features=5.*got \[3, 4\]"):
        model.apply(model.init(KEY), torch.ones(3, 2))


def test_dropout_in_training_without_a_key_is_an_error_not_global_randomness():
    with pytest.raises(ValueError, match="needs a key"):
        fn.Dropout(0.5).apply({}, torch.ones(3), train=True)


def test_param_shapes_are_computed_without_memory():
    shapes = fn.param_shapes(fn.Sequential(fn.Linear(1000, 1000), fn.relu, fn.Linear(1000, 10)))
    assert shapes["0"]["weight"] == (1000, 1000) and shapes["2"]["bias"] == (10,)


def test_summary_lists_paths_shapes_dtypes_counts_and_totals():
    model = fn.Sequential(fn.Linear(2, 3), fn.BatchNorm1d(3), fn.relu, fn.Linear(3, 1))
    params, state = model.init(KEY), model.init_state()
    text = fn.summary(params, state=state, model=model)
    lines = text.splitlines()
    assert lines[0] == "Sequential"
    assert any(line.split() == ["0.weight", "[3,", "2]", "float32", "6"] for line in lines)
    assert any(line.split()[:2] == ["1.running_mean", "(state)"] for line in lines)
    assert "total params: 19 (76 B)" in text and "total state:  7" in text
    assert str(tree.size(params)) in fn.summary(params)
    with pytest.raises(fn.ParamsError):
        fn.summary({"0": params["0"]}, model=model)


# -- the Module protocol has no silent pitfalls ----------------------------------------------------

@dataclass(frozen=True)
class Tower(fn.Module):
    stem: fn.Linear
    blocks: tuple
    heads: dict

    def apply(self, params, x, *, key=None, train=False):
        h = self.stem(params["stem"], x)
        for i, b in enumerate(self.blocks):
            h = b(params["blocks"].get(str(i), {}), h)
        return {k: head(params["heads"][k], h) for k, head in self.heads.items()}


def test_children_in_tuple_list_and_dict_fields_are_named_as_modulelist_and_moduledict_name_them():
    model = Tower(fn.Linear(2, 3), (fn.Linear(3, 3), fn.ReLU(), fn.Linear(3, 3)),
                  {"cls": fn.Linear(3, 4), "reg": fn.Linear(3, 1)})
    twin = nn.Module()
    twin.stem = nn.Linear(2, 3)
    twin.blocks = nn.ModuleList([nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3)])
    twin.heads = nn.ModuleDict({"cls": nn.Linear(3, 4), "reg": nn.Linear(3, 1)})
    params = model.init(KEY)
    assert tree.paths(params) == [n for n, _ in twin.named_parameters()]
    twin.load_state_dict(fn.to_state_dict(params))
    out = model.apply(params, torch.ones(5, 2))
    h = twin.stem(torch.ones(5, 2))
    for b in twin.blocks:
        h = b(h)
    torch.testing.assert_close(out["cls"], twin.heads["cls"](h))
    listed = Tower(fn.Linear(2, 3), [fn.Linear(3, 3)], {})
    assert tree.paths(listed.init(KEY)) == ["stem.weight", "stem.bias", "blocks.0.weight", "blocks.0.bias"]


def test_a_plain_class_with_children_set_in_init_works_like_an_nn_module():
    class Net(fn.Module):  # no @dataclass: children are its public attributes, as nn.Module's
        def __init__(self):
            self.fc1 = fn.Linear(2, 4)
            self.fc2 = fn.Linear(4, 1)

        def apply(self, params, x, *, key=None, train=False):
            return self.fc2(params["fc2"], torch.relu(self.fc1(params["fc1"], x)))

    net = Net()
    params = net.init(KEY)
    assert tree.paths(params) == ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert net.apply(params, torch.ones(3, 2)).shape == (3, 1)
    with pytest.raises(fn.ParamsError, match="missing 'fc2.bias'"):
        net.apply({"fc1": params["fc1"], "fc2": {"weight": params["fc2"]["weight"]}}, torch.ones(3, 2))


def test_fields_declared_without_dataclass_are_a_clear_error_not_an_empty_params_tree():
    class Forgot(fn.Module):
        fc: fn.Linear = fn.Linear(2, 3)

        def apply(self, params, x, *, key=None, train=False):
            return self.fc(params["fc"], x)

    with pytest.raises(TypeError, match=r"Forgot declares \['fc'\].*@dataclass\(frozen=True\)"):
        Forgot().init(KEY)

    class Unannotated(fn.Module):
        fc = fn.Linear(2, 3)

    with pytest.raises(TypeError, match=r"Unannotated declares \['fc'\]"):
        Unannotated().init(KEY)

    class SharedActivation(fn.Module):  # a parameter-free module as a class constant is fine
        act = fn.ReLU()

        def apply(self, params, x, *, key=None, train=False):
            return self.act({}, x)

    assert SharedActivation().init(KEY) == {}

    @dataclass(frozen=True)
    class Base(fn.Module):
        fc: fn.Linear

    class Sub(Base):  # a subclass's own fields need the decorator again
        head: fn.Linear = fn.Linear(3, 1)

    with pytest.raises(TypeError, match=r"Sub declares \['head'\]"):
        Sub(fn.Linear(2, 3)).init(KEY)


@dataclass(frozen=True)
class ConvBN(fn.Module):
    conv: fn.Conv2d
    bn: fn.BatchNorm2d

    def apply(self, params, x, *, state=None, key=None, train=False):
        y, bn_state = self.bn(params["bn"], self.conv(params["conv"], x), state=state["bn"], train=train)
        return torch.relu(y), {"bn": bn_state}


def test_a_user_block_with_a_batchnorm_threads_its_state_inside_sequential():
    model = fn.Sequential(ConvBN(fn.Conv2d(3, 4, 3), fn.BatchNorm2d(4)), fn.Flatten(), fn.Linear(4 * 3 * 3, 2))
    assert model.stateful
    params, state = model.init(KEY), model.init_state()
    assert tree.paths(state) == ["0.bn.running_mean", "0.bn.running_var", "0.bn.num_batches_tracked"]
    x = torch.randn(2, 3, 5, 5)
    y, new_state = model.apply(params, x, state=state, train=True)
    tmod = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(36, 2))
    ours = {**fn.to_state_dict(params), **fn.to_state_dict(state)}
    tmod.load_state_dict({k.replace("0.conv", "0").replace("0.bn", "1").replace("2.", "4."): v
                          for k, v in ours.items()})
    torch.testing.assert_close(y, tmod.train()(x))
    torch.testing.assert_close(new_state["0"]["bn"]["running_mean"], tmod[1].running_mean)


def test_a_stateful_user_block_that_forgets_state_is_a_clear_error():
    @dataclass(frozen=True)
    class NoState(fn.Module):
        bn: fn.BatchNorm1d

        def apply(self, params, x, *, key=None, train=False):
            return x

    @dataclass(frozen=True)
    class DropsState(fn.Module):
        bn: fn.BatchNorm1d

        def apply(self, params, x, *, state=None, key=None, train=False):
            return self.bn(params["bn"], x, state=state["bn"], train=train)[0]  # y only

    for block, match in ((NoState(fn.BatchNorm1d(3)), "must take state="),
                         (DropsState(fn.BatchNorm1d(3)), r"must return \(y, new_state\), got Tensor")):
        model = fn.Sequential(block)
        with pytest.raises(TypeError, match=match):
            model.apply(model.init(KEY), torch.randn(4, 3), state=model.init_state(), train=True)


def test_residual_takes_what_sequential_takes_functions_lists_and_modules():
    x = torch.randn(2, 3)
    res = fn.Residual(torch.tanh, activation=fn.ReLU())
    assert res.init(KEY) == {}
    torch.testing.assert_close(res.apply({}, x), torch.relu(torch.tanh(x) + x))
    lin = fn.Residual([fn.Linear(3, 3), fn.relu], shortcut=fn.Linear(3, 3), activation=torch.tanh)
    p = lin.init(KEY)
    assert tree.paths(p) == ["block.0.weight", "block.0.bias", "shortcut.weight", "shortcut.bias"]
    expected = torch.tanh(torch.relu(fn.Linear(3, 3).apply(p["block"]["0"], x)) + fn.Linear(3, 3).apply(p["shortcut"], x))
    torch.testing.assert_close(lin.apply(p, x), expected)
    with pytest.raises(TypeError, match="Residual block: expected an fnnet Module, a function"):
        fn.Residual(3)
    narrow = fn.Residual(fn.Linear(3, 1))  # [N, 1] + [N, 3] would broadcast: refused
    with pytest.raises(ValueError, match=r"Residual: the block gives \[2, 1\] and the shortcut \[2, 3\]"):
        narrow.apply(narrow.init(KEY), x)


def test_a_slice_of_a_sequential_is_a_sequential_keeping_torch_names():
    model = fn.Sequential(fn.Linear(2, 4), fn.relu, fn.Linear(4, 4), fn.relu, fn.Linear(4, 1))
    tail = model[2:]
    assert isinstance(tail, fn.Sequential) and len(tail) == 3
    twin = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    assert tree.paths(tail.init(KEY)) == list(twin[2:].state_dict()) == ["2.weight", "2.bias", "4.weight", "4.bias"]
    params = model.init(KEY)
    h = model[:2].apply({"0": params["0"]}, torch.ones(3, 2))
    torch.testing.assert_close(tail.apply({k: params[k] for k in ("2", "4")}, h), model.apply(params, torch.ones(3, 2)))
    assert isinstance(model[1], fn.Lambda) and model[-1] == fn.Linear(4, 1)


def test_a_user_model_with_container_fields_inits_and_applies_in_one_traced_graph():
    model = Tower(fn.Linear(2, 3), (fn.Linear(3, 3), fn.BatchNorm1d(3)), {"cls": fn.Linear(3, 4)})
    params = fn.jit(model.init, backend="eager")(KEY)  # fullgraph: introspection is constant-folded
    assert tree.paths(params) == tree.paths(model.init(KEY))
    assert all(torch.equal(a, b) for a, b in zip(tree.leaves(params), tree.leaves(model.init(KEY))))
    plain = Tower(fn.Linear(2, 3), (fn.Linear(3, 3),), {"cls": fn.Linear(3, 4)})
    p = plain.init(KEY)
    out = fn.jit(plain.apply, backend="eager")(p, torch.ones(2, 2))
    torch.testing.assert_close(out["cls"], plain.apply(p, torch.ones(2, 2))["cls"])
