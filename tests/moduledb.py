"""Test helpers for comparing fnnet with torch.nn module by module.

PyTorch's own oracle, ``module_db`` (``torch.testing._internal.common_modules``), lists for each
``torch.nn`` module constructor arguments and forward inputs (``ModuleInput`` samples), in
training and in eval mode::

    for info in infos_named("BatchNorm1d"):         # skips the test where module_db is missing
        for training, sample in samples(info, torch.float64): ...

:func:`twin_parity` runs a torch module and its fnnet twin on the same weights and inputs and
pairs up what must agree (outputs, running statistics, gradients); :func:`assert_pairs_close`
checks the pairs. Used by ``test_losses_more.py`` (the loss modules), ``test_module_db.py``
(every layer with a twin) and ``test_layers_more.py`` (hypothesis-drawn arguments).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import torch


def try_module_db() -> tuple[list | None, str]:
    """``(module_db, "")``, or ``(None, why)`` where it cannot be imported (it needs the
    ``expecttest`` package, which torch does not install)."""
    try:
        from torch.testing._internal.common_modules import module_db as db
    except ImportError as e:
        return None, f"torch.testing._internal is not importable here ({e}); pip install expecttest"
    return db, ""


def module_db() -> list:
    """The ModuleInfo list, or skip the calling test saying why it is missing."""
    db, why = try_module_db()
    if db is None:
        pytest.skip(why)
    return db


def infos_named(name: str) -> list:
    """The ModuleInfos of the ``torch.nn`` class called ``name``."""
    return [m for m in module_db() if m.module_cls.__name__ == name]


def samples(info: Any, dtype: torch.dtype, seed: int = 0) -> Iterator[tuple[bool, Any]]:
    """``(training, ModuleInput)`` for every sample of ``info``, in training and in eval mode,
    on the CPU, with float inputs that require grad (torch's warnings silenced). The inputs are
    drawn from torch's global generator: seeded here (and restored after), so every run replays
    the same numbers."""
    for training in (True, False):
        with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
            warnings.simplefilter("ignore")
            torch.manual_seed(seed)
            batch = list(info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                                 training=training))
        for sample in batch:
            yield training, sample


def copy_inputs(x: Any) -> Any:
    """A fresh copy of a sample's inputs (tensors detached and cloned, keeping requires_grad;
    tuples, lists and dicts copied through), so two runs never share a leaf."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone().requires_grad_(x.requires_grad)
    if isinstance(x, dict):
        return {k: copy_inputs(v) for k, v in x.items()}
    return type(x)(copy_inputs(v) for v in x) if isinstance(x, (list, tuple)) else x


# -- a torch module against its fnnet twin ----------------------------------------------------------

def _tensors(out: Any) -> list[torch.Tensor]:
    """The tensors of a (nested tuple of) outputs, in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _tensors(o)]
    return []


def _requiring_grad(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    return [t for t in _tensors((*args, *kwargs.values())) if t.requires_grad]


def _cotangents(outs: list[torch.Tensor]) -> list[torch.Tensor]:
    """A fixed random direction per output (the plain sum would hide softmax's gradient: it is 0)."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(o.shape, generator=g, dtype=torch.float64).to(o.dtype) for o in outs]


def twin_parity(theirs: torch.nn.Module, twin: Any, args: tuple, kwargs: dict, training: bool,
                state: dict | None = None) -> dict[str, tuple]:
    """Run ``theirs(*args, **kwargs)`` (in ``training`` mode) and ``twin.apply`` on its params
    (``fn.params_from_module``) and buffers (``fn.state_from_module``, or ``state``), each on its
    own copy of the inputs, and return ``{what: (ours, theirs)}`` for: every output tensor, the
    running statistics after the call, and the gradients (along a fixed random cotangent) w.r.t.
    every parameter, by name, and every input that requires grad.

    A stateful twin returns torch's updated buffers; a stateless one is right only where torch's
    forward leaves its buffers as they were (FractionalMaxPool's fixed ``_random_samples``)."""
    import fnnet as fn
    from fnnet import interop

    theirs.train(training)
    params = fn.params_from_module(theirs)
    state = fn.state_from_module(theirs) if state is None else state

    t_args, t_kwargs = copy_inputs(args), copy_inputs(kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t_out = _tensors(theirs(*t_args, **t_kwargs))
    t_state = fn.state_from_module(theirs)
    named = dict(theirs.named_parameters())
    t_wrt = list(named.values()) + _requiring_grad(t_args, t_kwargs)

    o_args, o_kwargs = copy_inputs(args), copy_inputs(kwargs)
    leaves = interop.flat(params)
    for p in leaves.values():
        p.requires_grad_(True)
    out = twin.apply(params, *o_args, **o_kwargs, train=training, **({"state": state} if twin.stateful else {}))
    o_state = state
    if twin.stateful:
        out, o_state = out
    o_out = _tensors(out)
    o_wrt = [leaves[n] for n in named] + _requiring_grad(o_args, o_kwargs)

    assert len(o_out) == len(t_out), f"{len(o_out)} output tensors, torch's module gives {len(t_out)}"
    pairs = {f"output {i}": (a, b) for i, (a, b) in enumerate(zip(o_out, t_out))}
    ours_state, theirs_state = interop.flat(o_state), interop.flat(t_state)
    assert ours_state.keys() == theirs_state.keys(), \
        f"state paths differ: {sorted(ours_state)} vs torch's {sorted(theirs_state)}"
    pairs.update({f"state {k}": (ours_state[k], v) for k, v in theirs_state.items()})
    diff = [i for i, o in enumerate(t_out) if o.requires_grad]
    if diff and t_wrt:
        cot = _cotangents([t_out[i] for i in diff])
        t_grads = torch.autograd.grad([t_out[i] for i in diff], t_wrt, cot, allow_unused=True)
        o_grads = torch.autograd.grad([o_out[i] for i in diff], o_wrt, cot, allow_unused=True)
        labels = [f"grad {n}" for n in named] + [f"grad input {i}" for i in range(len(t_wrt) - len(named))]
        for label, a, b in zip(labels, o_grads, t_grads, strict=True):
            # torch gives None for a leaf the outputs do not depend on: zeros mean the same
            pairs[label] = (torch.zeros_like(b) if a is None and b is not None else a,
                            torch.zeros_like(a) if b is None and a is not None else b)
    return pairs


def assert_pairs_close(pairs: dict[str, tuple], dtype: torch.dtype, where: str) -> None:
    """Each ``(ours, theirs)`` of :func:`twin_parity` equal in shape and dtype, and in value at the
    parity tolerance of ``dtype`` (conftest.TOL; nan where torch has nan)."""
    from conftest import TOL
    for what, (a, b) in pairs.items():
        if a is None and b is None:
            continue
        assert a.shape == b.shape and a.dtype == b.dtype, \
            f"{where}: {what}: {a.dtype} {list(a.shape)} vs torch's {b.dtype} {list(b.shape)}"
        torch.testing.assert_close(a, b, **TOL.get(dtype, TOL[torch.float32]), equal_nan=True,
                                   msg=lambda m, w=f"{where}: {what}": f"{w}\n{m}")
