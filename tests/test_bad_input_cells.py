"""Bad input to the recurrent cells and layers (``cells``) is refused by fnnet's own code with a
clear error naming the layer (tests/badinput.py): constructor hyperparameters, inputs, initial
states, ``lengths=`` and params trees, each drawn by hypothesis."""

from __future__ import annotations

import math

import torch
from badinput import expect_clear_error
from hypothesis import given
from hypothesis import strategies as st

import cells
from fnnet import random

LAYERS = {"RNN": cells.RNN, "LSTM": cells.LSTM, "GRU": cells.GRU}
CELLS = {"RNNCell": cells.RNNCell, "LSTMCell": cells.LSTMCell, "GRUCell": cells.GRUCell}

# not an int: floats (integral ones too), NaN, inf, bools, strings, None, a tensor
NOT_INT = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=3),
                    st.none(), st.just(torch.tensor(3)))
NOT_BOOL = st.one_of(st.integers(-2, 2), st.floats(0, 1), st.text(max_size=3), st.none())
BAD_DROPOUT = st.one_of(st.floats(max_value=-1e-9), st.floats(min_value=1 + 1e-9), st.just(math.nan),
                        st.booleans(), st.text(max_size=3), st.none())
BAD_NONLINEARITY = st.one_of(st.text(max_size=6).filter(lambda s: s not in ("tanh", "relu")), st.none(),
                             st.integers(), st.just("Tanh"))
OTHER_DTYPES = st.sampled_from([torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                                torch.bool, torch.complex64])


def _bad_size(minimum: int):
    return st.one_of(st.integers(max_value=minimum - 1), NOT_INT)


@st.composite
def bad_layer_args(draw):
    """(class name, kwargs with exactly one invalid hyperparameter)."""
    name = draw(st.sampled_from(sorted(LAYERS)))
    kw = {"input_size": 3, "hidden_size": 4}
    field = draw(st.sampled_from(["input_size", "hidden_size", "num_layers", "dropout", "bias", "batch_first",
                                  "bidirectional", "learn_initial_state", "fused", "native",
                                  *(["proj_size"] if name == "LSTM" else []),
                                  *(["nonlinearity"] if name == "RNN" else [])]))
    if field in ("input_size", "hidden_size", "num_layers"):
        kw[field] = draw(_bad_size(1))
    elif field == "dropout":
        kw[field] = draw(BAD_DROPOUT)
    elif field == "proj_size":  # negative, not an int, or not smaller than hidden_size
        kw[field] = draw(st.one_of(st.integers(max_value=-1), st.integers(4, 10), NOT_INT))
    elif field == "nonlinearity":
        kw[field] = draw(BAD_NONLINEARITY)
    else:
        kw[field] = draw(NOT_BOOL)
    return name, kw


@given(bad_layer_args())
def test_layer_constructors_refuse_bad_hyperparameters_like_rnnbase(case):
    name, kw = case
    expect_clear_error(lambda: LAYERS[name](**kw), match=f"^{name}: ")


@given(name=st.sampled_from(sorted(CELLS)), data=st.data())
def test_cell_constructors_refuse_bad_hyperparameters(name, data):
    kw = {"input_size": 3, "hidden_size": 4}
    fields = ["input_size", "hidden_size", "bias", *(["nonlinearity"] if name == "RNNCell" else [])]
    field = data.draw(st.sampled_from(fields))
    kw[field] = data.draw({"bias": NOT_BOOL, "nonlinearity": BAD_NONLINEARITY}.get(field, _bad_size(1)))
    expect_clear_error(lambda: CELLS[name](**kw), match=f"^{name}: ")


