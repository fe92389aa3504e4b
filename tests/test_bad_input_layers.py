"""Bad input to the layers and combinators: hypothesis draws invalid constructor arguments
(negative, zero, float-for-int, NaN, infinite, wrong type, wrong length, inconsistent
combinations), wrong params and state trees (missing, extra, misshaped, non-tensor leaves,
params under a parameterless slot) and wrong inputs to ``apply`` (wrong size, rank, dtype, a
window larger than the input), and each must be refused by fnnet's own code with a clear error
naming the layer (``expect_clear_error``) -- at construction for hyperparameters, as torch.nn
does, and before the arithmetic for params and inputs."""

from __future__ import annotations

import pytest
import torch
from badinput import expect_clear_error
from hypothesis import given
from hypothesis import strategies as st

import fnnet as fn
from fnnet import random

KEY = random.key(0)

# -- invalid values, by kind of argument ------------------------------------------------------

NOT_AN_INT = st.floats() | st.sampled_from(["3", None, True, False, 2.0, (2, 2, 2, 2), torch.tensor(3), 1j])
NOT_A_NUMBER = st.sampled_from(["0.1", None, [0.1], 1j, True, torch.tensor(0.1), object()])
NONFINITE = st.sampled_from([float("nan"), float("inf"), float("-inf"), 10**400])
NEGATIVE = st.floats(max_value=-1e-300, allow_nan=False, allow_infinity=False) | st.integers(max_value=-1)


def bad_size():
    """Where torch wants a positive int: zero, negative, or not an int (3.0 included)."""
    return st.integers(max_value=0) | NOT_AN_INT


def bad_nonneg_int():
    return st.integers(max_value=-1) | NOT_AN_INT


def bad_window(n: int, minimum: int = 1):
    """A kernel/stride/dilation (``minimum`` 1) or padding (0) for ``n`` spatial dims."""
    bad_elem = st.integers(max_value=minimum - 1) | NOT_AN_INT.filter(lambda v: not isinstance(v, tuple))
    good_elem = st.integers(minimum, 3)
    wrong_length = st.lists(good_elem, min_size=0, max_size=5).filter(lambda v: len(v) != n).map(tuple)
    one_bad = st.tuples(*[good_elem] * (n - 1), bad_elem).flatmap(lambda t: st.permutations(t)).map(tuple)
    return bad_elem | wrong_length | one_bad


def bad_output_size():
    """An adaptive pool's 2-d output_size (ints >= 1, or None to keep a dim): anything else."""
    return bad_size().filter(lambda v: v is not None and v != (2, 2, 2, 2)) | st.sampled_from(
        [(2,), (2, 2, 2), (0, 2), (2, -1), (2.0, 2), ("2", 2), (True, 2), (), (None, None, 2)])


def bad_prob():
    return st.floats(min_value=1.0, exclude_min=True, allow_nan=False) | NEGATIVE | NONFINITE | NOT_A_NUMBER


def bad_positive_real():
    return st.sampled_from([0, 0.0, -0.0]) | NEGATIVE | NONFINITE | NOT_A_NUMBER


def bad_real():
    return NONFINITE | NOT_A_NUMBER


def bad_flag():
    return st.sampled_from([0, 1, "yes", None, 1.0, torch.tensor(True)])


def bad_int():
    """Where any int will do (a dim): not an int."""
    return NOT_AN_INT


# -- every public layer and combinator, every checked argument -------------------------------
# name: (constructor, valid keyword arguments, {argument: strategy of invalid values})

def conv_args(n, transposed=False):
    base = {"in_channels": 4, "out_channels": 6, "kernel_size": 3}
    bad = {"in_channels": bad_size(), "out_channels": bad_size(), "kernel_size": bad_window(n),
           "stride": bad_window(n), "padding": bad_window(n, 0), "dilation": bad_window(n),
           "groups": bad_size() | st.sampled_from([4, 3, 5, 7]), "bias": bad_flag(),
           "padding_mode": st.text(max_size=6) | st.sampled_from([None, 0, "reflect" if transposed else "zero"])}
    if transposed:
        bad["output_padding"] = bad_window(n, 0) | st.just(3)
    else:
        bad["padding"] = bad["padding"] | st.text(max_size=5).filter(lambda s: s not in ("same", "valid"))
    return base, bad


