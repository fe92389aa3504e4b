"""Bad input to every public loss: hypothesis draws one invalid argument at a time (a target of
another shape that torch would broadcast, a target or weight of the wrong dtype, a non-tensor, a
bad reduction string, NaN/negative/non-numeric hyperparameters, class indices out of range,
CTC labels equal to blank, lengths past the input, ...) into an otherwise valid call, and each
must be refused by fnnet's own code with a clear error naming the loss
(``expect_clear_error``), never a silent number and never an error from deep inside torch."""

from __future__ import annotations

import pytest
import torch
from badinput import expect_clear_error
from hypothesis import given
from hypothesis import strategies as st

import fnnet as fn
import losses
from fnnet import random

N, C = 4, 3
G = torch.Generator().manual_seed(0)
X = torch.randn(N, C, generator=G, dtype=torch.float64)        # predictions / logits
LCE_W = torch.randn(5, C, generator=G, dtype=torch.float64)    # linear_cross_entropy: 5 classes over X's C features
P = torch.sigmoid(X)                                            # probabilities
T = torch.randn(N, C, generator=G, dtype=torch.float64)         # a real-valued target
BITS = (T > 0).to(torch.float64)
IDX = torch.tensor([0, 2, 1, 2])                                # class indices [N]
PM1 = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)  # +-1 labels [N]
KEY = random.key(0)

# -- invalid values, by kind of argument ------------------------------------------------------

NOT_A_TENSOR = st.sampled_from([None, 1.0, [[0.1, 0.2]], "x", X.numpy()])
NOT_A_NUMBER = st.sampled_from(["0.1", None, [0.1], 1j, True, torch.tensor(0.1), object()])
NONFINITE = st.sampled_from([float("nan"), float("inf"), float("-inf"), 10**400])
NEGATIVE = st.floats(max_value=-1e-300, allow_nan=False, allow_infinity=False) | st.integers(max_value=-1)
NOT_AN_INT = st.sampled_from([1.5, 2.0, "1", None, True, torch.tensor(1), float("nan")])
REDUCTION = st.text(max_size=10).filter(lambda s: s not in ("mean", "sum", "none")) | st.sampled_from(
    [None, 1, ["mean"], "Mean", "batchmean", "avg", "elementwise_mean"])


def bad_flag():
    return st.sampled_from([0, 1, "yes", None, 1.0, torch.tensor(True)])


def bad_choice(choices):
    return (st.text(max_size=8) | st.sampled_from([None, 1, ["hinge"], "Hinge"])).filter(lambda v: v not in choices)


def bad_real():
    return NONFINITE | NOT_A_NUMBER


def bad_nonneg():
    return NEGATIVE | NONFINITE | NOT_A_NUMBER


def other_shapes(shape: tuple, max_dims: int = 3):
    """Any shape but ``shape``, most of them broadcastable to or from it (the silent bug)."""
    near = [shape[:-1], shape[1:], (*shape, 1), (1, *shape), (2, *shape), tuple(1 for _ in shape), ()]
    near += [shape[:i] + (1,) + shape[i + 1:] for i in range(len(shape))]
    drawn = st.lists(st.integers(0, 5), max_size=max_dims).map(tuple)
    return (st.sampled_from(near) | drawn).filter(lambda s: s != tuple(shape))


def of_shape(shapes, dtype=torch.float64):
    return shapes.map(lambda s: torch.ones(s, dtype=dtype) if dtype.is_floating_point or dtype.is_complex
                      else torch.zeros(s, dtype=dtype))


def retyped(t: torch.Tensor, dtypes):
    return st.sampled_from(dtypes).map(lambda d: t.to(d))


def bad_float_input(t: torch.Tensor):
    """A prediction that is not a real floating tensor."""
    return NOT_A_TENSOR | retyped(t, [torch.int64, torch.bool, torch.complex128])


