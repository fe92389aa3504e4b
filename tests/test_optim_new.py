"""NAdam, RAdam, Adadelta, Adafactor and Muon follow their torch.optim namesakes step for step:
the same arguments and defaults, the same trajectories (float64 tight, float32 at rounding level),
eager, with hyperparameters held as tensors (compiled / on a device), under vmap, with a
schedule, and compiled with inductor."""

from __future__ import annotations

import inspect

import pytest
import torch
from badinput import expect_clear_error
from conftest import assert_trees_close
from hypothesis import given
from hypothesis import strategies as st
from test_bad_input_optim import bad_beta, bad_choice, bad_flag, bad_nonneg, bad_nonneg_int, bad_pair, bad_real
from test_optim import _check, _fn_run, _torch_run

import fnnet as fn
from fnnet import optim

STEPS = 25
DTYPES = st.sampled_from([torch.float64, torch.float64, torch.float32])
LRS = st.one_of(st.just(0.0), st.floats(1e-3, 0.1))

# torch.optim twins that are newer than some supported torch: skip naming the version
_MUON_TWIN = hasattr(torch.optim, "Muon") and "adjust_lr_fn" in inspect.signature(torch.optim.Muon).parameters
needs_muon = pytest.mark.skipif(not _MUON_TWIN, reason=f"torch {torch.__version__} has no torch.optim.Muon with "
                                                      "adjust_lr_fn (torch >= 2.9)")
needs_adafactor = pytest.mark.skipif(not hasattr(torch.optim, "Adafactor"),
                                     reason=f"torch {torch.__version__} has no torch.optim.Adafactor (torch >= 2.5)")


@pytest.fixture(autouse=True)
def _torch_scalars_in_float64():
    """torch.optim holds its step (and NAdam its mu_product) in the default dtype; float64
    parity needs float64 there too."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _problem(seed: int, shapes: list[tuple], dtype, zero_grad: bool):
    """Leaves of the given shapes and a smooth loss with a different curvature per leaf; with
    ``zero_grad`` one more leaf, ``idle``, whose gradient is exactly zero (it enters the loss as
    ``0 * sum``, so torch gives it a zero grad too, not ``None``)."""
    g = torch.Generator().manual_seed(seed)
    params = {f"w{i}": torch.randn(s, generator=g, dtype=torch.float64).to(dtype) for i, s in enumerate(shapes)}
    targets = {k: torch.randn(v.shape, generator=g, dtype=torch.float64).to(dtype) for k, v in params.items()}
    if zero_grad:
        params["idle"] = torch.randn(shapes[0], generator=g, dtype=torch.float64).to(dtype)

    def loss_fn(p):
        loss = sum(((i + 1) * (p[k] - t) ** 2).sum() + 0.1 * torch.cos(p[k]).sum()
                   for i, (k, t) in enumerate(targets.items()))
        return loss + 0 * p["idle"].sum() if zero_grad else loss

    return params, loss_fn


def _follows_torch(ours, theirs, seed, shapes, dtype, zero_grad, maximize=False, device_scalars=False,
                   sign_like=False):
    """``sign_like``: updates of about the same size whatever the gradient's (``g / |g|``) turn
    last-bit differences into visible ones near a minimum (torch adds ``alpha * u`` to ``p`` in
    one fused multiply-add, fnnet adds the rounded update): the two trajectories are compared
    (float64 as tightly as float32's first 10 steps) up to the first step whose gradient, at
    torch's params, has an element within ``SIGN_FORK`` of zero, where a last-bit difference
    may flip that step's update."""
    params, loss_fn = _problem(seed, shapes, dtype, zero_grad)
    f = (lambda p: -loss_fn(p)) if maximize else loss_fn
    a, state = _fn_run(params, f, ours, steps=STEPS, device_scalars=device_scalars)
    b, topt = _torch_run(params, f, theirs, steps=STEPS)
    if sign_like:
        n = max(1, _steps_before_a_fork(f, [params, *b][:10]))  # the first step starts from equal params
        _check(a[:n], b[:n], dtype)
    else:
        _check(a, b, dtype)
    return state, topt


SIGN_FORK = 1e-3  # |g| below which a sign-like update may go either way on a last-bit difference in p


def _steps_before_a_fork(f, trajectory: list) -> int:
    """How many steps of ``trajectory`` (the params before each step) start from gradients whose
    every element (except exact zeros: a leaf the loss ignores) is at least ``SIGN_FORK`` away from zero."""
    for t, p in enumerate(trajectory):
        g = torch.func.grad(f)({k: v.double() for k, v in p.items()})
        if any(((v.abs() < SIGN_FORK) & (v != 0)).any() for v in g.values()):
            return t
    return len(trajectory)


any_shapes = st.lists(st.lists(st.integers(1, 4), max_size=3).map(tuple), min_size=1, max_size=4)
matrices = st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=3)
common = dict(seed=st.integers(0, 10**6), dtype=DTYPES, zero_grad=st.booleans(), device_scalars=st.booleans())


