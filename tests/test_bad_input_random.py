"""Bad input to fnnet.random: hypothesis draws invalid keys, seeds, shapes, dtypes, bounds,
probabilities and counts (negative, zero where empty is meaningless, float-for-int, wrong
dtype, NaN, infinite, wrong shape, wrong type) for every key function and sampler, and each
must be refused by fnnet's own code with a clear error naming the function
(``expect_clear_error``), before any arithmetic: never a silent sample, never an error from
deep inside torch."""

from __future__ import annotations

import math

import torch
from badinput import expect_clear_error
from hypothesis import given
from hypothesis import strategies as st

from fnnet import random

K = random.key(0)
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]

# -- invalid values, by kind of argument ---------------------------------------------------

NOT_AN_INT = (st.floats()
              | st.sampled_from(["3", None, True, False, [3], 1j, torch.tensor(3.0), torch.tensor([1, 2]),
                                 torch.tensor(True), object()]))
NOT_A_NUMBER = st.sampled_from(["0.1", None, [0.1], (0.1,), 1j, True, object(), torch.tensor(1 + 1j)])
NONFINITE = st.sampled_from([float("nan"), float("inf"), float("-inf"), 10**400])


def bad_keys():
    """Anything but an int64 tensor [..., 2]."""
    return st.sampled_from([
        torch.tensor([1.0, 2.0]), torch.tensor([1, 2], dtype=torch.int32), torch.tensor([1, 2, 3]),
        torch.tensor(7), torch.zeros(3, 1, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int64),
        torch.tensor([True, False]), torch.zeros(0, dtype=torch.int64), [1, 2], (1, 2), 7, None, "key",
    ])


def bad_shapes():
    """Negative entries, floats, bools, strings, None, tensors."""
    negative = st.lists(st.integers(0, 3), max_size=3).flatmap(
        lambda good: st.integers(max_value=-1).map(lambda bad: (*good, bad)))
    return negative | st.integers(max_value=-1) | st.sampled_from(
        [(2.0,), (2, 1.5), 2.5, (True,), True, "3", ("2",), None, (None,), torch.tensor([2, 3]), (2, [3])])


def bad_float_dtypes():
    """(None is not among them: it is the default dtype, as for layer init.)"""
    return st.sampled_from([torch.int64, torch.int32, torch.int8, torch.uint8, torch.bool, torch.complex64,
                            "float32", float, 1])


SAMPLERS_WITH_SHAPE = {
    "bits": lambda k, s: random.bits(k, s),
    "uniform": lambda k, s: random.uniform(k, s),
    "normal": lambda k, s: random.normal(k, s),
    "truncated_normal": lambda k, s: random.truncated_normal(k, -1.0, 1.0, s),
    "gumbel": lambda k, s: random.gumbel(k, s),
    "bernoulli": lambda k, s: random.bernoulli(k, 0.5, s),
    "randint": lambda k, s: random.randint(k, s, 0, 5),
}
ALL_KEY_TAKERS = {
    **SAMPLERS_WITH_SHAPE,
    "split": lambda k, s: random.split(k),
    "fold_in": lambda k, s: random.fold_in(k, 1),
    "permutation": lambda k, s: random.permutation(k, 4),
    "categorical": lambda k, s: random.categorical(k, torch.zeros(3)),
}


# -- keys and key functions ----------------------------------------------------------------

@given(seed=NOT_AN_INT | st.integers(min_value=2**64) | st.integers(max_value=-(2**63) - 1))
def test_key_refuses_a_seed_that_is_not_an_int64_or_uint64_integer(seed):
    expect_clear_error(lambda: random.key(seed), match="random.key: seed")


@given(name=st.sampled_from(sorted(ALL_KEY_TAKERS)), k=bad_keys())
def test_every_key_function_and_sampler_refuses_a_malformed_key(name, k):
    expect_clear_error(lambda: ALL_KEY_TAKERS[name](k, (3,)), match=f"random.{name}: expected a key")


@given(num=NOT_AN_INT | st.integers(max_value=-1))
def test_split_refuses_a_count_that_is_not_an_int_at_least_0(num):
    expect_clear_error(lambda: random.split(K, num), match="random.split: num")


