"""The losses added for breadth (ctc, gaussian_nll, poisson_nll, multi_margin, multilabel_margin,
multilabel_soft_margin, soft_margin) give torch.nn.functional's values and gradients over
hypothesis-drawn shapes and hyperparameters (float64 tight, float32 at rounding level), compile
in one graph, and every loss replays PyTorch's own ModuleInfo samples (``module_db``)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from moduledb import copy_inputs, infos_named, samples

import fnnet as fn
import losses

DTYPES = st.sampled_from([torch.float64, torch.float32])
REDUCTIONS = st.sampled_from(["mean", "sum", "none"])


def _randn(draw, shape, dtype, scale=1.0):
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _parity(ours, theirs, inputs, dtype=None):
    """Values, and gradients w.r.t. every input that requires grad (inf and nan where torch has them)."""
    a = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
    b = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
    ya, yb = ours(*a), theirs(*b)
    dtype = dtype or yb.dtype
    torch.testing.assert_close(ya, yb, **_tol(dtype), equal_nan=True)
    assert ya.dtype == yb.dtype and ya.shape == yb.shape
    diff = [i for i, x in enumerate(inputs) if x.requires_grad]
    if diff and ya.numel():
        ga = torch.autograd.grad(ya.sum(), [a[i] for i in diff], allow_unused=True)
        gb = torch.autograd.grad(yb.sum(), [b[i] for i in diff], allow_unused=True)
        for x, y in zip(ga, gb):
            torch.testing.assert_close(x, y, **_tol(dtype), equal_nan=True)


def _empty_mean_is_nan(f, reduction):
    """torch 2.13's multi_margin/multilabel_margin kernels return uninitialized memory as the
    mean or sum of an empty batch; the reference there is the mean (nan) or sum (0) of nothing."""
    def reference(x, *args, **kw):
        if reduction != "none" and x.numel() == 0:
            none = f(x, *args, reduction="none", **kw)
            return none.mean() if reduction == "mean" else none.sum()
        return f(x, *args, reduction=reduction, **kw)
    return reference


def _tol(dtype):
    from conftest import TOL
    return TOL.get(dtype, TOL[torch.float32])


# -- ctc --------------------------------------------------------------------------------------------

@st.composite
def ctc_case(draw):
    """log_probs [T, N, C] (or [T, C]), padded or concatenated targets, lengths as tensors or lists."""
    T, N, C = draw(st.integers(1, 8)), draw(st.integers(1, 4)), draw(st.integers(2, 6))
    unbatched = draw(st.booleans()) and N == 1
    blank = draw(st.integers(0, C - 1))
    labels = [c for c in range(C) if c != blank]
    input_lengths = draw(st.lists(st.integers(0, T), min_size=N, max_size=N))
    target_lengths = draw(st.lists(st.integers(0, T), min_size=N, max_size=N))  # some need more frames than given
    S = max(target_lengths + [draw(st.integers(0, 3))])
    rows = [draw(st.lists(st.sampled_from(labels), min_size=S, max_size=S)) for _ in range(N)]
    padding = draw(st.integers(0, C - 1))  # past a target's length: never read, any value
    padded = [r[:n] + [padding] * (S - n) for r, n in zip(rows, target_lengths)]
    concatenated = draw(st.booleans()) and not unbatched
    itype = draw(st.sampled_from([torch.int64, torch.int32]))
    targets = (torch.tensor([v for r, n in zip(rows, target_lengths) for v in r[:n]], dtype=itype)
               if concatenated else torch.tensor(padded, dtype=itype).reshape(N, S))
    as_list = draw(st.booleans()) and not unbatched
    il, tl = (input_lengths, target_lengths) if as_list else (torch.tensor(input_lengths), torch.tensor(target_lengths))
    dtype = draw(DTYPES)
    scale = draw(st.sampled_from([1.0, 30.0, 1e4]))
    log_probs = torch.log_softmax(_randn(draw, (T, N, C), dtype, scale), -1)
    if unbatched:  # one sequence: its labels alone, [target_length]
        log_probs, targets = log_probs[:, 0], targets[0, :target_lengths[0]]
        il, tl = il[0], tl[0]
    return log_probs, targets, il, tl, blank


@given(case=ctc_case(), reduction=REDUCTIONS, zero_infinity=st.booleans())
def test_ctc_matches_torch_padded_and_concatenated_targets_lengths_as_tensors_or_lists(case, reduction, zero_infinity):
    """Including inputs too short for their targets (inf, or 0 with zero_infinity), empty
    targets, extreme logits, every blank index."""
    log_probs, targets, il, tl, blank = case
    kw = dict(blank=blank, reduction=reduction, zero_infinity=zero_infinity)
    _parity(lambda lp: losses.ctc(lp, targets, il, tl, **kw), lambda lp: F.ctc_loss(lp, targets, il, tl, **kw),
            [log_probs.requires_grad_()])


def test_ctc_refuses_an_empty_batch_as_torch_does():
    with pytest.raises(ValueError, match="ctc: log_probs must not be empty"):
        losses.ctc(torch.zeros(5, 0, 3), torch.zeros(0, 2, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                   torch.zeros(0, dtype=torch.long))


# -- gaussian_nll, poisson_nll ---------------------------------------------------------------------

@st.composite
def var_for(draw, shape, dtype):
    """A var of each form torch allows: the input's shape, one fewer dim, one dim set to 1, a number."""
    forms = ["full", "number"] + (["fewer"] if len(shape) >= 1 else []) + [f"one{i}" for i in range(len(shape))]
    form = draw(st.sampled_from(forms))
    if form == "number":
        return draw(st.sampled_from([0.0, 1e-9, 0.5, 2.0, 3]))
    if form == "full":
        vshape = shape
    elif form == "fewer":
        vshape = shape[:-1]
    else:
        vshape = tuple(1 if i == int(form[3:]) else s for i, s in enumerate(shape))
    var = _randn(draw, vshape, dtype).abs()
    if draw(st.booleans()):  # some zeros: clamped at eps, as in torch
        var = torch.where(_randn(draw, vshape, dtype) > 0.5, torch.zeros_like(var), var)
    return var.requires_grad_()