def pool_args(n, dilated):
    bad = {"kernel_size": bad_window(n), "stride": bad_window(n).filter(lambda v: v is not None and v != ()),
           "padding": bad_window(n, 0) | st.integers(2, 9), "ceil_mode": bad_flag()}
    if dilated:
        bad["dilation"] = bad_window(n)
        bad["return_indices"] = bad_flag()
    else:
        bad["count_include_pad"] = bad_flag()
    return {"kernel_size": 3}, bad


CONSTRUCTORS = {
    "Linear": (fn.Linear, {"in_features": 3, "out_features": 2},
               {"in_features": bad_size(), "out_features": bad_size(), "bias": bad_flag()}),
    **{f"Conv{n}d": (getattr(fn, f"Conv{n}d"), *conv_args(n)) for n in (1, 2, 3)},
    **{f"ConvTranspose{n}d": (getattr(fn, f"ConvTranspose{n}d"), *conv_args(n, True)) for n in (1, 2)},
    "MaxPool1d": (fn.MaxPool1d, *pool_args(1, True)),
    "MaxPool2d": (fn.MaxPool2d, *pool_args(2, True)),
    "AvgPool1d": (fn.AvgPool1d, *pool_args(1, False)),
    "AvgPool2d": (fn.AvgPool2d, pool_args(2, False)[0],
                  {**pool_args(2, False)[1], "divisor_override": bad_size().filter(lambda v: v is not None)}),
    "AdaptiveAvgPool1d": (fn.AdaptiveAvgPool1d, {"output_size": 2},
                          {"output_size": bad_size() | st.sampled_from([(2, 2), ()])}),
    "AdaptiveAvgPool2d": (fn.AdaptiveAvgPool2d, {"output_size": 2},
                          {"output_size": bad_output_size()}),
    "AdaptiveMaxPool2d": (fn.AdaptiveMaxPool2d, {"output_size": 2},
                          {"output_size": bad_output_size(),
                           "return_indices": bad_flag()}),
    "Embedding": (fn.Embedding, {"num_embeddings": 10, "embedding_dim": 3},
                  {"num_embeddings": bad_size(), "embedding_dim": bad_size(),
                   "padding_idx": NOT_AN_INT.filter(lambda v: v is not None) | st.integers(10, 99)
                   | st.integers(max_value=-11),
                   "max_norm": bad_positive_real().filter(lambda v: v is not None),
                   "norm_type": bad_positive_real(), "scale_grad_by_freq": bad_flag(), "freeze": bad_flag()}),
    "Dropout": (fn.Dropout, {}, {"p": bad_prob()}),
    "Dropout2d": (fn.Dropout2d, {}, {"p": bad_prob()}),
    **{f"BatchNorm{n}d": (getattr(fn, f"BatchNorm{n}d"), {"num_features": 4},
                          {"num_features": bad_size(), "eps": bad_positive_real(),
                           "momentum": bad_prob().filter(lambda v: v is not None),
                           "affine": bad_flag(), "track_running_stats": bad_flag()}) for n in (1, 2)},
    "LayerNorm": (fn.LayerNorm, {"normalized_shape": 4},
                  {"normalized_shape": bad_size().filter(lambda v: v != (2, 2, 2, 2))
                   | st.sampled_from([(), [], (4, 0), (4, 2.0), (4, None)]),
                   "eps": bad_positive_real(), "elementwise_affine": bad_flag(), "bias": bad_flag()}),
    "GroupNorm": (fn.GroupNorm, {"num_groups": 2, "num_channels": 4},
                  {"num_groups": bad_size() | st.sampled_from([3, 5, 8]),
                   "num_channels": bad_size() | st.sampled_from([3, 5, 7]), "eps": bad_positive_real(),
                   "affine": bad_flag()}),
    "Flatten": (fn.Flatten, {}, {"start_dim": bad_int(), "end_dim": bad_int()}),
    "Unflatten": (fn.Unflatten, {"dim": 1, "unflattened_size": (2, 3)},
                  {"dim": bad_int(), "unflattened_size": st.sampled_from(
                      [(), (2, 0), (-1, -1), (2, -2), (2.0, 3), 6, None, "23", (True, 2)])}),
    "LeakyReLU": (fn.LeakyReLU, {}, {"negative_slope": bad_real()}),
    "GELU": (fn.GELU, {}, {"approximate": st.text(max_size=6).filter(lambda s: s not in ("none", "tanh"))
                           | st.sampled_from([None, 0, True])}),
    "ELU": (fn.ELU, {}, {"alpha": bad_real()}),
    "Softplus": (fn.Softplus, {}, {"beta": bad_real() | st.sampled_from([0, 0.0]), "threshold": bad_real()}),
    # dim=None is torch's default for these: its implicit choice of dim
    "Softmax": (fn.Softmax, {}, {"dim": bad_int().filter(lambda v: v is not None)}),
    "LogSoftmax": (fn.LogSoftmax, {}, {"dim": bad_int().filter(lambda v: v is not None)}),
}

