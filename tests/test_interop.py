"""Weights move between torch.nn and fnnet without loss: the course's models, built as torch
does and as fnnet users write them, give the same logits on the same weights both ways."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, assert_trees_close

import fnnet as fn
from fnnet import tree

nn = torch.nn


# -- the course's models, as torch.nn builds them ------------------------------------------

class TorchCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.mp = nn.MaxPool2d(2)
        self.fc = nn.Linear(320, 10)

    def forward(self, x):
        in_size = x.size(0)
        x = F.relu(self.mp(self.conv1(x)))
        x = F.relu(self.mp(self.conv2(x)))
        return self.fc(x.view(in_size, -1))


class TorchInceptionA(nn.Module):
    def __init__(self, in_channels):
        super().__init__()
        self.branch1x1 = nn.Conv2d(in_channels, 16, kernel_size=1)
        self.branch5x5_1 = nn.Conv2d(in_channels, 16, kernel_size=1)
        self.branch5x5_2 = nn.Conv2d(16, 24, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = nn.Conv2d(in_channels, 16, kernel_size=1)
        self.branch3x3dbl_2 = nn.Conv2d(16, 24, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = nn.Conv2d(24, 24, kernel_size=3, padding=1)
        self.branch_pool = nn.Conv2d(in_channels, 24, kernel_size=1)

    def forward(self, x):
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        branch_pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([branch1x1, branch5x5, branch3x3dbl, branch_pool], 1)


class TorchInceptionNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(88, 20, kernel_size=5)
        self.incept1 = TorchInceptionA(in_channels=10)
        self.incept2 = TorchInceptionA(in_channels=20)
        self.mp = nn.MaxPool2d(2)
        self.fc = nn.Linear(1408, 10)

    def forward(self, x):
        in_size = x.size(0)
        x = F.relu(self.mp(self.conv1(x)))
        x = self.incept1(x)
        x = F.relu(self.mp(self.conv2(x)))
        x = self.incept2(x)
        return self.fc(x.view(in_size, -1))


class TorchResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = self.conv2(y)
        return F.relu(x + y)


class TorchInceptionBranches(nn.Module):
    """The Inception block written with containers: one nn.Sequential per branch."""

    def __init__(self, c):
        super().__init__()
        self.branches = nn.ModuleList([
            nn.Conv2d(c, 16, 1),
            nn.Sequential(nn.Conv2d(c, 16, 1), nn.Conv2d(16, 24, 5, padding=2)),
            nn.Sequential(nn.Conv2d(c, 16, 1), nn.Conv2d(16, 24, 3, padding=1), nn.Conv2d(24, 24, 3, padding=1)),
            nn.Sequential(nn.AvgPool2d(3, stride=1, padding=1), nn.Conv2d(c, 24, 1)),
        ])

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], 1)


class TorchResidualSequential(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return F.relu(x + self.block(x))


# -- their fnnet twins, as a user writes them -----------------------------------------------

@dataclass(frozen=True)
class CNN(fn.Module):
    conv1: fn.Conv2d = fn.Conv2d(1, 10, kernel_size=5)
    conv2: fn.Conv2d = fn.Conv2d(10, 20, kernel_size=5)
    mp: fn.MaxPool2d = fn.MaxPool2d(2)
    fc: fn.Linear = fn.Linear(320, 10)

    def apply(self, params, x, *, key=None, train=False):
        x = fn.relu(self.mp(None, self.conv1(params["conv1"], x)))
        x = fn.relu(self.mp(None, self.conv2(params["conv2"], x)))
        return self.fc(params["fc"], x.flatten(1))


@dataclass(frozen=True)
class InceptionA(fn.Module):
    in_channels: int

    def __post_init__(self):
        c = self.in_channels
        for name, layer in {"branch1x1": fn.Conv2d(c, 16, 1), "branch5x5_1": fn.Conv2d(c, 16, 1),
                                "branch5x5_2": fn.Conv2d(16, 24, 5, padding=2), "branch3x3dbl_1": fn.Conv2d(c, 16, 1),
                                "branch3x3dbl_2": fn.Conv2d(16, 24, 3, padding=1),
                                "branch3x3dbl_3": fn.Conv2d(24, 24, 3, padding=1),
                                "branch_pool": fn.Conv2d(c, 24, 1)}.items():
            object.__setattr__(self, name, layer)

    def children(self):
        return {n: getattr(self, n) for n in ("branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1",
                                              "branch3x3dbl_2", "branch3x3dbl_3", "branch_pool")}

    def apply(self, params, x, *, key=None, train=False):
        p = params
        b1 = self.branch1x1(p["branch1x1"], x)
        b5 = self.branch5x5_2(p["branch5x5_2"], self.branch5x5_1(p["branch5x5_1"], x))
        b3 = self.branch3x3dbl_1(p["branch3x3dbl_1"], x)
        b3 = self.branch3x3dbl_3(p["branch3x3dbl_3"], self.branch3x3dbl_2(p["branch3x3dbl_2"], b3))
        bp = self.branch_pool(p["branch_pool"], F.avg_pool2d(x, 3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


@dataclass(frozen=True)
class InceptionNet(fn.Module):
    conv1: fn.Conv2d = fn.Conv2d(1, 10, kernel_size=5)
    conv2: fn.Conv2d = fn.Conv2d(88, 20, kernel_size=5)
    incept1: InceptionA = InceptionA(10)
    incept2: InceptionA = InceptionA(20)
    mp: fn.MaxPool2d = fn.MaxPool2d(2)
    fc: fn.Linear = fn.Linear(1408, 10)

    def apply(self, params, x, *, key=None, train=False):
        x = fn.relu(self.mp(None, self.conv1(params["conv1"], x)))
        x = self.incept1(params["incept1"], x)
        x = fn.relu(self.mp(None, self.conv2(params["conv2"], x)))
        x = self.incept2(params["incept2"], x)
        return self.fc(params["fc"], x.flatten(1))


@dataclass(frozen=True)
class ResidualBlock(fn.Module):
    conv1: fn.Conv2d
    conv2: fn.Conv2d

    @classmethod
    def of(cls, c):
        return cls(fn.Conv2d(c, c, 3, padding=1), fn.Conv2d(c, c, 3, padding=1))

    def apply(self, params, x, *, key=None, train=False):
        y = self.conv2(params["conv2"], fn.relu(self.conv1(params["conv1"], x)))
        return fn.relu(x + y)


@dataclass(frozen=True)
class InceptionBranches(fn.Module):
    branches: fn.Concat

    @classmethod
    def of(cls, c):
        return cls(fn.Concat(
            fn.Conv2d(c, 16, 1),
            fn.Sequential(fn.Conv2d(c, 16, 1), fn.Conv2d(16, 24, 5, padding=2)),
            fn.Sequential(fn.Conv2d(c, 16, 1), fn.Conv2d(16, 24, 3, padding=1), fn.Conv2d(24, 24, 3, padding=1)),
            fn.Sequential(fn.AvgPool2d(3, stride=1, padding=1), fn.Conv2d(c, 24, 1))))

    def apply(self, params, x, *, key=None, train=False):
        return self.branches(params["branches"], x)


CASES = {
    "course_cnn": (TorchCNN, CNN, (2, 1, 28, 28)),
    "inception_block": (lambda: TorchInceptionA(3), lambda: InceptionA(3), (2, 3, 8, 8)),
    "inception_net": (TorchInceptionNet, InceptionNet, (2, 1, 28, 28)),
    "residual_block": (lambda: TorchResidualBlock(4), lambda: ResidualBlock.of(4), (2, 4, 6, 6)),
    "inception_with_concat": (lambda: TorchInceptionBranches(3), lambda: InceptionBranches.of(3), (2, 3, 7, 7)),
}


def _x(shape, dtype, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", list(CASES))
def test_course_models_round_trip_torch_to_fnnet_to_torch_with_the_same_logits(case, dtype):
    make_torch, make_fn, shape = CASES[case]
    torch.manual_seed(0)
    tmod, model, x = make_torch().to(dtype), make_fn(), _x(shape, dtype)
    params = fn.params_from_module(tmod)
    fn.check_params(model, params)  # the twin's params tree has torch's names and shapes
    assert_close(model.apply(params, x), tmod(x).detach(), dtype, msg=f"{case}: torch -> fnnet")
    # new weights (trained, say) go back into a fresh torch module through a strict load
    params = tree.map(lambda p: p + 0.05 * _x(p.shape, dtype, seed=1), params)
    fresh = make_torch().to(dtype)
    fresh.load_state_dict(fn.to_state_dict(params))
    assert_close(fresh(x).detach(), model.apply(params, x), dtype, msg=f"{case}: fnnet -> torch")


def test_residual_combinator_params_are_named_like_a_torch_module_with_a_block_attribute():
    tmod = TorchResidualSequential(3).double()
    model = fn.Residual(fn.Sequential(fn.Conv2d(3, 3, 3, padding=1), fn.relu, fn.Conv2d(3, 3, 3, padding=1)),
                        activation=fn.relu)
    params, x = fn.params_from_module(tmod), _x((2, 3, 5, 5), torch.float64)
    fn.check_params(model, params)
    assert_close(model.apply(params, x), tmod(x).detach())
    tmod.load_state_dict(fn.to_state_dict(model.init(fn.random.key(1))))


def test_fnnet_init_loads_into_torch_and_gives_the_same_logits():
    model, tmod, x = CNN(), TorchCNN(), _x((3, 1, 28, 28), torch.float32)
    params = model.init(fn.random.key(0))
    tmod.load_state_dict(fn.to_state_dict(params))
    assert_close(tmod(x).detach(), model.apply(params, x))


def test_batchnorm_running_stats_move_with_state_from_module_and_to_state_dict():
    torch.manual_seed(0)
    tmod = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)).double()
    model = fn.Sequential(fn.Conv2d(2, 4, 3), fn.BatchNorm2d(4), fn.relu, fn.Flatten(), fn.Linear(16, 3))
    for s in range(3):  # torch trains its running statistics
        tmod(_x((5, 2, 4, 4), torch.float64, seed=s))
    tmod.eval()
    params, state = fn.params_from_module(tmod), fn.state_from_module(tmod)
    assert set(state) == {"1"} and set(state["1"]) == {"running_mean", "running_var", "num_batches_tracked"}
    x = _x((2, 2, 4, 4), torch.float64, seed=9)
    y, _ = model.apply(params, x, state=state)
    assert_close(y, tmod(x).detach())
    # and fnnet's trained statistics go back
    _, state = model.apply(params, _x((6, 2, 4, 4), torch.float64, seed=10), state=state, train=True)
    fresh = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)).double()
    fresh.load_state_dict(fn.to_state_dict(params, state))
    assert_trees_close(fn.state_from_module(fresh), state)
    assert int(fresh[1].num_batches_tracked) == 4
    with pytest.raises(ValueError, match="in both params and state"):
        fn.to_state_dict(params, {"0": {"weight": torch.zeros(1)}})


def test_copies_do_not_alias_the_modules_storage():
    tmod = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    before = {k: v.clone() for k, v in tmod.state_dict().items()}
    params, state = fn.params_from_module(tmod), fn.state_from_module(tmod)
    _, p2, b2 = fn.functional(tmod)
    for t in tree.leaves((params, state, p2, b2)):
        t.add_(1)
        assert not t.requires_grad
    for k, v in tmod.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} changed with the copy"


def test_functional_module_gives_the_modules_outputs_and_gradients():
    torch.manual_seed(0)
    tmod = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).double()
    apply_fn, params, buffers = fn.functional(tmod)
    x = _x((5, 3), torch.float64)
    assert_close(apply_fn(params, buffers, x), tmod(x).detach())
    grads = fn.grad(lambda p: apply_fn(p, buffers, x).square().sum())(params)
    tmod(x).square().sum().backward()
    assert_trees_close(grads, fn.interop.nest({n: p.grad for n, p in tmod.named_parameters()}))
    # per-example gradients with vmap equal a loop of single-example gradients
    per_ex = fn.vmap(fn.grad(lambda p, xi: apply_fn(p, buffers, xi).square().sum()), in_dims=(None, 0))(params, x)
    for i in range(5):
        gi = fn.grad(lambda p, xi=x[i]: apply_fn(p, buffers, xi).square().sum())(params)
        assert_trees_close(tree.map(lambda g, i=i: g[i], per_ex), gi)


def test_functional_batchnorm_returns_new_buffers_and_leaves_the_given_ones_alone():
    tmod = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).double()
    apply_fn, params, buffers = fn.functional(tmod, return_buffers=True)
    before = tree.map(torch.clone, buffers)
    x = _x((6, 3), torch.float64)
    y, new = apply_fn(params, buffers, x)
    assert_trees_close(buffers, before)  # not updated in place
    y_t = tmod(x)  # training mode: torch updates its own buffers
    assert_close(y, y_t.detach())
    assert_trees_close(new, fn.interop.nest(dict(tmod.named_buffers())))
    tmod.eval()
    y, same = apply_fn(params, new, x)
    assert_close(y, tmod(x).detach())
    assert_trees_close(same, new)


def test_functional_module_compiles_with_jit():
    torch.manual_seed(0)
    tmod = nn.Linear(3, 2)
    apply_fn, params, buffers = fn.functional(tmod)
    x = _x((4, 3), torch.float32)
    step = fn.jit(lambda p, b, x: fn.value_and_grad(lambda p: apply_fn(p, b, x).sum())(p))
    (v, g), (v0, g0) = step(params, buffers, x), fn.value_and_grad(lambda p: apply_fn(p, buffers, x).sum())(params)
    assert_close(v, v0)
    assert_trees_close(g, g0)


def test_functional_module_vmaps_over_stacked_params_of_several_torch_modules():
    torch.manual_seed(0)
    nets = [nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double() for _ in range(3)]
    apply_fn, _, buffers = fn.functional(nets[0])
    ensemble = tree.stack([fn.params_from_module(n) for n in nets])
    x = _x((5, 3), torch.float64)
    ys = fn.vmap(apply_fn, in_dims=(0, None, None))(ensemble, buffers, x)
    for i, net in enumerate(nets):
        assert_close(ys[i], net(x).detach())


# -- tied weights, strict functional ----------------------------------------------------------

class TiedAutoencoder(nn.Module):
    """An embedding and an output projection sharing one Parameter (weight tying)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.hidden = nn.Linear(4, 4)
        self.decode = nn.Linear(4, 7, bias=False)
        self.decode.weight = self.embed.weight

    def forward(self, i):
        return self.decode(torch.tanh(self.hidden(self.embed(i))))