@given(data=st.data(), shape=st.lists(st.integers(0, 4), min_size=1, max_size=3).map(tuple), dtype=DTYPES,
       reduction=REDUCTIONS, full=st.booleans(), eps=st.sampled_from([1e-6, 1e-2, 0.0]))
def test_gaussian_nll_matches_torch_for_every_var_form(data, shape, dtype, reduction, full, eps):
    x = _randn(data.draw, shape, dtype, 3.0).requires_grad_()
    t = _randn(data.draw, shape, dtype, 3.0).requires_grad_()
    var = data.draw(var_for(shape, dtype))
    if isinstance(var, int):
        theirs_var = float(var)  # torch takes a Python float only; an int means the same here
    else:
        theirs_var = var
    inputs = [x, t] + ([var] if isinstance(var, torch.Tensor) else [])
    _parity(lambda x, t, *v: losses.gaussian_nll(x, t, v[0] if v else var, full, eps, reduction),
            lambda x, t, *v: F.gaussian_nll_loss(x, t, v[0] if v else theirs_var, full, eps, reduction), inputs)


def test_gaussian_nll_var_is_shared_along_its_size_1_dim_as_in_torch():
    x, t = torch.randn(4, 3, 5, dtype=torch.float64), torch.randn(4, 3, 5, dtype=torch.float64)
    for var in (torch.rand(4, 3) + 0.1, torch.rand(4, 1, 5) + 0.1, torch.rand(1, 3, 5) + 0.1, torch.rand(4, 3, 1)):
        assert_close(losses.gaussian_nll(x, t, var, reduction="none"), F.gaussian_nll_loss(x, t, var, reduction="none"))


@given(data=st.data(), shape=st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple), dtype=DTYPES,
       reduction=REDUCTIONS, log_input=st.booleans(), full=st.booleans(), eps=st.sampled_from([1e-8, 0.1, 0.0]),
       scale=st.sampled_from([1.0, 10.0, 100.0]))
