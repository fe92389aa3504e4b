"""MultiheadAttention gives nn.MultiheadAttention's numbers on its weights: outputs, attention
weights and gradients w.r.t. every param and input, for every mask kind (bool and float,
2-D and 3-D attn_mask, key_padding_mask merged into it), batch_first, unbatched inputs,
kdim/vdim, add_bias_kv, add_zero_attn, with and without weights (the SDPA path), in training
(dropout 0) and eval. Dropout comes from ``rng=``; bad inputs are refused by name."""

from __future__ import annotations

import math

import pytest
import torch
from badinput import expect_clear_error
from conftest import assert_close, assert_trees_close
from hypothesis import given, settings
from hypothesis import strategies as st

import fnnet as fn
from fnnet import random

nn = torch.nn
seeds = st.integers(0, 2**31 - 1)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def torch_twin(layer: fn.MultiheadAttention, dtype, seed=0) -> nn.MultiheadAttention:
    torch.manual_seed(seed)
    return nn.MultiheadAttention(layer.embed_dim, layer.num_heads, dropout=layer.dropout, bias=layer.bias,
                                 add_bias_kv=layer.add_bias_kv, add_zero_attn=layer.add_zero_attn,
                                 kdim=layer.kdim, vdim=layer.vdim, batch_first=layer.batch_first).to(dtype)


def make_mask(kind: str, shape: tuple, dtype, g: torch.Generator):
    """``None``, a bool mask (True: not attended) or a float one (finite offsets and some -inf);
    column 0 is never masked, so no row is fully masked."""
    if kind == "none":
        return None
    masked = torch.rand(shape, generator=g) < 0.4
    masked[..., 0] = False
    if kind == "bool":
        return masked
    return torch.randn(shape, generator=g, dtype=dtype).masked_fill(masked, float("-inf"))


def both(layer, tmod, inputs: tuple, kwargs: dict, dtype, seed=0, train=False):
    """Forward both, compare outputs and weights, then the gradients of ``<out, g> + <w, h>``
    w.r.t. every param and every input."""
    tmod.train(train)
    params = fn.params_from_module(tmod)
    t_in = tuple(x.detach().clone().requires_grad_(True) for x in inputs)
    if inputs[0] is inputs[1] is inputs[2]:  # self-attention: the same tensor, as torch sees it
        t_in = (t_in[0],) * 3
    t_out, t_w = tmod(*t_in, **kwargs)
    f_out, f_w = layer.apply(params, *inputs, **kwargs, train=train)
    assert f_out.shape == t_out.shape, f"{layer!r}: output {list(f_out.shape)} vs torch {list(t_out.shape)}"
    assert_close(f_out, t_out.detach(), dtype, msg=f"{layer!r} output")
    assert (f_w is None) == (t_w is None)
    if t_w is not None:
        assert f_w.shape == t_w.shape
        assert_close(f_w, t_w.detach(), dtype, msg=f"{layer!r} weights")

    g_out = torch.randn(t_out.shape, generator=gen(seed + 1), dtype=dtype)
    g_w = torch.randn(t_w.shape, generator=gen(seed + 2), dtype=dtype) if t_w is not None else None
    total = (t_out * g_out).sum() + ((t_w * g_w).sum() if t_w is not None else 0)
    wrt = list(tmod.parameters()) + list(dict.fromkeys(t_in))
    t_grads = torch.autograd.grad(total, wrt, allow_unused=True)
    names = [n for n, _ in tmod.named_parameters()]
    t_param_grads = fn.interop.nest({n: (g if g is not None else torch.zeros_like(p))
                                     for n, g, p in zip(names, t_grads, tmod.parameters())})

    n_in = len(dict.fromkeys(t_in))

    def loss(p, *xs):
        xs = xs * 3 if n_in == 1 else xs
        out, w = layer.apply(p, *xs, **kwargs, train=train)
        return (out * g_out).sum() + ((w * g_w).sum() if w is not None else 0)

    distinct = tuple(dict.fromkeys(inputs)) if n_in == 1 else inputs
    grads = fn.grad(loss, argnums=tuple(range(1 + len(distinct))))(params, *distinct)
    assert_trees_close(grads[0], t_param_grads, dtype, msg=f"{layer!r} param grads")
    for i, (a, b) in enumerate(zip(grads[1:], t_grads[len(names):])):
        assert_close(a, b, dtype, msg=f"{layer!r} grad of input {i}")


