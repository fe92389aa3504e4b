"""The layers added for breadth give torch.nn's numbers beyond module_db's samples (which
test_module_db.py replays): BatchNorm1d/2d/3d (``bias=False``, ``momentum=None``, empty
batches), InstanceNorm1d/2d/3d, RMSNorm, GroupNorm's ``bias=False``, LocalResponseNorm,
Bilinear, PReLU and the activation modules. Hypothesis draws the arguments and shapes; outputs,
running statistics and gradients w.r.t. params and inputs agree (float64 tight, float32 at
rounding level) wherever torch gives a result, and where torch raises, fnnet raises its own
clear error. Two layer stacks compile under ``fn.jit`` (inductor) with eager's values and
gradients; bad arguments are refused by name."""

from __future__ import annotations

import copy
import inspect
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from badinput import expect_clear_error
from conftest import assert_close, assert_trees_close
from hypothesis import example, given
from hypothesis import strategies as st
from moduledb import assert_pairs_close, twin_parity

import fnnet as fn

nn = torch.nn
DTYPES = st.sampled_from([torch.float64, torch.float32])
SEEDS = st.integers(0, 2**31 - 1)
KEY = fn.random.key(0)


def randn(seed: int, shape: tuple, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def takes_bias(cls: type) -> bool:
    """torch's norms took ``bias=`` only lately: where the installed torch lacks it, the fnnet
    argument still works but has no twin to compare with (the tests draw bias=True only)."""
    return "bias" in inspect.signature(cls.__init__).parameters


def check(theirs: nn.Module, twin: fn.Module, inputs: tuple, dtype: torch.dtype, training: bool) -> None:
    """The twin gives torch's outputs, new running statistics and gradients (params and the float
    inputs); where torch's module raises, the twin raises a clear error of its own."""
    theirs = theirs.to(dtype)
    inputs = tuple(x.to(dtype).requires_grad_() if x.is_floating_point() else x for x in inputs)
    probe = copy.deepcopy(theirs).train(training)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe(*[x.detach() for x in inputs])
    except Exception as torch_error:
        state = {"state": fn.state_from_module(theirs)} if twin.stateful else {}
        expect_clear_error(lambda: twin.apply(fn.params_from_module(theirs), *inputs, train=training, **state))
        return torch_error
    assert_pairs_close(twin_parity(theirs, twin, inputs, {}, training), dtype,
                       f"{twin!r} train={training} inputs {[list(x.shape) for x in inputs]}")
    return None


def random_buffers(module: nn.Module, seed: int, scale: float = 1.0) -> nn.Module:
    """Running statistics away from their initial 0 and 1 and a batch count, so eval and
    ``momentum=None`` (the cumulative average) are exercised; of the inputs' ``scale``, as
    statistics gathered from them would be."""
    g = torch.Generator().manual_seed(seed)
    if getattr(module, "running_mean", None) is not None:
        c = module.running_mean.shape
        module.running_mean.copy_(torch.randn(c, generator=g) * scale)
        module.running_var.copy_((torch.rand(c, generator=g) + 0.5) * scale**2)
        module.num_batches_tracked.fill_(int(torch.randint(0, 5, (), generator=g)))
    return module


# -- batch and instance norms ------------------------------------------------------------------------

NORM_KW = dict(eps=st.sampled_from([1e-5, 1e-3, 0.5]), momentum=st.sampled_from([0.1, 0.5, 0.0, 1.0, None]),
               affine=st.booleans(), track=st.booleans(), bias=st.booleans(), training=st.booleans(),
               dtype=DTYPES, scale=st.sampled_from([1.0, 1e3]), seed=SEEDS)


@given(d=st.sampled_from([1, 2, 3]), n=st.integers(0, 3), c=st.integers(1, 4), length=st.sampled_from([None, 1, 3]),
       **NORM_KW)
@example(d=1, n=1, c=3, length=None, eps=1e-5, momentum=0.1, affine=True, track=False, bias=True, training=False,
         dtype=torch.float64, scale=1.0, seed=0)  # batch statistics of one value, in eval: torch refuses it too
def test_batchnorm_matches_torch(d, n, c, length, eps, momentum, affine, track, bias, training, dtype, scale, seed):
    """Empty batches (an empty output; the statistics kept, the batch counted), one value per
    channel where batch statistics are taken (refused, as torch refuses it), every momentum,
    bias=False."""
    spatial = {1: () if length is None else (length,), 2: (length or 2, 3), 3: (length or 1, 2, 2)}[d]
    kw = dict(eps=eps, momentum=momentum, affine=affine, track_running_stats=track)
    if not bias and takes_bias(nn.BatchNorm1d):
        kw["bias"] = False
    theirs = random_buffers(getattr(nn, f"BatchNorm{d}d")(c, **kw), seed, scale)
    check(theirs, getattr(fn, f"BatchNorm{d}d")(c, **kw), (randn(seed, (n, c, *spatial), dtype, scale),), dtype,
          training)


@given(d=st.sampled_from([1, 2, 3]), n=st.sampled_from([None, 1, 3]), c=st.integers(1, 4),
       size=st.sampled_from([1, 2, 4]), **NORM_KW)
def test_instance_norm_matches_torch_batched_and_unbatched(d, n, c, size, eps, momentum, affine, track, bias,
                                                           training, dtype, scale, seed):
    """Per-sample statistics; with track_running_stats the batch average of them is tracked
    (momentum=None: torch's 0, nothing moves); one spatial element is refused as torch refuses it."""
    spatial = (size,) + (3,) * (d - 1) if size > 1 or d == 1 else (1,) * d
    kw = dict(eps=eps, momentum=momentum, affine=affine, track_running_stats=track)
    if not bias and takes_bias(nn.InstanceNorm1d):
        kw["bias"] = False
    shape = (c, *spatial) if n is None else (n, c, *spatial)
    theirs = random_buffers(getattr(nn, f"InstanceNorm{d}d")(c, **kw), seed, scale)
    check(theirs, getattr(fn, f"InstanceNorm{d}d")(c, **kw), (randn(seed, shape, dtype, scale),), dtype, training)


def test_batchnorm_on_an_empty_batch_keeps_the_statistics_and_counts_the_batch_as_torch():
    bn, theirs = fn.BatchNorm2d(3, momentum=None), random_buffers(nn.BatchNorm2d(3, momentum=None), 1)
    state = fn.state_from_module(theirs)
    y, new = bn.apply(bn.init(KEY), torch.zeros(0, 3, 4, 4), state=state, train=True)
    theirs.train()(torch.zeros(0, 3, 4, 4))
    assert y.shape == (0, 3, 4, 4)
    assert_trees_close(new, fn.state_from_module(theirs))
    assert new["num_batches_tracked"] == state["num_batches_tracked"] + 1
    assert torch.equal(new["running_mean"], state["running_mean"])


def test_instance_norm_on_an_empty_batch_keeps_its_running_statistics_where_torch_writes_nan():
    """The mean of no samples is undefined: fnnet leaves the statistics as they were (as
    BatchNorm does). torch 2.13 averages over the empty batch and stores nan; if this fails, the
    installed torch changed its mind: follow it."""
    layer, theirs = fn.InstanceNorm1d(3, track_running_stats=True), nn.InstanceNorm1d(3, track_running_stats=True)
    state = fn.state_from_module(theirs)
    y, new = layer.apply({}, torch.zeros(0, 3, 5), state=state, train=True)
    assert y.shape == (0, 3, 5)
    assert_trees_close(new, state)
    theirs.train()(torch.zeros(0, 3, 5))
    assert theirs.running_mean.isnan().all()


@given(groups=st.sampled_from([1, 2, 4]), n=st.integers(0, 3), spatial=st.sampled_from([(), (3,), (2, 3)]),
       affine=st.booleans(), bias=st.booleans(), dtype=DTYPES, seed=SEEDS)
def test_groupnorm_with_and_without_bias_matches_torch(groups, n, spatial, affine, bias, dtype, seed):
    kw = dict(affine=affine, bias=bias) if takes_bias(nn.GroupNorm) else dict(affine=affine)
    check(nn.GroupNorm(groups, 4, **kw), fn.GroupNorm(groups, 4, **kw), (randn(seed, (n, 4, *spatial), dtype),),
          dtype, False)


# -- RMSNorm, LocalResponseNorm ---------------------------------------------------------------------------

@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple),
       lead=st.sampled_from([(), (0,), (3,), (2, 3)]), eps=st.sampled_from([None, 1e-6, 0.1]), affine=st.booleans(),
       as_int=st.booleans(), dtype=DTYPES, scale=st.sampled_from([1.0, 1e-3, 1e4]), seed=SEEDS)