@given(**common, shapes=any_shapes, lr=LRS, b1=st.sampled_from([0.0, 0.9]), b2=st.sampled_from([0.9, 0.999]),
       eps=st.sampled_from([1e-8, 1e-3]), wd=st.sampled_from([0.0, 0.05]), decoupled=st.booleans(),
       momentum_decay=st.sampled_from([0.0, 4e-3, 0.5]), maximize=st.booleans())
def test_nadam_follows_torch(seed, dtype, zero_grad, device_scalars, shapes, lr, b1, b2, eps, wd, decoupled,
                             momentum_decay, maximize):
    kw = dict(betas=(b1, b2), eps=eps, weight_decay=wd, momentum_decay=momentum_decay,
              decoupled_weight_decay=decoupled, maximize=maximize)
    state, topt = _follows_torch(optim.nadam(lr, **kw), lambda ps: torch.optim.NAdam(ps, lr, **kw),
                                 seed, shapes, dtype, zero_grad, maximize, device_scalars)
    # the running product of the momentum coefficients, as torch keeps it (held in float32 for
    # float32 params: 25 roundings)
    torch_mu_product = topt.state[topt.param_groups[0]["params"][0]]["mu_product"]
    torch.testing.assert_close(state["mu_product"].double(), torch_mu_product.double(),
                               rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=0)


@given(**common, shapes=any_shapes, lr=LRS, b1=st.sampled_from([0.0, 0.9]),
       b2=st.sampled_from([0.5, 0.8, 0.999]), wd=st.sampled_from([0.0, 0.05]), decoupled=st.booleans(),
       maximize=st.booleans())
def test_radam_follows_torch_before_and_after_rectification(seed, dtype, zero_grad, device_scalars, shapes, lr, b1,
                                                            b2, wd, decoupled, maximize):
    """b2 = 0.5 never rectifies (rho_inf = 3 <= 5); 0.8 from step 7, 0.999 from step 6."""
    kw = dict(betas=(b1, b2), eps=1e-8, weight_decay=wd, decoupled_weight_decay=decoupled, maximize=maximize)
    _follows_torch(optim.radam(lr, **kw), lambda ps: torch.optim.RAdam(ps, lr, **kw),
                   seed, shapes, dtype, zero_grad, maximize, device_scalars)


@given(**common, shapes=any_shapes, lr=st.one_of(st.just(0.0), st.floats(0.01, 1.0)),
       rho=st.sampled_from([0.0, 0.9, 0.99, 1.0]), eps=st.sampled_from([1e-6, 1e-3]),
       wd=st.sampled_from([0.0, 0.05]), maximize=st.booleans())
def test_adadelta_follows_torch(seed, dtype, zero_grad, device_scalars, shapes, lr, rho, eps, wd, maximize):
    kw = dict(rho=rho, eps=eps, weight_decay=wd, maximize=maximize)
    _follows_torch(optim.adadelta(lr, **kw), lambda ps: torch.optim.Adadelta(ps, lr, **kw),
                   seed, shapes, dtype, zero_grad, maximize, device_scalars)


@needs_adafactor
@given(**common, shapes=any_shapes, lr=LRS, beta2_decay=st.sampled_from([-0.8, -0.5, 0.0]),
       eps1=st.sampled_from([None, 1e-3]), eps2=st.sampled_from([1e-3, 0.5]), d=st.sampled_from([1.0, 2.0]),
       wd=st.sampled_from([0.0, 0.05]), maximize=st.booleans())
