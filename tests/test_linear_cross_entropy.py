"""``losses.linear_cross_entropy`` is ``cross_entropy(F.linear(input, W, b), target)`` (and, on
torch >= 2.13, ``F.linear_cross_entropy``): the same values and gradients w.r.t. input,
linear_weight and linear_bias over hypothesis-drawn shapes (K-dimensional, unbatched, empty),
targets (indices, probabilities), class weights, ignore_index, label smoothing, reductions,
huge logits and chunk sizes that do not divide the batch; without keeping the ``[N, C]``
logits for backward (bytes saved for backward, the largest tensor made); under ``fn.grad``,
``fn.vmap`` and ``fn.jit`` (inductor, equal to eager); bad arguments refused by name. The
module twin, ``nn.LinearCrossEntropyLoss``, replays module_db in ``test_losses_more.py``."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from badinput import expect_clear_error
from conftest import TOL
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import fnnet as fn
import losses

lce_module = importlib.import_module("losses.linear_cross_entropy")  # the file: the package's name is the function

HAS_TORCH_TWIN = hasattr(F, "linear_cross_entropy")
NO_TWIN = f"F.linear_cross_entropy is new in torch 2.13; the installed torch is {torch.__version__}"


def _reference(input, linear_weight, target, *, linear_bias=None, weight=None, reduction="mean",
               ignore_index=None, label_smoothing=0.0):
    """The definition: the whole logits ``[N, C, d1, ...]``, then ``F.cross_entropy``."""
    classes, out_features, d = linear_weight.shape[0], tuple(linear_weight.shape[1:-1]), linear_weight.shape[-1]
    rows = math.prod(out_features, start=classes)
    logits = F.linear(input, linear_weight.reshape(rows, d), None if linear_bias is None else linear_bias.reshape(rows))
    logits = logits.reshape(*input.shape[:-1], classes, *out_features)
    target = target if target.is_floating_point() else target.long()  # torch's kernel takes int64 only
    return F.cross_entropy(logits, target, weight, ignore_index=-100 if ignore_index is None else ignore_index,
                           reduction=reduction, label_smoothing=label_smoothing)


def _logits(input, linear_weight, linear_bias):
    """The whole logits (as :func:`_reference` builds them), in float64, for the tolerance."""
    rows, d = math.prod(linear_weight.shape[:-1]), linear_weight.shape[-1]
    return F.linear(input.detach().double(), linear_weight.detach().double().reshape(rows, d),
                    None if linear_bias is None else linear_bias.detach().double().reshape(rows))


def _randn(seed, shape, dtype, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


@st.composite
def cases(draw):
    """(args, kwargs) of one call: input [N, D] or [D], linear_weight [C, *out, D], a target of
    indices or probabilities, and every keyword drawn."""
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    seed = draw(st.integers(0, 2**31 - 1))
    unbatched = draw(st.integers(0, 5)) == 0
    n, d, c = draw(st.integers(0, 9)), draw(st.integers(0, 6)), draw(st.integers(1, 7))
    out = () if unbatched else tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    scale = draw(st.sampled_from([1.0, 1.0, 30.0, 1e4]))  # 1e4: logits far past exp's range
    input = _randn(seed, (d,) if unbatched else (n, d), dtype).requires_grad_()
    linear_weight = _randn(seed + 1, (c, *out, d), dtype, scale).requires_grad_()
    kw = {"reduction": draw(st.sampled_from(["mean", "sum", "none"])),
          "label_smoothing": draw(st.sampled_from([0.0, 0.0, 0.1, 1.0]))}
    if draw(st.booleans()):
        kw["linear_bias"] = _randn(seed + 2, (c, *out), dtype, scale).requires_grad_()
    if draw(st.booleans()):
        kw["weight"] = _randn(seed + 3, (c,), dtype).exp()
    logits_shape = (c, *out) if unbatched else (n, c, *out)
    if draw(st.booleans()):  # class probabilities (rows need not sum to 1: torch does not ask it)
        target = _randn(seed + 4, logits_shape, dtype).softmax(-len(out) - 1)
    else:
        shape = () if unbatched else (n, *out)
        target = torch.randint(0, c, shape, generator=torch.Generator().manual_seed(seed + 5))
        kw["ignore_index"] = draw(st.sampled_from([None, -100, 0, c - 1, c + 5]))
        if kw["ignore_index"] is not None and target.numel() and draw(st.booleans()):
            target.view(-1)[0] = kw["ignore_index"]  # one ignored position at least
        target = target.to(draw(st.sampled_from([torch.int64, torch.int32])))  # any integer dtype, as cross_entropy
    chunk = draw(st.sampled_from([None, 1, 2, 3, 4, 100]))
    return (input, linear_weight, target), kw, chunk


def _grads(out, wrt):
    wrt = [t for t in wrt if t is not None and t.requires_grad]
    if not out.requires_grad:
        return [torch.zeros_like(t) for t in wrt]
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(out.dtype)
    return [torch.zeros_like(t) if a is None else a for t, a in
            zip(wrt, torch.autograd.grad(out, wrt, g, allow_unused=True))]


def _check_parity(ours_fn, theirs_fn, args, kw, chunk):
    dtype = args[0].dtype
    copies = [[t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t
               for t in (*args, kw.get("linear_bias"))] for _ in range(2)]
    (x, w, t, b), (x2, w2, t2, b2) = copies
    ours = ours_fn(x, w, t, **{**kw, "linear_bias": b}, chunk_size=chunk)
    theirs = theirs_fn(x2, w2, t2, **{**kw, "linear_bias": b2})
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    # a loss is logsumexp(z) - z_t, a difference of numbers as large as the logits: float32 rounds
    # it at the logits' size (logits of 200 put a loss of 3 off by 1.5e-5 in either implementation)
    z = _logits(x, w, b).abs().max().item() if x.numel() and w.numel() else 0.0
    value_tol = {"rtol": TOL[dtype]["rtol"],
                 "atol": TOL[dtype]["atol"] * (max(1.0, z / 20) if dtype == torch.float32 else 1.0)}
    torch.testing.assert_close(ours, theirs, **value_tol, equal_nan=True)
    # d input = dz @ W sums terms as large as W over classes, cancelling: float32 rounds it at W's size
    size = max([1.0] + [t.abs().max().item() for t in (w, b) if t is not None and t.numel()])
    tol = {"rtol": TOL[dtype]["rtol"], "atol": TOL[dtype]["atol"] * (size if dtype == torch.float32 else 1.0)}
    for a, e, what in zip(_grads(ours, [x, w, b]), _grads(theirs, [x2, w2, b2]), ["input", "linear_weight", "bias"]):
        torch.testing.assert_close(a, e, **tol, equal_nan=True, msg=lambda m, w=what: f"grad {w}: {m}")


@given(case=cases())
def test_values_and_gradients_equal_cross_entropy_of_the_whole_logits(case):
    """Any shape (K-dimensional, unbatched, an empty batch, no in_features), bias, class weights,
    ignore_index (None as torch's -100, in range, past the classes), label smoothing, every
    reduction, probability targets, logits of 1e4, and a chunk size dividing the batch or not:
    values and gradients w.r.t. input, linear_weight, linear_bias (float64 tight, float32 at
    rounding level). Runs on every torch (the reference is F.cross_entropy(F.linear(...)))."""
    args, kw, chunk = case
    _check_parity(losses.linear_cross_entropy, _reference, args, kw, chunk)


@pytest.mark.skipif(not HAS_TORCH_TWIN, reason=NO_TWIN)
@given(case=cases())
def test_values_and_gradients_equal_torch_linear_cross_entropy(case):
    """The same draws against torch's own ``F.linear_cross_entropy`` (its reference path)."""
    args, kw, chunk = case
    def torch_twin(input, linear_weight, target, **kw):  # its kernel takes int64 indices only
        return F.linear_cross_entropy(input, linear_weight, target if target.is_floating_point() else target.long(),
                                      **kw)

    _check_parity(losses.linear_cross_entropy, torch_twin, args, kw, chunk)


@pytest.mark.skipif(not HAS_TORCH_TWIN, reason=NO_TWIN)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_equal_to_torch_chunked_path(reduction):
    """Against torch's chunked path (``options=``): 11 rows in chunks of 4, an ignored row."""
    x = _randn(0, (11, 6), torch.float64).requires_grad_()
    w = _randn(1, (50, 6), torch.float64).requires_grad_()
    b = _randn(2, (50,), torch.float64).requires_grad_()
    t = torch.randint(0, 50, (11,), generator=torch.Generator().manual_seed(3))
    t[5] = -100
    opts = torch.nn.LinearCrossEntropyOptions(batch_chunk_size=4, allow_retain_graph=True)
    ours = losses.linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction, chunk_size=4)
    theirs = F.linear_cross_entropy(x, w, t, linear_bias=b, reduction=reduction, options=opts)
    torch.testing.assert_close(ours, theirs, **TOL[torch.float64])
    for a, e in zip(_grads(ours, [x, w, b]), _grads(theirs, [x, w, b])):
        torch.testing.assert_close(a, e, **TOL[torch.float64])


