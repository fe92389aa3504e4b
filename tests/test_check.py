"""fnnet._check, the one argument-check mechanism behind layers, optimizers, losses, cells and
random: the kinds it accepts, the exception it picks and the message it writes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fnnet import _check


def test_integer_message_names_owner_argument_expectation_and_value():
    with pytest.raises(ValueError, match=r"^Linear: in_features must be an int >= 1, got 0$"):
        _check.integer("Linear", "in_features", 0, lo=1)
    with pytest.raises(TypeError, match=r"^Linear: in_features must be an int >= 1, got float 3.0$"):
        _check.integer("Linear", "in_features", 3.0, lo=1)
    with pytest.raises(ValueError, match=r"must be an int in \[-2, 2\), got 2$"):
        _check.integer("random.categorical", "dim", 2, -2, 2)


@pytest.mark.parametrize("bad", [True, False, np.bool_(True), 2.0, "2", None, 1j])
def test_integer_refuses_bools_and_non_integers_with_type_error(bad):
    with pytest.raises(TypeError):
        _check.integer("x", "n", bad)


def test_integer_kinds_numpy_exact_and_tensors():
    i = _check.integer("x", "n", np.int64(3), lo=1)
    assert i == 3 and type(i) is int
    with pytest.raises(TypeError, match="got int64"):  # exact: only int itself, as torch.nn.RNN
        _check.integer("x", "n", np.int64(3), exact=True)
    with pytest.raises(TypeError, match=r"got a torch.int64 tensor of shape \[\]"):
        _check.integer("x", "n", torch.tensor(3))
    assert _check.integer("x", "n", torch.tensor(3), tensors=True) == 3
    for bad in (torch.tensor([3]), torch.tensor(3.0), torch.tensor(True)):
        with pytest.raises(TypeError):
            _check.integer("x", "n", bad, tensors=True)


def test_real_says_which_condition_failed():
    with pytest.raises(TypeError, match=r"^adam: eps must be a finite number >= 0.0, got str '1'$"):
        _check.real("adam", "eps", "1", 0.0)
    with pytest.raises(ValueError, match=r"^adam: eps must be finite, got nan$"):
        _check.real("adam", "eps", math.nan, 0.0)
    with pytest.raises(ValueError, match=r"^adam: eps must be >= 0.0, got -1$"):
        _check.real("adam", "eps", -1, 0.0)
    with pytest.raises(ValueError, match=r"must be in \(0.0, 1.0\), got 1$"):
        _check.real("x", "f", 1, 0.0, 1.0, lo_open=True, hi_open=True)
    with pytest.raises(ValueError, match=r"must be other than 0, got 0.0$"):
        _check.real("x", "alpha", 0.0, nonzero=True)
    with pytest.raises(ValueError, match=r"^PReLU: init must be a finite number, got inf$"):
        _check.real("PReLU", "init", math.inf, expected="a finite number")


def test_real_kinds():
    assert _check.real("x", "v", np.float32(0.5)) == 0.5
    assert _check.real("x", "v", 2) == 2.0 and type(_check.real("x", "v", 2)) is float
    for bad in (True, np.bool_(False), "0.5", None, 1j, torch.tensor(0.5)):
        with pytest.raises(TypeError):
            _check.real("x", "v", bad)
    with pytest.raises(ValueError, match="must be finite"):  # an int past float's range is infinite
        _check.real("x", "v", 10**400)
    assert _check.real("x", "v", -10**400, finite=False) == -math.inf
    assert _check.real("x", "v", torch.tensor([0.25]), tensors=True) == 0.25
    for bad in (torch.tensor([0.5, 0.5]), torch.tensor(True), torch.tensor(1j)):
        with pytest.raises(ValueError, match="a number or a one-element real tensor"):
            _check.real("x", "v", bad, tensors=True)


def test_flag_choice_and_tensor():
    assert _check.flag("x", "f", False) is False
    for bad in (0, 1, "yes", None, torch.tensor(True), np.bool_(True)):
        with pytest.raises(TypeError, match="f must be a bool"):
            _check.flag("x", "f", bad)
    assert _check.choice("x", "mode", None, (None, "min")) is None
    with pytest.raises(ValueError, match=r"^x: mode must be one of 'min', 'max', got 'mean'$"):
        _check.choice("x", "mode", "mean", ("min", "max"))
    with pytest.raises(TypeError):
        _check.choice("x", "mode", 1, ("min", "max"))
    with pytest.raises(ValueError):
        _check.choice("x", "mode", 1, ("min", "max"), wrong_kind=ValueError)
    with pytest.raises(TypeError, match=r"^losses.mse: input must be a tensor, got list$"):
        _check.tensor("losses.mse", "input", [1.0])


def test_words_keep_a_domains_own_wording():
    words = {TypeError: "{name} should be of type int, got {got}", ValueError: "{name} must be at least 1, got {got}"}
    with pytest.raises(TypeError, match=r"^RNN: hidden_size should be of type int, got float 4.0$"):
        _check.integer("RNN", "hidden_size", 4.0, 1, words=words)
    with pytest.raises(ValueError, match=r"^RNN: hidden_size must be at least 1, got 0$"):
        _check.integer("RNN", "hidden_size", 0, 1, words=words)


def test_an_owner_object_is_formatted_only_when_the_check_fails():
    calls = []

    class Layer:
        def __repr__(self):
            calls.append(1)
            return "Layer(3)"

    _check.tensor(Layer(), "input", torch.zeros(1))
    assert calls == []
    with pytest.raises(TypeError, match=r"^Layer\(3\): input must be a tensor, got int$"):
        _check.tensor(Layer(), "input", 3)