def test_poisson_nll_matches_torch_including_zero_counts_and_huge_rates(data, shape, dtype, reduction, log_input,
                                                                      full, eps, scale):
    x = _randn(data.draw, shape, dtype, scale)
    if not log_input:
        x = x.abs()
    counts = torch.poisson(_randn(data.draw, shape, torch.float64).abs() * 3).to(dtype)  # zeros, ones and more
    _parity(lambda x: losses.poisson_nll(x, counts, log_input, full, eps, reduction),
            lambda x: F.poisson_nll_loss(x, counts, log_input, full, eps=eps, reduction=reduction),
            [x.requires_grad_()])


# -- margin losses ------------------------------------------------------------------------------------

@given(data=st.data(), n=st.integers(0, 5), c=st.integers(1, 6), unbatched=st.booleans(), dtype=DTYPES,
       reduction=REDUCTIONS, p=st.sampled_from([1, 2]), margin=st.sampled_from([1.0, 0.0, 0.5, -1.0, 3.0]),
       weighted=st.booleans(), scale=st.sampled_from([1.0, 1e4]))
def test_multi_margin_matches_torch(data, n, c, unbatched, dtype, reduction, p, margin, weighted, scale):
    shape = (c,) if unbatched else (n, c)
    x = _randn(data.draw, shape, dtype, scale).requires_grad_()
    target = torch.tensor(data.draw(st.lists(st.integers(0, c - 1), min_size=shape[0], max_size=shape[0])),
                          dtype=data.draw(st.sampled_from([torch.int64, torch.int32])))
    target = target[0] if unbatched else target
    w = _randn(data.draw, (c,), dtype).abs() + 0.1 if weighted else None  # torch has no gradient for it
    _parity(lambda x: losses.multi_margin(x, target, p, margin, w, reduction),
            lambda x: _empty_mean_is_nan(F.multi_margin_loss, reduction)(x, target.long(), p, margin, w), [x])


@st.composite
def multilabel_targets(draw, n, c):
    """Rows of class indices, ended by -1 (or full), with anything in [-1, C) after the -1."""
    rows = []
    for _ in range(n):
        k = draw(st.integers(0, c))
        listed = draw(st.lists(st.integers(0, c - 1), min_size=k, max_size=k))  # duplicates allowed
        after = draw(st.lists(st.integers(-1, c - 1), min_size=max(0, c - k - 1), max_size=max(0, c - k - 1)))
        rows.append(listed + ([-1] + after if k < c else []))
    return torch.tensor(rows, dtype=torch.long).reshape(n, c)


@given(data=st.data(), n=st.integers(0, 5), c=st.integers(1, 6), unbatched=st.booleans(), dtype=DTYPES,
       reduction=REDUCTIONS, scale=st.sampled_from([1.0, 1e4]))
def test_multilabel_margin_matches_torch(data, n, c, unbatched, dtype, reduction, scale):
    n = 1 if unbatched else n
    target = data.draw(multilabel_targets(n, c))
    x = _randn(data.draw, (n, c), dtype, scale)
    if unbatched:
        x, target = x[0], target[0]
    target = target.to(data.draw(st.sampled_from([torch.int64, torch.int32])))
    _parity(lambda x: losses.multilabel_margin(x, target, reduction),
            lambda x: _empty_mean_is_nan(F.multilabel_margin_loss, reduction)(x, target.long()), [x.requires_grad_()])


@settings(max_examples=8)
@given(data=st.data(), n=st.integers(0, 5), c=st.integers(1, 6), dtype=DTYPES, reduction=REDUCTIONS)
def test_multilabel_margin_compiled_matches_torch_eager(data, n, c, dtype, reduction):
    """Under torch.compile the loss is fnnet's own formula (torch 2.13's decomposition is wrong,
    see below): same values and gradients as torch's eager kernel. (Each example compiles
    afresh: dynamo's cache is reset, or the shapes drawn would hit its recompile limit.)"""
    torch._dynamo.reset()
    target = data.draw(multilabel_targets(n, c))
    x = _randn(data.draw, (n, c), dtype, 3.0).requires_grad_()
    compiled = fn.jit(lambda x, t: losses.multilabel_margin(x, t, reduction), backend="aot_eager")
    _parity(lambda x: compiled(x, target), lambda x: _empty_mean_is_nan(F.multilabel_margin_loss, reduction)(x, target),
            [x])