@st.composite
def attention_case(draw):
    heads, head_dim = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    e = heads * head_dim
    cross = draw(st.booleans())
    kdim = draw(st.sampled_from([None, 2, 5])) if cross else None
    vdim = draw(st.sampled_from([None, 3])) if cross else None
    layer = fn.MultiheadAttention(e, heads, bias=draw(st.booleans()), add_bias_kv=draw(st.booleans()),
                                  add_zero_attn=draw(st.booleans()), kdim=kdim, vdim=vdim,
                                  batch_first=draw(st.booleans()))
    L = draw(st.integers(1, 4))
    S = draw(st.integers(1, 4)) if cross else L
    batched = draw(st.booleans())
    n = draw(st.integers(1, 3)) if batched else 1
    kpm = draw(st.sampled_from(["none", "bool", "float"]))
    attn = draw(st.sampled_from(["none", "bool", "float"]))
    attn_3d = draw(st.booleans())
    kwargs = {"need_weights": draw(st.booleans()), "average_attn_weights": draw(st.booleans())}
    return layer, cross, L, S, batched, n, kpm, attn, attn_3d, kwargs


@given(case=attention_case(), train=st.booleans(), seed=seeds)
@settings(max_examples=40)
def test_matches_torch_for_every_mask_kind_layout_and_projection_float64(case, train, seed):
    layer, cross, L, S, batched, n, kpm, attn, attn_3d, kwargs = case
    dtype = torch.float64
    g = gen(seed)
    e, h = layer.embed_dim, layer.num_heads

    def seq(length, dim):
        if not batched:
            return torch.randn(length, dim, generator=g, dtype=dtype)
        shape = (n, length, dim) if layer.batch_first else (length, n, dim)
        return torch.randn(shape, generator=g, dtype=dtype)

    if cross:
        q, k, v = seq(L, e), seq(S, layer.kdim or e), seq(S, layer.vdim or e)
    else:
        q = k = v = seq(L, e)
    # one mask kind for both (torch warns, and still merges, when they differ)
    kind = attn if attn != "none" else kpm
    kwargs["key_padding_mask"] = make_mask(kind if kpm != "none" else "none", (n, S) if batched else (S,), dtype, g)
    attn_shape = (n * h if batched else h, L, S) if attn_3d else (L, S)
    kwargs["attn_mask"] = make_mask(kind if attn != "none" else "none", attn_shape, dtype, g)
    both(layer, torch_twin(layer, dtype, seed), (q, k, v), kwargs, dtype, seed, train=train)


@given(batch_first=st.booleans(), need_weights=st.booleans(), seed=seeds)
@settings(max_examples=8)
def test_matches_torch_in_float32_at_rounding_level(batch_first, need_weights, seed):
    layer = fn.MultiheadAttention(8, 2, batch_first=batch_first)
    g = gen(seed)
    x = torch.randn(3, 2, 8, generator=g)
    mem = torch.randn(5, 2, 8, generator=g)
    if batch_first:
        x, mem = x.transpose(0, 1), mem.transpose(0, 1)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 3:] = True
    both(layer, torch_twin(layer, torch.float32, seed), (x, mem, mem),
         {"key_padding_mask": pad, "need_weights": need_weights}, torch.float32, seed)


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")  # torch's, bool pad + float mask
def test_is_causal_is_a_hint_that_reaches_sdpa_and_needs_the_mask():
    """need_weights=False and no padding mask: torch drops the mask and tells SDPA is_causal;
    with weights it attends through the mask. Both paths give torch's numbers."""
    layer = fn.MultiheadAttention(6, 3, batch_first=True)
    x = torch.randn(2, 5, 6, dtype=torch.float64)
    causal = fn.Transformer.generate_square_subsequent_mask(5, dtype=torch.float64)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    for kwargs in ({"need_weights": False}, {"need_weights": True}, {"need_weights": False, "key_padding_mask": pad}):
        both(layer, torch_twin(layer, torch.float64), (x, x, x), {**kwargs, "attn_mask": causal, "is_causal": True},
             torch.float64)
    params = fn.tree.astype(layer.init(random.key(0)), torch.float64)
    expect_clear_error(lambda: layer.apply(params, x, x, x, is_causal=True), match="is_causal.*attn_mask")


def test_eval_under_no_grad_equals_torchs_native_fast_path():
    """Eval, no autograd, batch_first self-attention with an even number of heads: torch runs
    _native_multi_head_attention; fnnet's numbers are the same (to rounding)."""
    tmod = torch_twin(fn.MultiheadAttention(8, 2, batch_first=True), torch.float64).eval()
    layer = fn.MultiheadAttention(8, 2, batch_first=True)
    params = fn.params_from_module(tmod)
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    pad = torch.tensor([[False] * 4, [False, False, True, True], [False, True, True, True]])
    with torch.no_grad():
        for need_weights in (True, False):
            t_out, t_w = tmod(x, x, x, key_padding_mask=pad, need_weights=need_weights)
            f_out, f_w = layer.apply(params, x, x, x, key_padding_mask=pad, need_weights=need_weights)
            assert_close(f_out, t_out, torch.float64)
            if need_weights:
                assert_close(f_w, t_w, torch.float64)