def bad_value_target(t: torch.Tensor, *, ints_ok: bool = True, same_dtype: bool = False):
    """A target of real values: the wrong shape, a non-tensor, bool, complex (and integer or
    float32 where torch refuses them or computes in the target's dtype)."""
    dtypes = [torch.bool, torch.complex128] + ([] if ints_ok else [torch.int64, torch.int32])
    dtypes += [torch.float32, torch.float16] if same_dtype else []
    return of_shape(other_shapes(tuple(t.shape))) | NOT_A_TENSOR | retyped(t, dtypes)


def bad_weight(shape: tuple):
    """A weight that would enlarge the loss, a non-tensor, or another dtype."""
    enlarging = st.sampled_from([(2, *shape), (shape[-1] + 1,), (shape[0],) if shape[0] != shape[-1] else (7,)])
    return of_shape(enlarging) | retyped(torch.ones(shape[-1:], dtype=torch.float64),
                                         [torch.float32, torch.int64]) | st.sampled_from([1.0, [1.0, 2.0, 3.0]])


def index_values(shape: tuple, wrong: list[int]):
    """Class indices of ``shape`` with one entry replaced by a value out of range."""
    return st.tuples(st.sampled_from(wrong), st.integers(0, max(0, int(torch.Size(shape).numel()) - 1))).map(
        lambda vw: torch.zeros(shape, dtype=torch.long).flatten().index_fill(0, torch.tensor([vw[1]]), vw[0])
        .reshape(shape))


def bad_indices(shape: tuple, classes: int, low: int = 0):
    """Class indices: out of range, float or bool, or of another shape."""
    return (index_values(shape, [classes, classes + 7, low - 1, low - 4])
            | retyped(torch.zeros(shape, dtype=torch.long), [torch.float64, torch.bool])
            | of_shape(other_shapes(shape), torch.long) | NOT_A_TENSOR)


def not_plus_minus_one(shape: tuple):
    return st.sampled_from([0.0, 2.0, 0.5, -3.0, float("nan")]).map(
        lambda v: torch.ones(shape, dtype=torch.float64).index_fill(0, torch.tensor([1]), v))


# -- CTC: T = 6 frames, N = 2 sequences, C = 4 classes, S = 3 --------------------------------------

LP = torch.randn(6, 2, 4, generator=G, dtype=torch.float64).log_softmax(2)
CTC_T = torch.tensor([[1, 2, 3], [1, 1, 0]])
CTC_IL, CTC_TL = torch.tensor([6, 5]), torch.tensor([3, 2])


def bad_ctc_targets():
    wrong_labels = [torch.tensor([[1, 4, 3], [1, 1, 0]]), torch.tensor([[1, 2, 3], [-1, 1, 0]]),
                    torch.tensor([[1, 0, 3], [1, 1, 0]]), torch.tensor([[1, 2, 3], [1, 99, 2]])]
    concatenated = [torch.tensor([1, 2, 3, 1]), torch.tensor([1, 2, 3, 1, 1, 2]), torch.tensor([1, 2, 3, 1, 0])]
    return (st.sampled_from(wrong_labels + concatenated) | of_shape(st.sampled_from([(1, 3), (3, 3), (2, 3, 1)]),
                                                                    torch.long)
            | retyped(CTC_T, [torch.float64, torch.bool]) | NOT_A_TENSOR)


def bad_lengths(valid: torch.Tensor, high: int):
    return (st.sampled_from([valid[None], valid[:1], torch.cat([valid, valid]), valid[0]])
            | st.sampled_from([[high + 1, 1], [-1, 1], [6.0, 5.0], [True, 1], (1, 2, 3)])
            | st.sampled_from([torch.tensor([high + 1, 1]), torch.tensor([1, -1])])
            | retyped(valid, [torch.float64, torch.bool]) | st.sampled_from([6, 6.0, None, "6"]))


# -- critics for the penalties ----------------------------------------------------------------------

