"""Every loss with a torch.nn.functional namesake gives its values and gradients."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close
from hypothesis import given
from hypothesis import strategies as st

import losses

DTYPES = st.sampled_from([torch.float64, torch.float32])
REDUCTIONS = st.sampled_from(["mean", "sum", "none"])


def _tensor(draw, shape, dtype, scale=1.0):
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _parity(ours, theirs, inputs, dtype):
    """Values and gradients w.r.t. every floating input that requires grad."""
    a = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
    b = [x.detach().clone().requires_grad_(x.requires_grad) for x in inputs]
    ya, yb = ours(*a), theirs(*b)
    assert_close(ya, yb, dtype)
    diff = [i for i, x in enumerate(inputs) if x.requires_grad]
    if diff:
        ga = torch.autograd.grad(ya.sum(), [a[i] for i in diff], allow_unused=True)
        gb = torch.autograd.grad(yb.sum(), [b[i] for i in diff], allow_unused=True)
        for x, y in zip(ga, gb):
            assert_close(x, y, dtype)


shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)


@given(data=st.data(), shape=shapes, dtype=DTYPES, reduction=REDUCTIONS,
       which=st.sampled_from(["mse", "l1", "smooth_l1", "huber"]),
       param=st.just(0.0) | st.floats(0.05, 3.0))
def test_regression_losses_match_torch(data, shape, dtype, reduction, which, param):
    """smooth_l1's beta may be 0 (then it is l1); huber's delta must be positive."""
    x = _tensor(data.draw, shape, dtype, 2.0).requires_grad_()
    t = _tensor(data.draw, shape, dtype, 2.0)
    ours, theirs = {
        "mse": (lambda x, t: losses.mse(x, t, reduction), lambda x, t: F.mse_loss(x, t, reduction=reduction)),
        "l1": (lambda x, t: losses.l1(x, t, reduction), lambda x, t: F.l1_loss(x, t, reduction=reduction)),
        "smooth_l1": (lambda x, t: losses.smooth_l1(x, t, reduction, beta=param),
                      lambda x, t: F.smooth_l1_loss(x, t, reduction=reduction, beta=param)),
        "huber": (lambda x, t: losses.huber(x, t, reduction, delta=param or 1.0),
                  lambda x, t: F.huber_loss(x, t, reduction=reduction, delta=param or 1.0)),
    }[which]
    _parity(ours, theirs, [x, t.requires_grad_()], dtype)


def _class_indices(draw, n, c, extra, ignore, reduction):
    """Targets ``[N, d1, ...]`` and an ``ignore_index`` that, if ``ignore``, one of them hits."""
    count = n * math.prod(extra)
    target = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=count, max_size=count)))
    target = target.reshape(n, *extra)
    ignore_index = int(target.flatten()[0]) if ignore and c > 1 else -100
    if reduction == "mean" and (target == ignore_index).all():
        ignore_index = -100  # an all-ignored mean is 0/0 = nan in torch too; covered below
    return target, ignore_index


EXTRA_DIMS = st.lists(st.integers(1, 3), max_size=2)


@given(data=st.data(), n=st.integers(1, 6), c=st.integers(1, 5), extra=EXTRA_DIMS,
       dtype=DTYPES, reduction=REDUCTIONS, weighted=st.booleans(), smoothing=st.sampled_from([0.0, 0.1, 0.5]),
       ignore=st.booleans(), scale=st.sampled_from([1.0, 1e4]))
def test_cross_entropy_with_class_indices_matches_torch(data, n, c, extra, dtype, reduction, weighted,
                                                       smoothing, ignore, scale):
    logits = _tensor(data.draw, (n, c, *extra), dtype, scale).requires_grad_()
    target, ignore_index = _class_indices(data.draw, n, c, extra, ignore, reduction)
    weight = torch.rand(c, dtype=dtype) + 0.1 if weighted else None
    _parity(lambda x: losses.cross_entropy(x, target, weight, ignore_index, reduction, smoothing),
            lambda x: F.cross_entropy(x, target, weight, ignore_index=ignore_index, reduction=reduction,
                                      label_smoothing=smoothing), [logits], dtype)


@given(data=st.data(), n=st.integers(1, 6), c=st.integers(2, 5), extra=EXTRA_DIMS, dtype=DTYPES,
       reduction=REDUCTIONS, smoothing=st.sampled_from([0.0, 0.2]), weighted=st.booleans(),
       scale=st.sampled_from([3.0, 1e4]))
def test_cross_entropy_with_class_probabilities_matches_torch(data, n, c, extra, dtype, reduction, smoothing,
                                                             weighted, scale):
    logits = _tensor(data.draw, (n, c, *extra), dtype, scale).requires_grad_()
    probs = torch.softmax(_tensor(data.draw, (n, c, *extra), dtype, 3.0), 1)
    weight = torch.rand(c, dtype=dtype) + 0.1 if weighted else None
    _parity(lambda x: losses.cross_entropy(x, probs, weight, reduction=reduction, label_smoothing=smoothing),
            lambda x: F.cross_entropy(x, probs, weight, reduction=reduction, label_smoothing=smoothing),
            [logits], dtype)


@given(data=st.data(), n=st.integers(1, 6), c=st.integers(1, 5), extra=EXTRA_DIMS, dtype=DTYPES,
       reduction=REDUCTIONS, weighted=st.booleans(), ignore=st.booleans())
def test_nll_matches_torch(data, n, c, extra, dtype, reduction, weighted, ignore):
    logp = torch.log_softmax(_tensor(data.draw, (n, c, *extra), dtype), 1).requires_grad_()
    target, ignore_index = _class_indices(data.draw, n, c, extra, ignore, reduction)
    weight = torch.rand(c, dtype=dtype) + 0.1 if weighted else None
    _parity(lambda x: losses.nll(x, target, weight, ignore_index, reduction),
            lambda x: F.nll_loss(x, target, weight, ignore_index=ignore_index, reduction=reduction), [logp], dtype)


@given(data=st.data(), shape=shapes, dtype=DTYPES, reduction=REDUCTIONS, weighted=st.booleans(),
       pos=st.booleans(), scale=st.sampled_from([1.0, 1e4]))
def test_bce_with_logits_matches_torch_including_extreme_logits(data, shape, dtype, reduction, weighted, pos, scale):
    x = _tensor(data.draw, shape, dtype, scale).requires_grad_()
    t = (_tensor(data.draw, shape, dtype) > 0).to(dtype)
    w = torch.rand(shape, dtype=dtype) if weighted else None
    pw = torch.rand(shape[-1:], dtype=dtype) * 3 if pos else None
    _parity(lambda x: losses.binary_cross_entropy_with_logits(x, t, w, reduction, pw),
            lambda x: F.binary_cross_entropy_with_logits(x, t, w, reduction=reduction, pos_weight=pw), [x], dtype)


@given(data=st.data(), shape=shapes, dtype=DTYPES, reduction=REDUCTIONS, weighted=st.booleans(),
       saturate=st.booleans())
def test_bce_on_probabilities_matches_torch_at_0_and_1(data, shape, dtype, reduction, weighted, saturate):
    p = torch.sigmoid(_tensor(data.draw, shape, dtype, 3.0))
    if saturate:
        p = torch.where(p > 0.5, torch.ones_like(p), torch.zeros_like(p))
    t = (_tensor(data.draw, shape, dtype) > 0).to(dtype)
    w = torch.rand(shape, dtype=dtype) if weighted else None
    _parity(lambda p: losses.binary_cross_entropy(p, t, w, reduction),
            lambda p: F.binary_cross_entropy(p, t, w, reduction=reduction), [p.requires_grad_()], dtype)
    assert torch.isfinite(losses.binary_cross_entropy(p, t, w, reduction)).all()


@given(data=st.data(), shape=shapes, dtype=DTYPES, reduction=st.sampled_from(["mean", "sum", "none", "batchmean"]),
       log_target=st.booleans())
def test_kl_div_matches_torch(data, shape, dtype, reduction, log_target):
    """Including target probabilities of exactly 0, whose terms are 0 (torch's log_target form
    gives nan for them: exp(-inf) * (-inf - x))."""
    inp = torch.log_softmax(_tensor(data.draw, shape, dtype), -1).requires_grad_()
    logits = _tensor(data.draw, shape, dtype)
    if log_target:
        tgt = torch.log_softmax(logits, -1)
    else:
        tgt = torch.softmax(torch.where(logits < -1, -torch.inf, logits), -1).nan_to_num()
    _parity(lambda x: losses.kl_div(x, tgt, reduction, log_target),
            lambda x: _torch_kl_div(x, tgt, reduction, log_target), [inp], dtype)


def _torch_kl_div(x, t, reduction, log_target):
    with warnings.catch_warnings():  # torch warns that its "mean" is not the KL mean
        warnings.simplefilter("ignore", UserWarning)
        return F.kl_div(x, t, reduction=reduction, log_target=log_target)


@given(data=st.data(), n=st.integers(1, 6), d=st.integers(1, 4), dtype=DTYPES, reduction=REDUCTIONS,
       margin=st.floats(-0.5, 1.5))
def test_margin_losses_match_torch(data, n, d, dtype, reduction, margin):
    a = _tensor(data.draw, (n, d), dtype).requires_grad_()
    b = _tensor(data.draw, (n, d), dtype).requires_grad_()
    y = torch.where(_tensor(data.draw, (n,), dtype) > 0, 1.0, -1.0).to(dtype)
    _parity(lambda a, b: losses.cosine_embedding(a, b, y, margin, reduction),
            lambda a, b: F.cosine_embedding_loss(a, b, y, margin=margin, reduction=reduction), [a, b], dtype)
    a1, b1 = a[:, 0].detach().requires_grad_(), b[:, 0].detach().requires_grad_()
    _parity(lambda a, b: losses.margin_ranking(a, b, y, margin, reduction),
            lambda a, b: F.margin_ranking_loss(a, b, y, margin=margin, reduction=reduction), [a1, b1], dtype)
    _parity(lambda a: losses.hinge_embedding(a, y, margin, reduction),
            lambda a: F.hinge_embedding_loss(a, y, margin=margin, reduction=reduction), [a1], dtype)


def _empty_batch_cases():
    """(ours, torch's) on a batch of 0 samples, for every loss with a namesake."""
    x, t, p = torch.zeros(0, 3), torch.zeros(0, 3), torch.full((0, 3), 0.5)
    idx, y = torch.zeros(0, dtype=torch.long), torch.zeros(0)
    return {
        "mse": (lambda r: losses.mse(x, t, r), lambda r: F.mse_loss(x, t, reduction=r)),
        "l1": (lambda r: losses.l1(x, t, r), lambda r: F.l1_loss(x, t, reduction=r)),
        "smooth_l1": (lambda r: losses.smooth_l1(x, t, r), lambda r: F.smooth_l1_loss(x, t, reduction=r)),
        "huber": (lambda r: losses.huber(x, t, r), lambda r: F.huber_loss(x, t, reduction=r)),
        "bce": (lambda r: losses.binary_cross_entropy(p, t, reduction=r),
                lambda r: F.binary_cross_entropy(p, t, reduction=r)),
        "bce_logits": (lambda r: losses.binary_cross_entropy_with_logits(x, t, reduction=r),
                       lambda r: F.binary_cross_entropy_with_logits(x, t, reduction=r)),
        "cross_entropy": (lambda r: losses.cross_entropy(x, idx, reduction=r, label_smoothing=0.1),
                          lambda r: F.cross_entropy(x, idx, reduction=r, label_smoothing=0.1)),
        "cross_entropy_probs": (lambda r: losses.cross_entropy(x, p, reduction=r),
                                lambda r: F.cross_entropy(x, p, reduction=r)),
        "nll": (lambda r: losses.nll(x, idx, reduction=r), lambda r: F.nll_loss(x, idx, reduction=r)),
        "kl_div": (lambda r: losses.kl_div(x, p, r), lambda r: _torch_kl_div(x, p, r, False)),
        "margin_ranking": (lambda r: losses.margin_ranking(y, y, y, reduction=r),
                           lambda r: F.margin_ranking_loss(y, y, y, reduction=r)),
        "hinge_embedding": (lambda r: losses.hinge_embedding(y, y, reduction=r),
                            lambda r: F.hinge_embedding_loss(y, y, reduction=r)),
        "cosine_embedding": (lambda r: losses.cosine_embedding(x, t, y, reduction=r),
                             lambda r: F.cosine_embedding_loss(x, t, y, reduction=r)),
    }


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", sorted(_empty_batch_cases()))
def test_an_empty_batch_reduces_as_torch_does(case, reduction):
    """The mean of nothing is nan, the sum 0, and "none" an empty tensor, as in torch."""
    ours, theirs = _empty_batch_cases()[case]
    torch.testing.assert_close(ours(reduction), theirs(reduction), equal_nan=True)


def test_all_targets_ignored_gives_torch_nan_mean_and_zero_sum():
    logits, target = torch.randn(3, 4), torch.full((3,), 2)
    torch.testing.assert_close(losses.cross_entropy(logits, target, ignore_index=2),
                               F.cross_entropy(logits, target, ignore_index=2), equal_nan=True)
    assert losses.cross_entropy(logits, target, ignore_index=2, reduction="sum") == 0


@pytest.mark.parametrize("loss", [losses.mse, losses.l1, losses.binary_cross_entropy_with_logits,
                                  losses.smooth_l1, losses.huber])
def test_no_silent_broadcasting_of_a_column_against_a_vector(loss):
    with pytest.raises(ValueError, match=r"target must have the input's shape \[8, 1\], got \[8\]"):
        loss(torch.rand(8, 1), torch.rand(8))


def test_cross_entropy_names_the_expected_target_shape():
    with pytest.raises(ValueError, match=r"must have shape \[4, 7\] for input \[4, 3, 7\]"):
        losses.cross_entropy(torch.randn(4, 3, 7), torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="reduction must be one of"):
        losses.mse(torch.zeros(2), torch.zeros(2), reduction="avg")


def test_weights_may_broadcast_to_the_input_but_never_enlarge_it():
    x, t = torch.randn(4, 3), torch.rand(4, 3)
    per_class, per_sample = torch.rand(3), torch.rand(4, 1)
    assert_close(losses.binary_cross_entropy_with_logits(x, t, per_sample, pos_weight=per_class),
                 F.binary_cross_entropy_with_logits(x, t, per_sample, pos_weight=per_class))
    with pytest.raises(ValueError, match=r"weight of shape \[2, 4, 3\] does not broadcast to the input's shape \[4, 3\]"):
        losses.binary_cross_entropy(torch.sigmoid(x), t, torch.rand(2, 4, 3))
    with pytest.raises(ValueError, match=r"binary_cross_entropy_with_logits: pos_weight of shape \[4\]"):
        losses.binary_cross_entropy_with_logits(x, t, pos_weight=torch.rand(4))
    with pytest.raises(ValueError, match=r"cross_entropy: weight must have shape \[3\] .* got \[2\]"):
        losses.cross_entropy(x, torch.tensor([0, 1, 2, 0]), torch.rand(2))
    with pytest.raises(ValueError, match=r"nll: weight must have shape \[3\]"):
        losses.nll(x, torch.tensor([0, 1, 2, 0]), torch.rand(3, 1))


def test_class_indices_may_have_any_integer_dtype_but_not_bool():
    logits, t = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    for dtype in (torch.uint8, torch.int32):
        assert_close(losses.cross_entropy(logits, t.to(dtype)), F.cross_entropy(logits, t))
        assert_close(losses.nll(logits, t.to(dtype)), F.nll_loss(logits, t))
    with pytest.raises(ValueError, match="cross_entropy: target must hold class indices"):
        losses.cross_entropy(logits, t > 0)


def test_cross_entropy_promotes_probabilities_of_another_float_dtype_as_torch():
    logits, probs = torch.randn(4, 3, dtype=torch.float64), torch.softmax(torch.randn(4, 3), 1)
    assert_close(losses.cross_entropy(logits, probs), F.cross_entropy(logits, probs))


def test_cross_entropy_accepts_unbatched_logits():
    logits, t = torch.randn(5, requires_grad=True), torch.tensor(3)
    torch.testing.assert_close(losses.cross_entropy(logits, t), F.cross_entropy(logits, t))


@given(data=st.data(), n=st.integers(1, 5), z=st.integers(1, 4), reduction=st.sampled_from(["sum", "batchmean", "mean", "none"]))
def test_gaussian_kl_is_the_closed_form_and_both_parameterisations_agree(data, n, z, reduction):
    mu = _tensor(data.draw, (n, z), torch.float64)
    logvar = _tensor(data.draw, (n, z), torch.float64)
    course = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())  # the course's VAE line
    elementwise = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp())
    expected = {"sum": course, "batchmean": course / n, "mean": elementwise.mean(), "none": elementwise}[reduction]
    assert_close(losses.gaussian_kl(mu, logvar, reduction=reduction), expected)
    assert_close(losses.gaussian_kl(mu, sigma=torch.exp(0.5 * logvar), reduction=reduction), expected)
    # against torch.distributions, per element
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert_close(losses.gaussian_kl(mu, logvar, reduction="none"), torch.distributions.kl_divergence(q, p))


