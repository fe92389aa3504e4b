"""fnnet.random: keys are Threefry-2x32 as in JAX; samplers have the right distributions
(moments, Kolmogorov-Smirnov, chi-square on large samples), split/fold_in streams are
independent, and the same key gives the same bits eager, compiled and under vmap.

Every sample comes from a fixed key, so these statistical tests are deterministic; the
critical values are at the 0.1% level, so a correct sampler fails them by bad luck once
in a thousand key choices, and a wrong one (bias, correlation) fails them reliably."""

from __future__ import annotations

import math

import pytest
import torch

import fnnet as fn
from fnnet import random

N = 100_000


def ks_statistic(sample: torch.Tensor, cdf) -> float:
    """sup_x |F_n(x) - F(x)| for the empirical CDF of ``sample``."""
    x = torch.sort(sample.double().flatten()).values
    n = x.numel()
    f = cdf(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    return max((i / n - f).max().item(), (f - (i - 1) / n).max().item())


def ks_critical(n: int, alpha: float = 1e-3) -> float:
    """Asymptotic Kolmogorov critical value: sqrt(-ln(alpha / 2) / 2) / sqrt(n)."""
    return math.sqrt(-math.log(alpha / 2) / 2) / math.sqrt(n)


CHI2_CRIT_0001 = {1: 10.828, 4: 18.467, 9: 27.877, 16: 39.252}  # chi-square quantiles at 1 - 0.001


def chi_square(counts: torch.Tensor, expected: torch.Tensor) -> float:
    counts, expected = counts.double(), expected.double()
    return ((counts - expected) ** 2 / expected).sum().item()


def normal_cdf(x):
    return 0.5 * (1 + torch.special.erf(x / math.sqrt(2)))


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.corrcoef(torch.stack([a.double().flatten(), b.double().flatten()]))[0, 1].item()


def test_split_of_key_0_equals_jax():
    # jax.random.split(jax.random.PRNGKey(0)) with the default threefry2x32 implementation
    assert random.split(random.key(0)).tolist() == [[4146024105, 967050713], [2718843009, 1272950319]]


def test_keys_are_int64_pairs_and_samplers_reject_anything_else():
    k = random.key(42)
    assert k.dtype == torch.int64 and k.shape == (2,)
    assert random.split(k, 5).shape == (5, 2)
    with pytest.raises(TypeError, match="expected a key"):
        random.normal(torch.tensor([1.0, 2.0]), (3,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_uniform_is_uniform_on_0_1_by_ks_and_moments(dtype):
    u = random.uniform(random.key(1), (N,), dtype)
    assert u.dtype == dtype and u.min() >= 0 and u.max() < 1
    assert ks_statistic(u, lambda x: x) < ks_critical(N)
    assert abs(u.double().mean().item() - 0.5) < 5 * math.sqrt(1 / 12 / N)
    assert abs(u.double().var().item() - 1 / 12) < 5 * math.sqrt(1 / 180 / N)
    v = random.uniform(random.key(1), (1000,), dtype, minval=-2.0, maxval=3.0)
    assert v.min() >= -2 and v.max() < 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normal_is_standard_normal_by_ks_and_four_moments(dtype):
    z = random.normal(random.key(2), (N,), dtype)
    assert z.dtype == dtype
    assert ks_statistic(z, normal_cdf) < ks_critical(N)
    z = z.double()
    m, v = z.mean().item(), z.var().item()
    skew = ((z - m) ** 3).mean().item() / v**1.5
    kurt = ((z - m) ** 4).mean().item() / v**2
    assert abs(m) < 5 / math.sqrt(N) and abs(v - 1) < 5 * math.sqrt(2 / N)
    assert abs(skew) < 5 * math.sqrt(6 / N) and abs(kurt - 3) < 5 * math.sqrt(24 / N)
    scaled = random.normal(random.key(2), (N,), dtype, mean=3.0, std=2.0)
    torch.testing.assert_close(scaled, z.to(dtype) * 2 + 3)


def test_truncated_normal_stays_within_bounds_and_has_the_truncated_distribution():
    lo, hi = -1.0, 2.0
    z = random.truncated_normal(random.key(3), lo, hi, (N,), torch.float64)
    assert z.min() >= lo and z.max() <= hi
    a, b = normal_cdf(torch.tensor(lo, dtype=torch.float64)), normal_cdf(torch.tensor(hi, dtype=torch.float64))
    assert ks_statistic(z, lambda x: (normal_cdf(x) - a) / (b - a)) < ks_critical(N)


def test_randint_is_uniform_over_its_range_by_chi_square():
    r = random.randint(random.key(4), (N,), -3, 7)
    assert r.dtype == torch.int64 and r.min() == -3 and r.max() == 6
    counts = torch.bincount(r + 3, minlength=10)
    assert chi_square(counts, torch.full((10,), N / 10)) < CHI2_CRIT_0001[9]


@pytest.mark.parametrize("p", [0.1, 0.5, 0.93])
def test_bernoulli_has_probability_p_by_chi_square(p):
    b = random.bernoulli(random.key(5), p, (N,))
    assert b.dtype == torch.bool
    ones = b.sum()
    assert chi_square(torch.stack([ones, N - ones]), torch.tensor([N * p, N * (1 - p)])) < CHI2_CRIT_0001[1]


def test_permutation_is_a_permutation_uniform_over_positions():
    n, reps = 5, 4000
    keys = random.split(random.key(6), reps)
    perms = fn.vmap(lambda k: random.permutation(k, n))(keys)
    assert torch.equal(perms.sort(dim=1).values, torch.arange(n).expand(reps, n))
    # counts[i, j]: how often element i lands at position j; uniform means reps / n each
    counts = torch.zeros(n, n)
    counts.index_put_((perms.flatten(), torch.arange(n).repeat(reps)), torch.ones(reps * n), accumulate=True)
    assert chi_square(counts, torch.full((n, n), reps / n)) < CHI2_CRIT_0001[16]
    rows = torch.arange(12.0).reshape(6, 2)
    shuffled = random.permutation(random.key(0), rows)
    assert sorted(shuffled[:, 0].tolist()) == rows[:, 0].tolist()


def test_streams_from_split_keys_fold_in_and_nearby_seeds_are_uncorrelated():
    n = 50_000
    bound = 5 / math.sqrt(n)
    k1, k2 = random.split(random.key(7))
    pairs = [(k1, k2), (random.fold_in(random.key(7), 0), random.fold_in(random.key(7), 1)),
             (random.key(0), random.key(1)), (random.key(7), k1)]
    for a, b in pairs:
        assert not torch.equal(a, b)
        assert abs(corr(random.normal(a, (n,)), random.normal(b, (n,)))) < bound
    u = random.uniform(random.key(8), (n + 1,))
    assert abs(corr(u[:-1], u[1:])) < bound, "neighbouring draws of one stream are correlated"
    splits = random.split(random.key(9), 1000)
    assert len({tuple(s) for s in splits.tolist()}) == 1000


def test_same_key_same_numbers_different_key_different_numbers():
    assert torch.equal(random.normal(random.key(10), (50,)), random.normal(random.key(10), (50,)))
    assert not torch.equal(random.normal(random.key(10), (50,)), random.normal(random.key(11), (50,)))
    assert torch.equal(random.fold_in(random.key(3), 5), random.fold_in(random.key(3), torch.tensor(5)))


def _draws(k):
    a, b = random.split(k)
    return (random.normal(a, (4, 3)), random.uniform(b, (5,), torch.float64), random.randint(k, (6,), 0, 9),
            random.bernoulli(a, 0.3, (7,)), random.permutation(b, 8), random.fold_in(k, 11),
            random.truncated_normal(k, -1.0, 1.0, (3,)))


def test_a_batch_of_keys_under_vmap_gives_the_per_key_streams():
    keys = random.split(random.key(12), 4)
    batched = fn.vmap(_draws)(keys)
    for i, k in enumerate(keys):
        for got, want in zip(batched, _draws(k)):
            assert torch.equal(got[i], want)


