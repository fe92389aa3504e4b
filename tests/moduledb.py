"""PyTorch's own oracle for its modules, shared by the tests that replay it: ``module_db``
(``torch.testing._internal.common_modules``) lists, for each ``torch.nn`` module, constructor
arguments and forward inputs (``ModuleInput`` samples), in training and in eval mode.

    infos = module_db()                      # or pytest.skip, where torch.testing._internal is missing
    for info in infos_named("BatchNorm1d"):
        for training, sample in samples(info, torch.float64): ...

Used by ``test_losses_more.py`` (the loss modules) and ``test_module_db.py`` (the layers).
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


def samples(info: Any, dtype: torch.dtype) -> Iterator[tuple[bool, Any]]:
    """``(training, ModuleInput)`` for every sample of ``info``, in training and in eval mode,
    on the CPU, with float inputs that require grad (torch's warnings silenced)."""
    for training in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
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