def test_adafactor_follows_torch_on_factored_and_unfactored_leaves(seed, dtype, zero_grad, device_scalars, shapes,
                                                                   lr, beta2_decay, eps1, eps2, d, wd, maximize):
    """0-d and 1-D leaves keep a full ``variance``; 2-D and 3-D ones row and column means
    (torch's state names and shapes)."""
    kw = dict(beta2_decay=beta2_decay, eps=(eps1, eps2), d=d, weight_decay=wd, maximize=maximize)
    state, topt = _follows_torch(optim.adafactor(lr, **kw), lambda ps: torch.optim.Adafactor(ps, lr, **kw),
                                 seed, shapes, dtype, zero_grad, maximize, device_scalars,
                                 sign_like=beta2_decay == 0.0)   # no averaging: u = g / |g|
    names = list(_problem(seed, shapes, dtype, zero_grad)[0])   # torch's params, in this order
    for name, p in zip(names, topt.param_groups[0]["params"]):
        theirs = topt.state[p]
        for slot in ("row_var", "col_var", "variance"):
            assert (slot in theirs) == (name in state[slot]), (name, slot)
            if slot in theirs:
                assert state[slot][name].shape == theirs[slot].shape, (name, slot)


@needs_muon
@given(**common, shapes=matrices, lr=LRS, wd=st.sampled_from([0.0, 0.1]), momentum=st.sampled_from([0.0, 0.95]),
       nesterov=st.booleans(), adjust_lr_fn=st.sampled_from([None, "original", "match_rms_adamw"]),
       ns_steps=st.sampled_from([0, 5]))
def test_muon_follows_torch(seed, dtype, zero_grad, device_scalars, shapes, lr, wd, momentum, nesterov,
                            adjust_lr_fn, ns_steps):
    """Tall, wide and square matrices (a tall one is orthogonalized transposed)."""
    kw = dict(weight_decay=wd, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
    _follows_torch(optim.muon(lr, **kw), lambda ps: torch.optim.Muon(ps, lr, **kw),
                   seed, shapes, dtype, zero_grad, device_scalars=device_scalars)


# -- the same arguments, by the same names and defaults; maximize wherever torch has it

OURS = {"nadam": (optim.nadam, "NAdam"), "radam": (optim.radam, "RAdam"), "adadelta": (optim.adadelta, "Adadelta"),
        "adafactor": (optim.adafactor, "Adafactor"), "muon": (optim.muon, "Muon")}
# torch's implementation switches, which have no meaning for a pure update
_IMPLEMENTATION = {"params", "foreach", "capturable", "differentiable", "fused"}


@pytest.mark.parametrize("name", OURS)
def test_arguments_are_torchs_names_in_torchs_order_with_torchs_defaults(name):
    ours, theirs = OURS[name]
    if not hasattr(torch.optim, theirs):
        pytest.skip(f"torch {torch.__version__} has no torch.optim.{theirs}")
    t = [p for p in inspect.signature(getattr(torch.optim, theirs)).parameters.values() if p.name not in _IMPLEMENTATION]
    o = list(inspect.signature(ours).parameters.values())
    assert [p.name for p in o] == [p.name for p in t]
    assert [p.default for p in o] == [p.default for p in t]
    # what torch takes by position (before its `*`), so do we
    assert [p.name for p in o if p.kind == p.POSITIONAL_OR_KEYWORD] == \
           [p.name for p in t if p.kind == p.POSITIONAL_OR_KEYWORD]


EVERY = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "adamax": "Adamax", "adagrad": "Adagrad",
         "rmsprop": "RMSprop", "rprop": "Rprop", "asgd": "ASGD", "lbfgs": "LBFGS", **{k: v for k, (_, v) in OURS.items()}}


@pytest.mark.parametrize("name", EVERY)
def test_every_optimizer_takes_maximize_exactly_where_torch_does(name):
    if not hasattr(torch.optim, EVERY[name]):
        pytest.skip(f"torch {torch.__version__} has no torch.optim.{EVERY[name]}")
    theirs = "maximize" in inspect.signature(getattr(torch.optim, EVERY[name])).parameters
    assert ("maximize" in inspect.signature(getattr(optim, name)).parameters) == theirs


# -- lr = 0 leaves the params bit-identical; vmap; schedules