def test_rms_norm_matches_torch_over_trailing_dims(shape, lead, eps, affine, as_int, dtype, scale, seed):
    """eps=None is the dtype's machine epsilon; tiny and huge inputs."""
    normalized = shape[0] if as_int and len(shape) == 1 else list(shape)
    theirs = nn.RMSNorm(normalized, eps=eps, elementwise_affine=affine)
    if affine:
        with torch.no_grad():
            theirs.weight.copy_(randn(seed + 1, shape, torch.float32))
    check(theirs, fn.RMSNorm(normalized, eps=eps, elementwise_affine=affine),
          (randn(seed, (*lead, *shape), dtype, scale),), dtype, True)


@given(size=st.integers(1, 5), alpha=st.sampled_from([1e-4, 0.5, 2.0]), beta=st.sampled_from([0.75, 0.5, 2.0]),
       k=st.sampled_from([1.0, 0.5, 2.0]), n=st.integers(0, 2), c=st.integers(1, 6),
       spatial=st.sampled_from([(3,), (2, 3), (2, 2, 3)]), dtype=DTYPES, seed=SEEDS)
def test_local_response_norm_matches_torch(size, alpha, beta, k, n, c, spatial, dtype, seed):
    check(nn.LocalResponseNorm(size, alpha, beta, k), fn.LocalResponseNorm(size, alpha, beta, k),
          (randn(seed, (n, c, *spatial), dtype, 3.0),), dtype, False)


