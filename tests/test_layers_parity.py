"""Every layer gives torch.nn's numbers on torch.nn's weights: forward, and gradients with
respect to the params and the input. Hypothesis draws the hyperparameters and shapes;
float64 must agree to ~1e-10, float32 to rounding level."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, assert_trees_close
from hypothesis import given
from hypothesis import strategies as st

import fnnet as fn

nn = torch.nn
dtypes = st.sampled_from([torch.float64, torch.float32])
seeds = st.integers(0, 2**31 - 1)


def randn(seed: int, *shape: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def check_parity(layer, tmod, x, dtype, seed=0, *, grad_input=True, **kwargs):
    """``layer.apply(params_from_module(tmod), x)`` equals ``tmod(x)``, and so do the gradients
    of ``<y, g>`` for a random cotangent ``g`` w.r.t. every param and (if float) the input."""
    tmod = tmod.to(dtype)
    params = fn.params_from_module(tmod)
    if x.is_floating_point():
        x = x.to(dtype)
    grad_input = grad_input and x.is_floating_point()
    xt = x.clone().requires_grad_(grad_input)
    y_t = tmod(xt)
    y_f = layer.apply(params, x, **kwargs)
    assert y_f.shape == y_t.shape, f"{layer!r}: shape {list(y_f.shape)} vs torch {list(y_t.shape)}"
    assert_close(y_f, y_t.detach(), dtype, msg=f"{layer!r} forward")

    g = randn(seed + 1, *y_t.shape, dtype=dtype)
    (y_t * g).sum().backward()
    torch_grads = fn.interop.nest({n: p.grad for n, p in tmod.named_parameters() if p.grad is not None})

    def loss(p, x):
        return (layer.apply(p, x, **kwargs) * g).sum()

    if grad_input:
        gp, gx = fn.grad(loss, argnums=(0, 1))(params, x)
        assert_close(gx, xt.grad, dtype, msg=f"{layer!r} input grad")
    else:
        gp = fn.grad(loss)(params, x) if params else {}
    assert_trees_close(gp, torch_grads, dtype, msg=f"{layer!r} param grads")


# -- Linear ----------------------------------------------------------------------------------

@given(i=st.integers(1, 6), o=st.integers(1, 6), bias=st.booleans(),
       batch=st.sampled_from([(), (3,), (2, 3)]), dtype=dtypes, seed=seeds)
def test_linear_matches_torch_batched_and_unbatched(i, o, bias, batch, dtype, seed):
    torch.manual_seed(seed)
    check_parity(fn.Linear(i, o, bias=bias), nn.Linear(i, o, bias=bias), randn(seed, *batch, i), dtype, seed)


# -- convolutions ----------------------------------------------------------------------------

@st.composite
def conv_args(draw, n):
    groups = draw(st.integers(1, 3))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(n))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    if draw(st.booleans()):
        padding, stride = draw(st.sampled_from(["same", "valid"])), (1,) * n
    else:
        padding = tuple(draw(st.integers(0, 2)) for _ in range(n))
        stride = tuple(draw(st.integers(1, 3)) for _ in range(n))
    size = tuple(max(4, d * (kk - 1) + 1) + draw(st.integers(0, 2)) for d, kk in zip(dilation, k))
    return {"in_channels": cin, "out_channels": cout, "kernel_size": k, "stride": stride, "padding": padding,
                "dilation": dilation, "groups": groups, "bias": draw(st.booleans()), "padding_mode": mode}, size


@pytest.mark.parametrize("n", [1, 2, 3])
@given(data=st.data(), batched=st.booleans(), dtype=dtypes, seed=seeds)
def test_conv_matches_torch_with_stride_padding_dilation_groups_and_padding_modes(n, data, batched, dtype, seed):
    args, size = data.draw(conv_args(n))
    torch.manual_seed(seed)
    tmod = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[n](**args)
    layer = {1: fn.Conv1d, 2: fn.Conv2d, 3: fn.Conv3d}[n](**args)
    x = randn(seed, *((2,) if batched else ()), args["in_channels"], *size)
    check_parity(layer, tmod, x, dtype, seed)


@pytest.mark.parametrize("n", [1, 2])
@given(data=st.data(), batched=st.booleans(), use_output_size=st.booleans(), dtype=dtypes, seed=seeds)
def test_conv_transpose_matches_torch_with_output_padding_groups_and_output_size(
        n, data, batched, use_output_size, dtype, seed):
    d = data.draw
    groups = d(st.integers(1, 2))
    stride = tuple(d(st.integers(1, 3)) for _ in range(n))
    dilation = tuple(d(st.integers(1, 2)) for _ in range(n))
    output_padding = tuple(d(st.integers(0, max(s, dl) - 1)) for s, dl in zip(stride, dilation))
    kernel = tuple(d(st.integers(1, 3)) for _ in range(n))
    args = {"in_channels": groups * d(st.integers(1, 2)), "out_channels": groups * d(st.integers(1, 2)),
                "kernel_size": kernel, "stride": stride,
                "padding": tuple(d(st.integers(0, dl * (k - 1) // 2)) for dl, k in zip(dilation, kernel)),
                "output_padding": output_padding,
                "groups": groups, "bias": d(st.booleans()), "dilation": dilation}
    size = tuple(d(st.integers(2, 4)) for _ in range(n))
    torch.manual_seed(seed)
    tmod = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}[n](**args)
    layer = {1: fn.ConvTranspose1d, 2: fn.ConvTranspose2d}[n](**args)
    x = randn(seed, *((2,) if batched else ()), args["in_channels"], *size)
    if use_output_size:
        # output_size replaces output_padding: ask for the largest reachable size
        args0 = {**args, "output_padding": 0}
        tmod = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d}[n](**args0)
        layer = {1: fn.ConvTranspose1d, 2: fn.ConvTranspose2d}[n](**args0)
        out = [(s - 1) * st_ - 2 * p + dl * (k - 1) + 1 + st_ - 1 for s, st_, p, dl, k in
               zip(size, stride, args["padding"], dilation, args["kernel_size"])]
        tm = tmod.to(dtype)
        check_parity(layer, lambda_module(lambda x: tm(x, output_size=out), tm), x, dtype, seed,
                     output_size=out)
        return
    check_parity(layer, tmod, x, dtype, seed)


class lambda_module(nn.Module):
    """An nn.Module calling ``f(x)`` with ``inner``'s parameters (same names)."""

    def __init__(self, f, inner):
        super().__init__()
        self.f = f
        for n, p in inner.named_parameters():
            self.register_parameter(n, p)

    def forward(self, x):
        return self.f(x)