MAKERS = {
    "nadam": lambda lr: optim.nadam(lr, weight_decay=0.05, decoupled_weight_decay=True),
    "radam": lambda lr: optim.radam(lr, betas=(0.9, 0.8), weight_decay=0.05),
    "adadelta": lambda lr: optim.adadelta(lr, weight_decay=0.05),
    "adafactor": lambda lr: optim.adafactor(lr, weight_decay=0.05),
    "muon": lambda lr: optim.muon(lr, weight_decay=0.05),
}
TWINS = {
    "nadam": lambda ps, lr: torch.optim.NAdam(ps, lr, weight_decay=0.05, decoupled_weight_decay=True),
    "radam": lambda ps, lr: torch.optim.RAdam(ps, lr, betas=(0.9, 0.8), weight_decay=0.05),
    "adadelta": lambda ps, lr: torch.optim.Adadelta(ps, lr, weight_decay=0.05),
    "adafactor": lambda ps, lr: torch.optim.Adafactor(ps, lr, weight_decay=0.05),
    "muon": lambda ps, lr: torch.optim.Muon(ps, lr, weight_decay=0.05),
}


def _params(name, dtype=torch.float64):
    g = torch.Generator().manual_seed(3)
    shapes = {"w": (3, 4), "v": (5, 2)} if name == "muon" else {"w": (3, 4), "b": (3,), "t": (2, 3, 2)}
    return {k: torch.randn(s, generator=g, dtype=dtype) for k, s in shapes.items()}


def _target_loss(target):
    return lambda p: sum(((p[k] - t) ** 2).sum() + 0.1 * torch.cos(p[k]).sum() for k, t in target.items())


@pytest.mark.parametrize("device_scalars", [False, True])
@pytest.mark.parametrize("name", MAKERS)
def test_lr_zero_leaves_params_bit_identical(name, device_scalars):
    params = _params(name)
    loss = _target_loss(fn.tree.map(torch.zeros_like, params))
    traj, _ = _fn_run(params, loss, MAKERS[name](0.0), steps=8, device_scalars=device_scalars)
    for p in traj:
        assert all(torch.equal(p[k], params[k]) for k in params)


@pytest.mark.parametrize("name", MAKERS)
def test_a_vmapped_ensemble_with_one_lr_per_member_matches_separate_runs(name):
    """Leaf by leaf under vmap, with the non-slot state (mu_product, Adafactor's row/col
    variances) batched like the rest."""
    lrs = [0.01, 0.05, 0.1]
    members = [fn.tree.map(lambda x, i=i: x + i, _params(name)) for i in range(3)]
    loss = _target_loss(fn.tree.map(torch.zeros_like, members[0]))

    def step(p, s):
        updates, s = opt.update(fn.grad(loss)(p), s, p)
        return optim.apply_updates(p, updates), s

    opt = MAKERS[name](0.01)
    params = fn.tree.stack(members)
    state = optim.set_hyperparams(fn.vmap(opt.init)(params), lr=torch.tensor(lrs, dtype=torch.float64))
    for _ in range(8):
        params, state = fn.vmap(step)(params, state)
    for i, lr in enumerate(lrs):
        opt = MAKERS[name](lr)
        p, s = members[i], opt.init(members[i])
        for _ in range(8):
            p, s = step(p, s)
        ours_p = fn.tree.unstack(params)[i]
        ours_s = {k: v for k, v in fn.tree.unstack(state)[i].items() if k != "hyperparams"}
        alone_s = {k: v for k, v in s.items() if k != "hyperparams"}
        if name == "muon":
            # Muon orthogonalizes in bfloat16; vmapped, its matmuls run batched, whose rounding
            # differs by a few bfloat16 ulps (2^-8 relative): bound each step's share of that
            for a, b in ((ours_p, p), (ours_s["momentum_buffer"], alone_s["momentum_buffer"])):
                for k in a:
                    torch.testing.assert_close(a[k], b[k], rtol=0, atol=8 * lr * 1.6 * 0.05)
            continue
        assert_trees_close(ours_p, p, msg=f"member {i}")
        assert_trees_close(ours_s, alone_s, msg=f"state {i}")


@pytest.mark.parametrize("name", MAKERS)
def test_lr_as_a_schedule_follows_torch_with_its_scheduler(name):
    if (name == "adafactor" and not hasattr(torch.optim, "Adafactor")) or (name == "muon" and not _MUON_TWIN):
        pytest.skip(f"torch {torch.__version__} has no twin for {name}")
    params = _params(name)
    loss = _target_loss(fn.tree.map(lambda x: 0.5 * torch.ones_like(x), params))
    ours, _ = _fn_run(params, loss, MAKERS[name](optim.step_lr(0.05, step_size=3, gamma=0.5)), steps=10)

    schedulers = []

    def with_scheduler(ps):
        topt = TWINS[name](ps, 0.05)
        schedulers.append(torch.optim.lr_scheduler.StepLR(topt, step_size=3, gamma=0.5))
        return topt

    # torch: scheduler.step() after each optimizer.step()
    theirs, _ = _torch_run(params, loss, with_scheduler, steps=10, between=lambda i, topt: schedulers[0].step())
    _check(ours, theirs, torch.float64)