# -- Bilinear, PReLU ----------------------------------------------------------------------------------------

@given(in1=st.integers(1, 4), in2=st.integers(1, 4), out=st.integers(1, 4), bias=st.booleans(),
       lead=st.sampled_from([(), (0,), (3,), (2, 3)]), dtype=DTYPES, seed=SEEDS)
def test_bilinear_matches_torch_batched_unbatched_and_empty(in1, in2, out, bias, lead, dtype, seed):
    torch.manual_seed(seed)
    check(nn.Bilinear(in1, in2, out, bias=bias), fn.Bilinear(in1, in2, out, bias=bias),
          (randn(seed, (*lead, in1), dtype), randn(seed + 1, (*lead, in2), dtype)), dtype, False)


@given(per_channel=st.booleans(), c=st.integers(1, 4), rank=st.integers(0, 4), n=st.integers(0, 2),
       init=st.sampled_from([0.25, 0.0, -1.5, 3.0]), dtype=DTYPES, seed=SEEDS)
def test_prelu_matches_torch_with_one_slope_or_one_per_channel(per_channel, c, rank, n, init, dtype, seed):
    num = c if per_channel else 1
    shape = (n, c, 3, 2)[:rank] if rank >= 2 else (c, 3)[:rank]
    theirs = nn.PReLU(num, init=init)
    with torch.no_grad():
        theirs.weight.copy_(randn(seed + 1, (num,), torch.float32))
    check(theirs, fn.PReLU(num, init=init), (randn(seed, shape, dtype, 2.0),), dtype, False)


def test_prelu_starts_with_the_slope_init_as_torch():
    params = fn.PReLU(3, init=0.1).init(KEY)
    assert torch.equal(params["weight"], nn.PReLU(3, init=0.1).weight.detach())
    assert fn.PReLU(init=0.5).init_value == 0.5


# -- activations ---------------------------------------------------------------------------------------------

