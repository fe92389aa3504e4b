"""Bad input to the optimizers, schedules and transformations: hypothesis draws invalid
hyperparameters (negative, NaN, infinite, float-for-int, wrong type, out of range) and wrong
trees (missing, extra or misshaped leaves, wrong states), and each must be refused by fnnet's
own code with a clear error naming the optimizer/schedule and the argument or path
(``expect_clear_error``) — at construction for hyperparameters, as torch.optim does."""

from __future__ import annotations

import pytest
import torch
from badinput import expect_clear_error
from hypothesis import given
from hypothesis import strategies as st

from fnnet import optim

# -- invalid values, by kind of argument ---------------------------------------------------

NOT_A_NUMBER = st.sampled_from(["0.1", None, [0.1], (0.1,), 1j, True, torch.tensor([0.1, 0.2]),
                                torch.tensor(1 + 1j), object()])
NONFINITE = st.sampled_from([float("nan"), float("inf"), float("-inf"), 10**400])
NEGATIVE = st.floats(max_value=-1e-300, allow_nan=False, allow_infinity=False) | st.integers(max_value=-1)


def bad_nonneg():
    """Invalid where torch requires ``x >= 0`` (lr, eps, weight_decay, momentum, ...)."""
    return NEGATIVE | NONFINITE | NOT_A_NUMBER


def bad_real():
    """Invalid anywhere a finite real is required (dampening, alpha, a scale factor)."""
    return NONFINITE | NOT_A_NUMBER


def bad_beta():
    """Outside [0, 1)."""
    return NEGATIVE | st.floats(min_value=1.0, allow_nan=False, allow_infinity=False) | NONFINITE | NOT_A_NUMBER


def bad_positive_int():
    """Zero, negative, or not an int (any float, 3.0 included: float-for-int)."""
    return st.integers(max_value=0) | st.floats() | st.sampled_from(["3", None, True])


def bad_nonneg_int():
    return st.integers(max_value=-1) | st.sampled_from([2.5, 3.0, "3", None, True, float("nan")])


def bad_flag():
    return st.sampled_from([0, 1, "yes", None, 1.0, torch.tensor(True)])


def bad_choice():
    return st.text(max_size=8) | st.sampled_from([None, 1, ["cos"]])


def bad_pair():
    """Not a pair of numbers."""
    return st.sampled_from([0.9, (0.9,), (0.9, 0.99, 0.999), "ab", None, [0.9, None]])


# -- every constructor, every checked argument ------------------------------------------------
# name: (constructor taking keyword arguments, {argument: strategy of invalid values})