def test_chunk_sizes_that_do_not_divide_the_batch_give_the_one_chunk_numbers():
    x, w = _randn(0, (13, 5), torch.float64), _randn(1, (9, 5), torch.float64)
    t = torch.randint(0, 9, (13,), generator=torch.Generator().manual_seed(2))
    one = losses.linear_cross_entropy(x, w, t, reduction="none", chunk_size=13)
    for chunk in (1, 2, 4, 5, 12, 14):
        torch.testing.assert_close(losses.linear_cross_entropy(x, w, t, reduction="none", chunk_size=chunk), one,
                                   rtol=1e-13, atol=1e-13)


def test_an_empty_batch_gives_nan_mean_zero_sum_and_zero_gradients():
    x = torch.zeros(0, 4, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.zeros(0, dtype=torch.long)
    assert losses.linear_cross_entropy(x, w, t).isnan()
    assert losses.linear_cross_entropy(x, w, t, reduction="none").shape == (0,)
    s = losses.linear_cross_entropy(x, w, t, reduction="sum")
    assert s.item() == 0.0
    gx, gw = torch.autograd.grad(s, [x, w])
    assert gx.shape == (0, 4) and not gw.any()


def test_every_target_ignored_gives_torch_nan_mean():
    x, w = torch.randn(4, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    t = torch.full((4,), 2)
    ours = losses.linear_cross_entropy(x, w, t, ignore_index=2)
    assert ours.isnan() and _reference(x, w, t, ignore_index=2).isnan()


# -- memory -----------------------------------------------------------------------------------------

N, D, C = 128, 8, 4096  # logits: N * C numbers, 64 times the input, 4 times linear_weight


def _saved_bytes(loss_fn, *args, **kw) -> int:
    """Bytes of the tensors autograd keeps for backward (each storage counted once)."""
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_fn(*args, **kw).backward()
    return sum(seen.values())


def _memory_case():
    x = _randn(0, (N, D), torch.float32).requires_grad_()
    w = _randn(1, (C, D), torch.float32).requires_grad_()
    t = torch.randint(0, C, (N,), generator=torch.Generator().manual_seed(2))
    return x, w, t


def test_backward_keeps_no_logits_where_the_whole_logits_path_does():
    """What forward saves for backward: the inputs (input, linear_weight, target), far below one
    [N, C] logits tensor; F.cross_entropy(F.linear(...)) saves at least that (so the count sees it)."""
    logits_bytes = N * C * 4
    ours = _saved_bytes(losses.linear_cross_entropy, *_memory_case(), chunk_size=16)
    whole = _saved_bytes(_reference, *_memory_case())
    assert whole >= logits_bytes
    inputs_bytes = (N * D + C * D) * 4 + N * 8
    assert ours <= inputs_bytes + 1024 < logits_bytes / 3, (ours, logits_bytes)  # + the mean's scalars


class _LargestTensor(TorchDispatchMode):
    """The most elements of any tensor an op makes."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_the_chunked_kernels_never_make_a_tensor_of_the_whole_logits():
    """Inside forward and backward (the eager kernels the two ops run), the largest tensor is a
    chunk's logits or the weight gradient [C, D], not [N, C]."""
    x, w, t = (a.detach() for a in _memory_case())
    chunk = 16
    args = (t.view(N, 1), None, False, -100, 0.1, C, chunk)
    with _LargestTensor() as mode:
        per = lce_module._forward(x, w, None, *args)
        lce_module._backward(torch.ones_like(per), x, w, None, *args, True, True, False)
    assert mode.largest <= max(chunk * C, C * D, N * D) < N * C / 4, mode.largest
    with _LargestTensor() as whole:  # the same count sees the whole logits when they are made
        _reference(x, w, t)
    assert whole.largest >= N * C


def test_the_default_chunk_holds_about_the_inputs_numbers():
    """A chunk's logits hold at most as many numbers as the input (one row at least)."""
    rows = lce_module._default_chunk(4096, 4096, 128000)  # a language model's head
    assert 4096 * 4096 / 2 <= rows * 128000 <= 4096 * 4096
    assert lce_module._default_chunk(N, D, C) == 1  # N * D < C: one row
    assert lce_module._default_chunk(N, 64, 10) == N  # few classes: one chunk
    assert lce_module._default_chunk(3, 1, 10**6) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="measures CUDA's peak memory; no CUDA device here")
def test_cuda_peak_memory_of_forward_and_backward_is_far_below_the_logits():
    n, d, c = 8192, 128, 32768  # logits: 1 GiB in float32; input 4 MiB, linear_weight (and its gradient) 16 MiB
    x = torch.randn(n, d, device="cuda", requires_grad=True)
    w = (torch.randn(c, d, device="cuda") / 16).requires_grad_()
    t = torch.randint(0, c, (n,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    losses.linear_cross_entropy(x, w, t).backward()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    assert peak < n * c * 4 / 8, f"peak {peak / 2**20:.1f} MiB, logits {n * c * 4 / 2**20:.0f} MiB"
    torch.testing.assert_close(losses.linear_cross_entropy(x.detach(), w.detach(), t),
                               F.cross_entropy(x.detach() @ w.detach().T, t), rtol=1e-5, atol=1e-5)


# -- transforms ------------------------------------------------------------------------------------

def test_fn_grad_and_per_example_gradients_under_fn_vmap():
    x = _randn(0, (3, 7, 5), torch.float64)
    w = _randn(1, (6, 5), torch.float64)
    t = torch.randint(0, 6, (3, 7), generator=torch.Generator().manual_seed(2))
    t[0, 0] = -100

    def loss(w, x, t):
        return losses.linear_cross_entropy(x, w, t, label_smoothing=0.2, chunk_size=3)

    def ref(w, x, t):
        return _reference(x, w, t, label_smoothing=0.2)

    torch.testing.assert_close(fn.grad(loss)(w, x[0], t[0]), fn.grad(ref)(w, x[0], t[0]), **TOL[torch.float64])
    per = fn.vmap(fn.grad(loss), in_dims=(None, 0, 0))(w, x, t)
    expected = torch.stack([fn.grad(ref)(w, x[i], t[i]) for i in range(3)])
    torch.testing.assert_close(per, expected, **TOL[torch.float64])
    torch.testing.assert_close(fn.vmap(loss, in_dims=(None, 0, 0))(w, x, t),
                               torch.stack([ref(w, x[i], t[i]) for i in range(3)]), **TOL[torch.float64])


def test_a_second_derivative_is_refused_by_name():
    x = _randn(0, (4, 3), torch.float64).requires_grad_()
    w = _randn(1, (5, 3), torch.float64).requires_grad_()
    t = torch.tensor([0, 1, 2, 3])
    g, = torch.autograd.grad(losses.linear_cross_entropy(x, w, t), w, create_graph=True)
    with pytest.raises(RuntimeError, match="linear_cross_entropy: the chunked backward cannot be differentiated"):
        torch.autograd.grad(g.sum(), x)
    with pytest.raises(RuntimeError, match="linear_cross_entropy: the chunked backward cannot be differentiated"):
        fn.grad(lambda w: fn.grad(lambda w: losses.linear_cross_entropy(x.detach(), w, t))(w).sum())(w.detach())


def _compiled_case():
    x = _randn(0, (9, 5), torch.float32)
    w = _randn(1, (6, 2, 5), torch.float32)
    b = _randn(2, (6, 2), torch.float32)
    t = torch.randint(0, 6, (9, 2), generator=torch.Generator().manual_seed(3))
    t[2, 1] = -100
    return x, w, b, t


def _step(x, w, b, t):
    return losses.linear_cross_entropy(x, w, t, linear_bias=b, label_smoothing=0.1, chunk_size=4,
                                       weight=torch.linspace(0.5, 2.0, 6))


def test_fn_jit_inductor_gives_eager_values_and_gradients():
    """fn.jit (fullgraph, the default inductor backend) of fn.value_and_grad: eager's loss and
    gradients w.r.t. input, K-dimensional weight and bias; an index out of range is still refused."""
    step = fn.value_and_grad(_step, argnums=(0, 1, 2))
    compiled = fn.jit(step)
    args = _compiled_case()
    (v1, g1), (v0, g0) = compiled(*args), step(*args)
    torch.testing.assert_close(v1, v0, **TOL[torch.float32])  # inductor sums the mean in its own order
    for a, e in zip(g1, g0):
        torch.testing.assert_close(a, e, **TOL[torch.float32])
    torch.testing.assert_close(v0, _reference(*args[:2], args[3], linear_bias=args[2], label_smoothing=0.1,
                                              weight=torch.linspace(0.5, 2.0, 6)), **TOL[torch.float32])
    bad = args[3].clone()
    bad[0, 0] = 6
    with pytest.raises(ValueError, match=r"linear_cross_entropy: class indices must be in \[0, 6\)"):
        compiled(*args[:3], bad)


@pytest.mark.slow
@pytest.mark.parametrize("argnum", [0, 1, 2])
def test_fn_jit_gradient_wrt_one_argument_alone_is_not_zero(argnum):
    step = fn.grad(_step, argnums=argnum)
    args = _compiled_case()
    got, expected = fn.jit(step)(*args), step(*args)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(got, expected, **TOL[torch.float32])


@pytest.mark.slow
def test_compiled_backward_of_probability_targets_equals_eager():
    """torch.compile (inductor) of a plain .backward() with a probability target."""
    x, w, b, _ = _compiled_case()
    y = torch.randn(9, 6, 2).softmax(1)

    def run(x, w, b):
        x, w, b = (a.detach().requires_grad_() for a in (x, w, b))
        loss = losses.linear_cross_entropy(x, w, y, linear_bias=b, reduction="sum", chunk_size=2)
        loss.backward()
        return loss.detach(), x.grad, w.grad, b.grad

    for a, e in zip(torch.compile(run)(x, w, b), run(x, w, b)):
        torch.testing.assert_close(a, e, **TOL[torch.float32])


# -- bad input ------------------------------------------------------------------------------------

X, W, T = torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 4, 2])
BAD = {
    "input int": lambda: losses.linear_cross_entropy(X.long(), W, T),
    "input 3-d": lambda: losses.linear_cross_entropy(X.view(2, 2, 3), W, T.view(2, 2)),
    "input scalar": lambda: losses.linear_cross_entropy(X[0, 0], W, T[0]),
    "input not a tensor": lambda: losses.linear_cross_entropy(X.tolist(), W, T),
    "linear_weight 1-d": lambda: losses.linear_cross_entropy(X, W[0], T),
    "linear_weight in_features": lambda: losses.linear_cross_entropy(X, torch.randn(5, 4), T),
    "linear_weight dtype": lambda: losses.linear_cross_entropy(X, W.double(), T),
    "linear_weight no classes": lambda: losses.linear_cross_entropy(X, torch.randn(0, 3), T),
    "linear_bias shape": lambda: losses.linear_cross_entropy(X, W, T, linear_bias=torch.randn(4)),
    "linear_bias broadcastable": lambda: losses.linear_cross_entropy(X, W, T, linear_bias=torch.randn(1)),
    "linear_bias dtype": lambda: losses.linear_cross_entropy(X, W, T, linear_bias=torch.randn(5).double()),
    "K-dim unbatched": lambda: losses.linear_cross_entropy(X[0], torch.randn(5, 2, 3), torch.tensor([1, 2])),
    "target [N, 1]": lambda: losses.linear_cross_entropy(X, W, T.view(4, 1)),
    "target [1]": lambda: losses.linear_cross_entropy(X, W, T[:1]),
    "target bool": lambda: losses.linear_cross_entropy(X, W, T.bool()),
    "target index out of range": lambda: losses.linear_cross_entropy(X, W, torch.tensor([0, 1, 5, 2])),
    "target negative": lambda: losses.linear_cross_entropy(X, W, torch.tensor([0, -1, 2, 2])),
    "target int of logits' shape": lambda: losses.linear_cross_entropy(X, W, torch.zeros(4, 5, dtype=torch.long)),
    "probabilities shape": lambda: losses.linear_cross_entropy(X, W, torch.rand(4, 1)),
    "probabilities dtype": lambda: losses.linear_cross_entropy(X, W, torch.rand(4, 5).double()),
    "probabilities with ignore_index": lambda: losses.linear_cross_entropy(X, W, torch.rand(4, 5), ignore_index=-100),
    "probabilities requiring grad": lambda: losses.linear_cross_entropy(X, W, torch.rand(4, 5, requires_grad=True)),
    "weight shape": lambda: losses.linear_cross_entropy(X, W, T, weight=torch.ones(4)),
    "weight dtype": lambda: losses.linear_cross_entropy(X, W, T, weight=torch.ones(5).double()),
    "weight requiring grad": lambda: losses.linear_cross_entropy(X, W, T, weight=torch.ones(5, requires_grad=True)),
    "reduction": lambda: losses.linear_cross_entropy(X, W, T, reduction="batchmean"),
    "ignore_index float": lambda: losses.linear_cross_entropy(X, W, T, ignore_index=1.5),
    "ignore_index bool": lambda: losses.linear_cross_entropy(X, W, T, ignore_index=True),
    "label_smoothing > 1": lambda: losses.linear_cross_entropy(X, W, T, label_smoothing=1.5),
    "label_smoothing < 0": lambda: losses.linear_cross_entropy(X, W, T, label_smoothing=-0.1),
    "label_smoothing nan": lambda: losses.linear_cross_entropy(X, W, T, label_smoothing=math.nan),
    "chunk_size 0": lambda: losses.linear_cross_entropy(X, W, T, chunk_size=0),
    "chunk_size float": lambda: losses.linear_cross_entropy(X, W, T, chunk_size=2.0),
    "options (torch's name)": lambda: losses.linear_cross_entropy(X, W, T, options=None),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_arguments_are_refused_by_name(case):
    if case == "options (torch's name)":  # not an argument here: Python's own TypeError names it
        with pytest.raises(TypeError, match="options"):
            BAD[case]()
        return
    expect_clear_error(BAD[case], match=r"losses\.linear_cross_entropy")