def test_metrics():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert losses.accuracy(logits, torch.tensor([0, 1, 1])).item() == pytest.approx(2 / 3)
    assert losses.binary_accuracy(torch.tensor([-1.0, 2.0]), torch.tensor([0.0, 1.0])) == 1.0
    assert losses.binary_accuracy(torch.tensor([0.2, 0.7]), torch.tensor([1.0, 1.0]), from_logits=False) == 0.5
    smoothed = torch.tensor([0.1, 0.9, 0.9])
    assert losses.binary_accuracy(torch.tensor([-3.0, 2.0, -1.0]), smoothed).item() == pytest.approx(2 / 3)
    assert losses.binary_accuracy(torch.tensor([-3.0, 2.0]), torch.tensor([False, True])) == 1.0


def test_every_loss_compiles_in_one_graph_with_its_gradient_and_matches_eager():
    """fn.jit is fullgraph: a shape check or an option that broke the graph would raise here.
    aot_eager captures and differentiates the graph as inductor would, minus the codegen
    (several times cheaper to compile; inductor's numerics are torch's own business)."""
    import fnnet as fn

    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 2, generator=g, dtype=torch.float64)
    t = torch.randn(6, 3, 2, generator=g, dtype=torch.float64)
    bits = (t > 0).to(t.dtype)
    idx = torch.randint(0, 3, (6, 2), generator=g)
    weight = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)

    def total(x):
        probs, logp = torch.sigmoid(x), torch.log_softmax(x, 1)
        a, b, y = x[:, 0, 0], x[:, 1, 0], torch.sign(t[:, 0, 0])
        terms = [
            losses.mse(x, t), losses.l1(x, t, "sum"), losses.smooth_l1(x, t, beta=0.5),
            losses.huber(x, t, delta=2.0), losses.binary_cross_entropy(probs, bits, weight[:, None]),
            losses.binary_cross_entropy_with_logits(x, bits, pos_weight=torch.full((2,), 3.0, dtype=x.dtype)),
            losses.cross_entropy(x, idx, weight, ignore_index=1, label_smoothing=0.1),
            losses.cross_entropy(x, torch.softmax(t, 1)), losses.nll(logp, idx, weight),
            losses.kl_div(logp, torch.softmax(t, 1), "batchmean"),
            losses.margin_ranking(a, b, y, 0.1), losses.hinge_embedding(a, y),
            losses.cosine_embedding(x[:, :, 0], t[:, :, 0], y),
            losses.gaussian_kl(x[:, 0], x[:, 1]), losses.gaussian_kl(x[:, 0], sigma=probs[:, 1]),
            losses.discriminator_loss(a, b, "hinge"), losses.generator_loss(probs[:, 0, 0], from_logits=False),
        ]
        return sum(terms)

    step = fn.value_and_grad(total)
    value, grad = fn.jit(step, backend="aot_eager")(x)
    expected_value, expected_grad = step(x)
    assert_close(value, expected_value)
    assert_close(grad, expected_grad)
