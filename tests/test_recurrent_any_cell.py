"""``cells.Recurrent(cell)`` runs any cell of the cell protocol over sequences with what
``cells.LSTM`` offers: a user's peephole LSTM cell gives a plain Python loop's numbers (each
sequence on its own, cut at its length), and the built-in cells give ``nn.LSTM``/``nn.GRU``/
``nn.RNN``'s numbers on copied weights (packed lengths, bidirectional, stacked, batch_first);
it compiles; a cell that breaks the protocol is named in a clear error."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from badinput import expect_clear_error
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import cells
import fnnet as fn
from fnnet import _loop, random


@dataclass(frozen=True)
class PeepholeLSTMCell(fn.Module):
    """Gers & Schmidhuber's LSTM: the input and forget gates also read c, the output gate the new
    c (peephole weights ``[3, H]``). State ``(h, c)``; no ``output`` method: the layer reads h as
    the state's first leaf."""

    input_size: int
    hidden_size: int

    def init(self, key):
        H, n_in = self.hidden_size, self.input_size
        k = random.split(key, 4)
        bound = 1 / math.sqrt(H)
        return {"weight_ih": fn.init.uniform(k[0], (4 * H, n_in), bound),
                "weight_hh": fn.init.uniform(k[1], (4 * H, H), bound),
                "bias": fn.init.uniform(k[2], (4 * H,), bound),
                "peephole": fn.init.uniform(k[3], (3, H), bound)}

    def initial_state(self, batch, device=None, dtype=None):
        return tuple(torch.zeros(batch, self.hidden_size, device=device, dtype=dtype) for _ in range(2))

    def apply(self, params, x, state):
        h, c = state
        gates = x @ params["weight_ih"].T + h @ params["weight_hh"].T + params["bias"]
        i, f, g, o = gates.chunk(4, -1)
        w_ci, w_cf, w_co = params["peephole"].unbind(0)
        i, f = torch.sigmoid(i + w_ci * c), torch.sigmoid(f + w_cf * c)
        c = f * c + i * torch.tanh(g)
        h = torch.sigmoid(o + w_co * c) * torch.tanh(c)
        return h, c


@dataclass(frozen=True)
class EquinoxGRUCell(fn.Module):
    """Equinox's GRU cell: one input-side bias, ``bias_n`` inside the reset product, the update
    gate weighting the new candidate. State: a tensor ``h``."""

    input_size: int
    hidden_size: int

    def init(self, key):
        H, n_in = self.hidden_size, self.input_size
        k = random.split(key, 4)
        bound = 1 / math.sqrt(H)
        return {"weight_ih": fn.init.uniform(k[0], (3 * H, n_in), bound),
                "weight_hh": fn.init.uniform(k[1], (3 * H, H), bound),
                "bias": fn.init.uniform(k[2], (3 * H,), bound), "bias_n": fn.init.uniform(k[3], (H,), bound)}

    def initial_state(self, batch, device=None, dtype=None):
        return torch.zeros(batch, self.hidden_size, device=device, dtype=dtype)

    def apply(self, params, x, h):
        xr, xz, xn = (x @ params["weight_ih"].T + params["bias"]).chunk(3, -1)
        hr, hz, hn = (h @ params["weight_hh"].T).chunk(3, -1)
        r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * (hn + params["bias_n"]))
        return n + (1 - z) * (h - n)


USER_CELLS = {"PeepholeLSTMCell": PeepholeLSTMCell, "EquinoxGRUCell": EquinoxGRUCell}


def reference(layer, params, x, state0, lengths, dropout_masks=None):
    """The layer by definition: each sequence alone (a batch of one), cut at its length, each
    (layer, direction) a Python loop of ``cell.apply`` (backwards for a reverse direction), the
    layers above reading the outputs below (times the dropout mask); outputs padded with zeros.
    x: ``[T, B, I]``; state0: the cell's state with leaves ``[L*D, B, ...]``."""
    T, B = x.shape[:2]
    D = layer.num_directions
    outs, finals = [], [[None] * B for _ in range(layer.num_layers * D)]
    for b in range(B):
        n = int(lengths[b]) if lengths is not None else T
        inp = x[:n, b:b + 1]
        for k, cell in enumerate(layer.layer_cells):
            ys = []
            for d in range(D):
                i = k * D + d
                s = fn.tree.map(lambda t, i=i, b=b: t[i, b:b + 1], state0)
                y = [None] * n
                for t in (reversed(range(n)) if layer.reverse or d == 1 else range(n)):
                    s = cell.apply(params[f"l{k}" + ("_reverse" if d else "")], inp[t], s)
                    y[t] = s[0] if isinstance(s, tuple) else s  # h: the state, or h of (h, c)
                finals[i][b] = s
                ys.append(torch.stack(y))
            inp = torch.cat(ys, -1)
            if dropout_masks is not None and k < layer.num_layers - 1:
                inp = inp * dropout_masks[k][:n, b:b + 1]
        outs.append(torch.cat([inp, inp.new_zeros(T - n, *inp.shape[1:])]))
    final = fn.tree.map(lambda *s: torch.cat(s, 0), *[fn.tree.map(lambda *s: torch.cat(s, 0), *row)
                                                          for row in finals])
    final = fn.tree.map(lambda s: s.reshape(layer.num_layers * D, B, *s.shape[1:]), final)
    return torch.cat(outs, 1), final


def _leaves(tree):
    return fn.tree.leaves(tree)


def _loss(out, final, weights):
    """A loss reading every output and final-state element with its own weight."""
    return (out * weights[0]).sum() + sum((s * w).sum() for s, w in zip(_leaves(final), weights[1:]))


def _assert_same_grads(loss_a, loss_b, wrt, dtype, msg):
    ga = torch.autograd.grad(loss_a, wrt, allow_unused=True)
    gb = torch.autograd.grad(loss_b, wrt, allow_unused=True)
    for a, b in zip(ga, gb):
        if a is None or b is None:  # unused on one side (a learned state overridden): unused on both
            assert a is None and b is None, msg
        else:
            assert_close(a, b, dtype, msg)


