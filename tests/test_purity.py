"""apply and grad are pure: inputs are never modified, randomness comes only from keys, and
torch's global generator is neither read nor advanced."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import fnnet as fn
from fnnet import random, tree

MODEL = fn.Sequential(fn.Conv2d(1, 4, 3, padding=1), fn.BatchNorm2d(4), fn.relu, fn.Dropout2d(0.3),
                      fn.Flatten(), fn.Linear(4 * 6 * 6, 16), fn.Dropout(0.5), fn.relu, fn.Linear(16, 3))
EMBED = fn.Embedding(10, 4, max_norm=0.5)


def snapshot(t):
    return [(x.clone(), x.data_ptr(), x._version) for x in tree.leaves(t)]


def assert_untouched(t, snap):
    leaves = tree.leaves(t)
    assert len(leaves) == len(snap)
    for x, (copy, ptr, version) in zip(leaves, snap):
        assert torch.equal(x, copy), "a value changed"
        assert x.data_ptr() == ptr and x._version == version, "a tensor was written in place"


def loss_fn(params, state, x, y, key):
    logits, new_state = MODEL.apply(params, x, state=state, key=key, train=True)
    return F.cross_entropy(logits, y), new_state


def test_params_state_and_inputs_are_bit_identical_after_apply_and_after_a_grad_step():
    params, state = MODEL.init(random.key(0)), MODEL.init_state()
    x, y = torch.randn(5, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1])
    before = snapshot((params, state, x, y))
    rng = torch.get_rng_state()
    MODEL.apply(params, x, state=state, key=random.key(1), train=True)
    MODEL.apply(params, x, state=state, train=False)
    (_, new_state), grads = fn.value_and_grad(loss_fn, has_aux=True)(params, state, x, y, random.key(1))
    new_params = tree.map(lambda p, g: p - 0.1 * g, params, grads)
    assert_untouched((params, state, x, y), before)
    assert torch.equal(torch.get_rng_state(), rng), "torch's global generator was used"
    assert new_state["1"]["num_batches_tracked"].item() == 1
    assert not torch.equal(new_params["0"]["weight"], params["0"]["weight"])


def test_embedding_max_norm_does_not_renorm_the_params_in_place_unlike_torch():
    params = {"weight": torch.randn(10, 4) * 3}
    before = snapshot(params)
    EMBED.apply(params, torch.tensor([1, 2, 3]))
    assert_untouched(params, before)


def test_same_key_same_output_different_keys_different_dropout_masks():
    params, state = MODEL.init(random.key(0)), MODEL.init_state()
    x = torch.randn(5, 1, 6, 6)

    def out(k):
        return MODEL.apply(params, x, state=state, key=k, train=True)[0]

    assert torch.equal(out(random.key(3)), out(random.key(3)))
    assert not torch.equal(out(random.key(3)), out(random.key(4)))
    drop = fn.Dropout(0.5)
    masks = [drop.apply({}, torch.ones(1000), key=k, train=True) != 0 for k in random.split(random.key(5), 3)]
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])
    # about half of the positions differ between two independent masks
    assert 0.4 < (masks[0] != masks[1]).float().mean() < 0.6


def test_eval_mode_ignores_the_key():
    params, state = MODEL.init(random.key(0)), MODEL.init_state()
    x = torch.randn(2, 1, 6, 6)
    a, _ = MODEL.apply(params, x, state=state, key=random.key(1))
    b, _ = MODEL.apply(params, x, state=state, key=random.key(2))
    c, _ = MODEL.apply(params, x, state=state)
    assert torch.equal(a, b) and torch.equal(a, c)
