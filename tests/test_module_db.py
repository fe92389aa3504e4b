"""Every layer, cell and recurrent layer with a ``torch.nn`` namesake replays PyTorch's own oracle,
``module_db``: for each sample (constructor arguments x forward inputs, in training and in eval
mode) the fnnet twin is built from the SAME arguments, takes the torch module's weights
(``fn.params_from_module``) and buffers (``fn.state_from_module``), and gives the same outputs,
the same new running statistics, and the same gradients w.r.t. every parameter and every input
(float64 tight; float32 at rounding level).

Twins are found by name (``fn.<Name>`` for layers, ``cells.<Name>`` for the recurrent ones), so
a layer added to fnnet is replayed as soon as it exists. The loss modules are replayed by
``test_losses_more.py``. Every other module_db module is listed in :data:`EXPECTED_MISSING` with
the reason, and a test holds that list exact: a new twin must be taken out of it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from badinput import expect_clear_error
from moduledb import assert_pairs_close, samples, try_module_db, twin_parity
from test_losses_more import MODULE_LOSSES

import cells
import fnnet as fn

DB, WHY_NO_DB = try_module_db()

# module_db modules without an fnnet twin, and why. Keep it exact (test_the_expected_missing_set_is_exact):
# when a twin lands, take its name out.
EXPECTED_MISSING = {
    **{name: "lazy modules infer their sizes from the first input, which init(key) does not see" for name in [
        "LazyConv1d", "LazyConv2d", "LazyConv3d", "LazyConvTranspose1d", "LazyConvTranspose2d",
        "LazyConvTranspose3d"]},
}

# twins that do not pass yet, and why: each xfails strictly, so a fix fails the test until it is taken out
KNOWN_FAILURES: dict = {}


def _param(kind: str, name: str, *values, marks=(), **kw):
    why = KNOWN_FAILURES.get((kind, name))
    marks = [*marks, pytest.mark.xfail(reason=why, strict=True)] if why else list(marks)
    return pytest.param(name, *values, marks=marks, **kw)


# the modules whose samples take seconds: a normal run replays every SUBSAMPLE-th sample, `-m slow` the rest
HEAVY = {"MultiheadAttention", "Transformer", "TransformerDecoderLayer", "TransformerEncoder",
         "TransformerEncoderLayer"}
SUBSAMPLE = 4


def twin_of(name: str) -> type | None:
    """fnnet's class of the same name: a layer in ``fnnet``, a recurrent cell or layer in ``cells``."""
    for package in (fn, cells):
        cls = getattr(package, name, None)
        if isinstance(cls, type) and issubclass(cls, fn.Module):
            return cls
    return None


def _names_with_twins() -> list[str]:
    if DB is None:
        return []
    return sorted(n for n in {m.module_cls.__name__ for m in DB} - set(MODULE_LOSSES) if twin_of(n) is not None)


def _check(info, training, sample, dtype) -> None:
    ctor, fwd = sample.constructor_input, sample.forward_input
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.simplefilter("ignore")
        torch.manual_seed(1)  # torch's initial weights (the twin takes them): the same every run
        theirs = info.module_cls(*ctor.args, **ctor.kwargs).to(dtype)
    # a float tensor among the constructor's arguments (FractionalMaxPool's _random_samples) is a
    # buffer torch's .to(dtype) casts: the twin gets it in that dtype too
    kwargs = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
              for k, v in ctor.kwargs.items()}
    twin = twin_of(info.module_cls.__name__)(*ctor.args, **kwargs)
    pairs = twin_parity(theirs, twin, tuple(fwd.args), dict(fwd.kwargs), training)
    assert_pairs_close(pairs, dtype, f"{info.module_cls.__name__} {sample.desc!r} training={training}")


DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _cases(name: str) -> list:
    """One test per module and dtype; a heavy one split in SUBSAMPLE parts, of which a normal run
    replays the first in float64, and ``-m slow`` the rest."""
    if name not in HEAVY:
        return [_param("samples", name, None, dtype, id=f"{name}-{dtype}") for dtype in DTYPES]
    return [_param("samples", name, part, dtype, id=f"{name}-{dtype}-{part}",
                   marks=[pytest.mark.slow] if part or dtype != "float64" else [])
            for dtype in DTYPES for part in range(SUBSAMPLE)]