# -- a user's cell against the reference loop ---------------------------------------------------

@st.composite
def configs(draw):
    bidirectional = draw(st.booleans())
    return {"num_layers": draw(st.integers(1, 2)), "bidirectional": bidirectional,
            "reverse": not bidirectional and draw(st.booleans()), "batch_first": draw(st.booleans()),
            "learn_initial_state": draw(st.booleans()), "dropout": draw(st.sampled_from([0.0, 0.5]))}


@given(name=st.sampled_from(sorted(USER_CELLS)), kw=configs(), i=st.integers(1, 4), h=st.integers(1, 4),
       T=st.integers(1, 5), B=st.integers(1, 3), with_state=st.booleans(), with_lengths=st.booleans(),
       train=st.booleans(), data=st.data())
def test_a_user_cell_gives_the_reference_loop_with_lengths_reverse_bidirectional_and_stacking(
        name, kw, i, h, T, B, with_state, with_lengths, train, data):
    dtype = torch.float64
    torch.manual_seed(data.draw(st.integers(0, 10**6)))
    cell = USER_CELLS[name](i, h)
    layer = cells.Recurrent(cell, **kw)
    params = fn.tree.map(lambda p: p.to(dtype).requires_grad_(), layer.init(random.key(data.draw(st.integers(0, 99)))))
    if kw["learn_initial_state"]:
        params["initial_state"] = {k: torch.randn_like(v).requires_grad_() for k, v in params["initial_state"].items()}
    n, D = kw["num_layers"] * layer.num_directions, layer.num_directions
    like = cell.initial_state(B, dtype=dtype)  # the state of one (layer, direction): leaves [B, H]
    x = torch.randn(T, B, i, dtype=dtype, requires_grad=True)
    state = fn.tree.map(lambda s: torch.randn(n, *s.shape, dtype=dtype, requires_grad=True), like) \
        if with_state else None
    lengths = torch.tensor(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B))) if with_lengths else None
    key = random.key(data.draw(st.integers(0, 99)))

    out, final = layer.apply(params, x.transpose(0, 1) if kw["batch_first"] else x, state, lengths=lengths,
                             key=key, train=train)
    if kw["batch_first"]:
        out = out.transpose(0, 1)
    if state is not None:
        state0 = state
    elif kw["learn_initial_state"]:  # [L*D, H] per leaf, broadcast over the batch
        learned = [params["initial_state"][str(j)] for j in range(len(_leaves(like)))]
        state0 = fn.tree.unflatten(fn.tree.structure(like), [s.unsqueeze(1).expand(n, B, h) for s in learned])
    else:
        state0 = fn.tree.map(lambda s: torch.zeros(n, *s.shape, dtype=dtype), like)
    masks = None
    if train and kw["dropout"] > 0:
        masks = [fn.dropout(torch.ones(T, B, D * h, dtype=dtype), kw["dropout"], random.fold_in(key, k))
                 for k in range(kw["num_layers"])]
    out_r, final_r = reference(layer, params, x, state0, lengths, masks)

    assert out.shape == (T, B, D * h) and fn.tree.structure(final) == fn.tree.structure(like)
    assert [s.shape for s in _leaves(final)] == [(n, B, h)] * len(_leaves(like))
    assert_close(out, out_r, dtype, "outputs")
    for a, b in zip(_leaves(final), _leaves(final_r)):
        assert_close(a, b, dtype, "final state")
    weights = [torch.randn_like(out), *(torch.randn_like(s) for s in _leaves(final))]
    wrt = [x, *_leaves(params), *([] if state is None else _leaves(state))]
    _assert_same_grads(_loss(out, final, weights), _loss(out_r, final_r, weights), wrt, dtype, "gradient")