@st.composite
def layers(draw):
    """A valid layer, its float32 params, a valid input ``[T, B, I]`` (batch-first when the layer
    is) and T, B."""
    name = draw(st.sampled_from(sorted(LAYERS)))
    kw = {"num_layers": draw(st.integers(1, 2)), "bidirectional": draw(st.booleans()),
          "batch_first": draw(st.booleans()), "fused": draw(st.booleans())}
    if name == "LSTM":
        kw["proj_size"] = draw(st.sampled_from([0, 2]))
    layer = LAYERS[name](3, 4, **kw)
    T, B = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    x = torch.randn(B, T, 3) if layer.batch_first else torch.randn(T, B, 3)
    return layer, layer.init(random.key(draw(st.integers(0, 100)))), x, T, B


@given(layers(), st.data())
def test_layers_refuse_bad_inputs(case, data):
    layer, params, x, T, B = case
    kind = data.draw(st.sampled_from(["features", "rank", "empty_time", "dtype", "not_a_tensor"]))
    if kind == "features":
        bad = torch.randn(*x.shape[:-1], data.draw(st.integers(0, 8).filter(lambda i: i != 3)))
    elif kind == "rank":
        bad = torch.randn(data.draw(st.sampled_from([(3,), (), (1, T, B, 3)])))
    elif kind == "empty_time":
        bad = torch.randn(B, 0, 3) if layer.batch_first else torch.randn(0, B, 3)
    elif kind == "dtype":
        bad = x.to(data.draw(OTHER_DTYPES))
    else:
        bad = data.draw(st.sampled_from([x.tolist(), x.numpy(), None, 3.0]))
    expect_clear_error(lambda: layer.apply(params, bad), match=type(layer).__name__)


def _state_shapes(layer, B):
    n, P = layer.num_layers * (2 if layer.bidirectional else 1), layer.output_size
    return [(n, B, P), (n, B, layer.hidden_size)] if isinstance(layer, cells.LSTM) else [(n, B, P)]


@given(layers(), st.data())
def test_layers_refuse_bad_initial_states(case, data):
    layer, params, x, _, B = case
    good = [torch.zeros(s) for s in _state_shapes(layer, B)]
    lstm = isinstance(layer, cells.LSTM)
    kind = data.draw(st.sampled_from(["shape", "dtype", "structure", "not_a_tensor"]))
    parts = list(good)
    i = data.draw(st.integers(0, len(parts) - 1))
    if kind == "shape":
        shape = list(parts[i].shape)
        axis = data.draw(st.integers(0, 2))
        shape[axis] += data.draw(st.sampled_from([-1, 1, 2])) if shape[axis] > 1 else 1
        parts[i] = torch.zeros(shape)
    elif kind == "dtype":
        parts[i] = parts[i].to(data.draw(OTHER_DTYPES))
    elif kind == "not_a_tensor":
        parts[i] = data.draw(st.sampled_from([parts[i].tolist(), 0.0, "h0"]))
    h0 = tuple(parts) if lstm else parts[0]
    if kind == "structure":  # a bare tensor as (h0, c0), a list, a 1- or 3-tuple, or a tuple for a GRU/RNN
        h0 = data.draw(st.sampled_from([good[0], list(good), tuple(good[:1]), (*good, good[0])] if lstm
                                       else [tuple(good), [good[0]]]))
    expect_clear_error(lambda: layer.apply(params, x, h0), match=type(layer).__name__)


@given(layers(), st.data())
def test_layers_refuse_bad_lengths(case, data):
    layer, params, x, T, B = case
    kind = data.draw(st.sampled_from(["out_of_range", "float", "bool", "shape", "not_ints"]))
    if kind == "out_of_range":  # 0, negative or past the padded length T, as pack_padded_sequence refuses
        lengths = torch.full((B,), T)
        lengths[data.draw(st.integers(0, B - 1))] = data.draw(st.one_of(st.integers(-5, 0), st.integers(T + 1, T + 5)))
    elif kind == "float":
        lengths = torch.full((B,), data.draw(st.sampled_from([float(T), math.nan, 1.5])))
    elif kind == "bool":
        lengths = torch.ones(B, dtype=torch.bool)
    elif kind == "shape":
        lengths = torch.ones(data.draw(st.sampled_from([(B + 1,), (1, B), (B, 1), ()])), dtype=torch.long)
        if lengths.numel() == B and lengths.ndim == 1:
            lengths = torch.ones(B + 1, dtype=torch.long)
    else:
        lengths = data.draw(st.sampled_from(["abc", [1.5] * B, [None] * B, {"a": 1}]))
    expect_clear_error(lambda: layer.apply(params, x, lengths=lengths), match=type(layer).__name__)