@given(data=NOT_AN_INT.filter(lambda d: not (isinstance(d, torch.Tensor) and d.ndim == 0 and not d.is_floating_point()
                                             and d.dtype != torch.bool))
       | st.integers(min_value=2**63) | st.integers(max_value=-(2**63) - 1)
       | st.sampled_from([torch.tensor([1, 2]), torch.tensor(1.0), torch.tensor([3])]))
def test_fold_in_refuses_data_that_is_not_an_int64_integer(data):
    expect_clear_error(lambda: random.fold_in(K, data), match="random.fold_in: data")


# -- shapes and dtypes ---------------------------------------------------------------------

@given(name=st.sampled_from(sorted(SAMPLERS_WITH_SHAPE)), shape=bad_shapes())
def test_every_sampler_refuses_a_shape_with_negative_or_non_integer_entries(name, shape):
    if name == "bernoulli" and shape is None:
        shape = (None,)  # None is bernoulli's default: p's shape
    expect_clear_error(lambda: SAMPLERS_WITH_SHAPE[name](K, shape), match=f"random.{name}: shape")


@given(name=st.sampled_from(["uniform", "normal", "gumbel", "truncated_normal"]), dtype=bad_float_dtypes())
def test_float_samplers_refuse_integer_bool_complex_and_non_dtypes(name, dtype):
    call = {"uniform": lambda: random.uniform(K, (3,), dtype), "normal": lambda: random.normal(K, (3,), dtype),
            "gumbel": lambda: random.gumbel(K, (3,), dtype),
            "truncated_normal": lambda: random.truncated_normal(K, -1.0, 1.0, (3,), dtype)}[name]
    expect_clear_error(call, match=f"random.{name}: dtype")


# -- bounds, probabilities, counts ---------------------------------------------------------

@st.composite
def inverted_bounds(draw):
    """minval > maxval, both finite."""
    a = draw(st.floats(-1e6, 1e6))
    b = draw(st.floats(-1e6, 1e6).filter(lambda b: b < a))
    return a, b


@given(bounds=inverted_bounds()
       | st.tuples(NONFINITE | NOT_A_NUMBER, st.just(1.0)) | st.tuples(st.just(0.0), NONFINITE | NOT_A_NUMBER)
       | st.just((-1e308, 1e308)),  # maxval - minval overflows
       dtype=st.sampled_from(FLOATS))
def test_uniform_refuses_bounds_that_are_inverted_nonfinite_overflowing_or_not_numbers(bounds, dtype):
    lo, hi = bounds
    expect_clear_error(lambda: random.uniform(K, (3,), dtype, lo, hi), match="random.uniform: (minval|maxval|need)")


@given(dtype=st.sampled_from([torch.float16, torch.bfloat16]), lo=st.floats(-100, 100))
def test_uniform_refuses_bounds_that_round_to_one_value_in_a_half_precision_dtype(dtype, lo):
    lo = torch.tensor(lo, dtype=dtype).item()
    hi = math.nextafter(lo, math.inf)  # [lo, hi) holds no other float16/bfloat16 value
    expect_clear_error(lambda: random.uniform(K, (3,), dtype, lo, hi), match="random.uniform: need minval < maxval")


@given(which=st.sampled_from(["minval", "maxval"]),
       bad=st.sampled_from([torch.zeros(4), torch.zeros(2, 3), torch.zeros(3, dtype=torch.int64),
                            torch.tensor([0.0, float("nan"), 0.0]), torch.tensor(float("inf")), torch.tensor(5.0)]))
def test_uniform_refuses_tensor_bounds_that_grow_the_shape_are_integer_nonfinite_or_inverted(which, bad):
    kwargs = {"minval": torch.tensor(0.0), "maxval": torch.tensor(1.0), which: bad}
    if bad.numel() == 1 and bad.item() == 5.0:  # inverted: minval > maxval
        kwargs["maxval" if which == "minval" else "minval"] = torch.tensor(4.0 if which == "minval" else 6.0)
    expect_clear_error(lambda: random.uniform(K, (3,), **kwargs), match="random.uniform")


@given(mean=st.just(0.0) | NONFINITE | NOT_A_NUMBER,
       std=st.floats(max_value=-1e-300, allow_nan=False) | NONFINITE | NOT_A_NUMBER)
