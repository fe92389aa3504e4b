"""``rng=`` is the library-wide other name of the PRNG ``key=``: attention's second input is
torch's ``key``, so a module whose apply takes ``rng`` gets its PRNG key under that name, and
every other module takes ``rng=k`` as ``key=k``. Containers pass each child its key under the
name that child takes, so one spelling works everywhere."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

import fnnet as fn
from fnnet import random

KEY = random.key(0)
X = torch.ones(4, 16)


@dataclass(frozen=True)
class NoisyAttention(fn.Module):
    """Stands in for MultiheadAttention: ``key`` is an input tensor, ``rng`` the PRNG key
    (dropout on the output)."""

    p: float = 0.5

    def apply(self, params, query, key=None, value=None, *, rng=None, train=False):
        key = query if key is None else key
        y = query + key
        return fn.Dropout(self.p).apply({}, y, key=rng, train=train)


def test_rng_is_key_for_a_module_without_an_rng_parameter():
    drop = fn.Dropout(0.5)
    k = random.key(3)
    assert torch.equal(drop.apply({}, X, rng=k, train=True), drop.apply({}, X, key=k, train=True))
    assert torch.equal(drop({}, X, rng=k, train=True), drop.apply({}, X, key=k, train=True))  # __call__ too
    assert not torch.equal(drop.apply({}, X, rng=k, train=True), drop.apply({}, X, rng=random.key(4), train=True))
    # None is no key: either name may be given as None next to the other
    assert torch.equal(drop.apply({}, X, key=None, rng=k, train=True), drop.apply({}, X, key=k, train=True))
    assert torch.equal(drop.apply({}, X, key=k, rng=None, train=True), drop.apply({}, X, key=k, train=True))


def test_both_key_and_rng_is_a_type_error_naming_the_module():
    with pytest.raises(TypeError, match=r"Dropout\(p=0.5\): got both key= and rng="):
        fn.Dropout(0.5).apply({}, X, key=KEY, rng=KEY, train=True)
    model = fn.Sequential(fn.Linear(16, 16), fn.Dropout(0.5))
    with pytest.raises(TypeError, match="Sequential: got both key= and rng="):
        model.apply(model.init(KEY), X, key=KEY, rng=KEY, train=True)


def test_a_module_whose_apply_takes_rng_gets_it_untouched_and_key_stays_its_input():
    attn = NoisyAttention()
    q, k_in = torch.ones(2, 8), torch.full((2, 8), 2.0)
    k = random.key(5)
    y = attn.apply({}, q, key=k_in, rng=k, train=True)  # key= is the input here, not a PRNG key
    expected = fn.Dropout(0.5).apply({}, q + k_in, key=k, train=True)
    assert torch.equal(y, expected)
    assert torch.equal(attn.apply({}, q, key=k_in, train=False), q + k_in)


def test_containers_pass_each_child_its_key_under_the_name_it_takes():
    # Sequential splits its key over its children; the attention-like child must receive its share
    # as rng= (as key= it would be taken for the attention's key input and fail or mislead)
    model = fn.Sequential(fn.Dropout(0.5), NoisyAttention(), fn.Dropout(0.5))
    k = random.key(9)
    k0, k1, k2 = random.split(k, 3)
    x = torch.ones(6, 32)
    expected = fn.Dropout(0.5).apply({}, x, key=k0, train=True)
    expected = NoisyAttention().apply({}, expected, rng=k1, train=True)
    expected = fn.Dropout(0.5).apply({}, expected, key=k2, train=True)
    assert torch.equal(model.apply({}, x, key=k, train=True), expected)
    assert torch.equal(model.apply({}, x, rng=k, train=True), expected)  # rng= for the container, too
    res = fn.Residual(NoisyAttention())
    kb, _ = random.split(k)
    torch.testing.assert_close(res.apply({}, x, rng=k, train=True),
                               NoisyAttention().apply({}, x, rng=kb, train=True) + x)
    cat = fn.Concat(NoisyAttention(), fn.Dropout(0.5), dim=1)
    c0, c1 = random.split(k)
    torch.testing.assert_close(cat.apply({}, x, key=k, train=True),
                               torch.cat([NoisyAttention().apply({}, x, rng=c0, train=True),
                                          fn.Dropout(0.5).apply({}, x, key=c1, train=True)], 1))


def test_rng_compiles_without_a_graph_break():
    model = fn.Sequential(fn.Linear(16, 16), NoisyAttention(), fn.Dropout(0.25))
    params = model.init(KEY)

    def loss(p, x, k):
        return model.apply(p, x, rng=k, train=True).square().sum()

    k = random.key(1)
    g_eager = fn.grad(loss)(params, X, k)
    g_jit = fn.jit(fn.grad(loss), backend="eager")(params, X, k)
    for a, b in zip(fn.tree.leaves(g_jit), fn.tree.leaves(g_eager)):
        torch.testing.assert_close(a, b)