CONSTRUCTORS = {
    "sgd": (optim.sgd, {"lr": bad_nonneg(), "momentum": bad_nonneg(), "dampening": bad_real(),
                        "weight_decay": bad_nonneg(), "nesterov": bad_flag(), "maximize": bad_flag()}),
    "adam": (optim.adam, {"lr": bad_nonneg(), "eps": bad_nonneg(), "weight_decay": bad_nonneg(),
                          "amsgrad": bad_flag(), "maximize": bad_flag()}),
    "adamw": (optim.adamw, {"lr": bad_nonneg(), "eps": bad_nonneg(), "weight_decay": bad_nonneg(),
                            "amsgrad": bad_flag()}),
    "adamax": (optim.adamax, {"lr": bad_nonneg(), "eps": bad_nonneg(), "weight_decay": bad_nonneg()}),
    "adagrad": (optim.adagrad, {"lr": bad_nonneg(), "lr_decay": bad_nonneg(), "weight_decay": bad_nonneg(),
                                "initial_accumulator_value": bad_nonneg(), "eps": bad_nonneg()}),
    "rmsprop": (optim.rmsprop, {"lr": bad_nonneg(), "alpha": bad_nonneg(), "eps": bad_nonneg(),
                                "weight_decay": bad_nonneg(), "momentum": bad_nonneg(), "centered": bad_flag()}),
    "rprop": (optim.rprop, {"lr": bad_nonneg(), "maximize": bad_flag()}),
    "asgd": (optim.asgd, {"lr": bad_nonneg(), "lambd": bad_nonneg(), "alpha": bad_real(), "t0": bad_real(),
                          "weight_decay": bad_nonneg()}),
    "lbfgs": (optim.lbfgs, {"lr": bad_nonneg(), "max_iter": bad_positive_int(), "max_eval": bad_positive_int().filter(lambda v: v is not None),
                            "tolerance_grad": bad_nonneg(), "tolerance_change": bad_nonneg(),
                            "history_size": bad_positive_int(),
                            "line_search_fn": bad_choice().filter(lambda s: s not in (None, "strong_wolfe"))}),
    "clip_by_global_norm": (lambda **kw: optim.clip_by_global_norm(**{"max_norm": 1.0, **kw}),
                            {"max_norm": bad_nonneg(), "norm_type": NEGATIVE | NOT_A_NUMBER | st.just(0.0),
                             "error_if_nonfinite": bad_flag()}),
    "clip_by_value": (lambda **kw: optim.clip_by_value(**{"clip_value": 1.0, **kw}), {"clip_value": bad_nonneg()}),
    "scale": (lambda **kw: optim.scale(**{"factor": 1.0, **kw}), {"factor": bad_real()}),
    "add_decayed_weights": (lambda **kw: optim.add_decayed_weights(**{"weight_decay": 0.1, **kw}),
                            {"weight_decay": bad_nonneg()}),
    "reduce_on_plateau": (optim.reduce_on_plateau, {
        "factor": bad_beta(), "patience": bad_nonneg_int(), "threshold": bad_nonneg(),
        "cooldown": bad_nonneg_int(), "min_scale": bad_nonneg(), "eps": bad_nonneg(),
        "mode": bad_choice().filter(lambda s: s not in ("min", "max")),
        "threshold_mode": bad_choice().filter(lambda s: s not in ("rel", "abs"))}),
    # schedules
    "constant": (lambda **kw: optim.constant(**{"lr": 0.1, **kw}), {"lr": bad_nonneg()}),
    "step_lr": (lambda **kw: optim.step_lr(**{"lr": 0.1, "step_size": 3, **kw}),
                {"lr": bad_nonneg(), "step_size": bad_positive_int(), "gamma": bad_nonneg()}),
    "exponential_lr": (lambda **kw: optim.exponential_lr(**{"lr": 0.1, "gamma": 0.9, **kw}),
                       {"lr": bad_nonneg(), "gamma": bad_nonneg()}),
    "cosine_annealing_lr": (lambda **kw: optim.cosine_annealing_lr(**{"lr": 0.1, "T_max": 10, **kw}),
                            {"lr": bad_nonneg(), "T_max": bad_positive_int(), "eta_min": bad_nonneg()}),
    "linear_lr": (lambda **kw: optim.linear_lr(**{"lr": 0.1, **kw}), {
        "lr": bad_nonneg(), "start_factor": bad_nonneg() | st.floats(min_value=1.0001, allow_nan=False),
        "end_factor": bad_nonneg() | st.floats(min_value=1.0001, allow_nan=False),
        "total_iters": bad_positive_int()}),
    "one_cycle_lr": (lambda **kw: optim.one_cycle_lr(**{"max_lr": 0.1, "total_steps": 100, **kw}), {
        "max_lr": bad_nonneg(), "total_steps": bad_positive_int(),
        "pct_start": bad_nonneg() | st.floats(min_value=1.0001, allow_nan=False),
        "anneal_strategy": bad_choice().filter(lambda s: s not in ("cos", "linear")),
        "div_factor": bad_nonneg() | st.just(0.0), "final_div_factor": bad_nonneg() | st.just(0.0),
        "three_phase": bad_flag()}),
}


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
@given(data=st.data())
def test_an_invalid_hyperparameter_is_refused_at_construction_naming_it(name, data):
    make, args = CONSTRUCTORS[name]
    arg = data.draw(st.sampled_from(sorted(args)), label="argument")
    value = data.draw(args[arg], label="value")
    expect_clear_error(lambda: make(**{arg: value}), match=rf"{name}: .*{arg}|{name}: {arg}")


BETAS = {"adam": optim.adam, "adamw": optim.adamw, "adamax": optim.adamax}


@pytest.mark.parametrize("name", sorted(BETAS))
@given(data=st.data())
def test_betas_outside_zero_one_or_not_a_pair_are_refused(name, data):
    index = data.draw(st.sampled_from([0, 1]), label="index")
    bad = data.draw(bad_beta(), label="beta")
    betas = (bad, 0.999) if index == 0 else (0.9, bad)
    expect_clear_error(lambda: BETAS[name](1e-3, betas=betas), match=rf"{name}: betas\[{index}\]")
    shape = data.draw(bad_pair(), label="betas")
    expect_clear_error(lambda: BETAS[name](1e-3, betas=shape), match=rf"{name}: betas")