def test_reverse_runs_each_sequence_from_its_own_end():
    """reverse=True reads a sequence of length n as x[n-1], ..., x[0]: the same as the forward
    layer on the sequence flipped within its length, outputs flipped back."""
    torch.manual_seed(0)
    cell = PeepholeLSTMCell(2, 3)
    fwd, bwd = cells.Recurrent(cell), cells.Recurrent(cell, reverse=True)
    params = fwd.init(random.key(1))
    x, lengths = torch.randn(5, 2, 2), torch.tensor([5, 3])
    out, (h, c) = bwd.apply(params, x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        flipped = x[:n, b:b + 1].flip(0)
        out_f, (h_f, c_f) = fwd.apply(params, flipped)
        torch.testing.assert_close(out[:n, b:b + 1], out_f.flip(0))
        torch.testing.assert_close(h[:, b:b + 1], h_f)
        torch.testing.assert_close(c[:, b:b + 1], c_f)
        assert not out[n:, b].any()


# -- the built-in cells against torch.nn --------------------------------------------------------

TORCH = {"LSTMCell": nn.LSTM, "GRUCell": nn.GRU, "RNNCell": nn.RNN}


def nested_params(module: nn.Module) -> dict:
    """torch's flat RNN names (``weight_ih_l0_reverse``) as Recurrent's tree
    (``{"l0_reverse": {"weight_ih": ...}}``)."""
    out: dict = {}
    for name, p in fn.params_from_module(module).items():
        kind, _, where = name.partition("_l")
        out.setdefault("l" + where, {})[kind] = p
    return out


@settings(max_examples=max(40, settings.default.max_examples))
@given(kind=st.sampled_from(sorted(TORCH)), i=st.integers(1, 4), h=st.integers(1, 4), T=st.integers(1, 5),
       B=st.integers(1, 3), num_layers=st.integers(1, 2), bidirectional=st.booleans(), batch_first=st.booleans(),
       bias=st.booleans(), relu=st.booleans(), with_h0=st.booleans(), with_lengths=st.booleans(),
       dtype=st.sampled_from([torch.float64, torch.float32]), data=st.data())
def test_built_in_cells_wrapped_give_torch_nn_numbers(kind, i, h, T, B, num_layers, bidirectional, batch_first,
                                                      bias, relu, with_h0, with_lengths, dtype, data):
    torch.manual_seed(data.draw(st.integers(0, 10**6)))
    extra = {"nonlinearity": "relu"} if kind == "RNNCell" and relu else {}
    theirs = TORCH[kind](i, h, num_layers=num_layers, bias=bias, batch_first=batch_first,
                         bidirectional=bidirectional, dropout=0.0, **extra).to(dtype).train()
    layer = cells.Recurrent(getattr(cells, kind)(i, h, bias, **extra), num_layers=num_layers,
                            bidirectional=bidirectional, batch_first=batch_first)
    params = fn.tree.map(lambda p: p.requires_grad_(), nested_params(theirs))
    n = num_layers * (2 if bidirectional else 1)
    x = torch.randn((B, T, i) if batch_first else (T, B, i), dtype=dtype, requires_grad=True)
    h0 = None
    if with_h0:
        h0 = tuple(torch.randn(n, B, h, dtype=dtype, requires_grad=True) for _ in range(2 if kind == "LSTMCell" else 1))
        h0 = h0 if kind == "LSTMCell" else h0[0]
    lengths = torch.tensor(data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B))) if with_lengths else None

    out, final = layer.apply(params, x, h0, lengths=lengths, train=True)  # dropout 0 in training: none
    if lengths is not None:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=False)
        out_t, final_t = theirs(packed, h0)
        out_t, _ = nn.utils.rnn.pad_packed_sequence(out_t, batch_first=batch_first, total_length=T)
    else:
        out_t, final_t = theirs(x, h0)
    assert type(final) is type(final_t)
    assert_close(out, out_t, dtype, "outputs")
    for a, b in zip(_leaves(final), _leaves(final_t)):
        assert_close(a, b, dtype, "final state")
    weights = [torch.randn_like(out), *(torch.randn_like(s) for s in _leaves(final))]
    h0s = [] if h0 is None else _leaves(h0)
    ga = torch.autograd.grad(_loss(out, final, weights), [x, *_leaves(params), *h0s])
    gb = torch.autograd.grad(_loss(out_t, final_t, weights), [x, *theirs.parameters(), *h0s])
    for a, b in zip(ga, gb):
        assert_close(a, b, dtype, "gradient")


def test_dropout_between_layers_draws_the_masks_cells_lstm_draws():
    """Same key, same masks: Recurrent(LSTMCell) in training equals cells.LSTM with dropout."""
    torch.manual_seed(0)
    theirs = nn.LSTM(3, 4, num_layers=3, bidirectional=True).double()
    flat, nested = fn.params_from_module(theirs), nested_params(theirs)
    x, lengths, key = torch.randn(5, 2, 3, dtype=torch.float64), torch.tensor([5, 2]), random.key(7)
    layer = cells.Recurrent(cells.LSTMCell(3, 4), num_layers=3, bidirectional=True, dropout=0.5)
    out, (h, c) = layer.apply(nested, x, lengths=lengths, key=key, train=True)
    want, (h_w, c_w) = cells.LSTM(3, 4, num_layers=3, bidirectional=True, dropout=0.5).apply(
        flat, x, lengths=lengths, key=key, train=True)
    assert_close(out, want)
    assert_close(h, h_w)
    assert_close(c, c_w)
    assert not torch.equal(out, layer.apply(nested, x, lengths=lengths)[0])  # eval: no dropout
    assert not torch.equal(out, layer.apply(nested, x, lengths=lengths, key=random.key(8), train=True)[0])
    with pytest.raises(ValueError, match="needs a key"):
        layer.apply(nested, x, train=True)


# -- edge cases -----------------------------------------------------------------------------------

def test_length_one_sequences_all_lengths_equal_and_one_length_one():
    torch.manual_seed(0)
    layer = cells.Recurrent(PeepholeLSTMCell(3, 4), num_layers=2, bidirectional=True)
    params = fn.tree.map(lambda p: p.double(), layer.init(random.key(0)))
    zeros = tuple(torch.zeros(4, 3, 4, dtype=torch.float64) for _ in range(2))
    for T, lengths in ((1, None), (1, [1, 1, 1]), (4, [1, 1, 1]), (4, [4, 1, 3]), (4, [4, 4, 4])):
        x = torch.randn(T, 3, 3, dtype=torch.float64)
        lengths = None if lengths is None else torch.tensor(lengths)
        out, final = layer.apply(params, x, lengths=lengths)
        out_r, final_r = reference(layer, params, x, zeros, lengths)
        assert_close(out, out_r, msg=f"T={T} lengths={lengths}")
        for a, b in zip(final, final_r):
            assert_close(a, b, msg=f"T={T} lengths={lengths}")
    # lengths all equal to T: the unpacked run
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(layer.apply(params, x, lengths=[4, 4, 4]), layer.apply(params, x), rtol=0, atol=0)


def test_an_empty_batch_gives_empty_outputs_and_states():
    for cell in (PeepholeLSTMCell(3, 4), cells.GRUCell(3, 4)):
        layer = cells.Recurrent(cell, num_layers=2, bidirectional=True, batch_first=True)
        params = layer.init(random.key(0))
        x = torch.randn(0, 5, 3, requires_grad=True)
        for lengths in (None, torch.zeros(0, dtype=torch.int64)):
            out, final = layer.apply(params, x, lengths=lengths)
            assert out.shape == (0, 5, 8)
            assert [s.shape for s in _leaves(final)] == [(4, 0, 4)] * len(_leaves(final))
            g = fn.grad(lambda p, layer=layer, x=x, lengths=lengths: layer.apply(p, x, lengths=lengths)[0].sum())(
                params)
            assert all(not v.any() for v in _leaves(g))