CRITIC = fn.Sequential(fn.Linear(C, 5), fn.tanh, fn.Linear(5, 1))
CRITIC_PARAMS = fn.tree.map(lambda t: t.double(), CRITIC.init(KEY))


def _mean_critic(params, x):
    return CRITIC(params, x).mean()  # one score for the whole batch: would scale the penalty by 1/N


# -- every public loss: a valid call and, per argument, what is invalid for it ----------------------
# name: (function, valid keyword arguments, {argument: strategy of invalid values}, regex of the error)

CASES = {
    "linear_cross_entropy": (
        losses.linear_cross_entropy, dict(input=X, linear_weight=LCE_W, target=torch.tensor([0, 4, 1, 2])),
        {"input": bad_float_input(X) | of_shape(st.sampled_from([(N, 2), (N, 1, C), (), (0,)])),
         "linear_weight": bad_float_input(LCE_W) | retyped(LCE_W, [torch.float32])
         | of_shape(st.sampled_from([(5, 2), (C,), (0, C), (5, 1)])),
         "target": bad_indices((N,), 5),
         "linear_bias": of_shape(st.sampled_from([(4,), (1,), (5, 1), ()])) | st.sampled_from([1.0, [0.0] * 5])
         | retyped(torch.zeros(5, dtype=torch.float64), [torch.float32, torch.int64]),
         "weight": bad_weight((N, 5)), "ignore_index": NOT_AN_INT.filter(lambda v: v is not None),
         "label_smoothing": bad_nonneg() | st.just(1.5),
         "chunk_size": NOT_AN_INT.filter(lambda v: v is not None) | st.sampled_from([0, -1]),
         "reduction": REDUCTION}),
    "mse": (losses.mse, dict(input=X, target=T),
            {"input": bad_float_input(X), "target": bad_value_target(T), "reduction": REDUCTION,
             "weight": bad_value_target(T, same_dtype=True).filter(lambda w: w is not None)}),
    "l1": (losses.l1, dict(input=X, target=T),
           {"input": bad_float_input(X), "target": bad_value_target(T), "reduction": REDUCTION,
            "weight": bad_value_target(T, same_dtype=True).filter(lambda w: w is not None)}),
    "smooth_l1": (losses.smooth_l1, dict(input=X, target=T),
                  {"target": bad_value_target(T), "reduction": REDUCTION, "beta": bad_nonneg()}),
    "huber": (losses.huber, dict(input=X, target=T),
              {"target": bad_value_target(T), "reduction": REDUCTION,
               "delta": bad_nonneg() | st.sampled_from([0, 0.0]), "weight": bad_value_target(T, same_dtype=True).filter(lambda w: w is not None)}),
    "binary_cross_entropy": (
        losses.binary_cross_entropy, dict(input=P, target=BITS),
        {"input": bad_float_input(P) | st.sampled_from([X * 3, P + 1, -P, P.index_fill(0, torch.tensor([0]), float("nan"))]),
         "target": bad_value_target(BITS, ints_ok=False, same_dtype=True), "weight": bad_weight((N, C)),
         "reduction": REDUCTION}),
    "binary_cross_entropy_with_logits": (
        losses.binary_cross_entropy_with_logits, dict(input=X, target=BITS),
        {"input": bad_float_input(X), "target": bad_value_target(BITS, ints_ok=False, same_dtype=True),
         "weight": bad_weight((N, C)), "pos_weight": bad_weight((N, C)), "reduction": REDUCTION}),
    "cross_entropy": (
        losses.cross_entropy, dict(input=X, target=IDX),
        {"input": bad_float_input(X) | st.just(torch.tensor(1.0, dtype=torch.float64)),
         "target": bad_indices((N,), C).filter(lambda t: not (isinstance(t, torch.Tensor) and t.is_floating_point()))
         | of_shape(other_shapes((N, C))) | retyped(torch.softmax(X, 1), [torch.complex128, torch.bool]),
         "weight": bad_weight((N, C)), "ignore_index": NOT_AN_INT, "reduction": REDUCTION,
         "label_smoothing": bad_real() | NEGATIVE | st.floats(1.0, exclude_min=True, allow_infinity=False)}),
    "nll": (losses.nll, dict(input=X, target=IDX),
            {"input": bad_float_input(X), "target": bad_indices((N,), C), "weight": bad_weight((N, C)),
             "ignore_index": NOT_AN_INT, "reduction": REDUCTION}),
    "kl_div": (losses.kl_div, dict(input=X.log_softmax(1), target=X.softmax(1)),
               {"input": bad_float_input(X), "target": bad_value_target(X, ints_ok=False),
                "reduction": REDUCTION.filter(lambda s: s != "batchmean"), "log_target": bad_flag()}),
    "gaussian_kl": (losses.gaussian_kl, dict(mu=X, logvar=T),
                    {"mu": bad_float_input(X), "logvar": bad_value_target(T, ints_ok=False),
                     "sigma": (bad_value_target(T, ints_ok=False) | st.just(T.abs())).filter(  # both given: refused
                         lambda v: v is not None),
                     "reduction": REDUCTION.filter(lambda s: s != "batchmean")}),
    "margin_ranking": (losses.margin_ranking, dict(input1=X[:, 0], input2=X[:, 1], target=PM1),
                       {"input1": bad_float_input(X[:, 0]), "input2": bad_value_target(X[:, 1]),
                        "target": bad_value_target(PM1), "margin": bad_real(), "reduction": REDUCTION}),
    "hinge_embedding": (losses.hinge_embedding, dict(input=X[:, 0], target=PM1),
                        {"input": bad_float_input(X[:, 0]), "target": bad_value_target(PM1) | not_plus_minus_one((N,)),
                         "margin": bad_real(), "reduction": REDUCTION}),
    "cosine_embedding": (losses.cosine_embedding, dict(input1=X, input2=T, target=PM1),
                         {"input1": bad_float_input(X), "input2": bad_value_target(T),
                          "target": bad_value_target(PM1) | not_plus_minus_one((N,)), "margin": bad_real(),
                          "reduction": REDUCTION}),
    "soft_margin": (losses.soft_margin, dict(input=X, target=torch.sign(T)),
                    {"input": bad_float_input(X), "target": bad_value_target(T), "reduction": REDUCTION}),
    "multilabel_soft_margin": (
        losses.multilabel_soft_margin, dict(input=X, target=BITS),
        {"input": bad_float_input(X) | st.just(torch.tensor(0.5, dtype=torch.float64)),
         "target": bad_value_target(BITS), "weight": bad_weight((N, C)), "reduction": REDUCTION}),
    "multi_margin": (
        losses.multi_margin, dict(input=X, target=IDX),
        {"input": bad_float_input(X) | of_shape(st.sampled_from([(N, C, 2), (N, 0)])),
         "target": bad_indices((N,), C), "p": NOT_AN_INT | st.sampled_from([0, 3, -1, 1.0]),
         "margin": bad_real(), "weight": bad_weight((N, C)) | st.just(torch.ones(1, C, dtype=torch.float64)),
         "reduction": REDUCTION}),
    "multilabel_margin": (
        losses.multilabel_margin, dict(input=X, target=torch.tensor([[0, 1, -1], [2, -1, 0], [1, 2, 0], [-1, 0, 0]])),
        {"input": bad_float_input(X) | of_shape(st.sampled_from([(N, C, 2), (N, 0)])),
         "target": bad_indices((N, C), C, low=-1), "reduction": REDUCTION}),
    "gaussian_nll": (
        losses.gaussian_nll, dict(input=X, target=T, var=T.abs()),
        {"input": bad_float_input(X), "target": bad_value_target(T),
         "var": of_shape(st.sampled_from([(C,), (1, 1), (N, C, 1), (1, N, C), (2, C), (N, 2), (), (N - 1,)]))
         | retyped(T.abs(), [torch.int64, torch.bool, torch.complex128]) | NEGATIVE | NONFINITE
         | st.sampled_from([-T.abs(), T, T.abs()[:, :1] - 2, T.abs().index_fill(0, torch.tensor([0]), float("nan")),
                            "1", None, True, [1.0]]),
         "full": bad_flag(), "eps": bad_nonneg(), "reduction": REDUCTION}),
    "poisson_nll": (losses.poisson_nll, dict(input=X, target=T.abs()),
                    {"input": bad_float_input(X), "target": bad_value_target(T), "log_input": bad_flag(),
                     "full": bad_flag(), "eps": bad_nonneg(), "reduction": REDUCTION}),
    "ctc": (losses.ctc, dict(log_probs=LP, targets=CTC_T, input_lengths=CTC_IL, target_lengths=CTC_TL),
            {"log_probs": bad_float_input(LP) | of_shape(st.sampled_from([(6,), (1, 6, 2, 4), (0, 2, 4), (6, 2, 0)]))
             | retyped(LP, [torch.float16, torch.bfloat16]) | st.just(LP[:, :1]),
             "targets": bad_ctc_targets(), "input_lengths": bad_lengths(CTC_IL, 6),
             "target_lengths": bad_lengths(CTC_TL, 3),
             "blank": NOT_AN_INT | st.sampled_from([4, -1, 100]), "zero_infinity": bad_flag(), "reduction": REDUCTION}),
    "discriminator_loss": (losses.discriminator_loss, dict(real=X[:, 0], fake=X[:, 1]),
                           {"real": bad_float_input(X[:, 0]), "fake": bad_float_input(X[:, 1]),
                            "kind": bad_choice(losses.gan.KINDS),
                            "from_logits": bad_flag()}),
    "discriminator_loss(probabilities)": (
        losses.discriminator_loss, dict(real=P[:, 0], fake=P[:, 1], from_logits=False),
        {"real": st.sampled_from([X[:, 0] + 2, -P[:, 0], P[:, 0] * float("nan")]),
         "fake": st.sampled_from([X[:, 1] + 2, P[:, 1] - 1]), "kind": st.sampled_from(["wasserstein", "hinge"])}),
    "generator_loss": (losses.generator_loss, dict(fake=X[:, 1]),
                       {"fake": bad_float_input(X[:, 1]), "kind": bad_choice(losses.gan.KINDS),
                        "from_logits": bad_flag()}),
    "generator_loss(probabilities)": (losses.generator_loss, dict(fake=P[:, 1], from_logits=False),
                                      {"fake": st.sampled_from([X[:, 1] + 2, -P[:, 1]]),
                                       "kind": st.sampled_from(["wasserstein", "hinge"])}),
    "gradient_penalty": (
        losses.gradient_penalty, dict(critic=CRITIC, critic_params=CRITIC_PARAMS, real=X, fake=T, key=KEY),
        {"critic": st.sampled_from([None, "critic", CRITIC_PARAMS, _mean_critic]),
         "real": bad_float_input(X) | of_shape(other_shapes((N, C)).filter(lambda s: s[-1:] == (C,))),
         "fake": bad_value_target(T, same_dtype=True), "key": st.just(None), "target": bad_real(),
         "interpolation": bad_choice(losses.penalty.INTERPOLATIONS)}),
    "r1_penalty": (losses.r1_penalty, dict(critic=CRITIC, critic_params=CRITIC_PARAMS, real=X),
                   {"critic": st.sampled_from([None, 3, _mean_critic]), "real": bad_float_input(X)}),
    "interpolate": (losses.interpolate, dict(real=X, fake=T, key=KEY),
                    {"real": bad_float_input(X) | st.just(X[0, 0]), "fake": bad_value_target(T, same_dtype=True)}),
    "safe_norm": (losses.safe_norm, dict(g=X), {"g": bad_float_input(X) | st.just(X[0, 0])}),
    "accuracy": (losses.accuracy, dict(logits=X, target=IDX),
                 {"logits": NOT_A_TENSOR | st.just(X[0, 0]), "target": bad_indices((N,), C).filter(
                     lambda t: not isinstance(t, torch.Tensor) or t.dtype != torch.long or t.shape != (N,)),
                  "dim": NOT_AN_INT | st.sampled_from([2, -3, 5])}),
    "binary_accuracy": (losses.binary_accuracy, dict(scores=X, target=BITS),
                        {"scores": NOT_A_TENSOR | retyped(X, [torch.complex128]),
                         "target": of_shape(other_shapes((N, C))) | NOT_A_TENSOR,
                         "from_logits": bad_flag(), "threshold": bad_real()}),
}