# -- compiled (inductor, fullgraph): hyperparameters and the count are tensors in the graph

def _compiled_matches_eager(opt, params, steps: int, change_at: int, group: str, lr: float, atol=None):
    """Eager and ``fn.jit`` steps side by side, at float32 rounding level (``atol(key, i)``: another
    bound for some leaves); ``set_hyperparams(group=, lr=)`` half-way does not recompile (one
    graph in all)."""
    from torch._dynamo.utils import counters

    grad = fn.grad(_target_loss(fn.tree.map(lambda x: 0.5 * torch.ones_like(x), params)))

    def step(p, s, g):  # the update alone is compiled (the gradient is not what is tested here)
        updates, s = opt.update(g, s, p)
        return optim.apply_updates(p, updates), s

    torch._dynamo.reset()
    counters.clear()
    jstep = fn.jit(step)
    pe, se = params, opt.init(params)
    pc, sc = params, opt.init(params)
    for i in range(steps):
        if i == change_at:
            se, sc = optim.set_hyperparams(se, group=group, lr=lr), optim.set_hyperparams(sc, group=group, lr=lr)
        pe, se = step(pe, se, grad(pe))
        pc, sc = jstep(pc, sc, grad(pc))
        for k in pe:
            tol = {"rtol": 0, "atol": atol(k, i)} if atol and atol(k, i) else {}
            torch.testing.assert_close(pc[k], pe[k], **tol, msg=lambda m, k=k, i=i: f"step {i} {k}: {m}")
    assert counters["stats"]["unique_graphs"] == 1
    return pc, sc, se


def test_nadam_radam_adadelta_compiled_match_eager_without_recompiling_for_lr():
    """One compiled step, three param groups; RAdam (b2 = 0.8) turns rectified at step 7, so
    the graph's ``where`` takes both sides."""
    g = torch.Generator().manual_seed(5)
    params = {"a": torch.randn(3, 4, generator=g), "b": torch.randn(4, generator=g), "c": torch.randn(2, 3, generator=g)}
    opt = optim.multi_transform({"a": optim.nadam(0.05, weight_decay=0.01),
                                 "b": optim.radam(0.05, betas=(0.9, 0.8), weight_decay=0.01, maximize=False),
                                 "c": optim.adadelta(1.0, weight_decay=0.01)}, lambda path, p: path)
    _, sc, se = _compiled_matches_eager(opt, params, steps=8, change_at=4, group="a", lr=0.01)
    torch.testing.assert_close(sc["a"]["mu_product"], se["a"]["mu_product"])


def test_adafactor_and_muon_compiled_match_eager_without_recompiling_for_lr():
    """Adafactor on a 1-D, a 2-D and a 3-D leaf (factored), Muon on a matrix. Muon's bfloat16
    iteration compiled by inductor rounds differently from eager: its orthogonalized update
    (entries below 1) is held to 8 bfloat16 ulps at 1 (2^-5) per step, times the step size."""
    g = torch.Generator().manual_seed(6)
    params = {"b": torch.randn(4, generator=g), "f": torch.randn(3, 2, generator=g),
              "t": torch.randn(2, 2, 3, generator=g), "m": torch.randn(5, 3, generator=g)}
    opt = optim.multi_transform({"adafactor": optim.adafactor(0.05, weight_decay=0.01), "muon": optim.muon(0.02)},
                                lambda path, p: "muon" if path == "m" else "adafactor")
    step_size = 0.02 * (5 / 3) ** 0.5   # lr times Muon's "original" shape ratio for [5, 3]
    _compiled_matches_eager(opt, params, steps=6, change_at=3, group="muon", lr=0.01,
                            atol=lambda k, i: 2**-5 * step_size * (i + 1) if k == "m" else None)


# -- bad input: clear errors naming the optimizer and the argument or path