def test_normal_refuses_negative_or_nonfinite_std_and_non_numbers(mean, std):
    expect_clear_error(lambda: random.normal(K, (3,), mean=mean, std=std), match="random.normal")


@given(which=st.sampled_from(["mean", "std"]),
       bad=st.sampled_from([torch.zeros(4), torch.zeros(5, 3), torch.ones(3, dtype=torch.int32),
                            torch.tensor([1.0, -1.0, 1.0])]))
def test_normal_refuses_tensor_mean_std_that_grow_the_shape_are_integer_or_negative_std(which, bad):
    if which == "mean" and bad.is_floating_point() and bad.shape == (3,):
        bad = torch.zeros(7)  # a negative mean is fine: grow the shape instead
    expect_clear_error(lambda: random.normal(K, (3,), **{which: bad}), match=f"random.normal: .*{which}")


@given(bounds=st.tuples(st.floats(-50, 50), st.floats(-50, 50)).filter(lambda b: b[0] >= b[1])
       | st.tuples(NONFINITE.filter(lambda v: v != float("-inf")) | NOT_A_NUMBER, st.just(1.0))
       | st.sampled_from([(0.0, float("nan")), (1.0, math.nextafter(1.0, 2.0)), (torch.tensor(0.0), 1.0)]),
       dtype=st.sampled_from(FLOATS))
def test_truncated_normal_refuses_empty_nonfinite_or_non_float_bounds(bounds, dtype):
    lo, hi = bounds
    expect_clear_error(lambda: random.truncated_normal(K, lo, hi, (3,), dtype),
                       match="random.truncated_normal")


@given(p=st.floats(max_value=-1e-300) | st.floats(min_value=1.0, exclude_min=True) | NONFINITE | NOT_A_NUMBER
       | st.sampled_from([torch.tensor([0.5, 1.5]), torch.tensor([-0.1]), torch.tensor([float("nan")]),
                          torch.tensor([1, 0]), torch.tensor([True])]))
def test_bernoulli_refuses_p_outside_0_1_and_non_floats(p):
    expect_clear_error(lambda: random.bernoulli(K, p), match="random.bernoulli: p")


def test_bernoulli_refuses_a_tensor_p_that_does_not_broadcast_to_the_shape():
    expect_clear_error(lambda: random.bernoulli(K, torch.full((4,), 0.5), (3,)), match="random.bernoulli: p")
    expect_clear_error(lambda: random.bernoulli(K, torch.full((2, 3), 0.5), (3,)), match="random.bernoulli: p")


@given(bounds=st.tuples(st.integers(-100, 100), st.integers(-100, 100)).filter(lambda b: b[0] >= b[1])
       | st.tuples(NOT_AN_INT, st.just(5)) | st.tuples(st.just(0), NOT_AN_INT)
       | st.sampled_from([(0, 2**32 + 1), (-(2**63) - 1, 0), (0, 2**63), (0.0, 5.0), (0, 5.5)]))
def test_randint_refuses_float_bounds_empty_ranges_and_ranges_it_cannot_draw_unbiased(bounds):
    lo, hi = bounds
    expect_clear_error(lambda: random.randint(K, (3,), lo, hi), match="random.randint")


@given(n=NOT_AN_INT.filter(lambda n: not (isinstance(n, torch.Tensor) and n.ndim >= 1)) | st.integers(max_value=-1))
def test_permutation_refuses_a_count_that_is_not_an_int_at_least_0(n):
    expect_clear_error(lambda: random.permutation(K, n), match="random.permutation")


@given(case=st.sampled_from([
    (torch.zeros(3, dtype=torch.int64), -1), (torch.tensor(1.0), -1), ([0.0, 1.0], -1), (torch.zeros(2, 3), 2),
    (torch.zeros(2, 3), -3), (torch.zeros(2, 3), 1.0), (torch.zeros(2, 0), -1), (torch.zeros(2, 3), "1"),
]))
def test_categorical_refuses_non_float_logits_bad_dims_and_no_classes(case):
    logits, dim = case
    expect_clear_error(lambda: random.categorical(K, logits, dim), match="random.categorical")