@given(momentum=st.floats(0.0, 1.0), dampening=st.floats(0.0, 1.0))
def test_nesterov_without_momentum_or_with_dampening_is_refused_like_torch(momentum, dampening):
    if momentum > 0 and dampening == 0:
        momentum = 0.0  # always an invalid combination
    expect_clear_error(lambda: optim.sgd(0.1, momentum=momentum, dampening=dampening, nesterov=True),
                       match="sgd: Nesterov momentum requires")


@given(etas=st.tuples(st.floats(-2, 3), st.floats(-2, 3)).filter(lambda e: not 0 < e[0] < 1 < e[1]),
       steps=st.tuples(st.floats(-1, 1), st.floats(-1, 1)).filter(lambda s: not 0 <= s[0] <= s[1]))
def test_rprop_refuses_etas_and_step_sizes_out_of_order(etas, steps):
    expect_clear_error(lambda: optim.rprop(0.01, etas=etas), match="rprop: need 0 < etaminus < 1 < etaplus")
    expect_clear_error(lambda: optim.rprop(0.01, step_sizes=steps), match="rprop: need 0 <= min step")


@given(case=st.sampled_from([(0.1, 10), (0.2, 5), (0.01, 100)]) | st.integers(0, 10).map(lambda k: (2.0 ** -k, 2 ** k)))
def test_one_cycle_with_a_warm_up_of_no_steps_is_refused(case):
    """pct_start * total_steps == 1 exactly: torch's OneCycleLR divides by zero at the first step."""
    pct_start, total_steps = case
    expect_clear_error(lambda: optim.one_cycle_lr(0.1, total_steps, pct_start=pct_start),
                       match="one_cycle_lr: pct_start \\* total_steps")


# -- wrong trees and states ------------------------------------------------------------------

ALL_OPTIMIZERS = {"sgd": lambda: optim.sgd(0.1, momentum=0.9), "adam": lambda: optim.adam(0.1),
                  "adamw": lambda: optim.adamw(0.1), "adamax": lambda: optim.adamax(0.1),
                  "adagrad": lambda: optim.adagrad(0.1), "rmsprop": lambda: optim.rmsprop(0.1, centered=True),
                  "rprop": lambda: optim.rprop(0.1), "asgd": lambda: optim.asgd(0.1),
                  "chain": lambda: optim.chain(optim.clip_by_global_norm(1.0), optim.adam(0.1)),
                  "multi_transform": lambda: optim.multi_transform(
                      {"a": optim.sgd(0.1, momentum=0.9), "b": optim.adam(0.1)}, lambda path, p: "a" if "w" in path else "b"),
                  "freeze": lambda: optim.freeze(optim.adamw(0.1), lambda path, p: path == "b"),
                  "add_decayed_weights": lambda: optim.add_decayed_weights(0.1)}


@st.composite
def tree_and_wrong_twin(draw):
    """A params tree and a twin with one thing wrong: a missing, an extra or a renamed leaf, or a
    leaf of another shape (1 against 3 included: never broadcast). Returns (params, wrong, path)."""
    n = draw(st.integers(1, 4))
    shapes = [tuple(draw(st.lists(st.integers(1, 3), min_size=0, max_size=2))) for _ in range(n)]
    names = ["w", "b", "gamma", "beta"][:n]
    params = {"layer": {k: torch.zeros(s) for k, s in zip(names, shapes)}}
    twin = {"layer": {k: torch.ones(s) for k, s in zip(names, shapes)}}
    kind = draw(st.sampled_from(["missing", "extra", "renamed", "shape"]))
    victim = draw(st.sampled_from(names))
    if kind == "missing":
        del twin["layer"][victim]
        if not twin["layer"]:
            twin = {}
    elif kind == "extra":
        twin["layer"]["extra"] = torch.ones(2)
        victim = "extra"
    elif kind == "renamed":
        twin["layer"][victim + "_"] = twin["layer"].pop(victim)
    else:
        s = shapes[names.index(victim)]
        other = draw(st.lists(st.integers(1, 3), min_size=0, max_size=2).filter(lambda t: tuple(t) != s))
        twin["layer"][victim] = torch.ones(other)
    if draw(st.booleans()) and twin:  # key order must not matter: shuffle it
        twin = {"layer": dict(reversed(list(twin["layer"].items())))}
    return params, twin, f"layer.{victim}"