def test_an_unbatched_sequence_is_the_batch_of_one():
    layer = cells.Recurrent(PeepholeLSTMCell(3, 4), bidirectional=True)
    params = layer.init(random.key(0))
    x, h0 = torch.randn(6, 3), (torch.randn(2, 4), torch.randn(2, 4))
    out, (h, c) = layer.apply(params, x, h0, lengths=torch.tensor(4))
    out1, (h1, c1) = layer.apply(params, x.unsqueeze(1), tuple(s.unsqueeze(1) for s in h0), lengths=torch.tensor([4]))
    assert out.shape == (6, 8) and h.shape == (2, 4)
    assert torch.equal(out, out1[:, 0]) and torch.equal(h, h1[:, 0]) and torch.equal(c, c1[:, 0])
    assert not out[4:].any()


def test_vmap_over_stacked_params_is_an_ensemble():
    layer = cells.Recurrent(EquinoxGRUCell(3, 4), num_layers=2, reverse=True)
    members = [layer.init(k) for k in random.split(random.key(0), 3)]
    x, lengths = torch.randn(5, 2, 3), torch.tensor([5, 3])
    out, h = fn.vmap(lambda p: layer.apply(p, x, lengths=lengths))(fn.tree.stack(members))
    for m, p in enumerate(members):
        out_m, h_m = layer.apply(p, x, lengths=lengths)
        torch.testing.assert_close(out[m], out_m)
        torch.testing.assert_close(h[m], h_m)


# -- params ---------------------------------------------------------------------------------------

def test_params_are_keyed_by_layer_and_direction_and_upper_cells_read_both_directions():
    layer = cells.Recurrent(cells.LSTMCell(3, 5), num_layers=2, bidirectional=True, learn_initial_state=True)
    shapes = fn.param_shapes(layer)
    assert set(shapes) == {"l0", "l0_reverse", "l1", "l1_reverse", "initial_state"}
    assert shapes["l0"]["weight_ih"] == (20, 3) and shapes["l1_reverse"]["weight_ih"] == (20, 10)
    assert shapes["initial_state"] == {"0": (4, 5), "1": (4, 5)}  # h then c, [L*D, H]
    assert layer.layer_cells == (cells.LSTMCell(3, 5), cells.LSTMCell(10, 5))
    params = layer.init(random.key(0))
    assert not params["initial_state"]["0"].any()
    fn.check_params(layer, params)


def test_a_learned_initial_state_is_broadcast_over_the_batch_and_trained():
    layer = cells.Recurrent(PeepholeLSTMCell(2, 3), num_layers=2, learn_initial_state=True)
    params = layer.init(random.key(0))
    params["initial_state"] = {"0": torch.randn(2, 3), "1": torch.randn(2, 3)}
    x = torch.randn(4, 5, 2)
    out, _ = layer.apply(params, x)
    given = tuple(params["initial_state"][k].unsqueeze(1).expand(2, 5, 3) for k in ("0", "1"))
    torch.testing.assert_close(out, layer.apply(params, x, given)[0], rtol=0, atol=0)
    g = fn.grad(lambda p: layer.apply(p, x)[0].sum())(params)
    assert g["initial_state"]["0"].abs().sum() > 0 and g["initial_state"]["1"].abs().sum() > 0


def test_built_in_cells_meet_the_protocol():
    for cell, leaves in ((cells.RNNCell(3, 4), 1), (cells.GRUCell(3, 4), 1), (cells.LSTMCell(3, 4), 2)):
        state = cell.initial_state(5, dtype=torch.float64)
        assert [(s.shape, s.dtype) for s in _leaves(state)] == [((5, 4), torch.float64)] * leaves
        assert all(not s.any() for s in _leaves(state))
        assert cell.output(state) is _leaves(state)[0]
        params = cell.init(random.key(0))
        new = cell.apply(params, torch.randn(5, 3), cell.initial_state(5))
        assert fn.tree.structure(new) == fn.tree.structure(cell.initial_state(5))
        expect_clear_error(lambda cell=cell: cell.initial_state(-1), match="initial_state")


# -- compiled -------------------------------------------------------------------------------------

def test_compiled_training_step_of_a_user_cell_matches_eager():
    """Default inductor, fullgraph, through fnnet._loop (the step compiled in chunks, the graph flat
    in T): values and gradients (input, weights, given state) equal eager; 5 steps in chunks of
    4 and 1."""
    layer = cells.Recurrent(PeepholeLSTMCell(3, 4))
    params = fn.tree.map(lambda p: p.double(), layer.init(random.key(0)))
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    state = (torch.randn(1, 2, 4, dtype=torch.float64), torch.randn(1, 2, 4, dtype=torch.float64))

    def loss(p, x, state):
        out, (h, c) = layer.apply(p, x, state)
        return out.square().mean() + h.sum() + c.square().sum()
    step = fn.value_and_grad(loss, argnums=(0, 1, 2))
    before = set(_loop._REGISTRY)
    with _chunks(4):
        # static shapes: a symbolic batch (after another test's shapes) would take the recompute path
        value, grads = fn.jit(step, dynamic=False)(params, x, state)
    assert _roles_since(before) == {"rfwd", "rbwd"}  # the residual path, compiled by inductor
    value_e, grads_e = step(params, x, state)
    assert_close(value, value_e)
    for a, b in zip(_leaves(grads), _leaves(grads_e)):
        assert_close(a, b)


class _chunks:
    """fnnet._loop's default chunk length, for a test's compiles."""

    def __init__(self, k, traced=False):
        self.k, self.traced = k, traced

    def __enter__(self):
        self.saved = _loop.DEFAULT_CHUNK, _loop.COMPILER
        _loop.DEFAULT_CHUNK = self.k
        if self.traced:
            _loop.COMPILER = lambda gm, args: gm

    def __exit__(self, *exc):
        _loop.DEFAULT_CHUNK, _loop.COMPILER = self.saved