def test_fully_masked_rows_are_nan_with_weights_and_zero_through_sdpa_as_in_torch():
    layer = fn.MultiheadAttention(4, 2)
    tmod = torch_twin(layer, torch.float64)
    params = fn.params_from_module(tmod)
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    pad = torch.tensor([[True, True, True], [False, True, False]])
    for need_weights in (True, False):
        t_out, t_w = tmod(x, x, x, key_padding_mask=pad, need_weights=need_weights)
        f_out, f_w = layer.apply(params, x, x, x, key_padding_mask=pad, need_weights=need_weights)
        torch.testing.assert_close(f_out, t_out.detach(), equal_nan=True, rtol=1e-10, atol=1e-10)
        assert f_out[:, 0].isnan().all() == need_weights
        if need_weights:
            torch.testing.assert_close(f_w, t_w.detach(), equal_nan=True, rtol=1e-10, atol=1e-10)


def test_huge_scores_stay_finite_as_in_torch():
    layer = fn.MultiheadAttention(4, 1)
    x = torch.randn(3, 2, 4, dtype=torch.float64) * 1e4
    both(layer, torch_twin(layer, torch.float64), (x, x, x), {}, torch.float64)


@pytest.mark.parametrize("need_weights", [True, False])
def test_empty_batch_and_length_one_sequences_as_torch(need_weights):
    layer = fn.MultiheadAttention(4, 2)
    tmod = torch_twin(layer, torch.float64)
    params = fn.params_from_module(tmod)
    for L, N in ((3, 0), (1, 2)):
        x = torch.randn(L, N, 4, dtype=torch.float64)
        t_out, t_w = tmod(x, x, x, need_weights=need_weights)
        f_out, f_w = layer.apply(params, x, x, x, need_weights=need_weights)
        assert f_out.shape == t_out.shape
        assert_close(f_out, t_out.detach(), torch.float64)
        if need_weights:
            assert f_w.shape == t_w.shape
    both(layer, tmod, (torch.randn(1, 2, 4, dtype=torch.float64),) * 3, {}, torch.float64)


# -- params ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [{}, {"kdim": 3, "vdim": 5, "add_bias_kv": True}, {"bias": False}])
def test_params_have_torchs_names_shapes_init_and_round_trip_through_a_state_dict(kwargs):
    layer = fn.MultiheadAttention(8, 2, **kwargs)
    tmod = torch_twin(layer, torch.float32)
    params = layer.init(random.key(0))
    flat = fn.interop.flat(params)
    assert {n: tuple(p.shape) for n, p in flat.items()} == {n: tuple(p.shape) for n, p in tmod.named_parameters()}
    bound = math.sqrt(6.0 / (8 + 8 * (3 if layer.packed else 1)))
    for name in ("in_proj_weight", "q_proj_weight"):
        if name in flat:
            assert flat[name].abs().max() <= bound and flat[name].std() > bound / 3
    for name in ("in_proj_bias", "out_proj.bias"):
        if name in flat:
            assert (flat[name] == 0).all()
    assert flat["out_proj.weight"].abs().max() <= 1 / math.sqrt(8)  # nn.Linear's default
    tmod.load_state_dict(fn.to_state_dict(params), strict=True)
    x = torch.randn(3, 2, 8)
    kv = (torch.randn(4, 2, kwargs.get("kdim", 8)), torch.randn(4, 2, kwargs.get("vdim", 8)))
    assert_close(layer.apply(params, x, *kv)[0], tmod(x, *kv)[0].detach())
    assert_trees_close(fn.params_from_module(tmod), params)


# -- dropout from keys -----------------------------------------------------------------------------

def test_dropout_comes_from_rng_deterministic_per_key_and_has_torchs_distribution():
    """The returned weights are the dropped ones (as torch's): each is 0 or the eval weight
    scaled by 1/(1-p), zeros at rate ~p; the same rng gives the same mask, another rng another."""
    p = 0.3
    layer = fn.MultiheadAttention(8, 2, dropout=p)
    params = layer.init(random.key(0))
    x = torch.randn(16, 8, 8)
    _, w_eval = layer.apply(params, x, x, x, average_attn_weights=False)
    out1, w1 = layer.apply(params, x, x, x, average_attn_weights=False, rng=random.key(1), train=True)
    out1b, w1b = layer.apply(params, x, x, x, average_attn_weights=False, rng=random.key(1), train=True)
    out2, _ = layer.apply(params, x, x, x, average_attn_weights=False, rng=random.key(2), train=True)
    assert torch.equal(out1, out1b) and torch.equal(w1, w1b)
    assert not torch.allclose(out1, out2)
    kept = w1 != 0
    assert_close(w1[kept], w_eval[kept] / (1 - p))
    assert abs((~kept).float().mean().item() - p) < 0.03
    # need_weights=False takes the explicit path in training, with the same mask
    out3, none = layer.apply(params, x, x, x, need_weights=False, rng=random.key(1), train=True)
    assert none is None and torch.equal(out3, out1)
    # eval, or dropout 0: no key needed, and the key changes nothing
    assert torch.equal(layer.apply(params, x, x, x)[0], layer.apply(params, x, x, x, rng=random.key(5))[0])
    expect_clear_error(lambda: layer.apply(params, x, x, x, train=True), match="key")


