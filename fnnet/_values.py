"""Checks of *values* (indices in range, a variance >= 0), shared by layers and losses.

They read the data, so they run eagerly, run inside a compiled graph as an op of the graph
(:func:`checked_values`: the check cannot be traced away or constant-folded), and are skipped
under ``vmap`` (a batched tensor has no single value to test). An error names the layer or
loss and what was expected, instead of an IndexError from deep inside a torch kernel.
"""

from __future__ import annotations

import torch


def _inside_vmap() -> bool:
    from .transforms import inside_vmap
    return inside_vmap()


def check_range(x: torch.Tensor, low: float, high: float, message: str) -> None:
    """Raise ``ValueError(message)`` unless every element is in ``[low, high]`` (NaN fails)."""
    if x.numel() and not bool(((x >= low) & (x <= high)).all()):
        bad = x[~((x >= low) & (x <= high))]
        raise ValueError(f"{message}, got {bad.flatten()[:8].tolist()}")


@torch.library.custom_op("fnnet::checked_range", mutates_args=())
def _checked_range(x: torch.Tensor, low: float, high: float, message: str) -> torch.Tensor:
    """A zero of ``x``'s dtype, after :func:`check_range` of ``x``: added to ``x`` in a compiled
    graph, so the check runs on each call's values and cannot be dropped (``x`` comes in
    detached: nothing to differentiate through the op)."""
    check_range(x, low, high, message)
    return torch.zeros((), dtype=x.dtype, device=x.device)


@_checked_range.register_fake
def _(x, low, high, message):
    return torch.empty((), dtype=x.dtype, device=x.device)


def checked_values(x: torch.Tensor, low: float, high: float, message: str, *,
                   kernel_checks_on_accelerators: bool = False) -> torch.Tensor:
    """``x``, its values checked to lie in ``[low, high]``: eagerly, or as an op of a compiled
    graph; use the result in place of ``x``. Unchecked under ``vmap``. Reading values off an
    accelerator waits for it: where torch's kernels there assert on a bad value themselves
    (``kernel_checks_on_accelerators``: class indices), only CPU tensors are checked here."""
    if _inside_vmap() or (kernel_checks_on_accelerators and x.device.type != "cpu"):
        return x
    if torch.compiler.is_compiling():
        return x + _checked_range(x.detach(), float(low), float(high), message)  # x + 0: x's values
    check_range(x.detach(), low, high, message)
    return x


def eager_values() -> bool:
    """Whether data-dependent checks can read values here (eager, outside ``vmap``)."""
    return not torch.compiler.is_compiling() and not _inside_vmap()
