"""Shared checks for leaf layers: errors that name the layer and what it expected."""

from __future__ import annotations

from typing import Any

import torch

from ..module import Module, ParamsError


def param(layer: Module, params: dict, name: str, shape: tuple) -> torch.Tensor:
    """``params[name]``, checked to exist with ``shape`` (static shapes: free under compile)."""
    try:
        p = params[name]
    except (KeyError, TypeError):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ParamsError(f"{layer!r}: params have no {name!r} (expected shape {list(shape)}); "
                          f"got {got}") from None
    if tuple(p.shape) != tuple(shape):
        raise ParamsError(f"{layer!r}: params[{name!r}] has shape {list(p.shape)}, "
                          f"expected {list(shape)}")
    return p


def no_extra(layer: Module, params: dict, names: tuple) -> None:
    if len(params) != len(names):
        extra = sorted(set(params) - set(names))
        if extra:
            raise ParamsError(f"{layer!r}: unexpected params {extra}; expected only {list(names)}")


def expect(layer: Module, ok: bool, what: str, x: Any) -> None:
    """Raise ``ValueError("<layer>: expected <what>, got <shape>")`` unless ``ok``."""
    if not ok:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{layer!r}: expected {what}, got {got}")


def ntuple(v: Any, n: int) -> tuple:
    if isinstance(v, (tuple, list)):
        if len(v) != n:
            raise ValueError(f"expected {n} values, got {tuple(v)}")
        return tuple(v)
    return (v,) * n