@given(case=tree_and_wrong_twin())
def test_apply_updates_names_the_path_of_any_wrong_update(case):
    params, updates, path = case
    expect_clear_error(lambda: optim.apply_updates(params, updates), match=rf"apply_updates: .*'{path}")


@pytest.mark.parametrize("name", sorted(ALL_OPTIMIZERS))
@given(case=tree_and_wrong_twin(), wrong=st.sampled_from(["grads", "params"]))
def test_an_update_names_the_path_of_wrong_grads_or_params(name, case, wrong):
    params, twin, path = case
    opt = ALL_OPTIMIZERS[name]()
    state = opt.init(params)
    grads, p = (twin, params) if wrong == "grads" else (params, twin)
    expect_clear_error(lambda: opt.update(grads, state, p), match=path.replace(".", r"\."))


@pytest.mark.parametrize("name", sorted(ALL_OPTIMIZERS))
@given(case=tree_and_wrong_twin())
def test_an_update_refuses_a_state_built_for_other_params(name, case):
    params, twin, _ = case
    if name == "add_decayed_weights" or not twin:
        return  # no per-leaf state to tell (the grads/params test covers it)
    opt = ALL_OPTIMIZERS[name]()
    state = opt.init(twin)
    expect_clear_error(lambda: opt.update(params, state, params), match=r"layer\.|state")


@given(n=st.integers(0, 4).filter(lambda n: n != 2), kind=st.sampled_from(["tuple", "dict", "none"]))
def test_chain_and_multi_transform_refuse_a_state_of_the_wrong_shape(n, kind):
    params = {"w": torch.zeros(2), "b": torch.zeros(1)}
    chain = optim.chain(optim.clip_by_global_norm(1.0), optim.adam(0.1))
    state = chain.init(params)
    bad = {"tuple": tuple(state[i % 2] for i in range(n)), "dict": {"0": state[0]}, "none": None}[kind]
    expect_clear_error(lambda: chain.update(params, bad, params), match="chain: the state must be")
    groups = optim.multi_transform({"a": optim.sgd(0.1), "b": optim.adam(0.1)}, lambda p, x: "a" if p == "w" else "b")
    gstate = groups.init(params)
    bad = {"tuple": (gstate["a"],), "dict": {"a": gstate["a"]}, "none": None}[kind]
    expect_clear_error(lambda: groups.update(params, bad, params), match="multi_transform: the state must be")


@given(label=st.text(min_size=1, max_size=5).filter(lambda s: s not in ("a", "b")))
def test_multi_transform_names_a_leaf_whose_label_has_no_transformation(label):
    params = {"w": torch.zeros(2), "b": torch.zeros(1)}
    opt = optim.multi_transform({"a": optim.sgd(0.1), "b": optim.adam(0.1)}, {"w": "a", "b": label})
    expect_clear_error(lambda: opt.init(params), match="multi_transform: leaf 'b' has label")
    expect_clear_error(lambda: optim.multi_transform({"a": optim.sgd(0.1), "b": label}, {"w": "a"}),
                       match=r"multi_transform: transforms\['b'\]")


@given(group=st.text(min_size=1, max_size=5).filter(lambda s: s not in ("a", "b")))
def test_set_hyperparams_refuses_an_ambiguous_or_unknown_group(group):
    params = {"w": torch.zeros(2), "b": torch.zeros(1)}
    state = optim.multi_transform({"a": optim.sgd(0.1), "b": optim.adam(0.1)},
                                  lambda p, x: "a" if p == "w" else "b").init(params)
    expect_clear_error(lambda: optim.set_hyperparams(state, lr=0.01), match="set_hyperparams: 'lr' is held by 2")
    expect_clear_error(lambda: optim.set_hyperparams(state, group=group, lr=0.01), match="under group")


@given(n=st.integers(1, 5), m=st.integers(1, 5))
def test_lbfgs_refuses_a_state_built_for_params_of_another_size(n, m):
    if n == m:
        m = n + 1
    opt = optim.lbfgs()
    state = opt.init({"w": torch.zeros(n)})
    expect_clear_error(lambda: opt.step(lambda p: (p["w"] ** 2).sum(), {"w": torch.ones(m)}, state),
                       match=f"lbfgs: the state must be .* {m} elements, got a state for {n} elements")