# -- bad inputs ------------------------------------------------------------------------------------

def test_bad_construction_arguments_are_refused_naming_the_argument():
    expect_clear_error(lambda: fn.MultiheadAttention(6, 4), match="MultiheadAttention: embed_dim .*divisible.*num_heads")
    expect_clear_error(lambda: fn.MultiheadAttention(0, 1), match="embed_dim")
    expect_clear_error(lambda: fn.MultiheadAttention(4, 2, dropout=1.5), match="dropout")
    expect_clear_error(lambda: fn.MultiheadAttention(4, 2, kdim=0), match="kdim")
    expect_clear_error(lambda: fn.MultiheadAttention(4, 2, batch_first=1), match="batch_first")
    expect_clear_error(lambda: fn.MultiheadAttention(4.0, 2), match="embed_dim")


def test_bad_inputs_and_masks_are_refused_naming_the_argument():
    layer = fn.MultiheadAttention(4, 2)
    params = layer.init(random.key(0))
    x = torch.randn(3, 2, 4)
    call = lambda *a, **k: lambda: layer.apply(params, *a, **k)
    expect_clear_error(call(torch.randn(3, 2, 5), x, x), match="query")
    expect_clear_error(call(torch.randn(1, 3, 2, 4), x, x), match="query")
    expect_clear_error(call(x, torch.randn(3, 4), x), match="key")
    expect_clear_error(call(x, x, torch.randn(3, 2, 3)), match="value")
    expect_clear_error(call(x, torch.randn(3, 3, 4), torch.randn(3, 3, 4)), match="batch size")
    expect_clear_error(call(x, torch.randn(5, 2, 4), x), match="key and value")
    expect_clear_error(call(x, x.double(), x), match="key.*dtype")
    expect_clear_error(call(x, x, x, key_padding_mask=torch.zeros(3, 2, dtype=torch.bool)), match="key_padding_mask")
    expect_clear_error(call(x, x, x, attn_mask=torch.zeros(3, 4, dtype=torch.bool)), match="attn_mask")
    expect_clear_error(call(x, x, x, attn_mask=torch.zeros(3, 3, 3, dtype=torch.bool)), match="attn_mask")
    expect_clear_error(call(x, x, x, attn_mask=torch.zeros(3, 3, dtype=torch.int64)), match="attn_mask.*bool")
    expect_clear_error(call(x, x, x, attn_mask=torch.zeros(3, 3, dtype=torch.float64)), match="attn_mask.*float32")
    expect_clear_error(call(x, x, x, key_padding_mask=torch.zeros(2, 3, dtype=torch.int32)),
                       match="key_padding_mask.*bool")
    expect_clear_error(call(x[:, 0], x[:, 0], x[:, 0], key_padding_mask=torch.zeros(2, 3, dtype=torch.bool)),
                       match=r"key_padding_mask.*\[3\]")


@pytest.mark.slow  # an inductor compile of forward and backward: a minute on 2 loaded cores
def test_compiled_with_inductor_equals_eager_values_and_gradients():
    """Both paths (weights: explicit softmax; no weights: SDPA) with a padding mask, one graph.
    (The SDPA path compiles in make test too: test_transformer's compiled training step.)"""
    layer = fn.MultiheadAttention(8, 2, batch_first=True)
    params = layer.init(random.key(0))
    x = torch.randn(2, 5, 8)
    mem = torch.randn(2, 6, 8)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])

    def loss(p, x, mem):
        out, w = layer.apply(p, x, mem, mem, key_padding_mask=pad)
        out2, _ = layer.apply(p, x, x, x, need_weights=False, attn_mask=torch.ones(5, 5, dtype=torch.bool).triu(1))
        return out.square().mean() + w.square().mean() + out2.square().mean()

    step = fn.value_and_grad(loss, argnums=(0, 1))
    want = step(params, x, mem)
    got = fn.jit(step)(params, x, mem)
    assert_close(got[0], want[0])
    assert_trees_close(got[1][0], want[1][0])
    assert_close(got[1][1], want[1][1])
