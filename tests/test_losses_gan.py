"""GAN losses are the textbook formulas, stable at extreme scores; the WGAN-GP penalty through
torch.func equals the classic autograd.grad(create_graph=True) spelling and compiles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close, assert_trees_close
from hypothesis import given
from hypothesis import strategies as st

import fnnet as fn
import losses
from fnnet import random


def _scores(seed, n, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g, dtype=torch.float64) * scale


@given(seed=st.integers(0, 10**6), n=st.integers(1, 8))
def test_gan_losses_are_the_textbook_formulas(seed, n):
    real, fake = _scores(seed, n), _scores(seed + 1, n)
    d, g = losses.discriminator_loss, losses.generator_loss
    ones, zeros = torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    bce = F.binary_cross_entropy_with_logits
    assert_close(d(real, fake, "minimax"), bce(real, ones) + bce(fake, zeros))
    assert_close(d(real, fake, "non_saturating"), bce(real, ones) + bce(fake, zeros))
    assert_close(g(fake, "non_saturating"), bce(fake, ones))
    assert_close(g(fake, "minimax"), torch.log(1 - torch.sigmoid(fake)).mean())
    assert_close(d(real, fake, "wasserstein"), fake.mean() - real.mean())
    assert_close(g(fake, "wasserstein"), -fake.mean())
    assert_close(d(real, fake, "hinge"), F.relu(1 - real).mean() + F.relu(1 + fake).mean())
    # the course's discriminator ends in a sigmoid: the probability forms give the same numbers
    pr, pf = torch.sigmoid(real), torch.sigmoid(fake)
    assert_close(d(pr, pf, from_logits=False), F.binary_cross_entropy(pr, ones) + F.binary_cross_entropy(pf, zeros))
    assert_close(g(pf, "non_saturating", from_logits=False), F.binary_cross_entropy(pf, ones))


def test_gan_losses_are_finite_with_gradients_at_extreme_scores():
    for scores in (torch.tensor([1e4, -1e4]), torch.tensor([0.0, 1.0])):
        s = scores.clone().requires_grad_()
        from_logits = bool(scores.abs().max() > 1)
        for kind in ("minimax", "non_saturating"):
            total = (losses.discriminator_loss(s, s, kind, from_logits=from_logits)
                     + losses.generator_loss(s, kind, from_logits=from_logits))
            (grad,) = torch.autograd.grad(total, s)
            assert torch.isfinite(total) and torch.isfinite(grad).all(), (kind, scores)


def test_wasserstein_and_hinge_refuse_probabilities():
    with pytest.raises(ValueError, match="raw critic scores"):
        losses.discriminator_loss(torch.rand(3), torch.rand(3), "wasserstein", from_logits=False)


CRITIC = fn.Sequential(fn.Linear(2, 16), fn.relu, fn.Linear(16, 16), fn.tanh, fn.Linear(16, 1))


def _classic_penalty(critic_params, real, fake, eps):
    """The course's WGAN-GP line, with torch.autograd.grad(create_graph=True)."""
    x = (eps * real + (1 - eps) * fake).requires_grad_()
    out = CRITIC.apply(critic_params, x)
    (g,) = torch.autograd.grad(out, x, torch.ones_like(out), create_graph=True)
    return ((g.norm(2, dim=1) - 1) ** 2).mean()


@given(seed=st.integers(0, 10**6), n=st.integers(1, 9))
def test_gradient_penalty_equals_the_classic_autograd_formulation(seed, n):
    k = random.split(random.key(seed), 4)
    params = fn.tree.astype(CRITIC.init(k[0]), torch.float64)
    real = random.normal(k[1], (n, 2), torch.float64)
    fake = random.normal(k[2], (n, 2), torch.float64)
    eps = random.uniform(k[3], (n, 1), torch.float64)  # what interpolate() draws from this key

    ours, ours_grad = fn.value_and_grad(lambda p: losses.gradient_penalty(CRITIC, p, real, fake, k[3]))(params)
    leaves = {p: x.clone().requires_grad_() for p, x in fn.tree.flatten_with_paths(params)}
    nested = fn.tree.unflatten(fn.tree.structure(params), list(leaves.values()))
    theirs = _classic_penalty(nested, real, fake, eps)
    theirs_grad = torch.autograd.grad(theirs, list(leaves.values()), allow_unused=True)
    theirs_grad = [torch.zeros_like(x) if g is None else g for x, g in zip(leaves.values(), theirs_grad)]
    assert_close(ours, theirs)
    assert_trees_close(ours_grad, fn.tree.unflatten(fn.tree.structure(params), list(theirs_grad)))