NEW_CONSTRUCTORS = {
    "nadam": (optim.nadam, {"lr": bad_nonneg(), "eps": bad_nonneg(), "weight_decay": bad_nonneg(),
                            "momentum_decay": bad_nonneg(), "decoupled_weight_decay": bad_flag(),
                            "maximize": bad_flag()}),
    "radam": (optim.radam, {"lr": bad_nonneg(), "eps": bad_nonneg(), "weight_decay": bad_nonneg(),
                            "decoupled_weight_decay": bad_flag(), "maximize": bad_flag()}),
    "adadelta": (optim.adadelta, {"lr": bad_nonneg(), "rho": bad_beta().filter(lambda v: not (isinstance(v, (int, float)) and v == 1.0)),
                                  "eps": bad_nonneg(), "weight_decay": bad_nonneg(), "maximize": bad_flag()}),
    "adafactor": (optim.adafactor, {
        "lr": bad_nonneg(), "beta2_decay": bad_real() | st.floats(min_value=1e-300, allow_nan=False),
        "eps": bad_pair() | st.tuples(bad_nonneg().filter(lambda v: v is not None), st.just(1e-3))
               | st.tuples(st.just(None), bad_nonneg()),
        "d": bad_real() | st.floats(max_value=0.9999, allow_nan=False), "weight_decay": bad_nonneg(),
        "maximize": bad_flag()}),
    "muon": (optim.muon, {
        "lr": bad_nonneg(), "weight_decay": bad_nonneg(), "momentum": bad_nonneg(), "nesterov": bad_flag(),
        "ns_coefficients": st.sampled_from([3.4, (3.4, -4.8), (1, 2, 3, 4), "abc", None])
                           | st.tuples(bad_real(), st.just(1.0), st.just(1.0)), "eps": bad_nonneg(),
        "ns_steps": bad_nonneg_int() | st.integers(min_value=100),
        "adjust_lr_fn": bad_choice().filter(lambda s: s not in (None, "original", "match_rms_adamw"))}),
}


@pytest.mark.parametrize("name", sorted(NEW_CONSTRUCTORS))
@given(data=st.data())
def test_an_invalid_hyperparameter_is_refused_at_construction_naming_it(name, data):
    make, args = NEW_CONSTRUCTORS[name]
    arg = data.draw(st.sampled_from(sorted(args)), label="argument")
    value = data.draw(args[arg], label="value")
    expect_clear_error(lambda: make(**{arg: value}), match=rf"{name}: .*{arg}|{name}: {arg}")


@pytest.mark.parametrize("name", ["nadam", "radam"])
@given(index=st.sampled_from([0, 1]), bad=bad_beta())
def test_betas_outside_zero_one_are_refused(name, index, bad):
    betas = (bad, 0.999) if index == 0 else (0.9, bad)
    expect_clear_error(lambda: getattr(optim, name)(betas=betas), match=rf"{name}: betas\[{index}\]")


@pytest.mark.parametrize("shape", [(), (3,), (2, 3, 4)])
def test_muon_refuses_params_that_are_not_matrices_naming_the_path(shape):
    params = {"layer": {"weight": torch.zeros(3, 4), "bias": torch.zeros(shape)}}
    expect_clear_error(lambda: optim.muon().init(params), match=r"muon: .*'layer\.bias' has shape")


def test_a_state_that_does_not_fit_the_grads_is_refused_naming_the_path():
    params = {"w": torch.zeros(3, 4), "b": torch.zeros(3)}
    opt = optim.adafactor()
    state = opt.init(params)
    for slot, path, value in [("row_var", "w", torch.zeros(4, 1)), ("col_var", "w", torch.zeros(3, 1)),
                              ("variance", "b", torch.zeros(4))]:
        bad = {**state, slot: {**state[slot], path: value}}
        expect_clear_error(lambda bad=bad: opt.update(params, bad, params), match=rf"adafactor update: at '{path}'")
    expect_clear_error(lambda: opt.update({**params, "c": torch.zeros(2, 2)}, state, {**params, "c": torch.zeros(2, 2)}),
                       match=r"adafactor update: .*'c'")
    expect_clear_error(lambda: opt.update(params, {k: v for k, v in state.items() if k != "col_var"}, params),
                       match=r"adafactor update: .*col_var")
    expect_clear_error(lambda: opt.update(params, state), match=r"adafactor needs params")
    state = optim.nadam().init(params)
    expect_clear_error(lambda: optim.nadam().update(params, {**state, "mu_product": torch.ones(3)}, params),
                       match=r"nadam update: .*mu_product")
    nadamw = optim.nadam(weight_decay=0.1, decoupled_weight_decay=True)
    expect_clear_error(lambda: nadamw.update(params, nadamw.init(params)), match=r"nadam: weight_decay needs params")