@given(layers(), st.data())
def test_layers_refuse_bad_params(case, data):
    layer, params, x, _, _ = case
    bad = dict(params)
    name = data.draw(st.sampled_from(sorted(params)))
    kind = data.draw(st.sampled_from(["missing", "extra", "shape", "dtype", "not_a_dict"]))
    if kind == "missing":
        del bad[name]
    elif kind == "extra":
        bad[data.draw(st.sampled_from(["weight_ih_l9", "bias", "h0_l0", "weight_hr_l0_extra"]))] = torch.zeros(2)
    elif kind == "shape":
        bad[name] = torch.zeros(*params[name].shape[:-1], params[name].shape[-1] + 1)
    elif kind == "dtype":  # one param in another dtype than the others and the input
        bad[name] = params[name].to(data.draw(OTHER_DTYPES))
    else:
        bad = data.draw(st.sampled_from([list(params.values()), None, torch.zeros(3)]))
    expect_clear_error(lambda: layer.apply(bad, x), match=type(layer).__name__)


@given(name=st.sampled_from(sorted(CELLS)), batch=st.sampled_from([None, 0, 1, 3]), data=st.data())
def test_cells_refuse_bad_inputs_states_and_params(name, batch, data):
    cell = CELLS[name](3, 4)
    params = cell.init(random.key(0))
    lead = () if batch is None else (batch,)
    x = torch.randn(*lead, 3)
    n_state = 2 if name == "LSTMCell" else 1
    good = [torch.zeros(*lead, 4) for _ in range(n_state)]
    state = tuple(good) if n_state == 2 else good[0]
    kind = data.draw(st.sampled_from(["input_shape", "input_dtype", "state_shape", "state_dtype",
                                      "state_structure", "params_missing", "params_shape", "params_dtype"]))
    if kind == "input_shape":
        x = torch.randn(data.draw(st.sampled_from([(*lead, 2), (*lead, 5), (1, 2, 3), ()])))
    elif kind == "input_dtype":
        x = x.to(data.draw(OTHER_DTYPES))
    elif kind in ("state_shape", "state_dtype"):
        i = data.draw(st.integers(0, n_state - 1))
        good[i] = torch.zeros(*lead, 5) if kind == "state_shape" else good[i].to(data.draw(OTHER_DTYPES))
        state = tuple(good) if n_state == 2 else good[0]
    elif kind == "state_structure":  # (h, c) for the LSTM cell, a bare tensor otherwise
        state = data.draw(st.sampled_from([good[0], list(good), (good[0],), (*good, good[0])] if n_state == 2
                                          else [(good[0],), [good[0]], good[0].tolist()]))
    else:
        params = dict(params)
        p = data.draw(st.sampled_from(sorted(params)))
        if kind == "params_missing":
            del params[p]
        elif kind == "params_shape":
            params[p] = torch.zeros(params[p].shape[0] + 1, *params[p].shape[1:])
        else:
            params[p] = params[p].to(data.draw(OTHER_DTYPES))
    expect_clear_error(lambda: cell.apply(params, x, state), match=name)


def test_dropout_in_training_without_a_key_is_refused():
    lstm = cells.LSTM(3, 4, num_layers=2, dropout=0.5)
    expect_clear_error(lambda: lstm.apply(lstm.init(random.key(0)), torch.randn(2, 1, 3), train=True),
                       match="needs a key")