CASES = [(name, arg) for name, (_, _, bad) in CONSTRUCTORS.items() for arg in bad]


@pytest.mark.parametrize("name, arg", CASES, ids=[f"{n}-{a}" for n, a in CASES])
@given(data=st.data())
def test_an_invalid_constructor_argument_is_refused_naming_the_layer(name, arg, data):
    make, base, bad = CONSTRUCTORS[name]
    value = data.draw(bad[arg], label=arg)
    expect_clear_error(lambda: make(**{**base, arg: value}), match=name)


@given(data=st.data())
def test_inconsistent_combinations_are_refused_at_construction(data):
    make, match = data.draw(st.sampled_from([
        (lambda: fn.Conv2d(3, 4, 3, groups=0), "Conv2d: groups"),
        (lambda: fn.Conv2d(3, 4, 3, groups=2), "Conv2d: in_channels .3. must be divisible by groups"),
        (lambda: fn.Conv1d(4, 6, 3, padding="same", stride=2), "Conv1d: padding='same' needs stride 1"),
        (lambda: fn.ConvTranspose2d(4, 6, 3, stride=2, output_padding=2), "ConvTranspose2d: output_padding"),
        (lambda: fn.ConvTranspose1d(4, 6, 3, padding_mode="reflect"), "ConvTranspose1d: only padding_mode='zeros'"),
        (lambda: fn.MaxPool2d(2, padding=2), "MaxPool2d: padding .* at most half"),
        (lambda: fn.AvgPool1d(3, padding=2), "AvgPool1d: padding .* at most half"),
        (lambda: fn.GroupNorm(3, 4), "GroupNorm: num_channels .4. must be divisible by num_groups .3."),
        (lambda: fn.Embedding(5, 2, padding_idx=5), "Embedding: padding_idx"),
        (lambda: fn.Linear(-1, 3), "Linear: in_features must be an int >= 1, got -1"),
        (lambda: fn.Linear(3.5, 2), "Linear: in_features must be an int"),
    ]))
    expect_clear_error(make, match=match)


@given(data=st.data())
def test_combinators_refuse_what_is_not_a_module_or_a_function(data):
    bad = data.draw(st.sampled_from([3, "relu", 2.5, torch.ones(2), {"a": fn.relu}, [fn.relu, 3]]), label="layer")
    make, match = data.draw(st.sampled_from([
        (lambda: fn.Sequential(fn.Linear(2, 2), bad), "Sequential"),
        (lambda: fn.Residual(bad), "Residual block"),
        (lambda: fn.Residual(fn.Linear(2, 2), shortcut=bad), "Residual shortcut"),
        (lambda: fn.Residual(fn.Linear(2, 2), activation=bad), "Residual activation"),
        (lambda: fn.Concat(fn.Linear(2, 2), bad), "Concat"),
        (lambda: fn.Lambda(bad), "Lambda"),
    ]))
    expect_clear_error(make, match=match)
    expect_clear_error(lambda: fn.Concat(fn.Linear(2, 2), dim=data.draw(bad_int(), label="dim")), match="Concat")
    expect_clear_error(lambda: fn.Concat(), match="Concat")
    expect_clear_error(lambda: fn.Residual(None), match="Residual block")


# -- wrong params and state trees -----------------------------------------------------------

