"""fnnet.random: keys are Threefry-2x32 as in JAX; samplers have the right distributions
(moments, Kolmogorov-Smirnov, chi-square on large samples), split/fold_in streams are
independent, the same key gives the same bits eager and under vmap (compiled: see
test_random_compile.py), and samplers respect their bounds at the extremes (the largest bits,
far tails).

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


ALL_ONES = 0xFFFFFFFF


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (1.0, 2.0), (-3.0, 0.1), (0.0, 1e-3), (5.0, 5.5)])
def test_uniform_never_returns_maxval_even_from_the_largest_bits(monkeypatch, dtype, bounds):
    # the largest Threefry words give the largest unit value; bfloat16/float16 used to round
    # it up to 1, and an affine map to [1, 2) rounds 1 - 2**-24 up to 2 in float32
    monkeypatch.setattr(random, "_bits", lambda k, shape: torch.full((*k.shape[:-1], *shape), ALL_ONES))
    lo, hi = bounds
    u = random.uniform(random.key(0), (3,), dtype, lo, hi)
    hi_d = torch.tensor(hi, dtype=dtype)
    assert u.dtype == dtype and (u < hi_d).all() and (u >= torch.tensor(lo, dtype=dtype)).all()
    if bounds == (0.0, 1.0):  # the largest value below 1, exactly: the full significand of dtype
        assert torch.equal(u, torch.full((3,), 1 - torch.finfo(dtype).eps / 2, dtype=dtype))
    t = random.uniform(random.key(0), (3,), dtype, torch.tensor(lo, dtype=dtype), torch.tensor(hi, dtype=dtype))
    assert (t < hi_d).all()
    assert random.bernoulli(random.key(0), 1.0, (3,)).all() and not random.bernoulli(random.key(0), 0.0, (3,)).any()


def test_uniform_with_minval_equal_to_maxval_is_that_value_as_torch_init_uniform():
    assert torch.equal(random.uniform(random.key(0), (4,), minval=0.0, maxval=0.0), torch.zeros(4))


def test_samplers_draw_a_single_value_from_one_key_by_default():
    assert random.uniform(random.key(0)).shape == () and random.normal(random.key(0)).shape == ()
    assert random.uniform(random.split(random.key(0), 3)).shape == (3,)


@pytest.mark.parametrize("lo, hi", [(10.0, 11.0), (-11.0, -10.0), (40.0, 41.0), (3.0, math.inf), (-math.inf, -50.0)])
def test_truncated_normal_far_in_a_tail_spreads_over_the_interval_not_onto_a_bound(lo, hi):
    # JAX's erf-based method rounds erf(10 / sqrt 2) to 1 and clamps every sample to a bound
    n = 20_000
    z = random.truncated_normal(random.key(14), lo, hi, (n,), torch.float64)
    assert (z > lo).all() and (z < hi).all()
    assert len(torch.unique(z)) == n
    # mirrored to the lower half and in log space, the CDF has no cancellation that far out
    a, b, w = (-hi, -lo, -z) if lo > 0 else (lo, hi, z)
    la, lb = (torch.special.log_ndtr(torch.tensor(v, dtype=torch.float64)) for v in (a, b))

    def cdf(x):
        lx = torch.special.log_ndtr(x)
        return torch.exp(lx - lb) * -torch.expm1(la - lx) / -torch.expm1(la - lb)

    assert ks_statistic(w, cdf) < ks_critical(n)
    f32 = random.truncated_normal(random.key(14), lo, hi, (n,))
    assert (f32 > lo).all() and (f32 < hi).all()


def test_split_of_a_batch_of_keys_is_the_split_of_each_key_with_the_batch_dims_in_order():
    keys = random.split(random.key(15), 6).reshape(2, 3, 2)
    out = random.split(keys, 4)
    assert out.shape == (2, 3, 4, 2)
    for i in range(2):
        for j in range(3):
            assert torch.equal(out[i, j], random.split(keys[i, j], 4))
    assert torch.equal(out, fn.vmap(fn.vmap(lambda k: random.split(k, 4)))(keys))


def test_negative_seeds_are_their_64_bit_twos_complement_as_jax():
    assert random.key(-1).tolist() == [ALL_ONES, ALL_ONES]
    assert torch.equal(random.key(-5), random.key(2**64 - 5))


def test_a_meta_key_gives_shapes_without_running_threefry():
    """param_shapes and the params check init on the meta device: only the shapes and dtypes
    are wanted, so the 20 rounds are skipped (they made a layer's first apply take seconds)."""
    k = random.key(0, device="meta")
    for sample in (random.bits(k, (3, 4)), random.uniform(k, (3, 4), torch.float64), random.normal(k, (2,)),
                   random.split(k, 3)):
        assert sample.device.type == "meta"
    assert random.uniform(k, (3, 4), torch.float64).shape == (3, 4) and random.split(k, 3).shape == (3, 2)


@pytest.mark.parametrize("sampler", ["uniform", "normal", "gumbel", "truncated_normal"])
def test_float_samplers_follow_the_default_dtype_as_layer_init_does(sampler):
    k = random.key(3)
    draw = {"truncated_normal": lambda **kw: random.truncated_normal(k, -2.0, 2.0, (5,), **kw)}.get(
        sampler, lambda **kw: getattr(random, sampler)(k, (5,), **kw))
    assert draw().dtype == torch.float32
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        x = draw()
    finally:
        torch.set_default_dtype(old)
    assert x.dtype == torch.float64
    assert torch.equal(x, draw(dtype=torch.float64))
