"""Initial params follow torch.nn's default distributions: the same bounds and moments as a
freshly built torch.nn module, drawn from an explicit key."""

from __future__ import annotations

import math

import pytest
import torch

import fnnet as fn

nn = torch.nn

LAYERS = [
    (fn.Linear(300, 200), nn.Linear(300, 200)),
    (fn.Conv2d(16, 32, 3), nn.Conv2d(16, 32, 3)),
    (fn.Conv1d(6, 40, 5, groups=2), nn.Conv1d(6, 40, 5, groups=2)),
    (fn.ConvTranspose2d(32, 16, 4), nn.ConvTranspose2d(32, 16, 4)),
]


def uniform_bound(shape) -> float:
    fan_in = shape[1] * math.prod(shape[2:])  # torch.nn.init's fan_in: dim 1 times the receptive field
    return 1 / math.sqrt(fan_in)


@pytest.mark.parametrize("layer, tmod", LAYERS, ids=lambda v: type(v).__name__)
def test_weights_and_biases_are_uniform_within_1_over_sqrt_fan_in_like_torch(layer, tmod):
    params = layer.init(fn.random.key(0))
    assert {n: p.shape for n, p in tmod.named_parameters()} == {n: p.shape for n, p in fn.interop.flat(params).items()}
    bound = uniform_bound(tmod.weight.shape)
    for name in ("weight", "bias"):
        ours, theirs = params[name], getattr(tmod, name).detach()
        assert ours.dtype == theirs.dtype == torch.get_default_dtype()
        n = ours.numel()
        for x in (ours, theirs):
            assert x.abs().max() <= bound
            # U(-b, b): mean 0 (sd b/sqrt(3n)), variance b^2/3 (sd of the estimate ~ b^2 * 0.3/sqrt(n))
            assert abs(x.mean().item()) < 5 * bound / math.sqrt(3 * n)
            assert abs(x.var().item() - bound**2 / 3) < 5 * 0.3 * bound**2 / math.sqrt(n)
        if n > 1000:  # the range is covered: the extremes are close to the bounds
            assert ours.max() > 0.99 * bound and ours.min() < -0.99 * bound


def test_embedding_is_standard_normal_with_the_padding_row_zero():
    w = fn.Embedding(1000, 64, padding_idx=3).init(fn.random.key(1))["weight"]
    assert torch.equal(w[3], torch.zeros(64))
    rest = torch.cat([w[:3], w[4:]]).flatten()
    n = rest.numel()
    assert abs(rest.mean().item()) < 5 / math.sqrt(n)
    assert abs(rest.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert torch.equal(nn.Embedding(10, 4, padding_idx=3).weight[3], torch.zeros(4))


@pytest.mark.parametrize("layer, tmod", [(fn.BatchNorm2d(5), nn.BatchNorm2d(5)), (fn.LayerNorm(5), nn.LayerNorm(5)),
                                          (fn.GroupNorm(1, 5), nn.GroupNorm(1, 5))], ids=str)
def test_norm_layers_start_as_the_identity_like_torch(layer, tmod):
    params = layer.init(fn.random.key(0))
    for n, p in tmod.named_parameters():
        assert torch.equal(params[n], p.detach())
    if layer.stateful:
        state = layer.init_state()
        for n, b in tmod.named_buffers():
            assert torch.equal(state[n], b) and state[n].dtype == b.dtype


def test_init_is_a_function_of_the_key():
    layer = fn.Conv2d(3, 8, 3)
    a, b, c = (layer.init(fn.random.key(s)) for s in (7, 7, 8))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["weight"], c["weight"])


def test_init_follows_the_default_dtype():
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        assert fn.Linear(3, 2).init(fn.random.key(0))["weight"].dtype == torch.float64
    finally:
        torch.set_default_dtype(old)
