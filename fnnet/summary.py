"""``fn.summary(params)``: a table of paths, shapes, dtypes and parameter counts.

    >>> print(fn.summary(params, state=state, model=model))
    Sequential
    path        shape     dtype    params
    0.weight    [16, 2]   float32      32
    ...
    total params: 1,153 (4.5 KiB)
"""

from __future__ import annotations

from typing import Any

import torch

from . import tree as T

__all__ = ["summary"]


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""  # unreachable


def _rows(tree: Any, tag: str = "") -> list[tuple[str, str, str, str]]:
    rows = []
    for path, x in T.flatten_with_paths(tree):
        if isinstance(x, torch.Tensor):
            rows.append((path + tag, str(list(x.shape)), str(x.dtype).removeprefix("torch."), f"{x.numel():,}"))
        else:
            rows.append((path + tag, "-", type(x).__name__, "-"))
    return rows


def _total(tree: Any) -> tuple[int, int]:
    ts = [x for x in T.leaves(tree) if isinstance(x, torch.Tensor)]
    return sum(x.numel() for x in ts), sum(x.numel() * x.element_size() for x in ts)


def summary(params: Any, state: Any = None, model: Any = None) -> str:
    """A printable table of every leaf of ``params`` (and of ``state``, marked ``(state)``
    and counted apart): dotted path, shape, dtype, number of elements; then the totals.
    ``model`` adds its name as a title and checks that ``params`` fit it."""
    rows = _rows(params) + (_rows(state, " (state)") if state is not None else [])
    head = ("path", "shape", "dtype", "params")
    table = [head] + rows
    w = [max(len(r[i]) for r in table) for i in range(4)]
    fmt = lambda r: f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]:>{w[3]}}"
    lines = []
    if model is not None:
        name = type(model).__name__
        lines.append(name)
        if hasattr(model, "check"):
            model.check(params, state)
    lines += [fmt(head), "-" * (sum(w) + 6)] + [fmt(r) for r in rows]
    n, nbytes = _total(params)
    lines.append("-" * (sum(w) + 6))
    lines.append(f"total params: {n:,} ({_bytes(nbytes)})")
    if state is not None:
        sn, sbytes = _total(state)
        lines.append(f"total state:  {sn:,} ({_bytes(sbytes)})")
    return "\n".join(lines)