def test_where_compiled_foreach_ops_refuse_tensor_scalars_a_compiled_update_runs_leaf_by_leaf(monkeypatch):
    """torch 2.10's compiled ``_foreach_*`` ops fail on a held (0-d tensor) hyperparameter; there
    ``_ops.for_leaves`` picks the leaf-by-leaf path inside compiled graphs. Forced here on any
    torch: dynamo captures one graph with no ``_foreach`` op, and it equals eager (the graph run
    as it is; the inductor tests above compile the ``_foreach`` path)."""
    from fnnet.optim import _ops

    monkeypatch.setattr(_ops, "COMPILED_FOREACH_TAKES_TENSOR_SCALARS", False)
    params = _params("adafactor", torch.float32)
    loss = _target_loss(fn.tree.map(torch.zeros_like, params))
    opt = optim.chain(optim.nadam(0.05, weight_decay=0.01), optim.adafactor(0.05))

    def step(p, s):
        updates, s = opt.update(fn.grad(loss)(p), s, p)
        return optim.apply_updates(p, updates), s

    torch._dynamo.reset()
    graphs = []

    def capture(gm, example_inputs):  # dynamo's graph, run as it is
        graphs.append(gm)
        return gm.forward

    jstep = fn.jit(step, backend=capture)
    pe, se = params, opt.init(params)
    pc, sc = params, opt.init(params)
    for _ in range(3):
        pe, se = step(pe, se)
        pc, sc = jstep(pc, sc)
        assert_trees_close(pc, pe)
    assert len(graphs) == 1
    assert not [n for n in graphs[0].graph.nodes if "_foreach" in str(n.target)]


@pytest.mark.parametrize("scale", [1e20, 1e-30])
@pytest.mark.parametrize("name", MAKERS)
def test_huge_and_tiny_gradients_give_torchs_numbers_inf_and_nan_included(name, scale):
    """float32 gradients whose squares overflow (1e20) or underflow (1e-30): whatever torch
    makes of them (a finite step, inf or NaN), fnnet makes too."""
    if (name == "adafactor" and not hasattr(torch.optim, "Adafactor")) or (name == "muon" and not _MUON_TWIN):
        pytest.skip(f"torch {torch.__version__} has no twin for {name}")
    params = _params(name, torch.float32)
    grads = fn.tree.map(lambda x: scale * torch.linspace(-2, 3, x.numel(), dtype=x.dtype).reshape(x.shape), params)
    opt, p, tp = MAKERS[name](0.1), params, {k: v.clone().requires_grad_() for k, v in params.items()}
    state, topt = opt.init(p), TWINS[name](list(tp.values()), 0.1)
    for _ in range(3):
        updates, state = opt.update(grads, state, p)
        p = optim.apply_updates(p, updates)
        for k, v in tp.items():
            v.grad = grads[k].clone()
        topt.step()
        for k in p:
            torch.testing.assert_close(p[k], tp[k].detach(), equal_nan=True, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.parametrize("name", [n for n in MAKERS if n != "muon"])
def test_an_update_is_differentiable_through_its_inputs(name):
    """Meta-gradients: d loss(params after two steps) / d params through fn.grad (the update
    runs leaf by leaf, out of place; Adafactor's step size keeps its dependence on rms(p)),
    against central finite differences. (Muon's update goes through bfloat16, where a finite
    difference of 1e-6 is below the rounding: no such check there.)"""
    opt = MAKERS[name](0.05)
    target = fn.tree.map(lambda x: 0.5 * torch.ones_like(x), _params(name))
    loss = _target_loss(target)

    def after_two_steps(p):
        state = opt.init(p)
        for _ in range(2):
            updates, state = opt.update(fn.grad(loss)(p), state, p)
            p = optim.apply_updates(p, updates)
        return loss(p)

    params = _params(name)
    meta = fn.grad(after_two_steps)(params)
    k = next(iter(params))
    x, eps = params[k].flatten(), 1e-6
    for i in range(0, x.numel(), 3):
        e = torch.zeros_like(x)
        e[i] = eps
        plus = after_two_steps({**params, k: (x + e).reshape(params[k].shape)})
        minus = after_two_steps({**params, k: (x - e).reshape(params[k].shape)})
        torch.testing.assert_close(meta[k].flatten()[i], (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-7)