def test_tied_weights_are_one_leaf_whose_gradient_is_the_total_over_both_uses():
    torch.manual_seed(0)
    tmod = TiedAutoencoder().double()
    apply_fn, params, buffers = fn.functional(tmod)
    assert fn.interop.flat(params).keys() == {"embed.weight", "hidden.weight", "hidden.bias"}
    i = torch.tensor([1, 4, 6])
    grads = fn.grad(lambda p: apply_fn(p, buffers, i).square().sum())(params)
    tmod(i).square().sum().backward()
    assert_trees_close(grads, fn.interop.nest({n: p.grad for n, p in tmod.named_parameters()}))


def test_tied_weights_round_trip_to_a_strict_load_state_dict_under_both_names():
    torch.manual_seed(0)
    tmod = TiedAutoencoder().double()
    params = fn.params_from_module(tmod)
    params = tree.map(lambda t: t + 1, params)  # trained: new values under the one leaf
    sd = fn.to_state_dict(params, module=tmod)
    assert list(sd) == list(tmod.state_dict())  # both names, in torch's order
    assert sd["decode.weight"] is sd["embed.weight"]
    fresh = TiedAutoencoder().double()
    fresh.load_state_dict(sd)  # strict
    assert fresh.decode.weight is fresh.embed.weight
    assert_trees_close(fn.params_from_module(fresh), params)
    i = torch.tensor([0, 3])
    apply_fn, _, buffers = fn.functional(fresh)
    assert_close(apply_fn(params, buffers, i), fresh(i).detach())
    # without module=, torch itself says which tied name is missing from a strict load
    with pytest.raises(RuntimeError, match="decode.weight"):
        TiedAutoencoder().double().load_state_dict(fn.to_state_dict(params))