@pytest.mark.parametrize("interpolation", ["real", "fake"])
def test_the_penalty_can_be_taken_on_real_or_fake_samples_alone(interpolation):
    params = fn.tree.astype(CRITIC.init(random.key(0)), torch.float64)
    real, fake = torch.randn(6, 2, dtype=torch.float64), torch.randn(6, 2, dtype=torch.float64)
    ours = losses.gradient_penalty(CRITIC, params, real, fake, interpolation=interpolation, target=0.5)
    x = {"real": real, "fake": fake}[interpolation].clone().requires_grad_()
    (g,) = torch.autograd.grad(CRITIC(params, x).sum(), x)
    assert_close(ours, ((g.norm(dim=1) - 0.5) ** 2).mean())


def test_gradient_penalty_is_finite_for_a_critic_constant_in_x():
    def constant_critic(p, x):
        return p["c"] * torch.ones(x.shape[0], 1) + 0.0 * x.sum(1, keepdim=True)

    params = {"c": torch.tensor(2.0)}
    real, fake = torch.randn(4, 2), torch.randn(4, 2)
    value, grads = fn.value_and_grad(
        lambda p: losses.gradient_penalty(constant_critic, p, real, fake, random.key(0)))(params)
    assert value == 1.0  # (0 - target)^2
    assert torch.isfinite(grads["c"]) and grads["c"] == 0.0
    assert torch.isfinite(fn.grad(lambda p: losses.r1_penalty(constant_critic, p, real))(params)["c"])


def test_a_critic_must_score_each_sample_once():
    """A critic that averaged its scores would scale every input gradient by 1/N, silently."""
    def mean_critic(p, x):
        return CRITIC.apply(p, x).mean()

    params = CRITIC.init(random.key(0))
    real, fake = torch.randn(4, 2), torch.randn(4, 2)
    with pytest.raises(ValueError, match=r"gradient_penalty: the critic must give one score per sample, "
                                         r"\[N\] or \[N, 1\] with N = 4, got \[\]"):
        losses.gradient_penalty(mean_critic, params, real, fake, random.key(1))
    with pytest.raises(ValueError, match=r"r1_penalty: the critic must give one score per sample"):
        losses.r1_penalty(lambda p, x: torch.cat([CRITIC(p, x)] * 2, 1), params, real)
    with pytest.raises(ValueError, match="interpolation='uniform' needs a key"):
        losses.gradient_penalty(CRITIC, params, real, fake)


def test_r1_penalty_is_the_mean_squared_input_gradient_norm():
    params = CRITIC.init(random.key(1))
    x = torch.randn(5, 2, requires_grad=True)
    (g,) = torch.autograd.grad(CRITIC.apply(params, x).sum(), x)
    assert_close(losses.r1_penalty(CRITIC, params, x.detach()), g.pow(2).sum(1).mean())


def test_the_wgan_gp_critic_step_compiles_in_one_graph_and_matches_eager():
    params = CRITIC.init(random.key(0))
    real, fake = torch.randn(32, 2), torch.randn(32, 2)

    def critic_loss(p, real, fake, key):
        w = losses.discriminator_loss(CRITIC.apply(p, real), CRITIC.apply(p, fake), "wasserstein")
        return w + 10.0 * losses.gradient_penalty(CRITIC, p, real, fake, key)

    step = fn.value_and_grad(critic_loss)
    eager = step(params, real, fake, random.key(3))
    compiled = fn.jit(step)(params, real, fake, random.key(3))  # fullgraph=True: no graph break
    assert_close(compiled[0], eager[0])
    assert_trees_close(compiled[1], eager[1], msg="critic grads")