def test_torch_compiled_multilabel_margin_is_wrong_on_this_torch():
    """Pins the torch bug fnnet works around (its decomposition does not mask the target
    positions after the -1): if this fails, the installed torch is fixed and
    ``losses.multilabel_margin`` may delegate when compiled too."""
    x = torch.tensor([[0.1, 0.2, 0.4, 0.8]], dtype=torch.float64)
    target = torch.tensor([[3, -1, 0, 1]])
    f = lambda x, t: F.multilabel_margin_loss(x, t)
    eager, compiled = f(x, target), torch.compile(f, backend="aot_eager", fullgraph=True)(x, target)
    assert_close(losses.multilabel_margin(x, target), eager)
    assert not torch.allclose(compiled, eager)


@given(data=st.data(), shape=st.lists(st.integers(0, 4), min_size=1, max_size=3).map(tuple), dtype=DTYPES,
       reduction=REDUCTIONS, weight=st.sampled_from([None, "class", "sample"]), int_target=st.booleans(),
       scale=st.sampled_from([1.0, 1e4]))
def test_multilabel_soft_margin_matches_torch(data, shape, dtype, reduction, weight, int_target, scale):
    x = _randn(data.draw, shape, dtype, scale).requires_grad_()
    target = (_randn(data.draw, shape, torch.float64) > 0).to(torch.int64 if int_target else dtype)
    wshape = {"class": shape[-1:], "sample": (*shape[:-1], 1)}.get(weight)
    w = _randn(data.draw, wshape, dtype).abs() if weight else None
    _parity(lambda x: losses.multilabel_soft_margin(x, target, w, reduction),
            lambda x: F.multilabel_soft_margin_loss(x, target, w, reduction=reduction), [x])


@given(data=st.data(), shape=st.lists(st.integers(0, 4), max_size=3).map(tuple), dtype=DTYPES, reduction=REDUCTIONS,
       labels=st.sampled_from(["pm1", "real", "int"]), scale=st.sampled_from([1.0, 1e4]))
def test_soft_margin_matches_torch(data, shape, dtype, reduction, labels, scale):
    x = _randn(data.draw, shape, dtype, scale).requires_grad_()
    y = _randn(data.draw, shape, dtype)
    y = {"pm1": torch.where(y > 0, 1.0, -1.0).to(dtype), "real": y, "int": torch.where(y > 0, 1, -1)}[labels]
    _parity(lambda x: losses.soft_margin(x, y, reduction), lambda x: F.soft_margin_loss(x, y, reduction=reduction), [x])


@given(data=st.data(), shape=st.lists(st.integers(0, 4), max_size=3).map(tuple), dtype=DTYPES, reduction=REDUCTIONS,
       which=st.sampled_from(["mse", "l1", "huber"]), zeros=st.booleans())
def test_weighted_mse_l1_huber_match_torch(data, shape, dtype, reduction, which, zeros):
    """torch's weight= (one per element; the mean is sum(w * loss) / sum(w)), some weights 0."""
    x = _randn(data.draw, shape, dtype, 3.0).requires_grad_()
    t = _randn(data.draw, shape, dtype, 3.0).requires_grad_()
    w = _randn(data.draw, shape, dtype).abs()
    if zeros:
        w = torch.where(w > 0.7, w, torch.zeros_like(w))
    w.requires_grad_()
    theirs = {"mse": F.mse_loss, "l1": F.l1_loss, "huber": F.huber_loss}[which]
    _parity(lambda x, t, w: getattr(losses, which)(x, t, reduction, weight=w),
            lambda x, t, w: theirs(x, t, reduction=reduction, weight=w), [x, t, w])


# -- compiled ---------------------------------------------------------------------------------------------