def test_every_public_loss_has_a_bad_input_case():
    covered = {name.split("(")[0] for name in CASES}
    assert covered == set(losses.__all__), sorted(set(losses.__all__) ^ covered)


@pytest.mark.parametrize("name", sorted(CASES))
@given(data=st.data())
def test_one_invalid_argument_is_refused_naming_the_loss(name, data):
    loss, valid, bad = CASES[name]
    loss(**valid)  # the valid call works: the error below is the bad argument's
    arg = data.draw(st.sampled_from(sorted(bad)), label="argument")
    value = data.draw(bad[arg], label=arg)
    label = name.split("(")[0]
    expect_clear_error(lambda: loss(**{**valid, arg: value}), match=rf"losses\.{label}|GAN|raw critic scores")


def test_a_target_that_would_broadcast_names_both_shapes():
    expect_clear_error(lambda: losses.soft_margin(torch.randn(8, 1), torch.ones(8)),
                       match=r"soft_margin: target must have the input's shape \[8, 1\], got \[8\]")
    expect_clear_error(lambda: losses.gaussian_nll(torch.randn(8, 1), torch.randn(8), torch.ones(8, 1)),
                       match=r"gaussian_nll: target must have the input's shape \[8, 1\], got \[8\]")
    expect_clear_error(lambda: losses.poisson_nll(torch.randn(8, 3), torch.rand(1, 3)),
                       match=r"poisson_nll: target must have the input's shape \[8, 3\], got \[1, 3\]")


