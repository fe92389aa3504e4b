"""Two helpers every fnnet custom op and ``autograd.Function`` shares under ``torch.compile``.

* ``eager_island(grad)``: inside a custom op's implementation, run as plain eager code at top
  level. The dispatcher excludes autograd there (and functorch, under a dispatch mode such as
  the compiled graph's first-run aliasing check), and recomputing or differentiating a body
  needs both: what torch's own ``invoke_leaf_function`` does. Used by ``fnnet._loop``,
  ``fnnet.remat`` and ``cells.fused``.
* ``fresh_views(*tensors)``: while dynamo traces, a view of each input of a Function. Dynamo
  decides whether to trace a Function's backward from its inputs' ``requires_grad`` and reads
  a compiled function's own inputs as they were before ``torch.func.grad`` marked them (torch
  2.13): a gradient w.r.t. one such input alone would silently be zero. A view is a new
  tensor whose ``requires_grad`` it reads right. Pinned by ``tests/test_pins.py``.
"""

from __future__ import annotations

import contextlib

import torch

try:
    from torch.utils._python_dispatch import _disable_current_modes as _no_dispatch_modes
except ImportError:  # pragma: no cover - private in torch; present from 2.0 to 2.13 at least
    from contextlib import nullcontext as _no_dispatch_modes

# the dispatcher's thread-local key sets of plain eager code (read at import, at top level)
_EAGER_KEYS = (torch._C._dispatch_tls_local_include_set(), torch._C._dispatch_tls_local_exclude_set())


@contextlib.contextmanager
def eager_island(grad: bool = True):
    """Plain eager code at top level (autograd and functorch keys restored, dispatch modes
    off), grad mode set to ``grad``."""
    with _no_dispatch_modes(), torch._C._ForceDispatchKeyGuard(*_EAGER_KEYS), torch.set_grad_enabled(grad):
        yield


def fresh_views(*tensors: torch.Tensor | None, contiguous: bool = False) -> tuple:
    """While compiling, a view of each tensor (``None`` stays ``None``; ``contiguous``: of its
    contiguous copy); eagerly the tensors themselves."""
    if not torch.compiler.is_compiling():
        return tensors
    return tuple(None if t is None else (t.contiguous() if contiguous else t).view(t.shape) for t in tensors)