def test_the_new_losses_compile_in_one_graph_with_their_gradient_and_match_eager():
    """fn.jit is fullgraph; the value checks are graph ops (ctc is eager only: F.ctc_loss's
    output shapes depend on the lengths' values, which torch 2.13 cannot compile)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64)
    t = torch.randn(6, 4, generator=g, dtype=torch.float64)
    idx = torch.randint(0, 4, (6,), generator=g)
    multi = torch.tensor([[0, 1, -1, 2], [3, -1, 0, 0], [1, 2, 3, 0], [-1, 0, 0, 0], [2, 2, -1, -1], [0, -1, 3, 3]])
    w = torch.tensor([0.5, 1.0, 2.0, 1.5], dtype=torch.float64)

    def total(x, var):
        return sum([
            losses.gaussian_nll(x, t, var), losses.gaussian_nll(x, t, var[:, :1], full=True, reduction="sum"),
            losses.gaussian_nll(x, t, 0.5), losses.poisson_nll(x, t.abs()), losses.poisson_nll(x.abs(), t.abs(), False, True),
            losses.multi_margin(x, idx, 2, 0.5, w), losses.multilabel_margin(x, multi),
            losses.multilabel_soft_margin(x, (t > 0).long(), w), losses.soft_margin(x, torch.sign(t)),
        ])

    step = fn.value_and_grad(total, argnums=(0, 1))
    var = t.abs() + 0.1
    value, grads = fn.jit(step, backend="aot_eager")(x, var)
    expected_value, expected_grads = step(x, var)
    assert_close(value, expected_value)
    for a, b in zip(grads, expected_grads):
        assert_close(a, b)


def test_value_checks_raise_in_a_compiled_graph_too():
    x = torch.randn(3, 4, dtype=torch.float64)
    mm = fn.jit(lambda x, t: losses.multi_margin(x, t), backend="aot_eager")
    mm(x, torch.tensor([0, 3, 1]))
    with pytest.raises(ValueError, match=r"multi_margin: target must hold class indices in \[0, 4\)"):
        mm(x, torch.tensor([0, 4, 1]))
    nll = fn.jit(lambda x, v: losses.gaussian_nll(x, x, v), backend="aot_eager")
    nll(x, x.abs())
    with pytest.raises(ValueError, match="gaussian_nll: var must be >= 0"):
        nll(x, -x.abs())
    ce = fn.jit(lambda x, t: losses.cross_entropy(x, t, ignore_index=-1), backend="aot_eager")
    ce(x, torch.tensor([0, -1, 3]))
    with pytest.raises(ValueError, match=r"cross_entropy: class indices must be in \[0, 4\) or ignore_index = -1"):
        ce(x, torch.tensor([0, -2, 3]))


# -- empty batches ---------------------------------------------------------------------------------------

def _empty_cases():
    x, t = torch.zeros(0, 3), torch.zeros(0, 3)
    idx = torch.zeros(0, dtype=torch.long)
    return {
        "gaussian_nll": (lambda r: losses.gaussian_nll(x, t, torch.ones(0, 3), reduction=r),
                         lambda r: F.gaussian_nll_loss(x, t, torch.ones(0, 3), reduction=r)),
        "poisson_nll": (lambda r: losses.poisson_nll(x, t, reduction=r), lambda r: F.poisson_nll_loss(x, t, reduction=r)),
        "multi_margin": (lambda r: losses.multi_margin(x, idx, reduction=r),
                         lambda r: F.multi_margin_loss(x, idx, reduction=r)),
        "multilabel_margin": (lambda r: losses.multilabel_margin(x, idx.reshape(0, 3), reduction=r),
                              lambda r: F.multilabel_margin_loss(x, idx.reshape(0, 3), reduction=r)),
        "multilabel_soft_margin": (lambda r: losses.multilabel_soft_margin(x, t, reduction=r),
                                   lambda r: F.multilabel_soft_margin_loss(x, t, reduction=r)),
        "soft_margin": (lambda r: losses.soft_margin(x, t, reduction=r), lambda r: F.soft_margin_loss(x, t, reduction=r)),
    }


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", sorted(_empty_cases()))
def test_an_empty_batch_reduces_as_torch_does(case, reduction):
    """The mean of nothing is nan, the sum 0, "none" empty. torch 2.13's multi_margin and
    multilabel_margin kernels return uninitialized memory as the mean and sum (tiny or
    garbage numbers): fnnet returns nan and 0 for them too."""
    ours, theirs = _empty_cases()[case]
    expected = theirs(reduction)
    if reduction != "none" and case in ("multi_margin", "multilabel_margin"):
        expected = torch.tensor(math.nan if reduction == "mean" else 0.0)
    torch.testing.assert_close(ours(reduction), expected, equal_nan=True)


# -- PyTorch's own ModuleInfo samples -------------------------------------------------------------------

# torch.nn class -> fnnet loss; the constructor's kwargs are the loss's keyword arguments
MODULE_LOSSES = {
    "L1Loss": "l1", "MSELoss": "mse", "SmoothL1Loss": "smooth_l1", "HuberLoss": "huber",
    "BCELoss": "binary_cross_entropy", "BCEWithLogitsLoss": "binary_cross_entropy_with_logits",
    "CrossEntropyLoss": "cross_entropy", "NLLLoss": "nll", "KLDivLoss": "kl_div",
    "MarginRankingLoss": "margin_ranking", "HingeEmbeddingLoss": "hinge_embedding",
    "CosineEmbeddingLoss": "cosine_embedding", "SoftMarginLoss": "soft_margin",
    "MultiLabelSoftMarginLoss": "multilabel_soft_margin", "MultiMarginLoss": "multi_margin",
    "MultiLabelMarginLoss": "multilabel_margin", "GaussianNLLLoss": "gaussian_nll",
    "PoissonNLLLoss": "poisson_nll", "CTCLoss": "ctc", "LinearCrossEntropyLoss": "linear_cross_entropy",
}

# loss modules with parameters (nn.LinearCrossEntropyLoss's internal Linear): the constructor's
# arguments are not the loss's, so each has its own replay below, the module's params copied
MODULES_WITH_PARAMS = {"LinearCrossEntropyLoss"}


def _run(call, args):
    """(output, gradients w.r.t. the float args that require grad) or the exception torch raised."""
    out = call(*args)
    wrt = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = torch.autograd.grad(out.sum(), wrt, allow_unused=True) if wrt and out.requires_grad else ()
    return out, grads


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("module", sorted(set(MODULE_LOSSES) - MODULES_WITH_PARAMS))
def test_every_module_db_sample_of_a_loss_module_matches(module, dtype):
    """Outputs and input gradients of every sample PyTorch's ModuleInfo database has for the
    loss modules, fnnet's loss called with the module's constructor kwargs."""
    infos = infos_named(module)
    assert infos, f"module_db has no {module}"
    loss = getattr(losses, MODULE_LOSSES[module])
    matched = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for info in infos:
            for training, sample in samples(info, dtype):
                ctor, fwd = sample.constructor_input, sample.forward_input
                torch_loss = info.module_cls(*ctor.args, **ctor.kwargs)
                args = tuple(fwd.args)
                theirs = _run(lambda *a, m=torch_loss, kw=fwd.kwargs: m(*a, **kw), copy_inputs(args))
                ours = _run(lambda *a, c=ctor, kw=fwd.kwargs: loss(*a, *c.args, **c.kwargs, **kw), copy_inputs(args))
                where = f"{module} sample {sample.desc!r} training={training}"
                for a, b in zip((ours[0], *ours[1]), (theirs[0], *theirs[1])):
                    torch.testing.assert_close(a, b, **_tol(dtype), equal_nan=True,
                                               msg=lambda m, w=where: f"{w}: {m}")
                matched += 1
    assert matched > 0
    print(f"module_db {module} {dtype}: {matched} samples match")


@pytest.mark.parametrize("dtype", [torch.float64, pytest.param(torch.float32, marks=pytest.mark.slow)])
def test_every_module_db_sample_of_linear_cross_entropy_loss_matches(dtype):
    """nn.LinearCrossEntropyLoss(in_features, num_classes, out_features=, bias=, weight=, ...):
    its params (``fn.params_from_module``: ``{"linear": {"weight": [C * prod(out_features), D],
    "bias": [C * prod(out_features)]}}``, as fn.Linear's) reshaped to ``[C, *out_features, D]``
    and passed to ``losses.linear_cross_entropy`` with the module's keyword arguments (torch's
    ``options.batch_chunk_size``, where a sample sets one, as ``chunk_size``): outputs and the
    gradients w.r.t. the input and every param equal the module's (which runs torch's chunked
    path where the sample gives ``options``). A loss has no training mode, and module_db's eval
    samples are the training ones drawn again: each is replayed once (float32 with ``-m slow``)."""
    module = "LinearCrossEntropyLoss"
    if not hasattr(torch.nn, module):
        pytest.skip(f"torch {torch.__version__} has no nn.{module} (torch 2.13 added it); "
                    f"test_linear_cross_entropy.py checks the loss against cross_entropy(linear(...))")
    infos = infos_named(module)
    assert infos, f"module_db has no {module}"
    matched = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for info in infos:
            for training, sample in samples(info, dtype):
                if not training:
                    continue
                ctor, fwd = sample.constructor_input, sample.forward_input
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(1)  # torch's initial weights: the same every run
                    torch_loss = info.module_cls(*ctor.args, **ctor.kwargs)
                names = [n for n, _ in torch_loss.named_parameters()]
                params = fn.params_from_module(torch_loss)["linear"]
                assert names == [f"linear.{k}" for k in params], names
                kw = ctor.kwargs
                classes, out = ctor.args[1], tuple(kw.get("out_features", ()))
                options = kw.get("options")

                def ours(input, target, w, b=None, kw=kw, classes=classes, out=out, options=options):
                    return losses.linear_cross_entropy(
                        input, w.reshape(classes, *out, w.shape[-1]), target,
                        linear_bias=None if b is None else b.reshape(classes, *out), weight=kw.get("weight"),
                        reduction=kw.get("reduction", "mean"), ignore_index=kw.get("ignore_index"),
                        label_smoothing=kw.get("label_smoothing", 0.0),
                        chunk_size=None if options is None else options.batch_chunk_size)

                def theirs(input, target, *p, m=torch_loss, names=names):
                    return torch.func.functional_call(m, dict(zip(names, p)), (input, target))

                args = (*fwd.args, *(t.detach().requires_grad_() for t in params.values()))
                a, b = _run(ours, copy_inputs(args)), _run(theirs, copy_inputs(args))
                where = f"{module} sample {sample.desc!r} {kw} training={training}"
                assert len(a[1]) == len(b[1]) == len(args) - 1  # the input and every param
                for x, y in zip((a[0], *a[1]), (b[0], *b[1])):
                    torch.testing.assert_close(x, y, **_tol(dtype), equal_nan=True,
                                               msg=lambda m, w=where: f"{w}: {m}")
                matched += 1
    assert matched > 0
    print(f"module_db {module} {dtype}: {matched} samples match")


def test_ctc_under_fn_jit_fails_loudly_not_silently():
    """F.ctc_loss has no one-graph form on torch 2.13 (its kernel's scratch output has a shape
    that depends on the lengths' values); fn.jit is fullgraph, so it raises. (Hiding the
    kernel behind an opaque op compiled, but fn.jit(fn.grad(...)) then gave zero gradients,
    so it is not done.) If this fails, the installed torch compiles CTC: test its gradients."""
    lp = torch.randn(5, 2, 4, dtype=torch.float64).log_softmax(2)
    targets, lengths = torch.tensor([[1, 2], [3, 3]]), torch.tensor([5, 4])
    with pytest.raises(Exception, match="(?i)dynamic shape|data-dependent|unsupported"):
        fn.jit(lambda lp: losses.ctc(lp, targets, lengths, torch.tensor([2, 2])), backend="aot_eager")(lp)