@pytest.fixture
def forward_output_sizes(monkeypatch):
    """The total size of fnnet::loop's outputs (ys and what it stores for the backward), per call."""
    sizes, real = [], _loop._forward_impl

    def recording(*args):
        out = real(*args)
        sizes.append(sum(o.numel() for o in out))
        return out
    monkeypatch.setattr(_loop, "_forward_impl", recording)
    return sizes


def _roles_since(before: set) -> set:
    """The chunk roles compiled for the loops created since ``before`` (``rfwd``/``rbwd``: the
    residual path; ``fwd``/``vjp``: the recompute path)."""
    return {key[0][0] for h, lp in _loop._REGISTRY.items() if h not in before for key in lp.compiled}


def test_compiled_training_stores_per_step_activations_not_copies_of_the_weights(forward_output_sizes):
    """fnnet::loop keeps what one step's backward reads, stacked [T, ...]; the weights it reads (a
    transposed weight included) go to the backward op as they are, never stored per step:
    doubling T grows the forward op's outputs by a few activations per step, far less than a
    copy of the weights per step; and the backward op runs the step's backward graph on them."""
    sizes = forward_output_sizes
    layer = cells.Recurrent(PeepholeLSTMCell(64, 4))
    params = layer.init(random.key(0))
    weights = sum(v.numel() for v in fn.tree.leaves(params))
    before = set(_loop._REGISTRY)
    with _chunks(4, traced=True):
        for T in (8, 16):
            # static shapes: a symbolic batch (dynamo's automatic dynamic) takes the recompute path
            fn.jit(fn.grad(lambda p, x: layer.apply(p, x)[0].sum()), backend="aot_eager", dynamic=False)(
                params, torch.randn(T, 2, 64))
    per_step = (sizes[1] - sizes[0]) / 8
    assert 0 < per_step < weights / 8, (per_step, weights)
    assert _roles_since(before) == {"rfwd", "rbwd"}


def _gemm_rows(gm) -> list:
    """``[rows of the left operand]`` of each matmul in a traced chunk graph, in graph order."""
    return [n.args[-2].meta["val"].shape[0] for n in gm.graph.nodes
            if n.op == "call_function" and n.target in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default)]


def test_the_input_projection_and_the_weight_gradients_run_once_per_chunk_not_per_step():
    """What a step computes from ``x_t`` without the carry (``x_t @ W_ih^T``) runs for the chunk's
    ``k`` steps as one matmul over ``k*B`` rows, as nn.LSTM does; in the backward, each weight's
    gradient (``g^T h`` summed over steps) is one matmul over the chunk's ``k*B`` rows, and only
    ``dh = g @ W_hh`` (and ``dx``, which reads no carry either, per step) remains per step.
    The numbers stay eager's."""
    k, B = 4, 3
    layer = cells.Recurrent(PeepholeLSTMCell(5, 4))
    params = fn.tree.map(lambda p: p.double(), layer.init(random.key(0)))
    x = torch.randn(8, B, 5, dtype=torch.float64)
    step = fn.value_and_grad(lambda p, x: layer.apply(p, x)[0].sin().sum())
    before = set(_loop._REGISTRY)
    with _chunks(k, traced=True):
        value, grads = fn.jit(step, backend="aot_eager", dynamic=False)(params, x)
    graphs = {key[0][0]: gm for h, lp in _loop._REGISTRY.items() if h not in before
              for key, gm in lp.compiled.items()}
    assert sorted(_gemm_rows(graphs["rfwd"])) == [B] * k + [k * B]  # h @ W_hh^T per step, x @ W_ih^T once
    assert sorted(_gemm_rows(graphs["rbwd"])) == [B] * k + [4 * 4] * 2  # dh per step; dW_hh, dW_ih: [4H, k*B] @ [k*B, .]
    value_e, grads_e = step(params, x)
    assert_close(value, value_e)
    for a, b in zip(_leaves(grads), _leaves(grads_e)):
        assert_close(a, b)


def test_the_backward_chunks_read_the_gates_the_forward_computed_and_evaluate_no_transcendental():
    """The backward of ``sigmoid``/``tanh`` needs their outputs; the forward chunks store those
    (as nn.LSTM stores its gates) rather than the pre-activations the partitioner would pick to
    recompute them from: a tanh per element costs several multiply-adds, every step. The
    numbers stay eager's."""
    layer = cells.Recurrent(PeepholeLSTMCell(5, 4))
    params = fn.tree.map(lambda p: p.double(), layer.init(random.key(0)))
    x = torch.randn(6, 3, 5, dtype=torch.float64)
    step = fn.value_and_grad(lambda p, x: layer.apply(p, x)[0].sin().sum())
    before = set(_loop._REGISTRY)
    with _chunks(3, traced=True):
        value, grads = fn.jit(step, backend="aot_eager", dynamic=False)(params, x)
    graphs = {key[0][0]: gm for h, lp in _loop._REGISTRY.items() if h not in before
              for key, gm in lp.compiled.items()}

    def transcendental(gm):
        return sorted(n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"
                      and n.target in (torch.ops.aten.tanh.default, torch.ops.aten.sigmoid.default))
    assert transcendental(graphs["rfwd"])  # the cell's gates
    assert transcendental(graphs["rbwd"]) == []
    value_e, grads_e = step(params, x)
    assert_close(value, value_e)
    for a, b in zip(_leaves(grads), _leaves(grads_e)):
        assert_close(a, b)


