"""Bad input to fnnet.scan is refused by fnnet with an error naming the argument or path (the
contract of tests/badinput.py): never a silent result, never an error from inside torch."""

from __future__ import annotations

import torch
from badinput import expect_clear_error
from hypothesis import given
from hypothesis import strategies as st

from fnnet.scan import scan


def _step(c, x):
    return c + x, x


@given(unroll=st.one_of(st.integers(-5, 0), st.floats(allow_nan=True), st.text(max_size=2), st.none()))
def test_unroll_other_than_a_bool_or_positive_int(unroll):
    expect_clear_error(lambda: scan(_step, torch.zeros(()), torch.ones(3), unroll=unroll), match="unroll")


@given(length=st.one_of(st.integers(-9, -1), st.floats(allow_nan=True), st.just("3"), st.booleans()))
def test_length_that_is_not_a_count(length):
    expect_clear_error(lambda: scan(_step, torch.zeros(()), None, length=length), match="length")


@given(n=st.integers(0, 4), m=st.integers(0, 4))
def test_xs_leaves_of_different_leading_lengths(n, m):
    if n == m:
        m += 1
    expect_clear_error(lambda: scan(_step, torch.zeros(()), {"a": torch.ones(n), "b": torch.ones(m)}),
                       match="xs leaf 'b'")


@given(leaf=st.one_of(st.integers(), st.floats(allow_nan=True), st.text(max_size=3)))
def test_xs_or_carry_leaves_that_are_not_tensors(leaf):
    expect_clear_error(lambda: scan(_step, torch.zeros(()), {"x": leaf}), match="xs leaf 'x'")
    expect_clear_error(lambda: scan(_step, {"c": leaf}, torch.ones(2)), match="carry leaf 'c'")


def test_a_zero_dim_xs_leaf():
    expect_clear_error(lambda: scan(_step, torch.zeros(()), torch.tensor(1.0)), match="leading length")


@given(grow=st.integers(1, 3), dtype=st.sampled_from([torch.float64, torch.int64, torch.float16]))
def test_a_body_that_changes_the_carry_shape_or_dtype(grow, dtype):
    expect_clear_error(lambda: scan(lambda c, x: (torch.cat([c, x.repeat(grow)]), x), torch.zeros(1), torch.ones(2, 1)),
                       match="carry leaf")
    expect_clear_error(lambda: scan(lambda c, x: (c.to(dtype), x), torch.zeros(1), torch.ones(2, 1)),
                       match=str(dtype))


def test_a_body_that_changes_the_carry_structure_or_returns_no_pair():
    expect_clear_error(lambda: scan(lambda c, x: ({"h": c}, x), torch.zeros(1), torch.ones(2, 1)), match="structure")
    expect_clear_error(lambda: scan(lambda c, x: c + x, torch.zeros(1), torch.ones(2, 1)), match="pair")


@given(reverse=st.one_of(st.integers(0, 1), st.text(max_size=2), st.none()))
def test_reverse_that_is_not_a_bool(reverse):
    expect_clear_error(lambda: scan(_step, torch.zeros(()), torch.ones(3), reverse=reverse), match="reverse")


@given(length=st.integers(0, 5), n=st.integers(1, 5))
def test_length_that_disagrees_with_xs(length, n):
    if length == n:
        length += 1
    expect_clear_error(lambda: scan(_step, torch.zeros(()), torch.ones(n), length=length), match="length")
