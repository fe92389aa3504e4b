"""User blocks with stateful children and custom parameters, as a user writes them.

A ResNet basic block (conv-bn-relu-conv-bn plus a shortcut) holds two or three BatchNorms. Written
with ``Module.call`` it threads their running statistics without plumbing; written by hand it
builds the new state dict itself. Both must give torchvision's block numbers: outputs, running
statistics (train) and gradients, in float64, eager and compiled (inductor).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import fnnet as fn
from fnnet import random, tree
from conftest import assert_close, assert_trees_close

nn = torch.nn
KEY = random.key(0)


class TorchBasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock, written out (torchvision is not a dependency)."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


@dataclass(frozen=True)
class BasicBlock(fn.Module):
    """With ``Module.call``: each line applies one child and hands the state on."""

    conv1: fn.Conv2d
    bn1: fn.BatchNorm2d
    conv2: fn.Conv2d
    bn2: fn.BatchNorm2d
    downsample: fn.Sequential | None = None

    def apply(self, params, x, *, state, key=None, train=False):
        y, state = self.call("conv1", params, x, state)
        y, state = self.call("bn1", params, y, state, train=train)
        y, state = self.call("conv2", params, torch.relu(y), state)
        y, state = self.call("bn2", params, y, state, train=train)
        if self.downsample is not None:
            x, state = self.call("downsample", params, x, state, train=train)
        return torch.relu(y + x), state


@dataclass(frozen=True)
class PlumbedBasicBlock(BasicBlock):
    """The same block threading the state by hand."""

    def apply(self, params, x, *, state, key=None, train=False):
        new = {}
        y = self.conv1(params["conv1"], x)
        y, new["bn1"] = self.bn1(params["bn1"], y, state=state["bn1"], train=train)
        y = self.conv2(params["conv2"], torch.relu(y))
        y, new["bn2"] = self.bn2(params["bn2"], y, state=state["bn2"], train=train)
        if self.downsample is not None:
            x, new["downsample"] = self.downsample(params["downsample"], x, state=state["downsample"], train=train)
        return torch.relu(y + x), new


def make(cls, inplanes, planes, stride=1):
    down = None
    if stride != 1 or inplanes != planes:
        down = fn.Sequential(fn.Conv2d(inplanes, planes, 1, stride, bias=False), fn.BatchNorm2d(planes))
    return cls(fn.Conv2d(inplanes, planes, 3, stride, 1, bias=False), fn.BatchNorm2d(planes),
               fn.Conv2d(planes, planes, 3, 1, 1, bias=False), fn.BatchNorm2d(planes), down)


def twin_of(block: BasicBlock, params, state, inplanes, planes, stride):
    """The torch block with our params and running statistics, in float64."""
    twin = TorchBasicBlock(inplanes, planes, stride).double()
    twin.load_state_dict({**fn.to_state_dict(params), **fn.to_state_dict(state)})
    return twin


def trained_state(block, params, state, x):
    """A state with non-trivial running statistics (one training step from init)."""
    return block.apply(params, x * 2 + 1, state=state, train=True)[1]


def loss_fn(block, train):
    def loss(params, state, x):
        y, new_state = block.apply(params, x, state=state, train=train)
        return (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum(), new_state
    return loss


@pytest.mark.parametrize("cls", [BasicBlock, PlumbedBasicBlock])
@pytest.mark.parametrize("inplanes,planes,stride", [(4, 4, 1), (3, 6, 2)])
@pytest.mark.parametrize("train", [True, False])
def test_basic_block_matches_torchvisions_values_state_and_gradients(cls, inplanes, planes, stride, train):
    block = make(cls, inplanes, planes, stride)
    assert block.stateful
    params = tree.astype(block.init(KEY), torch.float64)
    state = tree.map(lambda s: s.double() if s.is_floating_point() else s, block.init_state())
    x = torch.randn(3, inplanes, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    state = trained_state(block, params, state, x)
    twin = twin_of(block, params, state, inplanes, planes, stride).train(train)

    (value, new_state), grads = fn.value_and_grad(loss_fn(block, train), has_aux=True)(params, state, x)
    y = twin(x)
    expected = (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum()
    expected.backward()
    assert_close(value, expected.detach())
    assert_trees_close(grads, _nested({n: p.grad for n, p in twin.named_parameters()}), msg="grads")
    assert tree.paths(new_state) == tree.paths(block.init_state())
    assert_trees_close(new_state, _nested(dict(twin.named_buffers())), msg="running stats")
    if not train:
        assert all(a is b for a, b in zip(tree.leaves(new_state), tree.leaves(state)))


def _nested(flat: dict) -> dict:
    out: dict = {}
    for path, v in flat.items():
        *head, last = path.split(".")
        d = out
        for k in head:
            d = d.setdefault(k, {})
        d[last] = v
    return out


def test_call_leaves_the_given_state_unchanged_and_keeps_stateless_children_out_of_it():
    block = make(BasicBlock, 3, 6, 2)
    params, state = block.init(KEY), block.init_state()
    before = tree.map(torch.clone, state)
    _, new_state = block.apply(params, torch.randn(2, 3, 5, 5), state=state, train=True)
    assert_trees_close(state, before)  # no in-place update of the caller's state
    assert new_state is not state and new_state["downsample"] is not state["downsample"]
    assert tree.paths(new_state) == tree.paths(state) == [
        f"{bn}.{s}" for bn in ("bn1", "bn2", "downsample.1")
        for s in ("running_mean", "running_var", "num_batches_tracked")]
    y, same = block.call("conv1", params, torch.randn(2, 3, 5, 5), state)  # a stateless child
    assert same is state and y.shape == (2, 6, 3, 3)
    assert block.call("conv1", params, torch.randn(2, 3, 5, 5))[1] is None


def test_call_errors_name_the_block_and_the_child():
    block = make(BasicBlock, 4, 4)
    params = block.init(KEY)
    with pytest.raises(ValueError, match=r"BasicBlock.call: no child named 'bn3'; its children are "
                                         r"\['conv1', 'bn1', 'conv2', 'bn2'\]"):
        block.call("bn3", params, torch.randn(2, 4, 5, 5), block.init_state())
    with pytest.raises(ValueError, match=r"BasicBlock.call\('bn1'\): BatchNorm2d\(num_features=4.*is stateful"):
        block.call("bn1", params, torch.randn(2, 4, 5, 5), None, train=True)


def test_basic_block_compiled_once_with_inductor_matches_eager_values_state_and_gradients():
    block = make(BasicBlock, 3, 6, 2)
    params = tree.astype(block.init(KEY), torch.float64)
    state = tree.map(lambda s: s.double() if s.is_floating_point() else s, block.init_state())
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    step = fn.value_and_grad(loss_fn(block, True), has_aux=True)
    (v_e, s_e), g_e = step(params, state, x)
    (v_c, s_c), g_c = fn.jit(step)(params, state, x)
    assert_close(v_c, v_e)
    assert_trees_close(g_c, g_e, msg="grads")
    assert_trees_close(s_c, s_e, msg="state")


@dataclass(frozen=True)
class Scaled(fn.Module):
    """A custom parameter next to a child's: a learned per-feature scale."""

    fc: fn.Linear

    def init(self, key):
        k_fc, k_scale = random.split(key)
        params = super().init(k_fc)
        params["scale"] = 1.0 + 0.1 * random.normal(k_scale, (self.fc.out_features,))  # on key's device
        return params

    def apply(self, params, x, *, key=None, train=False):
        return self.fc(params["fc"], x) * params["scale"]