MODELS = {
    "Linear": fn.Linear(3, 2),
    "Conv2d": fn.Conv2d(2, 4, 3, groups=2),
    "ConvTranspose1d": fn.ConvTranspose1d(2, 3, 2),
    "Embedding": fn.Embedding(6, 3),
    "BatchNorm1d": fn.BatchNorm1d(3),
    "LayerNorm": fn.LayerNorm((2, 3)),
    "GroupNorm": fn.GroupNorm(2, 4),
    "Sequential": fn.Sequential(fn.Linear(3, 4), fn.relu, fn.Dropout(0.1), fn.Linear(4, 2)),
    "Residual": fn.Residual(fn.Linear(3, 3), shortcut=fn.Linear(3, 3), activation=fn.relu),
    "Concat": fn.Concat(fn.Linear(3, 2), fn.Identity(), fn.Linear(3, 1), dim=-1),
}
INPUTS = {"Linear": torch.randn(2, 3), "Conv2d": torch.randn(1, 2, 4, 4), "ConvTranspose1d": torch.randn(1, 2, 4),
          "Embedding": torch.tensor([0, 5]), "BatchNorm1d": torch.randn(4, 3), "LayerNorm": torch.randn(2, 2, 3),
          "GroupNorm": torch.randn(2, 4, 3), "Sequential": torch.randn(2, 3), "Residual": torch.randn(2, 3),
          "Concat": torch.randn(2, 3)}


def _leaf_paths(tree, prefix=()):
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _leaf_paths(v, prefix + (k,))
        else:
            yield prefix + (k,)


def _copy(tree):
    return {k: _copy(v) if isinstance(v, dict) else v for k, v in tree.items()}


def _at(tree, path):
    for k in path[:-1]:
        tree = tree[k]
    return tree


@st.composite
def wrong_tree(draw, good: dict):
    """``good`` with one defect: a leaf dropped, a key added, a leaf misshaped, a leaf that is
    not a tensor, or the whole tree not a dict."""
    tree = _copy(good)
    paths = list(_leaf_paths(tree))
    kind = draw(st.sampled_from(["drop", "extra", "reshape", "not_tensor", "not_dict"]))
    if kind == "not_dict":
        return draw(st.sampled_from([[good], (good,), torch.ones(3), 3.0, "params"]))
    path = draw(st.sampled_from(paths))
    leaf = _at(tree, path)
    if kind == "drop":
        del leaf[path[-1]]
    elif kind == "extra":
        where = draw(st.sampled_from([tree, leaf]))
        where[draw(st.sampled_from(["extra", "weight_2", "bias_", "scale"]))] = torch.ones(draw(st.integers(1, 3)))
    elif kind == "reshape":
        x = leaf[path[-1]]
        shape = list(x.shape)
        if shape and draw(st.booleans()):
            i = draw(st.integers(0, len(shape) - 1))
            shape[i] += draw(st.sampled_from([-1, 1, 2])) if shape[i] > 1 else 1
        else:
            shape = shape + [draw(st.integers(1, 2))] if draw(st.booleans()) or not shape else shape[1:]
        leaf[path[-1]] = torch.ones(shape, dtype=x.dtype)
    else:
        leaf[path[-1]] = draw(st.sampled_from([1.0, None, [1.0], "w", leaf[path[-1]].tolist()]))
    return tree


@pytest.mark.parametrize("name", list(MODELS))
@given(data=st.data())
def test_a_wrong_params_tree_is_refused_naming_the_path(name, data):
    model = MODELS[name]
    good = model.init(KEY)
    bad = data.draw(wrong_tree(good), label="params")
    kwargs = {"state": model.init_state()} if model.stateful else {}
    expect_clear_error(lambda: model.apply(bad, INPUTS[name], **kwargs), match="params")


@given(data=st.data())
def test_params_under_a_parameterless_slot_are_refused(data):
    model = MODELS["Sequential"]
    params = model.init(KEY)
    slot = data.draw(st.sampled_from(["1", "2", "4", "-1", "x"]), label="slot")
    params[slot] = {data.draw(st.sampled_from(["weight", "bias", "p"])): torch.ones(data.draw(st.integers(1, 4)))}
    expect_clear_error(lambda: model.apply(params, INPUTS["Sequential"]), match=f"unexpected '{slot}\\.")
    ln = fn.LayerNorm(3, elementwise_affine=False)
    expect_clear_error(lambda: ln.apply({"weight": torch.ones(3)}, torch.ones(2, 3)), match="unexpected 'weight'")


