"""cells give nn.RNN / nn.LSTM / nn.GRU and their *Cell twins' numbers on the same weights:
outputs, final states and gradients w.r.t. params, inputs and h0, packed lengths included."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, assert_trees_close
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cells
import fnnet as fn
from fnnet import random

DTYPES = st.sampled_from([torch.float64, torch.float32])
KINDS = {"RNN": (nn.RNN, cells.RNN), "LSTM": (nn.LSTM, cells.LSTM), "GRU": (nn.GRU, cells.GRU)}
CELLS = {"RNNCell": (nn.RNNCell, cells.RNNCell), "LSTMCell": (nn.LSTMCell, cells.LSTMCell),
         "GRUCell": (nn.GRUCell, cells.GRUCell)}


def _leaves(tree):
    return [x for _, x in fn.tree.flatten_with_paths(tree)]


def _grads_of(y, inputs):
    return torch.autograd.grad(y, inputs, allow_unused=True)


@given(kind=st.sampled_from(list(CELLS)), i=st.integers(1, 5), h=st.integers(1, 5), batch=st.sampled_from([None, 1, 3]),
       bias=st.booleans(), relu=st.booleans(), with_state=st.booleans(), dtype=DTYPES, seed=st.integers(0, 10**6))
def test_cells_match_torch_cells(kind, i, h, batch, bias, relu, with_state, dtype, seed):
    torch.manual_seed(seed)
    theirs_t, ours_t = CELLS[kind]
    kw = {"nonlinearity": "relu"} if kind == "RNNCell" and relu else {}
    theirs = theirs_t(i, h, bias, **kw).to(dtype)
    ours = ours_t(i, h, bias, **kw)
    params = fn.params_from_module(theirs)
    lead = () if batch is None else (batch,)
    x = torch.randn(*lead, i, dtype=dtype, requires_grad=True)
    state = None
    if with_state:
        state = tuple(torch.randn(*lead, h, dtype=dtype, requires_grad=True) for _ in range(2 if kind == "LSTMCell" else 1))
        state = state if kind == "LSTMCell" else state[0]
    out_t = theirs(x, state)
    p = {k: v.requires_grad_() for k, v in params.items()}
    out_o = ours.apply(p, x, state)
    for a, b in zip(out_o if isinstance(out_o, tuple) else (out_o,), out_t if isinstance(out_t, tuple) else (out_t,)):
        assert_close(a, b, dtype)
    total_o = sum(o.sum() for o in (out_o if isinstance(out_o, tuple) else (out_o,)))
    total_t = sum(o.sum() for o in (out_t if isinstance(out_t, tuple) else (out_t,)))
    wrt_o = [x, *p.values()] + list(state if isinstance(state, tuple) else ([state] if state is not None else []))
    wrt_t = [x, *theirs.parameters()] + list(state if isinstance(state, tuple) else ([state] if state is not None else []))
    for a, b in zip(_grads_of(total_o, wrt_o), _grads_of(total_t, wrt_t)):
        assert_close(a, b, dtype)


@st.composite
def rnn_configs(draw):
    kind = draw(st.sampled_from(list(KINDS)))
    h = draw(st.integers(2, 5))
    kw = {"num_layers": draw(st.integers(1, 3)), "bias": draw(st.booleans()), "batch_first": draw(st.booleans()),
          "bidirectional": draw(st.booleans())}
    fused = draw(st.booleans())  # the hand-written VJP, or the cell differentiated step by step
    if kind == "LSTM":
        kw["proj_size"] = draw(st.integers(0, h - 1))
    if kind == "RNN":
        kw["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    return kind, draw(st.integers(1, 4)), h, kw, fused


@settings(max_examples=max(60, settings.default.max_examples))  # many option combinations; each is fast
@given(cfg=rnn_configs(), T=st.integers(1, 5), batch=st.sampled_from([None, 1, 3]), with_h0=st.booleans(),
       with_lengths=st.booleans(), dtype=DTYPES, data=st.data())
def test_sequence_layers_match_torch_with_h0_and_packed_lengths(cfg, T, batch, with_h0, with_lengths, dtype, data):
    kind, i, h, kw, fused = cfg
    torch.manual_seed(data.draw(st.integers(0, 10**6)))
    theirs_t, ours_t = KINDS[kind]
    theirs = theirs_t(i, h, **kw).to(dtype)
    ours = ours_t(i, h, **kw, fused=fused)
    params = {k: v.requires_grad_() for k, v in fn.params_from_module(theirs).items()}
    n = kw["num_layers"] * (2 if kw["bidirectional"] else 1)
    h_out = kw.get("proj_size") or h
    b = batch or 1
    x = torch.randn(b, T, i, dtype=dtype) if kw["batch_first"] else torch.randn(T, b, i, dtype=dtype)
    if batch is None:
        x = x[0] if kw["batch_first"] else x[:, 0]
    x.requires_grad_()
    h0 = None
    if with_h0:
        shape = (n, b, h_out) if batch else (n, h_out)
        h0 = torch.randn(shape, dtype=dtype, requires_grad=True)
        if kind == "LSTM":
            h0 = (h0, torch.randn(*shape[:-1], h, dtype=dtype, requires_grad=True))
    lengths = None
    if with_lengths and batch:
        lengths = torch.tensor(data.draw(st.lists(st.integers(1, T), min_size=b, max_size=b)))

    out_o, hn_o = ours.apply(params, x, h0, lengths=lengths)
    if lengths is not None:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=kw["batch_first"], enforce_sorted=False)
        out_t, hn_t = theirs(packed, h0)
        out_t, _ = nn.utils.rnn.pad_packed_sequence(out_t, batch_first=kw["batch_first"], total_length=T)
    else:
        out_t, hn_t = theirs(x, h0)
    hn_o = hn_o if isinstance(hn_o, tuple) else (hn_o,)
    hn_t = hn_t if isinstance(hn_t, tuple) else (hn_t,)
    assert_close(out_o, out_t, dtype, "output")
    for a, c in zip(hn_o, hn_t):
        assert_close(a, c, dtype, "final state")

    loss_o = out_o.square().sum() + sum(s.sum() for s in hn_o)
    loss_t = out_t.square().sum() + sum(s.sum() for s in hn_t)
    h0s = list(h0) if isinstance(h0, tuple) else ([h0] if h0 is not None else [])
    g_o = _grads_of(loss_o, [x, *params.values(), *h0s])
    g_t = _grads_of(loss_t, [x, *theirs.parameters(), *h0s])
    for a, c in zip(g_o, g_t):
        if a is None or c is None:
            assert (a is None or not a.any()) and (c is None or not c.any())
        else:
            assert_close(a, c, dtype, "gradient")


def test_length_one_sequences_and_a_batch_of_one():
    torch.manual_seed(0)
    theirs = nn.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    params = fn.params_from_module(theirs)
    x = torch.randn(1, 1, 3, dtype=torch.float64)
    out_o, (h_o, c_o) = cells.LSTM(3, 4, num_layers=2, bidirectional=True).apply(params, x)
    out_t, (h_t, c_t) = theirs(x)
    assert_close(out_o, out_t)
    assert_close(h_o, h_t)
    assert_close(c_o, c_t)


def test_an_unbatched_sequence_with_a_length_is_the_batch_of_one():
    gru = cells.GRU(3, 4, bidirectional=True)
    params = gru.init(random.key(0))
    x = torch.randn(6, 3)
    out, h = gru.apply(params, x, lengths=torch.tensor(4))
    out1, h1 = gru.apply(params, x.unsqueeze(1), lengths=torch.tensor([4]))
    assert out.shape == (6, 8) and h.shape == (2, 4)
    assert torch.equal(out, out1[:, 0]) and torch.equal(h, h1[:, 0])
    assert not out[4:].any() and out[3].any()


def test_params_have_torch_names_and_init_distribution():
    lstm = cells.LSTM(3, 8, num_layers=2, bidirectional=True, proj_size=2)
    params = lstm.init(random.key(0))
    assert set(params) == {n for n, _ in nn.LSTM(3, 8, num_layers=2, bidirectional=True, proj_size=2).named_parameters()}
    for name, p in params.items():
        assert p.abs().max() <= 1 / 8 ** 0.5, name
    fn.check_params(lstm, params)


def test_dropout_between_layers_comes_from_the_key():
    gru = cells.GRU(3, 16, num_layers=3, dropout=0.5)
    params = gru.init(random.key(0))
    x = torch.randn(5, 2, 3)
    a, _ = gru.apply(params, x, key=random.key(1), train=True)
    b, _ = gru.apply(params, x, key=random.key(1), train=True)
    c, _ = gru.apply(params, x, key=random.key(2), train=True)
    eval1, _ = gru.apply(params, x)
    eval2, _ = gru.apply(params, x, key=random.key(2))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(eval1, eval2) and not torch.equal(a, eval1)
    with pytest.raises(ValueError, match="needs a key"):
        gru.apply(params, x, train=True)


def test_dropout_between_layers_zeroes_a_fraction_p_independently_and_rescales_the_rest():
    """Layer 0 outputs ones (relu of x=1 through unit weights); layer 1 is the identity, so the
    output is the dropout mask between the layers: zero with probability p, else 1/(1-p)."""
    H, p = 400, 0.3
    rnn = cells.RNN(1, H, num_layers=2, dropout=p, nonlinearity="relu", bias=False)
    params = {"weight_ih_l0": torch.ones(H, 1), "weight_hh_l0": torch.zeros(H, H),
              "weight_ih_l1": torch.eye(H), "weight_hh_l1": torch.zeros(H, H)}
    x = torch.ones(4, 8, 1)
    assert torch.equal(rnn.apply(params, x)[0], torch.ones(4, 8, H))  # eval: no dropout
    out, _ = rnn.apply(params, x, key=random.key(3), train=True)
    dropped = (out == 0).double().mean().item()
    assert abs(dropped - p) < 0.02
    assert torch.allclose(out[out != 0], torch.tensor(1 / (1 - p)))
    assert not torch.equal(out[0], out[1])  # a fresh mask at every step and sequence


def test_learnable_initial_state_is_a_param_broadcast_over_the_batch():
    lstm = cells.LSTM(2, 3, num_layers=2, learn_initial_state=True)
    params = lstm.init(random.key(0))
    assert params["h0"].shape == (2, 3) and params["c0"].shape == (2, 3)
    params = {**params, "h0": torch.randn(2, 3), "c0": torch.randn(2, 3)}
    x = torch.randn(4, 5, 2)
    out, _ = lstm.apply(params, x)
    h0 = params["h0"].unsqueeze(1).expand(2, 5, 3).contiguous()
    c0 = params["c0"].unsqueeze(1).expand(2, 5, 3).contiguous()
    weights = {k: v for k, v in params.items() if k not in ("h0", "c0")}
    expected, _ = cells.LSTM(2, 3, num_layers=2).apply(weights, x, (h0, c0))
    assert_close(out, expected)
    g = fn.grad(lambda p: lstm.apply(p, x)[0].sum())(params)
    assert g["h0"].abs().sum() > 0 and g["c0"].abs().sum() > 0


def test_clear_errors_name_the_layer_and_what_was_expected():
    lstm = cells.LSTM(8, 4)
    params = lstm.init(random.key(0))
    with pytest.raises(ValueError, match=r"LSTM\(input_size=8.*expected input of shape \[T, B, 8\]"):
        lstm.apply(params, torch.randn(5, 2, 7))
    with pytest.raises(ValueError, match=r"expected h0 of shape \[1, 2, 4\], got \[1, 3, 4\]"):
        lstm.apply(params, torch.randn(5, 2, 8), (torch.zeros(1, 3, 4), torch.zeros(1, 2, 4)))
    with pytest.raises(ValueError, match=r"lengths must be in \[1, 5\]"):
        lstm.apply(params, torch.randn(5, 2, 8), lengths=torch.tensor([6, 1]))
    with pytest.raises(ValueError, match="integer tensor"):
        lstm.apply(params, torch.randn(5, 2, 8), lengths=torch.tensor([2.0, 1.0]))
    with pytest.raises(ValueError, match=r"lengths must have shape \[2\]"):
        lstm.apply(params, torch.randn(5, 2, 8), lengths=torch.tensor([2, 1, 3]))
    with pytest.raises(fn.ParamsError, match="weight_hh_l0"):
        lstm.apply({k: v for k, v in params.items() if k != "weight_hh_l0"}, torch.randn(5, 2, 8))


def test_lstm_forward_and_backward_compile_in_one_graph_and_match_eager():
    lstm = cells.LSTM(3, 8, num_layers=2, bidirectional=True)
    params = lstm.init(random.key(0))
    x = torch.randn(6, 4, 3)
    lengths = torch.tensor([6, 3, 1, 5])

    def loss(p, x):
        out, (h, _) = lstm.apply(p, x, lengths=lengths)
        return out.square().mean() + h.sum()

    step = fn.value_and_grad(loss)
    eager = step(params, x)
    compiled = fn.jit(step)(params, x)
    assert_close(compiled[0], eager[0])
    assert_trees_close(compiled[1], eager[1])


def test_vmap_over_a_batch_of_param_sets():
    gru = cells.GRU(2, 3)
    stacked = fn.tree.stack([gru.init(k) for k in random.split(random.key(0), 4)])
    x = torch.randn(5, 2, 2)
    outs = fn.vmap(lambda p: gru.apply(p, x)[0])(stacked)
    for i, p in enumerate(fn.tree.unstack(stacked)):
        assert_close(outs[i], gru.apply(p, x)[0])


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("fused", [True, False])
def test_an_empty_batch_gives_torchs_shapes_and_gradients(kind, fused):
    """B = 0 at float32 (for the LSTM: not the oneDNN kernel, which fails on it), as nn.LSTM."""
    theirs = KINDS[kind][0](3, 4, num_layers=2, bidirectional=True)
    ours = KINDS[kind][1](3, 4, num_layers=2, bidirectional=True, fused=fused)
    params = fn.params_from_module(theirs)
    x = torch.randn(5, 0, 3)
    out, h = ours.apply(params, x)
    out_t, h_t = theirs(x)
    assert out.shape == out_t.shape
    for a, b in zip(h if isinstance(h, tuple) else (h,), h_t if isinstance(h_t, tuple) else (h_t,)):
        assert a.shape == b.shape
    grads = fn.grad(lambda p: ours.apply(p, x)[0].sum())(params)
    assert all(g.shape == params[k].shape and not g.any() for k, g in grads.items())


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_extra_missing_or_misshaped_params_raise_params_error_naming_the_path(kind):
    kw = {"proj_size": 2, "learn_initial_state": True} if kind == "LSTM" else {"num_layers": 2}
    layer = KINDS[kind][1](3, 4, bidirectional=True, **kw)
    params, x = layer.init(random.key(0)), torch.randn(2, 1, 3)
    layer.apply(params, x)
    with pytest.raises(fn.ParamsError, match="weight_hh_l0_reverse"):
        layer.apply({k: v for k, v in params.items() if k != "weight_hh_l0_reverse"}, x)
    for extra in ("weight_ih_l2", "h0" if kind != "LSTM" else "weight_hr_l1", "bias"):
        with pytest.raises(fn.ParamsError, match=extra):
            layer.apply({**params, extra: torch.zeros(4)}, x)
    with pytest.raises(fn.ParamsError, match="bias_ih_l0"):
        layer.apply({**params, "bias_ih_l0": torch.zeros(5)}, x)
    no_bias = KINDS[kind][1](3, 4, bias=False, bidirectional=True, **kw)
    with pytest.raises(fn.ParamsError, match="bias_hh_l0"):
        no_bias.apply(params, x)  # bias params given to a layer built without them


def test_a_dtype_mismatch_is_named_as_torch_names_it():
    lstm = cells.LSTM(3, 4)
    params = lstm.init(random.key(0))
    with pytest.raises(ValueError, match=r"input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"):
        lstm.apply(params, torch.randn(2, 1, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="h0 is torch.float64"):
        lstm.apply(params, torch.randn(2, 1, 3), (torch.zeros(1, 1, 4, dtype=torch.float64), torch.zeros(1, 1, 4)))
    with pytest.raises(ValueError, match="weight_hh_l0.*torch.float64"):
        lstm.apply({**params, "weight_hh_l0": params["weight_hh_l0"].double()}, torch.randn(2, 1, 3))
    cell = cells.GRUCell(3, 4)
    with pytest.raises(ValueError, match=r"GRUCell.*input dtype \(torch.int64\)"):
        cell.apply(cell.init(random.key(0)), torch.ones(2, 3, dtype=torch.long))


def test_an_lstm_state_must_be_the_pair_h_c():
    """A bare [B, H] tensor would be unpacked along B into h and c: refused."""
    cell, lstm = cells.LSTMCell(3, 2), cells.LSTM(3, 2)
    with pytest.raises(TypeError, match=r"LSTMCell.*state must be a tuple \(h, c\), got Tensor"):
        cell.apply(cell.init(random.key(0)), torch.randn(2, 3), torch.zeros(2, 2))
    with pytest.raises(TypeError, match=r"LSTM.*must be a tuple \(h0, c0\), got Tensor"):
        lstm.apply(lstm.init(random.key(0)), torch.randn(4, 2, 3), torch.zeros(2, 2, 2))


def test_constructors_check_what_torchs_rnnbase_checks():
    for bad, error, match in [(dict(hidden_size=0), ValueError, "hidden_size must be at least 1"),
                              (dict(hidden_size=4.0), TypeError, "hidden_size should be of type int"),
                              (dict(num_layers=0), ValueError, "num_layers"),
                              (dict(dropout=1.5), ValueError, "dropout"),
                              (dict(proj_size=4), ValueError, "proj_size has to be smaller than hidden_size"),
                              (dict(proj_size=-1), ValueError, "proj_size"),
                              (dict(bidirectional=1), TypeError, "bidirectional should be a bool")]:
        with pytest.raises(error, match=f"^LSTM: {match}"):
            cells.LSTM(**{"input_size": 3, "hidden_size": 4, **bad})
    with pytest.raises(ValueError, match="^RNN: unknown nonlinearity 'sigmoid'"):
        cells.RNN(3, 4, nonlinearity="sigmoid")