def test_a_carry_free_part_that_vmap_cannot_batch_runs_per_step_with_eager_numbers(monkeypatch, recwarn):
    """Where ``vmap`` cannot batch the step's carry-free part (an op with no batching rule; here
    every vmap refuses), the chunks run it per step: no warning, still the residual path, and
    eager's numbers."""
    def refusing_vmap(*args, **kwargs):
        raise RuntimeError("no batching rule")
    monkeypatch.setattr(torch.func, "vmap", refusing_vmap)
    layer = cells.Recurrent(EquinoxGRUCell(3, 4))
    params = fn.tree.map(lambda p: p.double(), layer.init(random.key(0)))
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    step = fn.value_and_grad(lambda p, x: layer.apply(p, x)[0].sin().sum(), argnums=(0, 1))
    before = set(_loop._REGISTRY)
    with _chunks(4, traced=True):
        value, grads = fn.jit(step, backend="aot_eager", dynamic=False)(params, x)
    assert _roles_since(before) == {"rfwd", "rbwd"}
    plans = [plan for h, lp in _loop._REGISTRY.items() if h not in before for plan in lp.plans.values()]
    assert plans and all(plan.hoisted is None for plan in plans)
    assert not [w for w in recwarn if "fnnet" in str(w.message)]
    value_e, grads_e = step(params, x)
    assert_close(value, value_e)
    for a, b in zip(_leaves(grads), _leaves(grads_e)):
        assert_close(a, b)


def test_compiled_chunks_write_outputs_at_unaligned_offsets_in_place():
    """The chunks write their steps' outputs and residuals straight into the loop's ``[T, ...]``
    buffers; with one step 12 bytes (B=1, H=3, float32), the chunks of 2 steps start at steps 0
    and 2: the first one's slices are 16-byte aligned and the second one's are not, where the
    chunk compiled for the first assumed alignment (default inductor, fullgraph): values and
    gradients equal eager."""
    layer = cells.Recurrent(PeepholeLSTMCell(2, 3))
    params = layer.init(random.key(0))
    x = torch.randn(5, 1, 2)

    def loss(p, x):
        out, (_, c) = layer.apply(p, x)
        return out.sin().sum() + c.square().sum()
    step = fn.value_and_grad(loss, argnums=(0, 1))
    before = set(_loop._REGISTRY)
    with _chunks(2):
        value, grads = fn.jit(step, dynamic=False)(params, x)
    assert _roles_since(before) == {"rfwd", "rbwd"}
    value_e, grads_e = step(params, x)
    assert_close(value, value_e)
    for a, b in zip(_leaves(grads), _leaves(grads_e)):
        assert_close(a, b)


@dataclass(frozen=True)
class SquashedWeightCell(fn.Module):
    """h' = sin([x, h] @ (tanh(w) * exp(scale))): a value of the weights alone that the backward reads."""

    input_size: int
    hidden_size: int

    def init(self, key):
        k = random.split(key, 2)
        return {"w": fn.init.uniform(k[0], (self.input_size + self.hidden_size, self.hidden_size), 1.0),
                "scale": fn.init.uniform(k[1], (self.hidden_size,), 1.0)}

    def initial_state(self, batch, device=None, dtype=None):
        return torch.zeros(batch, self.hidden_size, device=device, dtype=dtype)

    def apply(self, params, x, h):
        return torch.sin(torch.cat([x, h], -1) @ (torch.tanh(params["w"]) * params["scale"].exp()))


def test_a_value_of_the_weights_alone_is_stored_once_not_per_step(forward_output_sizes):
    """What the step's backward reads from the weights alone (``tanh(w) * exp(scale)``) is the same
    every step: fnnet::loop stores it once; values and gradients (reverse, in chunks with a
    remainder) equal eager."""
    sizes = forward_output_sizes
    layer = cells.Recurrent(SquashedWeightCell(60, 4), reverse=True)
    params = fn.tree.map(lambda p: p.double(), layer.init(random.key(0)))

    def loss(p, x):
        out, h = layer.apply(p, x)
        return out.sin().sum() + h.square().sum()
    step = fn.value_and_grad(loss, argnums=(0, 1))
    before = set(_loop._REGISTRY)
    with _chunks(3, traced=True):
        for T in (7, 14):
            x = torch.randn(T, 2, 60, dtype=torch.float64)
            # static shapes: a symbolic batch (dynamo's automatic dynamic) takes the recompute path
            value, grads = fn.jit(step, backend="aot_eager", dynamic=False)(params, x)
            value_e, grads_e = step(params, x)
            assert_close(value, value_e)
            for a, b in zip(_leaves(grads), _leaves(grads_e)):
                assert_close(a, b)
    assert (sizes[1] - sizes[0]) / 7 < params["l0"]["w"].numel()
    assert _roles_since(before) == {"rfwd", "rbwd"}


@settings(max_examples=4, deadline=None)
@given(kw=configs(), T=st.integers(1, 6), with_lengths=st.booleans(), k=st.integers(1, 4))
def test_compiled_training_of_a_user_cell_in_chunks_matches_eager_with_every_option(kw, T, with_lengths, k):
    """Lengths, reverse, bidirectional, stacking, dropout, a learned initial state, batch_first,
    any chunk length (remainders included): compiled training (the chunks traced, run without
    inductor, and the outer step on aot_eager: the inductor path is what the test above checks)
    equals eager."""
    layer = cells.Recurrent(PeepholeLSTMCell(3, 4), **kw)
    params = fn.tree.map(lambda p: p.double(), layer.init(random.key(0)))
    if kw["learn_initial_state"]:
        params["initial_state"] = {j: torch.randn_like(v) for j, v in params["initial_state"].items()}
    x = torch.randn(2, T, 3, dtype=torch.float64) if kw["batch_first"] else torch.randn(T, 2, 3, dtype=torch.float64)
    lengths = torch.tensor([T, max(1, T - 2)]) if with_lengths else None
    key = random.key(1)

    def loss(p, x):
        out, (h, c) = layer.apply(p, x, lengths=lengths, key=key, train=True)
        return out.sin().sum() + h.sum() + c.square().sum()
    step = fn.value_and_grad(loss, argnums=(0, 1))
    torch._dynamo.reset()
    with _chunks(k, traced=True):
        value, grads = fn.jit(step, backend="aot_eager")(params, x)
    value_e, grads_e = step(params, x)
    assert_close(value, value_e)
    for a, b in zip(_leaves(grads), _leaves(grads_e)):
        assert_close(a, b)


