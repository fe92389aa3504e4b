"""Padding layers, the pools in 1d/2d/3d (max, average, power-average, adaptive, fractional) and
the transposed convolutions give torch.nn's numbers: forward, indices where returned, and
gradients w.r.t. the input (and params), float64 tight and float32 at rounding level, batched,
unbatched and with an empty batch. Where torch refuses an input or a hyperparameter, fnnet
refuses it too with a clear error naming the layer (tests/badinput.py), never a foreign error
or a silent result."""

from __future__ import annotations

import pytest
import torch
from badinput import expect_clear_error
from conftest import assert_close, assert_trees_close
from hypothesis import given
from hypothesis import strategies as st

import fnnet as fn
from fnnet import random

nn = torch.nn
dtypes = st.sampled_from([torch.float64, torch.float32])
seeds = st.integers(0, 2**31 - 1)


def randn(seed: int, *shape: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def outputs(y) -> tuple:
    return y if isinstance(y, tuple) else (y,)


def torch_result(tmod_fn, x, *args):
    """``(outputs, None)`` of torch's forward, or ``(None, the exception)`` it raised; an output
    with a negative size (torch's reflection pad of an empty batch can make one) counts as refused."""
    try:
        y = outputs(tmod_fn()(x, *args))
    except Exception as e:  # torch's own errors: RuntimeError, ValueError, NotImplementedError
        return None, e
    if any(size < 0 for t in y for size in t.shape):
        return None, ValueError(f"torch returned a tensor of shape {list(y[0].shape)}")
    return y, None


def check_parity(twins, x, dtype, seed, *args, params_from_torch=False):
    """fnnet's layer and torch's twin (``twins``: :func:`layer_pair`) on the same ``x`` (and
    forward ``args``): both refuse it (fnnet with a clear error naming the layer), or both give
    the same outputs (indices exactly) and the same gradient of ``<y, g>`` w.r.t. the input (and,
    ``params_from_torch``, w.r.t. the params). Returns whether torch accepted."""
    name, make_layer, make_tmod = twins
    x = x.to(dtype)
    xt = x.clone().requires_grad_()
    tmod = None

    def build_torch():
        nonlocal tmod
        torch.manual_seed(seed)
        tmod = make_tmod().to(dtype)
        return tmod

    y_t, err = torch_result(build_torch, xt, *args)
    if err is not None:
        expect_clear_error(lambda: make_layer().apply(
            fn.params_from_module(tmod) if tmod is not None and params_from_torch else {}, x, *args),
            match=name)
        return False
    layer = make_layer()
    params = fn.params_from_module(tmod) if params_from_torch else {}
    y_f = outputs(layer.apply(params, x, *args))
    assert len(y_f) == len(y_t)
    for a, b in zip(y_f, y_t):
        assert a.shape == b.shape and a.dtype == b.dtype, f"{layer!r}: {a.shape} {a.dtype} vs torch {b.shape} {b.dtype}"
        if a.is_floating_point():
            assert_close(a, b.detach(), dtype, msg=f"{layer!r} forward")
        else:
            assert torch.equal(a, b), f"{layer!r}: indices differ from torch's"
    g = randn(seed + 1, *y_t[0].shape, dtype=dtype)
    (y_t[0] * g).sum().backward()

    def loss(p, x):
        return (outputs(layer.apply(p, x, *args))[0] * g).sum()

    gp, gx = fn.grad(loss, argnums=(0, 1))(params, x)
    assert_close(gx, xt.grad, dtype, msg=f"{layer!r} input grad")
    if params_from_torch:
        torch_grads = fn.interop.nest({n: p.grad for n, p in tmod.named_parameters()})
        assert_trees_close(gp, torch_grads, dtype, msg=f"{layer!r} param grads")
    return True


def layer_pair(name: str, *args, **kwargs):
    """``name`` and makers of fnnet's and torch's layer, from the same (torch's exact) arguments."""
    return name, (lambda: getattr(fn, name)(*args, **kwargs)), (lambda: getattr(nn, name)(*args, **kwargs))


def input_shape(draw, n: int, sizes: st.SearchStrategy) -> tuple:
    """``[N, C, *n]`` (N may be 0) or unbatched ``[C, *n]``."""
    lead = draw(st.sampled_from([(2, 3), (1, 2), (0, 2), (3,)]))
    return (*lead, *(draw(sizes) for _ in range(n)))


# -- padding -------------------------------------------------------------------------------------

PAD_KINDS = ["Zero", "Constant", "Reflection", "Replication", "Circular"]


@pytest.mark.parametrize("kind", PAD_KINDS)
@given(data=st.data(), dtype=dtypes, seed=seeds)
def test_padding_matches_torch_or_both_refuse(kind, data, dtype, seed):
    """Amounts from -3 to 4 (negative crops) on dims of 1 to 4: every outcome torch gives, fnnet
    gives; circular is checked where torch itself is sound (crop, then wrap at most once)."""
    n = data.draw(st.integers(1, 3), label="n")
    pads = data.draw(st.one_of(st.integers(0, 3), st.tuples(*[st.integers(-3, 4)] * (2 * n))), label="padding")
    args = (pads, data.draw(st.sampled_from([0.0, -1.5, float("-inf")]))) if kind == "Constant" else (pads,)
    shape = input_shape(data.draw, n, st.integers(1, 4))
    if kind in ("Zero", "Constant") and data.draw(st.booleans(), label="extra leading dims"):
        shape = (2, *shape)  # torch's constant pads take any rank >= n
    x = randn(seed, *shape)
    name = f"{kind}Pad{n}d"
    amounts = pads if isinstance(pads, tuple) else (pads,) * (2 * n)
    if kind == "Circular":
        for i in range(n):
            size, (lo, hi) = shape[-1 - i], amounts[2 * i:2 * i + 2]
            core = size + min(lo, 0) + min(hi, 0)
            if not (core >= 0 and max(lo, hi) <= core):  # torch: memory overlap error, or uninitialized memory
                expect_clear_error(lambda: getattr(fn, name)(*args).apply({}, x.to(dtype)), match=name)
                return
    check_parity(layer_pair(name, *args), x, dtype, seed)


def test_padding_layers_store_torchs_amounts_and_pad_as_documented():
    assert fn.ZeroPad2d(1).padding == (1, 1, 1, 1)
    assert fn.ReflectionPad3d((1, 2, 3, 4, 5, 6)).padding == (1, 2, 3, 4, 5, 6)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert fn.ReflectionPad1d(2).apply({}, x).tolist() == [[3.0, 2.0, 1.0, 2.0, 3.0, 2.0, 1.0]]
    assert fn.ReplicationPad1d((1, 2)).apply({}, x).tolist() == [[1.0, 1.0, 2.0, 3.0, 3.0, 3.0]]
    assert fn.CircularPad1d((1, 1)).apply({}, x).tolist() == [[3.0, 1.0, 2.0, 3.0, 1.0]]
    assert fn.ConstantPad1d((-1, 1), 9.0).apply({}, x).tolist() == [[2.0, 3.0, 9.0]]
    # forward's input under torch's keyword, and a module is its apply
    assert torch.equal(fn.ZeroPad1d(1)({}, input=x), fn.ZeroPad1d(1).apply({}, x))


# -- sliding-window pools ------------------------------------------------------------------------

# torch's lp_pool has p = +-inf (the max / min of |x|) from 2.13 on; 2.11 computes x^inf
TORCH_LP_POOL_HAS_INF = float(torch.nn.functional.lp_pool1d(torch.full((1, 1, 2), 2.0), float("inf"), 2)) == 2.0


@st.composite
def window(draw, family: str, n: int):
    """Hyperparameters of ``family`` drawn past torch's limits (padding up to the kernel, inputs
    smaller than the window): torch's refusals are part of what is compared."""
    k = draw(st.one_of(st.integers(1, 3), st.tuples(*[st.integers(1, 3)] * n)))
    stride = draw(st.one_of(st.none(), st.integers(1, 3), st.tuples(*[st.integers(1, 3)] * n)))
    if family == "LPPool":
        if n == 1:  # torch's lp_pool1d multiplies by kernel_size: a 1-tuple fails there (fnnet takes it)
            k = draw(st.integers(1, 3))
        norms = [1, 1.5, 2.0, 3] + ([float("inf"), float("-inf")] if TORCH_LP_POOL_HAS_INF else [])
        return {"norm_type": draw(st.sampled_from(norms)), "kernel_size": k,
                "stride": stride, "ceil_mode": draw(st.booleans())}
    args = {"kernel_size": k, "stride": stride, "padding": draw(st.integers(0, 2)), "ceil_mode": draw(st.booleans())}
    if family == "MaxPool":
        args |= {"dilation": draw(st.integers(1, 2)), "return_indices": draw(st.booleans())}
    else:
        args["count_include_pad"] = draw(st.booleans())
        if n > 1:
            args["divisor_override"] = draw(st.sampled_from([None, 1, 3]))
    return args


def window_of_padding_only(args: dict, sizes: tuple) -> bool:
    """Whether some window of a max pool (torch's output sizes) has all its dilated taps in the
    padding."""
    n = len(sizes)
    k, s = (args["kernel_size"],) * n if isinstance(args["kernel_size"], int) else args["kernel_size"], args["stride"]
    s = k if s is None else (s,) * n if isinstance(s, int) else s
    p, d = args["padding"], args["dilation"]
    outs = [fn.layers.pool.pooled_size(size, kk, ss, p, d, args["ceil_mode"]) for size, kk, ss in zip(sizes, k, s)]
    if any(p > kk // 2 for kk in k) or min(outs) < 1:
        return False  # refused before any window is looked at, by torch too
    return any(all(not 0 <= o * ss - p + j * d < size for j in range(kk))
               for size, kk, ss, out in zip(sizes, k, s, outs) for o in range(out))


@pytest.mark.parametrize("family", ["MaxPool", "AvgPool", "LPPool"])
@pytest.mark.parametrize("n", [1, 2, 3])
@given(data=st.data(), dtype=dtypes, seed=seeds)
def test_window_pools_match_torch_or_both_refuse(family, n, data, dtype, seed):
    args = data.draw(window(family, n), label="args")
    x = randn(seed, *input_shape(data.draw, n, st.integers(1, 6 if n < 3 else 4)))
    if family == "MaxPool" and window_of_padding_only(args, x.shape[-n:]):
        # torch returns -inf there, with an index outside the input, and its backward writes to it
        # (heap corruption): never run torch on it
        expect_clear_error(lambda: getattr(fn, f"MaxPool{n}d")(**args).apply({}, x), match="holds no input element")
        return
    if family == "LPPool":
        x = x.abs() + 0.5  # x^p of a negative x is nan for a fractional p: in torch as here
    else:
        x = x * data.draw(st.sampled_from([1.0, 1e30, 1e-30]), label="scale")  # huge and tiny values
    check_parity(layer_pair(f"{family}{n}d", **args), x, dtype, seed)


def test_window_pools_accept_torchs_exact_arguments():
    """Positional, as torch's signatures order them; the ceil-mode last window that starts in the
    input runs past its end (torch's rule), and one that would start in the padding is dropped."""
    assert fn.MaxPool3d(2, 1, 1, 1, True, True) == fn.MaxPool3d(
        kernel_size=2, stride=1, padding=1, dilation=1, return_indices=True, ceil_mode=True)
    assert fn.AvgPool3d(2, 2, 1, True, False, 3).divisor_override == 3
    assert fn.LPPool2d(2, 3, 1, True).norm_type == 2
    assert fn.MaxPool1d(2, 2, ceil_mode=True).apply({}, torch.zeros(1, 1, 1)).shape == (1, 1, 1)
    assert fn.MaxPool1d(2, 2, 1, ceil_mode=True).apply({}, torch.zeros(1, 1, 4)).shape == (1, 1, 3)
    x = randn(0, 2, 3, 4, 4, 4)
    for layer in (fn.MaxPool3d(2), fn.AvgPool3d(2), fn.LPPool3d(2, 2), fn.AdaptiveAvgPool3d(2), fn.AdaptiveMaxPool3d(2)):
        assert torch.equal(layer({}, input=x), layer.apply({}, x))  # forward's input under torch's keyword


@pytest.mark.parametrize("n", [1, 2, 3])
def test_lp_pool_of_infinite_order_is_the_max_or_min_of_the_magnitudes(n):
    """On every torch (2.11's own lp_pool has no such case)."""
    x, max_pool = randn(n, 2, 3, *[5] * n), getattr(torch.nn.functional, f"max_pool{n}d")
    top = getattr(fn, f"LPPool{n}d")(float("inf"), 2, ceil_mode=True).apply({}, x)
    bottom = getattr(fn, f"LPPool{n}d")(float("-inf"), 2, ceil_mode=True).apply({}, x)
    assert torch.equal(top, max_pool(x.abs(), 2, ceil_mode=True))
    assert torch.equal(bottom, -max_pool(-x.abs(), 2, ceil_mode=True))


# -- adaptive pools ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["AdaptiveAvgPool", "AdaptiveMaxPool"])
@pytest.mark.parametrize("n", [1, 2, 3])
@given(data=st.data(), dtype=dtypes, seed=seeds)
def test_adaptive_pools_match_torch(kind, n, data, dtype, seed):
    """Output sizes below, at and above the input's (windows overlap), ``None`` keeping a dim."""
    size = st.integers(1, 5)
    out = data.draw(st.one_of(size, st.tuples(*[st.one_of(size, st.none()) if n > 1 else size] * n)), label="out")
    kwargs = {"return_indices": data.draw(st.booleans())} if kind == "AdaptiveMaxPool" else {}
    x = randn(seed, *input_shape(data.draw, n, st.integers(1, 5)))
    assert check_parity(layer_pair(f"{kind}{n}d", out, **kwargs), x, dtype, seed)


# -- fractional max pools ------------------------------------------------------------------------

@st.composite
def fractional(draw, n: int):
    k = tuple(draw(st.integers(1, 3)) for _ in range(n))
    sizes = tuple(draw(st.integers(kk + 1, kk + 4)) for kk in k)
    if draw(st.booleans()):
        target = {"output_size": tuple(draw(st.integers(1, s - kk + 1)) for s, kk in zip(sizes, k))}
    else:
        target = {"output_ratio": draw(st.floats(0.3, 0.9))}
    return k, target, sizes


@pytest.mark.parametrize("n", [2, 3])
@given(data=st.data(), return_indices=st.booleans(), dtype=dtypes, seed=seeds)
def test_fractional_max_pool_with_explicit_samples_is_torchs_exactly(n, data, return_indices, dtype, seed):
    k, target, sizes = data.draw(fractional(n))
    lead = data.draw(st.sampled_from([(2, 3), (1, 2), (3,)]))
    x = randn(seed, *lead, *sizes).to(dtype)
    batch = lead[0] if len(lead) == 2 else 1
    samples = torch.rand(batch, lead[-1], n, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    twins = layer_pair(f"FractionalMaxPool{n}d", k, **target, return_indices=return_indices, _random_samples=samples)
    if check_parity(twins, x, dtype, seed):  # (a ratio may ask for more than the kernel leaves room for)
        y, y_t = outputs(twins[1]().apply({}, x)), outputs(twins[2]()(x))
        assert all(torch.equal(a, b) for a, b in zip(y, y_t)), "not torch's exact output"


def test_fractional_max_pool_draws_its_samples_from_the_key():
    """The key's samples are ``random.uniform(key, [N, C, n])``: with them given explicitly, torch
    gives the same output; the same key gives the same output, other keys other regions."""
    x = randn(0, 2, 3, 12, 11)
    layer = fn.FractionalMaxPool2d(2, output_size=(5, 4), return_indices=True)
    key = random.key(7)
    y, idx = layer.apply({}, x, key=key)
    samples = random.uniform(key, (2, 3, 2), dtype=x.dtype)
    y_t, idx_t = nn.FractionalMaxPool2d(2, output_size=(5, 4), return_indices=True, _random_samples=samples)(x)
    assert torch.equal(y, y_t) and torch.equal(idx, idx_t)
    again, _ = layer.apply({}, x, key=random.key(7), train=True)
    assert torch.equal(again, y)
    others = {tuple(layer.apply({}, x, key=random.key(s))[1].flatten().tolist()) for s in range(4)}
    assert len(others) > 1
    x3 = randn(1, 4, 7, 6, 5)  # unbatched 3d: samples [1, C, 3]
    y3 = fn.FractionalMaxPool3d((2, 1, 2), output_ratio=0.5).apply({}, x3, key=key)
    t3 = nn.FractionalMaxPool3d((2, 1, 2), output_ratio=0.5,
                                _random_samples=random.uniform(key, (1, 4, 3), dtype=x3.dtype))(x3)
    assert torch.equal(y3, t3)


# -- transposed convolutions ---------------------------------------------------------------------

@st.composite
def conv_transpose(draw, n: int):
    groups = draw(st.integers(1, 2))
    cin, cout = groups * draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
    k = tuple(draw(st.integers(1, 3)) for _ in range(n))
    stride = tuple(draw(st.integers(1, 3)) for _ in range(n))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(n))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(n))
    return {"in_channels": cin, "out_channels": cout, "kernel_size": k, "stride": stride, "padding": padding,
            "output_padding": output_padding, "groups": groups, "bias": draw(st.booleans()), "dilation": dilation}


@pytest.mark.parametrize("n", [1, 2, 3])
@given(data=st.data(), dtype=dtypes, seed=seeds)
def test_conv_transpose_matches_torch_with_output_padding_groups_dilation_and_output_size(n, data, dtype, seed):
    args = data.draw(conv_transpose(n), label="args")
    lead = data.draw(st.sampled_from([(2,), (0,), ()]), label="batch")
    sizes = tuple(data.draw(st.integers(1, 4 if n < 3 else 3)) for _ in range(n))
    x = randn(seed, *lead, args["in_channels"], *sizes)
    smallest = [(s - 1) * st_ - 2 * p + d * (k - 1) + 1 for s, st_, p, d, k in
                zip(sizes, args["stride"], args["padding"], args["dilation"], args["kernel_size"])]
    if min(smallest) < 1:
        # torch 2.13 refuses an output size of 0 in float64, but returns an empty output in float32
        # (oneDNN) or for an empty batch: fnnet refuses every empty output alike
        expect_clear_error(lambda: getattr(fn, f"ConvTranspose{n}d")(**args).apply(fn.tree.astype(
            getattr(fn, f"ConvTranspose{n}d")(**args).init(random.key(0)), x.dtype), x),
            match=f"ConvTranspose{n}d.*empty output")
        return
    forward = ()
    if data.draw(st.booleans(), label="output_size"):  # any size in torch's reachable range
        size = [data.draw(st.integers(lo, lo + st_ - 1)) for lo, st_ in zip(smallest, args["stride"])]
        forward = (size if data.draw(st.booleans()) else [*lead, args["out_channels"], *size],)
    check_parity(layer_pair(f"ConvTranspose{n}d", **args), x, dtype, seed, *forward, params_from_torch=True)


def test_conv_transpose_takes_output_size_by_torchs_keyword():
    layer = fn.ConvTranspose3d(2, 4, 3, stride=2, groups=2)
    params = layer.init(random.key(0))
    x = randn(0, 1, 2, 3, 3, 2, dtype=torch.float32)
    assert layer.apply(params, input=x, output_size=(8, 7, 6)).shape == (1, 4, 8, 7, 6)
    assert layer(params, x).shape == (1, 4, 7, 7, 5)


# -- compiled ------------------------------------------------------------------------------------

def test_pad_and_pools_compile_to_eagers_values_and_gradients():
    """One compiled (inductor) pass through a reflection pad, a fractional max pool drawing from a
    key, a power-average pool and a 3d average pool whose ceil-mode windows overhang (inductor's
    own backward is wrong there: pool.avg_pool works around it), a transposed 3d convolution and
    a 3d adaptive max pool (inductor lays the max pools' saved indices out so that torch's
    backward misreads them: pool.max_at_indices works around it): the values and the input and
    param gradients are eager's."""
    pad, frac = fn.ReflectionPad2d((1, 2, 0, 1)), fn.FractionalMaxPool2d(2, output_size=(5, 4))
    lp, avg = fn.LPPool2d(2, 2, ceil_mode=True), fn.AvgPool3d(2, 2, ceil_mode=True)  # windows overhang
    up, top = fn.ConvTranspose3d(1, 2, 2, stride=2, dilation=1), fn.AdaptiveMaxPool3d((3, 2, None))

    def loss(p, x, key):
        y = lp.apply({}, frac.apply({}, pad.apply({}, x), key=key))  # [2, 3, 3, 2]
        z = up.apply(p, avg.apply({}, y.unsqueeze(1)), output_size=(5, 4, 3))  # from [2, 1, 2, 2, 1]
        z = top.apply({}, z)  # [2, 2, 3, 2, 3]
        return (z * z.detach().sin()).sum()

    params = up.init(random.key(1))
    x, key = randn(0, 2, 3, 7, 6, dtype=torch.float32).abs() + 0.1, random.key(3)
    step = fn.value_and_grad(loss, argnums=(0, 1))
    value, (gp, gx) = step(params, x, key)
    value_c, (gp_c, gx_c) = fn.jit(step)(params, x, key)
    assert_close(value_c, value)
    assert_close(gx_c, gx)
    assert_trees_close(gp_c, gp)


# -- bad inputs ----------------------------------------------------------------------------------

BAD_CONSTRUCTION = [
    (lambda: fn.MaxPool3d(2, padding=-1), r"MaxPool3d: padding must be an int >= 0"),
    (lambda: fn.MaxPool2d(3, padding=2, dilation=3), r"MaxPool2d: padding .* at most half the kernel_size"),
    (lambda: fn.AvgPool3d(2, stride=0), r"AvgPool3d: stride must be an int >= 1"),
    (lambda: fn.AvgPool3d(2, divisor_override=0), r"AvgPool3d: divisor_override must be an int >= 1"),
    (lambda: fn.LPPool1d(0, 2), r"LPPool1d: norm_type must be a number other than 0"),
    (lambda: fn.LPPool2d("2", 2), r"LPPool2d: norm_type"),
    (lambda: fn.LPPool3d(2, (2, 2)), r"LPPool3d: kernel_size must be .* a tuple of 3"),
    (lambda: fn.AdaptiveMaxPool1d(None), r"AdaptiveMaxPool1d: output_size must be an int >= 1"),
    (lambda: fn.AdaptiveAvgPool3d((2, 2)), r"AdaptiveAvgPool3d: output_size"),
    (lambda: fn.AdaptiveMaxPool3d(2, return_indices=1), r"AdaptiveMaxPool3d: return_indices must be a bool"),
    (lambda: fn.FractionalMaxPool2d(2), r"FractionalMaxPool2d: exactly one of output_size and output_ratio"),
    (lambda: fn.FractionalMaxPool2d(2, output_size=3, output_ratio=0.5), r"FractionalMaxPool2d: exactly one"),
    (lambda: fn.FractionalMaxPool3d(2, output_ratio=1.0), r"FractionalMaxPool3d: output_ratio must be .* in \(0, 1\)"),
    (lambda: fn.FractionalMaxPool2d(2, output_ratio=(0.5, 0.5, 0.5)), r"FractionalMaxPool2d: output_ratio"),
    (lambda: fn.FractionalMaxPool2d(2, output_size=2, _random_samples=torch.rand(1, 3, 3)),
     r"FractionalMaxPool2d: _random_samples must be a float tensor \[N, C, 2\]"),
    (lambda: fn.FractionalMaxPool2d(2, output_size=2, _random_samples=torch.rand(1, 3, 2) + 1),
     r"FractionalMaxPool2d: _random_samples must lie in \[0, 1\)"),
    (lambda: fn.ZeroPad2d((1, 2)), r"ZeroPad2d: padding must be an int or a tuple of 4 ints"),
    (lambda: fn.ReflectionPad1d(1.5), r"ReflectionPad1d: padding must be an int"),
    (lambda: fn.CircularPad3d(True), r"CircularPad3d: padding"),
    (lambda: fn.ConstantPad1d(1, "0"), r"ConstantPad1d: value must be a real number"),
    (lambda: fn.ConvTranspose3d(4, 6, 3, stride=2, output_padding=2), r"ConvTranspose3d: output_padding"),
    (lambda: fn.ConvTranspose3d(4, 6, 3, groups=4), r"ConvTranspose3d: out_channels .* divisible by groups"),
]


@pytest.mark.parametrize("make, match", BAD_CONSTRUCTION, ids=lambda v: v if isinstance(v, str) else "")
def test_bad_hyperparameters_are_refused_at_construction_naming_the_layer(make, match):
    expect_clear_error(make, match=match)


RANK_CASES = [
    (fn.ReflectionPad2d(1), (3, 4), "ReflectionPad2d"), (fn.ReplicationPad3d(1), (1, 1, 1, 2, 2, 2), "ReplicationPad3d"),
    (fn.CircularPad1d(1), (4,), "CircularPad1d"), (fn.ZeroPad3d(1), (2, 2), "ZeroPad3d"),
    (fn.MaxPool3d(2), (2, 4, 4), "MaxPool3d"), (fn.AvgPool3d(2), (1, 1, 1, 4, 4, 4), "AvgPool3d"),
    (fn.LPPool1d(2, 2), (4,), "LPPool1d"), (fn.AdaptiveMaxPool3d(2), (4, 4), "AdaptiveMaxPool3d"),
    (fn.AdaptiveAvgPool3d(2), (4, 4, 4), "AdaptiveAvgPool3d"), (fn.AdaptiveMaxPool1d(2), (1, 1, 1, 4), "AdaptiveMaxPool1d"),
    (fn.FractionalMaxPool3d(2, output_size=2), (4, 4, 4), "FractionalMaxPool3d"),
]


@pytest.mark.parametrize("layer, shape, name", RANK_CASES, ids=lambda v: v if isinstance(v, str) else "")
def test_a_wrong_input_rank_is_refused_naming_the_layer(layer, shape, name):
    expect_clear_error(lambda: layer.apply({}, torch.zeros(shape), key=random.key(0)), match=f"{name}.*expected input")


@given(n=st.integers(1, 3), k=st.integers(2, 4), padding=st.integers(0, 1), family=st.sampled_from(["MaxPool", "AvgPool", "LPPool"]))
def test_a_kernel_larger_than_the_padded_input_is_refused(n, k, padding, family):
    """(In ceil mode torch takes a window that starts inside the input and runs past its end.)"""
    name = f"{family}{n}d"
    padding = 0 if family == "LPPool" else min(padding, (k - 2) // 2)  # leaves an input of size >= 1
    layer = getattr(fn, name)(2, k) if family == "LPPool" else getattr(fn, name)(k, padding=padding)
    x = torch.zeros(1, 2, *[k - 1 - 2 * padding] * n)  # padded: one less than the kernel
    expect_clear_error(lambda: layer.apply({}, x), match=f"{name}.*too small")


BAD_APPLY = [
    (lambda: fn.ReflectionPad1d(3).apply({}, torch.zeros(1, 2, 3)), r"ReflectionPad1d.*must be smaller than the dim"),
    (lambda: fn.ReplicationPad2d((0, 0, -3, -2)).apply({}, torch.zeros(1, 2, 4, 3)), r"ReplicationPad2d.*size >= 0"),
    (lambda: fn.ReplicationPad2d((-2, -1, -2, -2)).apply({}, torch.zeros(1, 2, 4, 3)), r"ReplicationPad2d.*would all be empty"),
    (lambda: fn.ConstantPad1d((-3, -2), 0.0).apply({}, torch.zeros(2, 4)), r"ConstantPad1d.*crops more"),
    (lambda: fn.CircularPad1d((-4, 1)).apply({}, torch.zeros(1, 2, 4)), r"CircularPad1d.*wrap around at most once"),
    (lambda: fn.ReflectionPad2d(1).apply({}, torch.zeros(2, 0, 3, 3)), r"ReflectionPad2d.*non-empty dims"),
    (lambda: fn.MaxPool2d(2).apply({}, torch.zeros(2, 0, 4, 4)), r"MaxPool2d.*non-empty dims"),
    (lambda: fn.AvgPool3d(3, padding=1).apply({}, torch.zeros(1, 1, 2, 5, 5)), r"AvgPool3d.*too small"),
    (lambda: fn.MaxPool2d(2, 1, 1, 2).apply({}, torch.zeros(1, 1, 1, 5)), r"MaxPool2d.*window 0 of spatial dim 0 .* holds no input element"),
    (lambda: fn.FractionalMaxPool2d(2, output_size=3).apply({}, torch.zeros(1, 1, 6, 6)), r"FractionalMaxPool2d.*needs key="),
    (lambda: fn.FractionalMaxPool2d(2, output_size=3).apply({}, torch.zeros(1, 1, 6, 6), key=3), r"FractionalMaxPool2d.*key must be a key"),
    (lambda: fn.FractionalMaxPool2d(3, output_size=5).apply({}, torch.zeros(1, 1, 6, 6), key=random.key(0)),
     r"FractionalMaxPool2d.*too small"),
    (lambda: fn.FractionalMaxPool2d(2, output_size=2, _random_samples=torch.rand(1, 3, 2)).apply({}, torch.zeros(2, 3, 6, 6)),
     r"FractionalMaxPool2d.*_random_samples .* do not fit"),
    (lambda: fn.FractionalMaxPool2d(2, output_size=2, _random_samples=torch.rand(2, 3, 2)).apply({}, torch.zeros(2, 3, 6, 6, dtype=torch.float64)),
     r"FractionalMaxPool2d.*_random_samples .* do not fit"),
    (lambda: fn.ConvTranspose3d(2, 2, 3, stride=2).apply(fn.ConvTranspose3d(2, 2, 3, stride=2).init(random.key(0)),
                                                          torch.zeros(1, 2, 3, 3, 3), output_size=(9, 7, 7)),
     r"ConvTranspose3d.*output_size \[9, 7, 7\] is not reachable"),
]


@pytest.mark.parametrize("call, match", BAD_APPLY, ids=lambda v: v if isinstance(v, str) else "")
def test_bad_inputs_are_refused_before_the_arithmetic_naming_the_layer(call, match):
    expect_clear_error(call, match=match)


def test_inductor_still_divides_an_overhanging_ceil_mode_window_by_the_full_kernel():
    """pytorch/pytorch#198119, which pool.avg_pool works around under compile: inductor's backward
    of avg_pool with ceil_mode and count_include_pad divides a window that overhangs the input by
    the whole kernel. When this fails, the installed torch is fixed: drop the workaround."""
    x = torch.arange(5.0).reshape(1, 1, 5)

    def grad(x):
        return torch.func.grad(lambda x: torch.nn.functional.avg_pool1d(x, 2, 2, 0, True, True).sum())(x)

    assert grad(x).tolist() == [[[0.5, 0.5, 0.5, 0.5, 1.0]]]  # eager: the last window holds one element
    assert torch.compile(grad, fullgraph=True)(x).tolist() == [[[0.5, 0.5, 0.5, 0.5, 0.5]]]


def test_torchs_fractional_max_pool_backward_still_misreads_indices_inductor_lays_out():
    """pytorch/pytorch#197888, which pool.max_at_indices works around under compile: a fractional
    max pool feeding a transposed convolution gets a wrong compiled gradient (the saved indices
    laid out otherwise, read as contiguous). When this fails, the installed torch is fixed: drop
    the workaround."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, 9, generator=gen).abs() + 0.1
    samples, w = torch.rand(2, 3, 2, generator=gen), torch.randn(1, 2, 2, 2, 2, generator=gen)

    def loss(x):
        y = torch.nn.functional.fractional_max_pool2d(x, 2, (5, 4), _random_samples=samples)
        z = torch.nn.functional.conv_transpose3d(y.unsqueeze(1)[..., :2, :2, :1], w, None, 2, 0, (1, 0, 1))
        return (z * z.detach().sin()).sum()

    eager, compiled = torch.func.grad(loss)(x), torch.compile(torch.func.grad(loss), fullgraph=True)(x)
    assert (eager - compiled).abs().max() > 1.0