def test_to_state_dict_with_a_module_names_a_missing_or_unexpected_key():
    tmod = nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3))
    params, state = fn.params_from_module(tmod), fn.state_from_module(tmod)
    del params["0"]["bias"]
    with pytest.raises(fn.module.ParamsError, match=r"no '0.bias'"):
        fn.to_state_dict(params, state, module=tmod)
    params = fn.params_from_module(tmod)
    params["2"] = {"weight": torch.ones(1)}
    with pytest.raises(fn.module.ParamsError, match=r"unexpected '2.weight'"):
        fn.to_state_dict(params, state, module=tmod)


@pytest.mark.parametrize("change, match", [
    (lambda p: p["0"].pop("bias"), r"params have no '0.bias'"),
    (lambda p: p["0"].update(wieght=p["0"].pop("weight")), r"params have no '0.weight'"),
    (lambda p: p["2"].update(extra=torch.zeros(2)), r"unexpected '2.extra'"),
    (lambda p: p.update({"9": {"weight": torch.zeros(2)}}), r"unexpected '9.weight'"),
    (lambda p: p["2"].update(weight=torch.zeros(2, 3)), r"'2.weight' has shape \[2, 3\], the module's is \[1, 4\]"),
])
def test_functional_is_strict_a_missing_misspelled_extra_or_misshaped_key_names_the_path(change, match):
    tmod = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    apply_fn, params, buffers = fn.functional(tmod)
    change(params)
    with pytest.raises(fn.module.ParamsError, match=match):
        apply_fn(params, buffers, torch.ones(2, 3))


def test_functional_names_a_tied_weight_given_twice_and_a_missing_buffer():
    tmod = TiedAutoencoder()
    apply_fn, params, buffers = fn.functional(tmod)
    twice = {**params, "decode": {"weight": params["embed"]["weight"]}}
    with pytest.raises(fn.module.ParamsError, match=r"'decode.weight' is tied to 'embed.weight'"):
        apply_fn(twice, buffers, torch.tensor([1]))
    bn = nn.BatchNorm1d(3)
    apply_fn, params, buffers = fn.functional(bn)
    del buffers["running_var"]
    with pytest.raises(fn.module.ParamsError, match=r"buffers have no 'running_var'"):
        apply_fn(params, buffers, torch.ones(2, 3))
