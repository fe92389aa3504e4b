"""The oldest torch fnnet supports, and the import-time check against it.

``TORCH_FLOOR`` is the oldest torch minor release on which the whole test suite was
measured to pass (README, "Supported torch versions"); ``pyproject.toml`` declares the
same floor. Importing fnnet on an older torch raises an ``ImportError`` that names the
version found and the floor, instead of failing later inside dynamo or an op schema.
``FNNET_IGNORE_TORCH_FLOOR=1`` skips the check: for measuring what an older torch still
runs (``make test-compat``), not for use.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import importlib.util
import os
import re
from collections.abc import Callable

import torch

TORCH_FLOOR = (2, 11)

_VERSION = re.compile(r"\s*(\d+)\.(\d+)")


def parse_torch_version(version: str) -> tuple[int, int]:
    """``(major, minor)`` of a torch version string: ``"2.11.0+cu130"`` -> ``(2, 11)``;
    pre-releases and local builds (``"2.12.0a0+git1234"``, ``"2.13.0.dev20260101"``) count
    as their minor release."""
    m = _VERSION.match(str(version))
    if m is None:
        raise ValueError(f"cannot read a torch version from {version!r}")
    return int(m.group(1)), int(m.group(2))


def check_torch_version(version: str) -> None:
    """Raise ``ImportError`` if ``version`` is older than :data:`TORCH_FLOOR`; a version
    string that cannot be read is let through (a source build may carry any label)."""
    try:
        found = parse_torch_version(version)
    except ValueError:
        return
    if found < TORCH_FLOOR:
        floor = ".".join(map(str, TORCH_FLOOR))
        raise ImportError(
            f"fnnet needs torch >= {floor}, found torch {version}. Older releases cannot compile "
            f"fnnet's training steps or register its ops; install a newer torch, e.g. "
            f"pip install 'torch>={floor}'.")


# torch.compiler.assume_constant_result: fnnet folds a few questions about a module (its
# expected params tree, its name, whether it is stateful) into the graph as constants. From
# torch 2.12 dynamo hands such a function its object arguments as they are (guarded by
# identity); up to 2.11 it accepts only Python constants, and a module (a frozen dataclass)
# stops a fullgraph compile with "currently can't reconstruct arbitrary frozen dataclass
# instances". There, a module crosses as its id(), which dynamo reads as a constant and guards
# by identity (a recompile for another module, as 2.12 does), and is looked up again when the
# function runs for real at trace time; the object is alive then, held by the traced frame.
DYNAMO_PASSES_OBJECTS = parse_torch_version(torch.__version__) >= (2, 12)
_BOXED = "<fnnet: object by id>"


def _box(a):
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        return (_BOXED, id(a))
    return a


def _unbox(a):
    if type(a) is tuple and len(a) == 2 and a[0] == _BOXED:
        return ctypes.cast(a[1], ctypes.py_object).value
    return a


def assume_constant_result(fn: Callable) -> Callable:
    """``torch.compiler.assume_constant_result`` whose arguments may be fnnet modules on every
    supported torch (itself from 2.12 on; see :data:`DYNAMO_PASSES_OBJECTS`)."""
    if DYNAMO_PASSES_OBJECTS:
        return torch.compiler.assume_constant_result(fn)

    def unboxed(*args, **kwargs):
        return fn(*map(_unbox, args), **{k: _unbox(v) for k, v in kwargs.items()})

    folded = torch.compiler.assume_constant_result(unboxed)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if torch.compiler.is_compiling():
            return folded(*map(_box, args), **{k: _box(v) for k, v in kwargs.items()})
        return fn(*args, **kwargs)

    return wrapper


# After a recompile, dynamo turns an int it read from a module's field (a Linear's in_features,
# when one step function meets two models) into a symbolic int, and then cannot format it into
# an error message the layers build (BUILD_STRING on a SymInt): the compile fails. fn.jit
# compiles with ints specialized (another value recompiles; the values computed are the same).
# Believed fixed in 2.13 once; measured there again (tests/test_compat.py): on every torch.
SPECIALIZE_INTS = True

# oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``, the op inductor's CPU fusions emit) is in
# every CPU build since torch 2.0 with the same schema; a build without oneDNN (or another backend)
# lacks it, and fnnet.layers._gemm then keeps to torch's GEMM. The inductor pass that puts compiled
# matmuls on it needs torch._inductor.custom_graph_pass (torch 2.6 on).
HAS_ONEDNN_LINEAR = hasattr(torch.ops.mkldnn, "_linear_pointwise")
# (looked up, not imported: importing inductor takes seconds)
HAS_CUSTOM_GRAPH_PASS = importlib.util.find_spec("torch._inductor.custom_graph_pass") is not None

if os.environ.get("FNNET_IGNORE_TORCH_FLOOR") != "1":
    check_torch_version(torch.__version__)
