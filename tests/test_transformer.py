"""The transformer family gives torch.nn's numbers on its weights: TransformerEncoderLayer,
TransformerDecoderLayer, their stacks and Transformer, with every mask kind, batch_first,
unbatched inputs, norm_first, relu/gelu/a function, in training (dropout 0) and eval, outputs
and gradients; the encoder's nested-tensor zeros at padding where torch gives them; torch's
constructor arguments (torch layers inside) work; a compiled training step equals eager."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from badinput import expect_clear_error
from conftest import assert_close, assert_trees_close
from hypothesis import given, settings
from hypothesis import strategies as st

import fnnet as fn
from fnnet import random

# torch's own warnings about the twins it builds: not what is tested here
pytestmark = [pytest.mark.filterwarnings("ignore:enable_nested_tensor is True"),
              pytest.mark.filterwarnings("ignore:Support for mismatched"),
              pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")]

nn = torch.nn
seeds = st.integers(0, 2**31 - 1)
F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def seq(g, length, n, d, batched, batch_first, dtype=F64):
    if not batched:
        return torch.randn(length, d, generator=g, dtype=dtype)
    return torch.randn((n, length, d) if batch_first else (length, n, d), generator=g, dtype=dtype)


def padding(g, n, length, batched, kind, dtype=F64):
    """None, or a padding mask whose first position is always real (no fully masked row)."""
    if kind == "none":
        return None
    pad = torch.rand((n, length) if batched else (length,), generator=g) < 0.4
    pad[..., 0] = False
    return pad if kind == "bool" else torch.zeros(pad.shape, dtype=dtype).masked_fill(pad, float("-inf"))


def attn_mask(g, rows, cols, kind, dtype=F64, heads=None):
    if kind == "none":
        return None
    shape = (rows, cols) if heads is None else (heads, rows, cols)
    masked = torch.rand(shape, generator=g) < 0.4
    masked[..., 0] = False
    return masked if kind == "bool" else torch.randn(shape, generator=g, dtype=dtype).masked_fill(masked, float("-inf"))


def parity(twin, tmod, inputs: tuple, kwargs: dict, dtype=F64, train=False, seed=0):
    """Outputs and the gradients of ``<y, g>`` w.r.t. every param and every float input."""
    tmod.train(train)
    params = fn.params_from_module(tmod)
    t_in = tuple(x.detach().clone().requires_grad_(True) for x in inputs)
    t_out = tmod(*t_in, **kwargs)
    # autograd records both calls (it decides whether torch's encoder zeroes padded positions)
    f_out = twin.apply(params, *(x.detach().clone().requires_grad_(True) for x in inputs), **kwargs, train=train)
    assert f_out.shape == t_out.shape
    assert_close(f_out, t_out.detach(), dtype, msg=f"{type(twin).__name__} output")
    g = torch.randn(t_out.shape, generator=gen(seed + 1), dtype=dtype)
    names = [n for n, _ in tmod.named_parameters()]
    grads = torch.autograd.grad((t_out * g).sum(), [p for _, p in tmod.named_parameters()] + list(t_in))
    want = fn.interop.nest(dict(zip(names, grads[:len(names)])))
    got = fn.grad(lambda p, *xs: (twin.apply(p, *xs, **kwargs, train=train) * g).sum(),
                  argnums=tuple(range(1 + len(inputs))))(params, *inputs)
    assert_trees_close(got[0], want, dtype, msg=f"{type(twin).__name__} param grads")
    for i, (a, b) in enumerate(zip(got[1:], grads[len(names):])):
        assert_close(a, b, dtype, msg=f"{type(twin).__name__} grad of input {i}")


@st.composite
def layer_args(draw):
    nhead = draw(st.integers(1, 2))
    return {"d_model": nhead * draw(st.integers(1, 3)), "nhead": nhead, "dim_feedforward": draw(st.integers(1, 6)),
            "dropout": 0.0, "activation": draw(st.sampled_from(["relu", "gelu", torch.tanh])),
            "layer_norm_eps": draw(st.sampled_from([1e-5, 1e-3])), "batch_first": draw(st.booleans()),
            "norm_first": draw(st.booleans()), "bias": draw(st.booleans())}


mask_kinds = st.sampled_from(["none", "bool", "float"])


@given(args=layer_args(), batched=st.booleans(), n=st.integers(1, 3), S=st.integers(1, 4), mask=mask_kinds,
       per_head=st.booleans(), pad=mask_kinds, train=st.booleans(), seed=seeds)
@settings(max_examples=30)
def test_encoder_layer_matches_torch(args, batched, n, S, mask, per_head, pad, train, seed):
    g = gen(seed)
    torch.manual_seed(seed)
    tmod = nn.TransformerEncoderLayer(**args).to(F64)
    x = seq(g, S, n, args["d_model"], batched, args["batch_first"])
    n = n if batched else 1
    kind = mask if mask != "none" else pad  # one mask kind for both (torch warns when they differ)
    kwargs = {"src_mask": attn_mask(g, S, S, kind if mask != "none" else "none",
                                    heads=n * args["nhead"] if per_head else None),
              "src_key_padding_mask": padding(g, n, S, batched, kind if pad != "none" else "none")}
    parity(fn.TransformerEncoderLayer(**args), tmod, (x,), kwargs, train=train, seed=seed)


@given(args=layer_args(), batched=st.booleans(), n=st.integers(1, 3), T=st.integers(1, 4), S=st.integers(1, 4),
       masks=mask_kinds, train=st.booleans(), seed=seeds)
@settings(max_examples=20)
def test_decoder_layer_matches_torch(args, batched, n, T, S, masks, train, seed):
    g = gen(seed)
    torch.manual_seed(seed)
    tmod = nn.TransformerDecoderLayer(**args).to(F64)
    tgt = seq(g, T, n, args["d_model"], batched, args["batch_first"])
    memory = seq(g, S, n, args["d_model"], batched, args["batch_first"])
    n = n if batched else 1
    kwargs = {"tgt_mask": attn_mask(g, T, T, masks), "memory_mask": attn_mask(g, T, S, masks),
              "tgt_key_padding_mask": padding(g, n, T, batched, masks),
              "memory_key_padding_mask": padding(g, n, S, batched, masks)}
    parity(fn.TransformerDecoderLayer(**args), tmod, (tgt, memory), kwargs, train=train, seed=seed)


@pytest.mark.parametrize("batch_first,norm_first", [(False, False), (True, True), (True, False)])
@pytest.mark.parametrize("train", [True, False])
def test_transformer_matches_torch_with_causal_masks_and_padding(batch_first, norm_first, train):
    torch.manual_seed(0)
    args = {"d_model": 8, "nhead": 2, "num_encoder_layers": 2, "num_decoder_layers": 2, "dim_feedforward": 16,
            "dropout": 0.0, "activation": "gelu", "batch_first": batch_first, "norm_first": norm_first}
    tmod = nn.Transformer(**args).to(F64)
    g = gen(1)
    src, tgt = seq(g, 5, 3, 8, True, batch_first), seq(g, 4, 3, 8, True, batch_first)
    src_pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] + [True] * 4])
    causal = fn.Transformer.generate_square_subsequent_mask(4, dtype=F64)
    kwargs = {"tgt_mask": causal, "tgt_is_causal": True, "src_key_padding_mask": src_pad,
              "memory_key_padding_mask": src_pad, "tgt_key_padding_mask": src_pad[:, :4]}
    parity(fn.Transformer(**args), tmod, (src, tgt), kwargs, train=train)


def test_unbatched_and_float32_transformers_match_torch():
    torch.manual_seed(0)
    for dtype in (F64, torch.float32):
        tmod = nn.Transformer(8, 2, 1, 1, 16, dropout=0.0).to(dtype)
        src, tgt = torch.randn(5, 8, dtype=dtype), torch.randn(3, 8, dtype=dtype)
        parity(fn.Transformer(8, 2, 1, 1, 16, dropout=0.0), tmod, (src, tgt),
               {"src_mask": torch.zeros(5, 5, dtype=torch.bool).fill_diagonal_(True).roll(1, 1)}, dtype=dtype)


def test_empty_batch_and_length_one_sequences_as_torch():
    torch.manual_seed(0)
    tmod = nn.TransformerEncoderLayer(4, 2, 8, 0.0).to(F64)
    layer = fn.TransformerEncoderLayer(4, 2, 8, 0.0)
    for shape in ((3, 0, 4), (1, 2, 4)):
        parity(layer, tmod, (torch.randn(shape, dtype=F64),), {}, train=True)


# -- torch's inference fast path ------------------------------------------------------------------

def _encoder_pair(mask_check=True, norm=True):
    torch.manual_seed(0)
    t_layer = nn.TransformerEncoderLayer(8, 2, 16, 0.0, batch_first=True).to(F64)
    tmod = nn.TransformerEncoder(t_layer, 2, nn.LayerNorm(8).to(F64) if norm else None, mask_check=mask_check).eval()
    twin = fn.TransformerEncoder(fn.TransformerEncoderLayer(8, 2, 16, 0.0, batch_first=True), 2,
                                 fn.LayerNorm(8) if norm else None, mask_check=mask_check)
    return twin, tmod, fn.params_from_module(tmod)


@pytest.mark.parametrize("mask_check", [True, False])
def test_encoder_inference_with_padding_gives_torchs_nested_tensor_zeros(mask_check):
    """Inference (no autograd) with a padding mask: torch runs the layers on a nested tensor and
    the padded positions come out zero (then through norm). Rows padded at the end, padding in
    the middle (mask_check: torch's slow path; unchecked: each row's first tokens), a fully
    padded row, a float mask."""
    x = torch.randn(3, 5, 8, dtype=F64)
    pads = [torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [True] * 5]),
            torch.tensor([[False, True, False, False, True], [False] * 5, [True, False, True, True, True]])]
    pads.append(torch.zeros(3, 5, dtype=F64).masked_fill(pads[0], float("-inf")))
    for norm in (True, False):
        twin, tmod, params = _encoder_pair(mask_check, norm)
        for pad in pads:
            with torch.no_grad():
                want = tmod(x, src_key_padding_mask=pad)
            got = twin.apply(params, x, src_key_padding_mask=pad)
            assert_close(got, want, F64, msg=f"pad {pad.tolist()}")
    assert (got[2] == 0).all() and (got[1, 3:] == 0).all()


def test_encoder_inference_recorded_by_autograd_computes_every_position_as_torch():
    twin, tmod, params = _encoder_pair()
    x = torch.randn(2, 5, 8, dtype=F64)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    parity(twin, tmod, (x,), {"src_key_padding_mask": pad})  # params and x require grad: torch's slow path
    with torch.no_grad():
        zeros = twin.apply(params, x, src_key_padding_mask=pad)
    assert not (twin.apply(params, x.requires_grad_(), src_key_padding_mask=pad)[1, 3:] == 0).any()
    assert (zeros[1, 3:] == tmod.norm.bias.detach()).all()


def test_encoder_layer_eval_under_no_grad_equals_torchs_fast_path():
    torch.manual_seed(0)
    tmod = nn.TransformerEncoderLayer(8, 2, 16, 0.0, batch_first=True).to(F64).eval()
    layer = fn.TransformerEncoderLayer(8, 2, 16, 0.0, batch_first=True)
    params = fn.params_from_module(tmod)
    x = torch.randn(2, 5, 8, dtype=F64)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    with torch.no_grad():
        for kwargs in ({}, {"src_key_padding_mask": pad}, {"src_mask": torch.ones(5, 5, dtype=torch.bool).triu(1)}):
            assert_close(layer.apply(params, x, **kwargs), tmod(x, **kwargs), F64)


# -- params, construction ---------------------------------------------------------------------------

def test_transformer_params_have_torchs_names_xavier_init_and_round_trip():
    model = fn.Transformer(8, 2, 2, 1, 16, bias=False)
    tmod = nn.Transformer(8, 2, 2, 1, 16, bias=False)
    params = model.init(random.key(0))
    flat = fn.interop.flat(params)
    assert {n: tuple(p.shape) for n, p in flat.items()} == {n: tuple(p.shape) for n, p in tmod.named_parameters()}
    for name, p in flat.items():
        if p.ndim > 1:  # every matrix re-drawn xavier-uniform, as torch's _reset_parameters
            bound = math.sqrt(6.0 / (p.shape[0] + p.shape[1]))
            assert p.abs().max() <= bound and p.abs().max() > bound / 2, name
    mats = [p for p in flat.values() if p.ndim > 1]
    assert not torch.equal(mats[0], mats[-1])
    tmod.load_state_dict(fn.to_state_dict(params), strict=True)
    src, tgt = torch.randn(4, 2, 8), torch.randn(3, 2, 8)
    assert_close(model.apply(params, src, tgt), tmod.eval()(src, tgt).detach())


def test_layer_init_follows_torch_linear_layernorm_and_attention_defaults():
    params = fn.interop.flat(fn.TransformerEncoderLayer(8, 2, 32).init(random.key(0)))
    assert (params["norm1.weight"] == 1).all() and (params["norm2.bias"] == 0).all()
    assert (params["self_attn.in_proj_bias"] == 0).all()
    assert params["linear1.weight"].abs().max() <= 1 / math.sqrt(8)
    assert params["linear2.weight"].abs().max() <= 1 / math.sqrt(32)


def test_constructs_from_torchs_own_arguments_including_torch_layers():
    """The torch.nn constructors' arguments as they are (module_db passes these): F.gelu
    positional, torch layers and norms given to the stacks, custom encoder and decoder."""
    torch.manual_seed(0)
    t_layer = nn.TransformerEncoderLayer(4, 2, 8, 0.0, F.gelu, batch_first=True)
    tmod = nn.TransformerEncoder(t_layer, 2, nn.LayerNorm(4), enable_nested_tensor=False).to(F64)
    twin = fn.TransformerEncoder(t_layer, 2, nn.LayerNorm(4), enable_nested_tensor=False)
    assert twin.layers[0] == fn.TransformerEncoderLayer(4, 2, 8, 0.0, "gelu", batch_first=True)
    parity(twin, tmod, (torch.randn(2, 3, 4, dtype=F64),), {"mask": torch.ones(3, 3, dtype=torch.bool).triu(1)})
    t_dec = nn.TransformerDecoder(nn.TransformerDecoderLayer(4, 2, 8, 0.0, bias=False), 1).to(F64)
    parity(fn.TransformerDecoder(nn.TransformerDecoderLayer(4, 2, 8, 0.0, bias=False), 1), t_dec,
           (torch.randn(3, 2, 4, dtype=F64), torch.randn(5, 2, 4, dtype=F64)), {})
    custom = fn.Transformer(4, 2, custom_encoder=fn.TransformerEncoder(fn.TransformerEncoderLayer(4, 2, 8), 1),
                            num_decoder_layers=1, dim_feedforward=8)
    assert set(fn.param_shapes(custom)["encoder"]) == {"layers"}  # no norm: the custom encoder has none
    t_custom = nn.Transformer(4, 2, custom_encoder=nn.TransformerEncoder(nn.TransformerEncoderLayer(4, 2, 8, 0.0), 1),
                              num_decoder_layers=1, dim_feedforward=8, dropout=0.0).to(F64)
    parity(fn.Transformer(4, 2, custom_encoder=t_custom.encoder, num_decoder_layers=1, dim_feedforward=8,
                          dropout=0.0), t_custom, (torch.randn(3, 2, 4, dtype=F64), torch.randn(2, 2, 4, dtype=F64)), {})
    assert torch.equal(fn.Transformer.generate_square_subsequent_mask(4),
                       nn.Transformer.generate_square_subsequent_mask(4))


# -- dropout from keys ----------------------------------------------------------------------------

def test_dropout_comes_from_the_key_deterministic_and_different_across_keys():
    model = fn.Transformer(8, 2, 1, 1, 16, dropout=0.3)
    params = model.init(random.key(0))
    src, tgt = torch.randn(4, 2, 8), torch.randn(3, 2, 8)
    a = model.apply(params, src, tgt, key=random.key(1), train=True)
    assert torch.equal(a, model.apply(params, src, tgt, key=random.key(1), train=True))
    assert not torch.allclose(a, model.apply(params, src, tgt, key=random.key(2), train=True))
    assert not torch.allclose(a, model.apply(params, src, tgt))
    expect_clear_error(lambda: model.apply(params, src, tgt, train=True), match="key")


# -- bad inputs ------------------------------------------------------------------------------------

def test_bad_construction_arguments_are_refused_naming_the_argument():
    expect_clear_error(lambda: fn.TransformerEncoderLayer(6, 4), match="TransformerEncoderLayer: d_model.*nhead")
    expect_clear_error(lambda: fn.TransformerDecoderLayer(4, 2, activation="tanh"), match="activation")
    expect_clear_error(lambda: fn.TransformerEncoderLayer(4, 2, activation=3), match="activation")
    expect_clear_error(lambda: fn.TransformerEncoderLayer(4, 2, dropout=-0.1), match="dropout")
    expect_clear_error(lambda: fn.TransformerEncoderLayer(4, 2, layer_norm_eps=0), match="layer_norm_eps")
    expect_clear_error(lambda: fn.TransformerEncoder(fn.TransformerEncoderLayer(4, 2), 0), match="num_layers")
    expect_clear_error(lambda: fn.TransformerEncoder(nn.Linear(2, 2), 2), match="encoder_layer")
    expect_clear_error(lambda: fn.TransformerDecoder(fn.TransformerDecoderLayer(4, 2), 1, norm="ln"), match="norm")
    expect_clear_error(lambda: fn.Transformer(6, 4), match="Transformer: d_model.*nhead")


def test_bad_inputs_and_masks_are_refused_naming_the_layer_and_argument():
    layer = fn.TransformerEncoderLayer(4, 2, 8)
    params = layer.init(random.key(0))
    x = torch.randn(3, 2, 4)
    expect_clear_error(lambda: layer.apply(params, torch.randn(3, 2, 5)), match="TransformerEncoderLayer.*src")
    expect_clear_error(lambda: layer.apply(params, x, src_mask=torch.zeros(3, 2, dtype=torch.bool)), match="src_mask")
    expect_clear_error(lambda: layer.apply(params, x, src_mask=torch.zeros(3, 3, dtype=torch.int64)),
                       match="src_mask.*bool")
    expect_clear_error(lambda: layer.apply(params, x, src_key_padding_mask=torch.zeros(3, 2, dtype=torch.bool)),
                       match="src_key_padding_mask")
    dec = fn.TransformerDecoderLayer(4, 2, 8)
    p_dec = dec.init(random.key(0))
    expect_clear_error(lambda: dec.apply(p_dec, x, torch.randn(5, 2, 4), memory_mask=torch.zeros(3, 3)),
                       match="memory_mask")
    expect_clear_error(lambda: dec.apply(p_dec, x, torch.randn(5, 2, 4),
                                         memory_key_padding_mask=torch.zeros(2, 3, dtype=torch.bool)),
                       match="memory_key_padding_mask")
    expect_clear_error(lambda: dec.apply(p_dec, x, torch.randn(5, 4)), match="batched")
    model = fn.Transformer(4, 2, 1, 1, 8)
    p_model = model.init(random.key(0))
    expect_clear_error(lambda: model.apply(p_model, x, torch.randn(3, 5, 4)), match="batch size")
    expect_clear_error(lambda: model.apply(p_model, x, torch.randn(3, 2, 6)), match="d_model")
    enc = fn.TransformerEncoder(fn.TransformerEncoderLayer(4, 2, 8, batch_first=True), 1)
    expect_clear_error(lambda: enc.apply(enc.init(random.key(0)), x, src_key_padding_mask=torch.zeros(3, 3) == 1),
                       match="src_key_padding_mask")


# -- compiled ------------------------------------------------------------------------------------

def test_compiled_training_step_with_dropout_and_sgd_equals_eager():
    """fn.jit (inductor, fullgraph) of loss, fn.grad and an SGD-momentum update through an encoder layer
    with a padding mask and dropout from a key: values, gradients and new params as eager."""
    layer = fn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True, activation="gelu")
    params = layer.init(random.key(0))
    opt = fn.optim.sgd(0.1, momentum=0.9)  # linear in the grads (Adam's first step is sign(g): rounding-level
    # differences of near-zero grads would flip it)
    state = opt.init(params)
    x = torch.randn(2, 5, 8)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])

    def loss(p, x, k):
        y = layer.apply(p, x, src_key_padding_mask=pad, key=k, train=True)
        return y.square().mean()

    def step(p, state, x, k):
        value, grads = fn.value_and_grad(loss)(p, x, k)
        updates, state = opt.update(grads, state, p)
        return fn.optim.apply_updates(p, updates), state, value, grads

    want = step(params, state, x, random.key(3))
    got = fn.jit(step)(params, state, x, random.key(3))
    assert_close(got[2], want[2])
    assert_trees_close(got[3], want[3], msg="grads")
    assert_trees_close(got[0], want[0], msg="new params")


def test_compiled_encoder_inference_with_padding_equals_eager():
    """The nested-tensor zeros are a torch.where, no data-dependent branch: one graph (inductor),
    eager's numbers, for padding at the ends and in the middle (mask_check's fallback)."""
    twin, tmod, params = _encoder_pair()
    x = torch.randn(3, 5, 8, dtype=F64)
    infer = fn.jit(lambda p, x, pad: twin.apply(p, x, src_key_padding_mask=pad))
    for pad in (torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [True] * 5]),
                torch.tensor([[False, True, False, False, True], [False] * 5, [False] * 5])):
        with torch.no_grad():
            want = tmod(x, src_key_padding_mask=pad)
        assert_close(infer(params, x, pad), want, F64)


def test_the_prng_key_reaches_the_attention_inside_containers_under_either_name():
    """A layer in a Sequential gets its key from the container; rng= is key='s other name for the
    transformer layers (their attention gets it as rng=, its key being an input)."""
    layer = fn.TransformerEncoderLayer(8, 2, 16, dropout=0.2)
    model = fn.Sequential(fn.Linear(8, 8), layer)
    params = model.init(random.key(0))
    x = torch.randn(5, 3, 8)
    a = model.apply(params, x, key=random.key(1), train=True)
    assert torch.equal(a, model.apply(params, x, rng=random.key(1), train=True))
    assert not torch.allclose(a, model.apply(params, x, key=random.key(2), train=True))
    k = random.key(3)
    assert torch.equal(layer.apply(params["1"], x, key=k, train=True), layer.apply(params["1"], x, rng=k, train=True))