def test_a_custom_parameter_is_initialized_checked_and_differentiated():
    model = Scaled(fn.Linear(3, 4))
    params = model.init(KEY)
    assert tree.paths(params) == ["fc.weight", "fc.bias", "scale"]
    assert fn.param_shapes(model) == {"fc": {"weight": (4, 3), "bias": (4,)}, "scale": (4,)}
    k_fc, _ = random.split(KEY)
    # super().init splits its key over the children, as the default init of any module does
    assert_trees_close(params["fc"], fn.Linear(3, 4).init(random.split(k_fc, 1)[0]))
    x = torch.randn(5, 3)
    lin = nn.Linear(3, 4)
    lin.load_state_dict(params["fc"])
    assert_close(model.apply(params, x), lin(x) * params["scale"])
    grads = fn.grad(lambda p: model.apply(p, x).sum())(params)
    assert_close(grads["scale"], lin(x).sum(0).detach())
    with pytest.raises(fn.ParamsError, match=r"missing 'scale' \(expected shape \[4\]\)"):
        model.apply({"fc": params["fc"]}, x)
    with pytest.raises(fn.ParamsError, match=r"'scale' has shape \[3\], expected \[4\]"):
        model.apply({**params, "scale": torch.ones(3)}, x)
    inside = fn.Sequential(fn.Linear(2, 3), model)  # and as a child of a container
    p2 = inside.init(KEY)
    assert tree.paths(p2) == ["0.weight", "0.bias", "1.fc.weight", "1.fc.bias", "1.scale"]
    assert inside.apply(p2, torch.randn(5, 2)).shape == (5, 4)


def test_call_passes_the_key_as_the_child_takes_it_and_rng_is_its_other_name():
    @dataclass(frozen=True)
    class NormDrop(fn.Module):
        bn: fn.BatchNorm1d
        drop: fn.Dropout

        def apply(self, params, x, *, state, key=None, train=False):
            y, state = self.call("bn", params, x, state, train=train)
            return self.call("drop", params, y, state, rng=key, train=train)

    block = NormDrop(fn.BatchNorm1d(4), fn.Dropout(0.5))
    params, state, x, k = block.init(KEY), block.init_state(), torch.randn(8, 4), random.key(5)
    y, new_state = block.apply(params, x, state=state, key=k, train=True)
    bn_y, bn_state = fn.BatchNorm1d(4).apply(params["bn"], x, state=state["bn"], train=True)
    assert torch.equal(y, fn.Dropout(0.5).apply({}, bn_y, key=k, train=True))
    assert_trees_close(new_state, {"bn": bn_state})
    with pytest.raises(TypeError, match="got both key= and rng="):
        block.call("drop", params, x, new_state, key=k, rng=k, train=True)