def test_gaussian_nll_refuses_a_var_torch_would_refuse_and_one_that_would_enlarge_the_loss():
    x = torch.randn(4, 3, 5)
    for var in (torch.ones(4, 1, 1), torch.ones(1, 3, 5, 1), torch.ones(3, 5), torch.ones(4, 3, 7)):
        expect_clear_error(lambda var=var: losses.gaussian_nll(x, x, var), match=r"gaussian_nll: var of shape")
    expect_clear_error(lambda: losses.gaussian_nll(x, x, -1.0), match=r"gaussian_nll: var must be >= 0")


def test_ctc_refuses_the_labels_torch_reads_silently():
    """torch returns a finite loss for a label past C (read from other memory), a label equal to
    blank, float labels and a [1, N] length tensor; each is an error here."""
    for targets in (torch.tensor([[1, 2, 4], [1, 1, 0]]), torch.tensor([[1, 0, 3], [1, 1, 0]]),
                    torch.tensor([[1, -2, 3], [1, 1, 0]])):
        expect_clear_error(lambda t=targets: losses.ctc(LP, t, CTC_IL, CTC_TL), match="ctc: target labels")
    expect_clear_error(lambda: losses.ctc(LP, CTC_T.double(), CTC_IL, CTC_TL), match="ctc: targets must hold")
    expect_clear_error(lambda: losses.ctc(LP, CTC_T, CTC_IL[None], CTC_TL), match=r"ctc: input_lengths must have shape \[2\]")
    expect_clear_error(lambda: losses.ctc(LP, CTC_T.bool(), CTC_IL, CTC_TL), match="ctc: targets")