def test_compiled_training_graph_of_a_user_cell_is_flat_in_the_length():
    layer = cells.Recurrent(PeepholeLSTMCell(3, 4))
    params = layer.init(random.key(0))
    sizes = []

    def backend(gm, example_inputs):
        sizes.append(sum(len(m.graph.nodes) for m in gm.modules() if isinstance(m, torch.fx.GraphModule)))
        return gm
    with _chunks(4, traced=True):
        for T in (4, 32):
            fn.jit(fn.grad(lambda p, x: layer.apply(p, x)[0].sum()), backend=backend)(params, torch.randn(T, 2, 3))
            fn.jit(fn.grad(lambda p, x: layer.apply(p, x)[0].sum()), backend=backend, dynamic=False)(
                params, torch.randn(T, 2, 3))
    assert len(sizes) == 4 and sizes[1] == sizes[3]


@pytest.mark.slow  # a second inductor compile: about 15 s of CPU
def test_compiled_inference_of_a_user_cell_matches_eager():
    """Without gradients fnnet.scan runs torch's scan op (the step traced once); the masked step
    (lengths) and the reverse direction inside it give eager's numbers."""
    layer = cells.Recurrent(PeepholeLSTMCell(3, 4), bidirectional=True, learn_initial_state=True)
    params = fn.tree.map(lambda p: p.double(), layer.init(random.key(0)))
    params["initial_state"] = {k: torch.randn_like(v) for k, v in params["initial_state"].items()}
    x, lengths = torch.randn(5, 2, 3, dtype=torch.float64), torch.tensor([5, 2])

    def infer(p, x, lengths):
        return layer.apply(p, x, lengths=lengths)
    with torch.no_grad():
        got, want = fn.jit(infer)(params, x, lengths), infer(params, x, lengths)
    for a, b in zip(_leaves(got), _leaves(want)):
        assert_close(a, b)


# -- a cell that breaks the protocol, and other bad input -----------------------------------------

@dataclass(frozen=True)
class TanhCell(fn.Module):
    """``h' = tanh(W [x, h])``; ``grow`` / ``cast`` / ``pair`` break the protocol on purpose:
    the new state one wider, float32, or ``(h, h)`` (Flax's ``(carry, y)``)."""

    input_size: int
    hidden_size: int
    grow: bool = False
    cast: bool = False
    pair: bool = False
    batch_of_one: bool = False

    def init(self, key):
        return {"weight": fn.init.uniform(key, (self.hidden_size + self.grow, self.input_size + self.hidden_size), 0.5)}

    def initial_state(self, batch, device=None, dtype=None):
        return torch.zeros(1 if self.batch_of_one else batch, self.hidden_size, device=device, dtype=dtype)

    def apply(self, params, x, h):
        h_new = torch.tanh(torch.cat([x, h], -1) @ params["weight"].T)
        h_new = h_new.float() if self.cast else h_new
        return (h_new, h_new) if self.pair else h_new


class PlainCell:
    """A cell that is no dataclass (stacks only as separate layers)."""

    input_size = 2

    def init(self, key):
        return {"w": torch.zeros(2, 4)}

    def initial_state(self, batch, device=None, dtype=None):
        return torch.zeros(batch, 2, device=device, dtype=dtype)

    def apply(self, params, x, h):
        return torch.tanh(torch.cat([x, h], -1) @ params["w"].T)


@dataclass(frozen=True)
class NoInitialState(fn.Module):
    input_size: int = 2

    def apply(self, params, x, h):
        return h


@dataclass(frozen=True)
class NormedCell(TanhCell):
    """Running statistics inside a cell: not a recurrent state the protocol can carry."""

    norm: fn.BatchNorm1d = fn.BatchNorm1d(3)


class Unhashable(PlainCell):
    __hash__ = None  # as a mutable dataclass's: equality without a hash


@dataclass(frozen=True)
class WideOutput(TanhCell):
    def output(self, state):
        return state.unsqueeze(-1)


def test_a_cell_that_breaks_the_protocol_is_named_with_what_was_expected():
    x = torch.randn(4, 3, 2, dtype=torch.float64)

    def run(cell):
        layer = cells.Recurrent(cell)
        params = fn.tree.map(lambda p: p.double(), layer.init(random.key(0)))
        return layer.apply(params, x)
    expect_clear_error(lambda: run(TanhCell(2, 3, grow=True)), match=r"TanhCell.*grow=True.*expected \[3, 3\]")
    expect_clear_error(lambda: run(TanhCell(2, 3, cast=True)), match=r"TanhCell.*torch.float32.*expected .*float64")
    expect_clear_error(lambda: run(TanhCell(2, 3, pair=True)), match=r"TanhCell.*new state only")
    expect_clear_error(lambda: run(TanhCell(2, 3, batch_of_one=True)), match=r"TanhCell.*initial_state\(3")
    expect_clear_error(lambda: cells.Recurrent(NoInitialState()), match=r"NoInitialState.*initial_state")
    expect_clear_error(lambda: cells.Recurrent(fn.Linear(2, 3)), match=r"Linear.*initial_state")
    expect_clear_error(lambda: cells.Recurrent(Unhashable()), match=r"Unhashable.*hashable")
    expect_clear_error(lambda: cells.Recurrent(WideOutput(2, 3)), match=r"WideOutput.*output.*\[B, H\]")
    expect_clear_error(lambda: cells.Recurrent(PlainCell(), num_layers=2), match=r"PlainCell.*input_size")
    expect_clear_error(lambda: cells.Recurrent(NormedCell(2, 3)), match=r"NormedCell.*running statistics")
    cells.Recurrent(PlainCell())  # one layer needs no replace()
    no_size = type("NoSize", (PlainCell,), {"input_size": None})()
    expect_clear_error(lambda: cells.Recurrent(no_size), match=r"NoSize.*input_size")