@pytest.mark.parametrize("model", [fn.BatchNorm1d(3), fn.Sequential(fn.Linear(3, 3), fn.BatchNorm1d(3))],
                         ids=["BatchNorm1d", "Sequential"])
@given(data=st.data())
def test_a_wrong_state_tree_is_refused_naming_the_path(model, data):
    bad = data.draw(wrong_tree(model.init_state()), label="state")
    train = data.draw(st.booleans(), label="train")
    expect_clear_error(lambda: model.apply(model.init(KEY), torch.randn(4, 3), state=bad, train=train),
                       match="state")


# -- wrong inputs to apply -----------------------------------------------------------------

def _shape_but(draw, good: tuple, dim: int) -> tuple:
    shape = list(good)
    shape[dim] = draw(st.integers(1, 9).filter(lambda v: v != good[dim]))
    return tuple(shape)


APPLY_KINDS = ["Linear", "Conv2d", "Conv1d-rank", "Conv-small", "ConvTranspose", "Pool-small", "Pool-rank",
               "BatchNorm", "BatchNorm-one", "LayerNorm", "GroupNorm", "Embedding", "Dropout-key", "Flatten",
               "Unflatten", "Activation", "not-a-tensor", "Residual-broadcast", "Sequential-deep"]


@st.composite
def bad_apply(draw, kind: str):
    """(call, match): a layer applied to an input it cannot take."""
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    if kind == "Linear":
        m = fn.Linear(3, 2)
        x = torch.randn(_shape_but(draw, (2, 3), 1), dtype=dtype)
        return lambda: m.apply(fn.tree.astype(m.init(KEY), dtype), x), r"Linear\(in_features=3.*expected input \[\.\.\., 3\]"
    if kind == "Conv2d":
        m = fn.Conv2d(2, 4, 3)
        x = torch.randn(_shape_but(draw, (1, 2, 5, 5), 1))
        return lambda: m.apply(m.init(KEY), x), "Conv2d.*expected input"
    if kind == "Conv1d-rank":
        m = fn.Conv1d(2, 4, 3)
        x = torch.randn([2] * draw(st.sampled_from([0, 1, 4, 5])))
        return lambda: m.apply(m.init(KEY), x), "Conv1d.*expected input"
    if kind == "Conv-small":
        k, d = draw(st.integers(2, 5)), draw(st.integers(1, 2))
        p = draw(st.integers(0, (d * (k - 1) - 1) // 2))
        m = fn.Conv2d(1, 1, k, padding=p, dilation=d)
        size = draw(st.integers(1, d * (k - 1) - 2 * p))  # padded, still shorter than the window
        return lambda: m.apply(m.init(KEY), torch.randn(1, 1, size, 8)), "Conv2d.*too small"
    if kind == "ConvTranspose":
        m = fn.ConvTranspose2d(2, 3, 3, stride=2)
        out = draw(st.sampled_from([(1,), (9, 9, 9, 9, 9), (5, 5), (12, 12), "9", (9.0, 9.0), "channels"]))
        if out == "channels":
            return lambda: m.apply(m.init(KEY), torch.randn(1, 3, 4, 4)), "ConvTranspose2d.*expected input"
        return lambda: m.apply(m.init(KEY), torch.randn(1, 2, 4, 4), output_size=out), "ConvTranspose2d.*output_size"
    if kind == "Pool-small":
        k = draw(st.integers(3, 6))
        m = draw(st.sampled_from([fn.MaxPool2d(k), fn.AvgPool2d(k)]))
        x = torch.randn(1, 2, draw(st.integers(1, k - 1)), 8)
        return lambda: m.apply({}, x), "Pool2d.*too small"
    if kind == "Pool-rank":
        m = draw(st.sampled_from([fn.MaxPool2d(2), fn.AvgPool1d(2), fn.AdaptiveAvgPool2d(2), fn.AdaptiveMaxPool2d(1),
                                  fn.AdaptiveAvgPool1d(1)]))
        x = torch.randn([4] * draw(st.sampled_from([0, 1, 5])))
        return lambda: m.apply({}, x), "Pool.*expected input"
    if kind == "BatchNorm":
        m = fn.BatchNorm2d(3)
        x = torch.randn(draw(st.sampled_from([(2, 4, 3, 3), (2, 3, 3), (2, 3), (3, 3, 3, 3, 3)])))
        return lambda: m.apply(m.init(KEY), x, state=m.init_state(), train=True), "BatchNorm2d.*expected input"
    if kind == "BatchNorm-one":
        m = fn.BatchNorm1d(3)
        return (lambda: m.apply(m.init(KEY), torch.randn(1, 3), state=m.init_state(), train=True),
                "BatchNorm1d.*more than 1 value per channel")
    if kind == "LayerNorm":
        m = fn.LayerNorm((2, 3))
        x = torch.randn(draw(st.sampled_from([(2, 3, 2), (3,), (4, 2, 4), ()])))
        return lambda: m.apply(m.init(KEY), x), r"LayerNorm.*expected input \[\.\.\., 2, 3\]"
    if kind == "GroupNorm":
        m = fn.GroupNorm(2, 4)
        x = torch.randn(draw(st.sampled_from([(2, 3, 5), (4,), (2, 6)])))
        return lambda: m.apply(m.init(KEY), x), "GroupNorm.*expected input"
    if kind == "Embedding":
        m = fn.Embedding(5, 2)
        idx = draw(st.sampled_from([torch.tensor([0.0, 1.0]), torch.tensor([True]), torch.tensor([1 + 1j]), [0, 1],
                                    torch.tensor([1], dtype=torch.uint8)]))
        return lambda: m.apply(m.init(KEY), idx), "Embedding.*integer indices"
    if kind == "Dropout-key":
        m = draw(st.sampled_from([fn.Dropout(0.5), fn.Dropout2d(0.5)]))
        key = draw(st.sampled_from([None, 3, torch.tensor([1.0, 2.0]), torch.zeros(3, dtype=torch.int64), "k"]))
        return lambda: m.apply({}, torch.randn(2, 3, 4, 4), key=key, train=True), "Dropout"
    if kind == "Flatten":
        m = fn.Flatten(draw(st.integers(-9, 9)), draw(st.integers(-9, 9)))
        x = torch.randn([2] * draw(st.integers(1, 3)))
        n = x.ndim
        if -n <= m.start_dim < n and -n <= m.end_dim < n and m.start_dim % n <= m.end_dim % n:
            x = [1.0, 2.0]  # dims that fit: the defect is the input itself
        return lambda: m.apply({}, x), "Flatten"
    if kind == "Unflatten":
        m = fn.Unflatten(1, draw(st.sampled_from([(2, 3), (4, -1), (5, 1)])))
        x = torch.randn(2, draw(st.sampled_from([7, 9, 11])))
        return lambda: m.apply({}, x), "Unflatten.*splits into"
    if kind == "Activation":
        m = draw(st.sampled_from([fn.ReLU(), fn.Tanh(), fn.Sigmoid(), fn.GELU(), fn.LeakyReLU(0.2), fn.Softmax()]))
        x = draw(st.sampled_from([[1.0], 1.0, None, "x"]))
        return lambda: m.apply({}, x), "expected a tensor"
    if kind == "not-a-tensor":
        m = draw(st.sampled_from([fn.Linear(2, 2), fn.Conv1d(1, 1, 1), fn.LayerNorm(2), fn.BatchNorm1d(2)]))
        kwargs = {"state": m.init_state()} if m.stateful else {}
        return lambda: m.apply(m.init(KEY), [[1.0, 2.0]], **kwargs), "expected input"
    if kind == "Residual-broadcast":
        out = draw(st.sampled_from([1, 2, 4]))
        m = fn.Residual(fn.Linear(3, out), shortcut=draw(st.sampled_from([None, fn.Linear(3, 1)])))
        if m.shortcut is not None and out == 1:
            m = fn.Residual(fn.Linear(3, 2), shortcut=m.shortcut)
        return lambda: m.apply(m.init(KEY), torch.randn(2, 3)), "Residual: the block gives"
    m = fn.Sequential(fn.Linear(3, 4), fn.relu, fn.Linear(draw(st.integers(5, 8)), 2))
    return lambda: m.apply(m.init(KEY), torch.randn(2, 3)), r"Linear\(in_features=[5-8]"


@pytest.mark.parametrize("kind", APPLY_KINDS)
@given(data=st.data())
def test_an_input_a_layer_cannot_take_is_refused_naming_the_layer(kind, data):
    call, match = data.draw(bad_apply(kind))
    expect_clear_error(call, match=match)