CASES = [case for name in _names_with_twins() for case in _cases(name)] or [
    pytest.param(None, None, None, marks=pytest.mark.skip(reason=WHY_NO_DB or "no twins"))]


@pytest.mark.parametrize("name, part, dtype", CASES)
def test_every_module_db_sample_matches_torch(name, part, dtype):
    """Outputs, running statistics and gradients of every sample (float64 tight, float32 at
    rounding level; a heavy module: every SUBSAMPLE-th sample from ``part`` on)."""
    count = 0
    for info in (m for m in DB if m.module_cls.__name__ == name):
        for i, (training, sample) in enumerate(samples(info, DTYPES[dtype])):
            if part is None or i % SUBSAMPLE == part:
                _check(info, training, sample, DTYPES[dtype])
                count += 1
    assert count > 0, f"module_db has no samples for {name}"
    print(f"module_db {name} {dtype}: {count} samples match")


def _error_cases() -> list:
    names = {m.module_cls.__name__ for m in DB or [] if m.module_error_inputs_func is not None}
    return [_param("errors", n) for n in sorted(names - set(MODULE_LOSSES)) if twin_of(n) is not None] or [
        pytest.param(None, marks=pytest.mark.skip(reason=WHY_NO_DB or "no twin has error inputs"))]


@pytest.mark.parametrize("name", _error_cases())
def test_every_module_db_error_input_is_refused_with_a_clear_error(name):
    """module_db's inputs that make torch's module raise (at construction or in forward) make the
    twin raise a ValueError/TypeError of fnnet's own, at construction or at apply."""
    count = 0
    for info in (m for m in DB if m.module_cls.__name__ == name):
        for training in (True, False):
            for error in info.module_error_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True,
                                                        training=training):
                ctor, fwd = error.module_error_input.constructor_input, error.module_error_input.forward_input

                def build_and_apply(ctor=ctor, fwd=fwd, training=training):
                    # torch's factory kwargs (a float64 module) are the params' dtype here
                    kwargs = {k: v for k, v in ctor.kwargs.items() if k not in ("device", "dtype")}
                    twin = twin_of(name)(*ctor.args, **kwargs)
                    if fwd is None:
                        return twin
                    params = fn.tree.map(lambda p: p.to(ctor.kwargs.get("dtype", p.dtype)), twin.init(fn.random.key(0)))
                    state = {"state": twin.init_state()} if twin.stateful else {}
                    return twin.apply(params, *fwd.args, **fwd.kwargs, train=training, **state)

                expect_clear_error(build_and_apply, match=name)
                count += 1
    assert count > 0


@pytest.mark.skipif(DB is None, reason=WHY_NO_DB)
def test_the_expected_missing_set_is_exact():
    """Every module_db module has a twin, is a loss (test_losses_more.py) or is listed as missing
    with a reason; nothing listed has a twin (take it out when it lands) or is unknown to module_db."""
    names = {m.module_cls.__name__ for m in DB}
    uncovered = sorted(n for n in names - set(MODULE_LOSSES) - set(EXPECTED_MISSING) if twin_of(n) is None)
    assert not uncovered, f"module_db modules without an fnnet twin, not listed in EXPECTED_MISSING: {uncovered}"
    landed = sorted(n for n in EXPECTED_MISSING if twin_of(n) is not None)
    assert not landed, f"these now have twins: take them out of EXPECTED_MISSING: {landed}"
    unknown = sorted(set(EXPECTED_MISSING) - names)
    assert not unknown, f"EXPECTED_MISSING lists modules module_db does not have: {unknown}"
    stale = sorted(name for _, name in KNOWN_FAILURES if twin_of(name) is None)
    assert not stale, f"KNOWN_FAILURES lists modules without a twin: {stale}"
    newer = {"LinearCrossEntropyLoss"} if not hasattr(torch.nn, "LinearCrossEntropyLoss") else set()  # torch 2.13
    losses_unknown = sorted(set(MODULE_LOSSES) - names - newer)
    assert not losses_unknown, f"MODULE_LOSSES lists modules module_db does not have: {losses_unknown}"