# -- pooling ---------------------------------------------------------------------------------

@st.composite
def pool_args(draw, n, with_dilation=True):
    k = draw(st.integers(1, 3))
    args = {"kernel_size": k, "stride": draw(st.sampled_from([None, 1, 2, 3])),
                "padding": draw(st.integers(0, k // 2)), "ceil_mode": draw(st.booleans())}
    if with_dilation:
        args["dilation"] = draw(st.integers(1, 2))
    size = tuple(args.get("dilation", 1) * (k - 1) + 1 + draw(st.integers(0, 3)) for _ in range(n))
    return args, size


@pytest.mark.parametrize("n", [1, 2])
@given(data=st.data(), batched=st.booleans(), dtype=dtypes, seed=seeds)
def test_max_pool_matches_torch_with_dilation_and_ceil_mode(n, data, batched, dtype, seed):
    args, size = data.draw(pool_args(n))
    tmod = {1: nn.MaxPool1d, 2: nn.MaxPool2d}[n](**args)
    layer = {1: fn.MaxPool1d, 2: fn.MaxPool2d}[n](**args)
    check_parity(layer, tmod, randn(seed, *((2,) if batched else ()), 3, *size), dtype, seed)


@pytest.mark.parametrize("n", [1, 2])
@given(data=st.data(), count_include_pad=st.booleans(), batched=st.booleans(), dtype=dtypes,
       seed=seeds, divisor=st.sampled_from([None, 1, 3]))
def test_avg_pool_matches_torch_with_count_include_pad_ceil_mode_and_divisor(
        n, data, count_include_pad, batched, dtype, seed, divisor):
    args, size = data.draw(pool_args(n, with_dilation=False))
    args["count_include_pad"] = count_include_pad
    if n == 2:
        args["divisor_override"] = divisor
    tmod = {1: nn.AvgPool1d, 2: nn.AvgPool2d}[n](**args)
    layer = {1: fn.AvgPool1d, 2: fn.AvgPool2d}[n](**args)
    check_parity(layer, tmod, randn(seed, *((2,) if batched else ()), 3, *size), dtype, seed)


@given(out=st.sampled_from([1, 2, 3, (2, None), (None, 1), (3, 2)]), h=st.integers(3, 7),
       w=st.integers(3, 7), batched=st.booleans(), dtype=dtypes, seed=seeds)
def test_adaptive_pools_match_torch(out, h, w, batched, dtype, seed):
    x = randn(seed, *((2,) if batched else ()), 3, h, w)
    check_parity(fn.AdaptiveAvgPool2d(out), nn.AdaptiveAvgPool2d(out), x, dtype, seed)
    if None not in (out if isinstance(out, tuple) else (out,)):
        check_parity(fn.AdaptiveMaxPool2d(out), nn.AdaptiveMaxPool2d(out), x, dtype, seed)
        o1 = out[0] if isinstance(out, tuple) else out
        check_parity(fn.AdaptiveAvgPool1d(o1), nn.AdaptiveAvgPool1d(o1), x[..., 0], dtype, seed)


# -- embedding -------------------------------------------------------------------------------

@given(num=st.integers(2, 8), dim=st.integers(1, 5), padding_idx=st.sampled_from([None, 0, 1, -1]),
       max_norm=st.sampled_from([None, 0.5, 2.0]), norm_type=st.sampled_from([1.0, 2.0]),
       scale_grad_by_freq=st.booleans(), batch=st.sampled_from([(), (5,), (2, 3)]), dtype=dtypes, seed=seeds)
def test_embedding_matches_torch_with_padding_idx_max_norm_and_scale_grad_by_freq(
        num, dim, padding_idx, max_norm, norm_type, scale_grad_by_freq, batch, dtype, seed):
    torch.manual_seed(seed)
    args = {"padding_idx": padding_idx, "max_norm": max_norm, "norm_type": norm_type,
                "scale_grad_by_freq": scale_grad_by_freq}
    tmod = nn.Embedding(num, dim, **args)
    idx = torch.randint(0, num, batch, generator=torch.Generator().manual_seed(seed))
    check_parity(fn.Embedding(num, dim, **args), tmod, idx, dtype, seed)


def test_embedding_from_pretrained_is_frozen_by_default_like_torch():
    vectors = randn(0, 4, 3)
    layer, params = fn.Embedding.from_pretrained(vectors)
    tmod = nn.Embedding.from_pretrained(vectors)
    idx = torch.tensor([[0, 3], [2, 2]])
    assert_close(layer.apply(params, idx), tmod(idx))
    g = fn.grad(lambda p: layer.apply(p, idx).sum())(params)
    assert not tmod.weight.requires_grad and torch.equal(g["weight"], torch.zeros_like(vectors))
    layer, params = fn.Embedding.from_pretrained(vectors, freeze=False, padding_idx=2)
    g = fn.grad(lambda p: layer.apply(p, idx).sum())(params)
    assert g["weight"][0].eq(1).all() and g["weight"][2].eq(0).all()


# -- normalization ---------------------------------------------------------------------------

@given(shape=st.sampled_from([(4, 3), (3, 3, 5), (2, 3, 2, 2)]), eps=st.sampled_from([1e-5, 1e-3]),
       affine=st.booleans(), momentum=st.sampled_from([0.1, 0.5, None]), dtype=dtypes, seed=seeds)
def test_batchnorm_train_then_eval_matches_torch_and_updates_running_stats_like_torch(
        shape, eps, affine, momentum, dtype, seed):
    c = shape[1]
    cls_t, cls_f = (nn.BatchNorm2d, fn.BatchNorm2d) if len(shape) == 4 else (nn.BatchNorm1d, fn.BatchNorm1d)
    tmod = cls_t(c, eps=eps, momentum=momentum, affine=affine).to(dtype)
    layer = cls_f(c, eps=eps, momentum=momentum, affine=affine)
    with torch.no_grad():
        for p in tmod.parameters():
            p.copy_(randn(seed + 7, *p.shape, dtype=dtype))
    params, state = fn.params_from_module(tmod), fn.state_from_module(tmod)
    for step in range(3):
        x = randn(seed + step, *shape, dtype=dtype) * 2 + 1
        tmod.train()
        y_t = tmod(x)
        y_f, state = layer.apply(params, x, state=state, train=True)
        assert_close(y_f, y_t.detach(), dtype, msg=f"train step {step}")
        assert_trees_close(state, fn.state_from_module(tmod), dtype, msg=f"running stats after step {step}")
    tmod.eval()
    x = randn(seed + 99, *shape, dtype=dtype)
    y_f, state2 = layer.apply(params, x, state=state, train=False)
    assert_close(y_f, tmod(x).detach(), dtype, msg="eval")
    assert state2 is state


@given(shape=st.sampled_from([(4, 3), (3, 3, 5), (2, 3, 2, 2)]), train=st.booleans(),
       track=st.booleans(), dtype=dtypes, seed=seeds)
def test_batchnorm_gradients_match_torch_in_train_and_eval(shape, train, track, dtype, seed):
    c = shape[1]
    cls_t, cls_f = (nn.BatchNorm2d, fn.BatchNorm2d) if len(shape) == 4 else (nn.BatchNorm1d, fn.BatchNorm1d)
    tmod = cls_t(c, track_running_stats=track).to(dtype)
    with torch.no_grad():
        for p in tmod.parameters():
            p.copy_(randn(seed + 7, *p.shape, dtype=dtype))
        if track:
            tmod.running_mean.copy_(randn(seed + 8, c, dtype=dtype))
            tmod.running_var.copy_(randn(seed + 9, c, dtype=dtype).abs() + 0.5)
    tmod.train(train)
    layer = cls_f(c, track_running_stats=track)
    state = fn.state_from_module(tmod) if track else None
    kwargs = {"state": state, "train": train} if track else {"train": train}

    class Out(nn.Module):  # torch twin returning only y, with the same parameter names
        def __init__(self):
            super().__init__()
            self.weight, self.bias = tmod.weight, tmod.bias

        def forward(self, x):
            return tmod(x)

    class OnlyY(fn.Module):  # the layer's params as its own: init says so (the params check reads it)
        def init(self, key):
            return layer.init(key)

        def apply(self, params, x, **kw):
            out = layer.apply(params, x, **kw)
            return out[0] if track else out

    check_parity(OnlyY(), Out(), randn(seed, *shape, dtype=dtype), dtype, seed, **kwargs)


@given(shape=st.sampled_from([(5,), (2, 3), (2, 2, 3)]), lead=st.sampled_from([(), (2,), (3, 2)]),
       affine=st.booleans(), bias=st.booleans(), dtype=dtypes, seed=seeds)
def test_layernorm_matches_torch_over_trailing_dims(shape, lead, affine, bias, dtype, seed):
    torch.manual_seed(seed)
    tmod = nn.LayerNorm(shape, elementwise_affine=affine, bias=bias)
    with torch.no_grad():
        for p in tmod.parameters():
            p.copy_(randn(seed + 3, *p.shape))
    check_parity(fn.LayerNorm(shape, elementwise_affine=affine, bias=bias), tmod,
                 randn(seed, *lead, *shape), dtype, seed)


@given(groups=st.sampled_from([1, 2, 3]), spatial=st.sampled_from([(4,), (2, 3)]),
       affine=st.booleans(), dtype=dtypes, seed=seeds)
def test_groupnorm_matches_torch(groups, spatial, affine, dtype, seed):
    tmod = nn.GroupNorm(groups, 6, affine=affine)
    with torch.no_grad():
        for p in tmod.parameters():
            p.copy_(randn(seed + 3, *p.shape))
    check_parity(fn.GroupNorm(groups, 6, affine=affine), tmod, randn(seed, 2, 6, *spatial), dtype, seed)


# -- activations, reshaping, dropout ---------------------------------------------------------

ACTIVATIONS = [
    (fn.relu, nn.ReLU()), (fn.sigmoid, nn.Sigmoid()), (fn.tanh, nn.Tanh()), (fn.silu, nn.SiLU()),
    (fn.gelu, nn.GELU()), (lambda x: fn.gelu(x, "tanh"), nn.GELU("tanh")), (fn.selu, nn.SELU()),
    (lambda x: fn.leaky_relu(x, 0.2), nn.LeakyReLU(0.2)), (fn.elu, nn.ELU()), (fn.celu, nn.CELU()),
    (fn.softplus, nn.Softplus()), (lambda x: fn.softplus(x, 2.0, 1.0), nn.Softplus(2.0, 1.0)),
    (fn.relu6, nn.ReLU6()), (fn.mish, nn.Mish()), (fn.logsigmoid, nn.LogSigmoid()),
    (fn.softsign, nn.Softsign()), (fn.tanhshrink, nn.Tanhshrink()), (fn.hardtanh, nn.Hardtanh()),
    (lambda x: fn.softmax(x, 0), nn.Softmax(0)), (fn.log_softmax, nn.LogSoftmax(-1)),
    (fn.ReLU(), nn.ReLU()), (fn.Sigmoid(), nn.Sigmoid()), (fn.Tanh(), nn.Tanh()),
    (fn.LeakyReLU(0.3), nn.LeakyReLU(0.3)), (fn.GELU("tanh"), nn.GELU("tanh")), (fn.ELU(0.5), nn.ELU(0.5)),
    (fn.Softplus(3.0), nn.Softplus(3.0)), (fn.Softmax(1), nn.Softmax(1)), (fn.LogSoftmax(0), nn.LogSoftmax(0)),
    (fn.Flatten(), nn.Flatten()), (fn.Flatten(0, 1), nn.Flatten(0, 1)),
    (fn.Unflatten(1, (2, 2)), nn.Unflatten(1, (2, 2))), (fn.Identity(), nn.Identity()),
]


@pytest.mark.parametrize("f, tmod", ACTIVATIONS, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_activations_and_reshapes_match_torch(f, tmod, dtype):
    layer = f if isinstance(f, fn.Module) else fn.Lambda(f)
    x = randn(0, 3, 4, 2) * 3
    check_parity(layer, tmod, x, dtype, 0)


def test_dropout_is_identity_in_eval_and_drops_a_p_fraction_scaled_by_1_over_1_minus_p_in_training():
    x = torch.ones(200, 100)
    for p in (0.1, 0.5, 0.8):
        y = fn.Dropout(p).apply({}, x, key=fn.random.key(1), train=True)
        kept = y != 0
        assert torch.equal(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
        # 20000 Bernoulli(p) draws: the dropped fraction is within 5 standard deviations of p
        assert abs((~kept).float().mean().item() - p) < 5 * (p * (1 - p) / x.numel()) ** 0.5
        assert fn.Dropout(p).apply({}, x, train=False) is x
    assert torch.equal(fn.Dropout(1.0).apply({}, x, key=fn.random.key(0), train=True), torch.zeros_like(x))


@pytest.mark.parametrize("shape", [(8, 16, 3, 3), (16, 3, 3)])
def test_dropout2d_zeroes_whole_channels_like_torch(shape):
    y = fn.Dropout2d(0.5).apply({}, torch.ones(shape), key=fn.random.key(2), train=True)
    per_channel = y.flatten(-2)
    assert torch.all(per_channel.amin(-1) == per_channel.amax(-1)), "a channel is partly dropped"
    assert set(per_channel.unique().tolist()) == {0.0, 2.0}
    if len(shape) == 3:
        return  # torch (2.x) still reads a 3-D input as [N, C, L]; fnnet reads it as [C, H, W], as documented
    # torch's Dropout2d makes the same kind of mask: constant per channel, values {0, 1/(1-p)}
    t = nn.Dropout2d(0.5)(torch.ones(shape)).flatten(-2)
    assert torch.all(t.amin(-1) == t.amax(-1)) and set(t.unique().tolist()) <= {0.0, 2.0}


def test_dropout_gradient_is_the_mask_scaled():
    x, k = randn(0, 5, 6), fn.random.key(3)
    layer = fn.Dropout(0.3)
    y = layer.apply({}, x, key=k, train=True)
    g = fn.grad(lambda x: layer.apply({}, x, key=k, train=True).sum())(x)
    assert_close(g, (y != 0).double() / 0.7)


@pytest.mark.parametrize("layer, tmod, shape", [
    (fn.MaxPool2d(2, return_indices=True), nn.MaxPool2d(2, return_indices=True), (2, 3, 6, 5)),
    (fn.MaxPool1d(3, 2, 1, return_indices=True), nn.MaxPool1d(3, 2, 1, return_indices=True), (3, 7)),
    (fn.AdaptiveMaxPool2d((2, 3), return_indices=True), nn.AdaptiveMaxPool2d((2, 3), return_indices=True), (3, 5, 7)),
], ids=str)
def test_max_pools_return_torchs_indices(layer, tmod, shape):
    x = randn(0, *shape)
    (y, idx), (y_t, idx_t) = layer.apply({}, x), tmod(x)
    assert torch.equal(y, y_t) and torch.equal(idx, idx_t)