NOT_AN_INT = st.sampled_from([1.0, 2.5, "2", None, True, torch.tensor(2)])
NOT_A_BOOL = st.sampled_from([0, 1, 1.0, "yes", None])


@st.composite
def bad_hyperparameters(draw):
    """(the argument to name, Recurrent kwargs with exactly that one invalid)."""
    name = draw(st.sampled_from(["num_layers", "dropout", "bidirectional", "batch_first", "reverse",
                                 "learn_initial_state"]))
    if name == "num_layers":
        return name, {name: draw(st.integers(max_value=0) | NOT_AN_INT)}
    if name == "dropout":
        bad = st.floats(max_value=-1e-9) | st.floats(min_value=1 + 1e-9) | st.sampled_from([math.nan, "0.1", None])
        return name, {name: draw(bad)}
    if name == "reverse" and draw(st.booleans()):
        return name, {"reverse": True, "bidirectional": True}
    return name, {name: draw(NOT_A_BOOL)}


@given(case=bad_hyperparameters())
def test_constructor_refuses_bad_hyperparameters(case):
    name, kw = case
    expect_clear_error(lambda: cells.Recurrent(cells.GRUCell(2, 3), **kw), match=f"Recurrent.*{name}")


@st.composite
def bad_calls(draw):
    """(what the error must say, a call of a 2-layer Recurrent(LSTMCell(3, 4), bidirectional?)
    with exactly one bad argument), the rest valid: T, B drawn."""
    bidirectional, batch_first = draw(st.booleans()), draw(st.booleans())
    layer = cells.Recurrent(cells.LSTMCell(3, 4), num_layers=2, bidirectional=bidirectional, batch_first=batch_first)
    params = layer.init(random.key(0))
    T, B, n = draw(st.integers(1, 4)), draw(st.integers(1, 3)), 2 * layer.num_directions
    x = torch.randn(B, T, 3) if batch_first else torch.randn(T, B, 3)
    state = (torch.zeros(n, B, 4), torch.zeros(n, B, 4))
    what = draw(st.sampled_from(["input size", "input rank", "no steps", "length value", "lengths shape",
                                 "lengths dtype", "state structure", "state shape", "dtype", "state dtype",
                                 "params"]))
    if what == "input size":
        size = draw(st.integers(1, 6).filter(lambda i: i != 3))
        return "input of shape", lambda: layer.apply(params, x[..., :1].expand(*x.shape[:2], size))
    if what == "input rank":
        return "input of shape", lambda: layer.apply(params, x.unsqueeze(0))
    if what == "no steps":
        return "at least one step", lambda: layer.apply(params, x[:, :0] if batch_first else x[:0])
    if what == "length value":
        lengths = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
        lengths[draw(st.integers(0, B - 1))] = draw(st.integers(max_value=0) | st.integers(T + 1, T + 5))
        return "lengths must be in", lambda: layer.apply(params, x, lengths=lengths)
    if what == "lengths shape":
        other = draw(st.integers(0, 4).filter(lambda b: b != B))
        lengths = torch.ones(other, dtype=torch.int64)
        return "lengths must have shape", lambda: layer.apply(params, x, lengths=lengths)
    if what == "lengths dtype":
        bad = draw(st.sampled_from([torch.float32, torch.bool, torch.complex64]))
        return "integer tensor", lambda: layer.apply(params, x, lengths=torch.ones(B, dtype=bad))
    if what == "state structure":
        bad = draw(st.sampled_from([state[0], [state[0], state[1]], state[:1], (*state, state[0])]))
        return "structure of the cell's state", lambda: layer.apply(params, x, bad)
    if what == "state shape":
        leaf, axis = draw(st.integers(0, 1)), draw(st.integers(0, 2))
        shape = [n, B, 4]
        shape[axis] += draw(st.sampled_from([-1, 1])) if shape[axis] > 1 else 1
        bad = tuple(torch.zeros(shape) if j == leaf else s for j, s in enumerate(state))
        return f"state leaf '{leaf}' of shape", lambda: layer.apply(params, x, bad)
    if what == "dtype":
        return "input dtype", lambda: layer.apply(params, x.double())
    if what == "state dtype":
        leaf = draw(st.integers(0, 1))
        bad = tuple(s.double() if j == leaf else s for j, s in enumerate(state))
        return f"state leaf '{leaf}'", lambda: layer.apply(params, x, bad)
    path = draw(st.sampled_from(sorted(p for p, _ in fn.tree.flatten_with_paths(params))))
    top, leaf = path.split(".")
    bad = {**params, top: {k: v for k, v in params[top].items() if k != leaf}}
    return f"missing '{path}'", lambda: layer.apply(bad, x)


@given(case=bad_calls())
def test_apply_refuses_bad_input_naming_the_layer(case):
    match, call = case
    err = expect_clear_error(call, match=match)
    assert "Recurrent" in str(err)


def test_a_loop_with_nothing_to_differentiate_runs_compiled_under_grad():
    """Under fn.jit(fn.grad(f)) where the loop's params, state and input need no gradient (the
    gradient is w.r.t. something else), the loop runs forward alone; dynamo failed on the loop's
    autograd.Function there ("no attribute 'proxy'")."""
    layer = cells.Recurrent(cells.LSTMCell(3, 4))
    params, x = layer.init(fn.random.key(0)), torch.randn(5, 2, 3)

    def f(scale):
        return layer.apply(params, x)[0].sum() * scale.sum()
    before = set(_loop._REGISTRY)
    with _chunks(4, traced=True):
        got = fn.jit(fn.grad(f), backend="aot_eager")(torch.ones(2))
    assert set(_loop._REGISTRY) != before  # the loop ran
    assert_close(got, fn.grad(f)(torch.ones(2)))