REAL = st.sampled_from([-2.0, -0.5, 0.0, 0.3, 1.0, 2.5])
ACTIVATIONS = {  # name: strategy of constructor kwargs (the same for fnnet and torch)
    "CELU": st.fixed_dictionaries({"alpha": st.sampled_from([1.0, 0.5, 2.0, -1.0])}),
    "GLU": st.fixed_dictionaries({"dim": st.integers(-3, 2)}),
    "Hardshrink": st.fixed_dictionaries({"lambd": REAL}),
    "Hardswish": st.just({}),
    "Hardtanh": st.tuples(REAL, REAL).filter(lambda v: v[0] < v[1]).map(lambda v: {"min_val": v[0], "max_val": v[1]}),
    "LogSigmoid": st.just({}),
    "Mish": st.just({}),
    "ReLU6": st.just({}),
    "SELU": st.just({}),
    "SiLU": st.just({}),
    "Softmax2d": st.just({}),
    "Softmin": st.fixed_dictionaries({"dim": st.sampled_from([None, 0, 1, -1, 2])}),
    "Softshrink": st.fixed_dictionaries({"lambd": st.sampled_from([0.0, 0.5, 1.0, 2.5])}),
    "Softsign": st.just({}),
    "Tanhshrink": st.just({}),
    "Threshold": st.fixed_dictionaries({"threshold": REAL, "value": st.sampled_from([0.0, -1.0, 20.0])}),
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@given(data=st.data(), shape=st.lists(st.integers(0, 4), max_size=4).map(tuple), dtype=DTYPES,
       scale=st.sampled_from([1.0, 1e4]), seed=SEEDS)
def test_activation_modules_match_torch(name, data, shape, dtype, scale, seed):
    """Any rank, empty tensors, huge values; where torch refuses the input (an odd GLU dim,
    Softmax2d on a matrix, a dim out of range) fnnet refuses it by name."""
    kwargs = data.draw(ACTIVATIONS[name], label="kwargs")
    check(getattr(nn, name)(**kwargs), getattr(fn, name)(**kwargs), (randn(seed, shape, dtype, scale),), dtype, False)


FUNCTIONS = [  # fnnet's function form, torch.nn.functional's, positional args
    ("hardshrink", F.hardshrink, (0.7,)), ("hardswish", F.hardswish, ()), ("softshrink", F.softshrink, (0.7,)),
    ("threshold", F.threshold, (0.1, -3.0)), ("glu", F.glu, (1,)), ("softmin", F.softmin, (1,)),
]


@pytest.mark.parametrize("name, theirs, args", FUNCTIONS, ids=[f[0] for f in FUNCTIONS])
@given(n=st.integers(0, 3), dtype=DTYPES, seed=SEEDS)
def test_activation_functions_match_torch_functional(name, theirs, args, n, dtype, seed):
    x = randn(seed, (n, 4, 3), dtype, 2.0).requires_grad_()
    y, y_t = getattr(fn, name)(x, *args), theirs(x, *args)
    assert_close(y, y_t.detach(), dtype)
    g = randn(seed + 1, y.shape, dtype)
    assert_close(torch.autograd.grad((y * g).sum(), x)[0], torch.autograd.grad((y_t * g).sum(), x)[0], dtype)


def test_glu_function_refuses_an_odd_dim_by_name():
    expect_clear_error(lambda: fn.glu(torch.randn(2, 3)), match=r"glu: .*dim -1 has an even size.*\[2, 3\]")


# -- the input as torch's forward names it --------------------------------------------------------------------

KEYWORD_CASES = [
    (fn.BatchNorm3d(2), "input", (2, 2, 3, 3, 3)), (fn.InstanceNorm2d(2), "input", (2, 3, 3)),
    (fn.LayerNorm(3), "input", (2, 3)), (fn.GroupNorm(1, 2), "input", (2, 2, 3)),
    (fn.RMSNorm(3), "x", (2, 3)), (fn.LocalResponseNorm(2), "input", (1, 3, 4)),
    (fn.PReLU(), "input", (2, 3)), (fn.Hardtanh(), "input", (4,)), (fn.GLU(), "input", (2, 4)),
]


@pytest.mark.parametrize("layer, name, shape", KEYWORD_CASES, ids=[type(c[0]).__name__ for c in KEYWORD_CASES])
def test_the_input_may_be_passed_by_torchs_forward_argument_name(layer, name, shape):
    x = torch.randn(shape)
    state = {"state": layer.init_state()} if layer.stateful else {}
    by_position = layer.apply(layer.init(KEY), x, **state)
    by_name = layer.apply(layer.init(KEY), **{name: x}, **state)
    for a, b in zip(fn.tree.leaves(by_position), fn.tree.leaves(by_name)):
        assert torch.equal(a, b)
    bil = fn.Bilinear(2, 3, 4)
    x1, x2 = torch.randn(5, 2), torch.randn(5, 3)
    assert torch.equal(bil.apply(bil.init(KEY), input1=x1, input2=x2), bil.apply(bil.init(KEY), x1, x2))


# -- params and state have torch's names and shapes; initial values as torch's ---------------------------------

TWINS = [
    (lambda: fn.BatchNorm3d(3, bias=False), lambda: nn.BatchNorm3d(3, bias=False)),
    (lambda: fn.InstanceNorm1d(3, affine=True, track_running_stats=True),
     lambda: nn.InstanceNorm1d(3, affine=True, track_running_stats=True)),
    (lambda: fn.InstanceNorm3d(3), lambda: nn.InstanceNorm3d(3)),
    (lambda: fn.RMSNorm([2, 3]), lambda: nn.RMSNorm([2, 3])),
    (lambda: fn.GroupNorm(2, 4, bias=False), lambda: nn.GroupNorm(2, 4, bias=False)),
    (lambda: fn.LocalResponseNorm(3), lambda: nn.LocalResponseNorm(3)),
    (lambda: fn.Bilinear(3, 4, 5), lambda: nn.Bilinear(3, 4, 5)),
    (lambda: fn.PReLU(4, init=-0.5), lambda: nn.PReLU(4, init=-0.5)),
]


@pytest.mark.parametrize("ours, theirs", TWINS, ids=[type(ours()).__name__ for ours, _ in TWINS])
def test_params_and_state_have_torchs_names_shapes_and_initial_values(ours, theirs):
    try:
        t = theirs()
    except TypeError as e:  # an older torch without bias=
        pytest.skip(f"this torch cannot build the twin: {e}")
    layer = ours()
    params = layer.init(KEY)
    assert {k: v.shape for k, v in fn.interop.flat(params).items()} == \
        {k: v.shape for k, v in t.named_parameters()}
    assert fn.interop.flat(layer.init_state() if layer.stateful else {}).keys() == \
        fn.interop.flat(fn.state_from_module(t)).keys()
    if isinstance(layer, fn.Bilinear):  # uniform on +-1/sqrt(in1_features), as torch draws it
        bound = 1 / math.sqrt(3)
        assert all(p.abs().max() <= bound for p in params.values())
        assert params["weight"].std() > bound / 3
    else:  # constant starts (ones, zeros, the slope): equal to torch's
        assert_trees_close(params, fn.params_from_module(t))
        if layer.stateful:
            assert_trees_close(layer.init_state(), fn.state_from_module(t))


# -- compiled ---------------------------------------------------------------------------------------------------

def test_a_stack_of_the_new_layers_compiles_with_inductor_and_matches_eager():
    """A training step (values, gradients w.r.t. params and input, new running statistics) through
    BatchNorm2d (momentum=None), InstanceNorm2d (tracked), PReLU, LocalResponseNorm, GLU, RMSNorm
    and Bilinear, compiled in one graph with the default backend."""
    body = fn.Sequential(fn.BatchNorm2d(4, momentum=None), fn.InstanceNorm2d(4, affine=True, track_running_stats=True),
                         fn.PReLU(4), fn.LocalResponseNorm(2), fn.GLU(1), fn.Flatten(), fn.RMSNorm(18), fn.Mish())
    head = fn.Bilinear(18, 18, 3)
    params = {"body": body.init(fn.random.key(1)), "head": head.init(fn.random.key(2))}
    state = body.init_state()

    def loss(params, x, state):
        h, new_state = body.apply(params["body"], x, state=state, train=True)
        y = fn.Softmin(1).apply({}, head.apply(params["head"], h, fn.Hardtanh(-0.5, 0.5).apply({}, h)))
        return (y * torch.arange(3.0)).sum(), new_state

    step = fn.value_and_grad(loss, argnums=(0, 1), has_aux=True)
    x = torch.randn(4, 4, 3, 3)
    (value, new_state), grads = step(params, x, state)
    (c_value, c_state), c_grads = fn.jit(step)(params, x, state)
    assert_close(c_value, value)
    assert_trees_close(c_state, new_state)
    assert_trees_close(c_grads[0], grads[0])
    assert_close(c_grads[1], grads[1])


# -- bad input -------------------------------------------------------------------------------------------------

def _bn_one_value():
    bn = fn.BatchNorm1d(3)
    return bn.apply(bn.init(KEY), torch.randn(1, 3), state=bn.init_state(), train=True)


BAD = {
    "negative num_features": (lambda: fn.BatchNorm3d(-1), r"BatchNorm3d: num_features must be an int >= 1, got -1"),
    "InstanceNorm num_features 0": (lambda: fn.InstanceNorm2d(0), "InstanceNorm2d: num_features"),
    "momentum above 1": (lambda: fn.InstanceNorm1d(3, momentum=2.0), "InstanceNorm1d: momentum"),
    "bias not a bool": (lambda: fn.GroupNorm(1, 2, bias=1), "GroupNorm: bias must be a bool"),
    "BatchNorm bias not a bool": (lambda: fn.BatchNorm2d(2, bias="no"), "BatchNorm2d: bias must be a bool"),
    "empty normalized_shape": (lambda: fn.RMSNorm([]), "RMSNorm: normalized_shape must name at least one dim"),
    "RMSNorm eps 0": (lambda: fn.RMSNorm(3, eps=0.0), "RMSNorm: eps"),
    "normalized_shape mismatch": (lambda: fn.RMSNorm([2, 3]).apply({"weight": torch.ones(2, 3)}, torch.randn(4, 3, 2)),
                                  r"RMSNorm.*expected input \[\.\.\., 2, 3\], got \[4, 3, 2\]"),
    "BatchNorm3d on rank 4": (lambda: fn.BatchNorm3d(2).apply(fn.BatchNorm3d(2).init(KEY), torch.randn(2, 2, 3, 3),
                                                              state=fn.BatchNorm3d(2).init_state()),
                              r"BatchNorm3d.*expected input of rank 5 with 2 channels in dim 1, got \[2, 2, 3, 3\]"),
    "InstanceNorm2d on rank 2": (lambda: fn.InstanceNorm2d(3).apply({}, torch.randn(3, 4)),
                                 r"InstanceNorm2d.*rank 3 or 4 with 3 channels"),
    "InstanceNorm channels": (lambda: fn.InstanceNorm1d(3).apply({}, torch.randn(2, 4, 5)),
                              r"InstanceNorm1d.*3 channels in dim 1, got \[2, 4, 5\]"),
    "InstanceNorm one spatial element": (lambda: fn.InstanceNorm1d(3).apply({}, torch.randn(2, 3, 1)),
                                         "InstanceNorm1d.*more than 1 spatial element"),
    "tracked InstanceNorm without state": (
        lambda: fn.InstanceNorm1d(3, track_running_stats=True).apply({}, torch.randn(2, 3, 4)),
        "InstanceNorm1d.*pass state="),
    "BatchNorm one value per channel": (_bn_one_value, "BatchNorm1d.*more than 1 value per channel"),
    "LocalResponseNorm size 0": (lambda: fn.LocalResponseNorm(0), "LocalResponseNorm: size"),
    "LocalResponseNorm on rank 2": (lambda: fn.LocalResponseNorm(2).apply({}, torch.randn(3, 4)),
                                    r"LocalResponseNorm.*rank 3 or more"),
    "Bilinear in1_features 0": (lambda: fn.Bilinear(0, 2, 3), "Bilinear: in1_features"),
    "Bilinear leading dims": (lambda: fn.Bilinear(2, 3, 4).apply(fn.Bilinear(2, 3, 4).init(KEY), torch.randn(5, 2),
                                                                 torch.randn(4, 3)), "Bilinear.*same leading dims"),
    "Bilinear in2 size": (lambda: fn.Bilinear(2, 3, 4).apply(fn.Bilinear(2, 3, 4).init(KEY), torch.randn(5, 2),
                                                             torch.randn(5, 2)), r"Bilinear.*input2 \[\.\.\., 3\]"),
    "Bilinear dtypes": (lambda: fn.Bilinear(2, 3, 4).apply(fn.Bilinear(2, 3, 4).init(KEY), torch.randn(5, 2),
                                                           torch.randn(5, 3, dtype=torch.float64)),
                        "Bilinear.*same dtype"),
    "PReLU num_parameters 0": (lambda: fn.PReLU(0), "PReLU: num_parameters"),
    "PReLU init nan": (lambda: fn.PReLU(init=math.nan), "PReLU: init must be a finite number, got nan"),
    "PReLU channels": (lambda: fn.PReLU(3).apply(fn.PReLU(3).init(KEY), torch.randn(2, 4, 5)),
                       r"PReLU.*input \[N, 3, \.\.\.\], got \[2, 4, 5\]"),
    "Hardtanh min above max": (lambda: fn.Hardtanh(1.0, -1.0), "Hardtanh: max_val .* greater than min_val"),
    "Softshrink negative lambd": (lambda: fn.Softshrink(-0.5), "Softshrink: lambd must be a finite number >= 0"),
    "CELU alpha 0": (lambda: fn.CELU(0.0), "CELU: alpha .* other than 0"),
    "Threshold not a number": (lambda: fn.Threshold("1", 0.0), "Threshold: threshold"),
    "GLU odd dim": (lambda: fn.GLU().apply({}, torch.randn(2, 3)), r"GLU.*even size.*got \[2, 3\]"),
    "GLU dim out of range": (lambda: fn.GLU(2).apply({}, torch.randn(2, 4)), r"GLU.*dim 2"),
    "Softmax2d on a matrix": (lambda: fn.Softmax2d().apply({}, torch.randn(2, 3)), r"Softmax2d.*\[N, C, H, W\]"),
    "Softmin dim out of range": (lambda: fn.Softmin(2).apply({}, torch.randn(2, 3)), r"Softmin.*dim 2"),
    "activation of a list": (lambda: fn.SiLU().apply({}, [1.0]), "SiLU.*expected a tensor"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_arguments_and_inputs_are_refused_naming_the_layer(case):
    call, match = BAD[case]
    expect_clear_error(call, match=match)


def test_embedding_refuses_an_index_out_of_range_by_name_eager_and_compiled():
    emb = fn.Embedding(5, 3)
    params = emb.init(KEY)
    for bad in (torch.tensor([0, 5]), torch.tensor([-1, 2])):
        expect_clear_error(lambda bad=bad: emb.apply(params, bad), match=r"Embedding: indices must be in \[0, 5\)")
    lookup = fn.jit(emb.apply)
    assert torch.equal(lookup(params, torch.tensor([4, 0])), params["weight"][[4, 0]])
    with pytest.raises(ValueError, match=r"Embedding: indices must be in \[0, 5\)"):
        lookup(params, torch.tensor([1, 7]))


@pytest.mark.parametrize("ours, theirs", [(fn.Softmax, nn.Softmax), (fn.LogSoftmax, nn.LogSoftmax),
                                          (fn.Softmin, nn.Softmin)], ids=["Softmax", "LogSoftmax", "Softmin"])
@pytest.mark.parametrize("ndim", [0, 1, 2, 3, 4])
def test_softmaxes_without_dim_take_torchs_implicit_dim(ours, theirs, ndim):
    x = torch.randn(tuple([3, 4, 5, 6][:ndim]), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch: "Implicit dimension choice ... has been deprecated"
        expected = theirs()(x)
    assert torch.equal(ours().apply({}, x), expected)
