"""Padding: ZeroPad, ConstantPad, ReflectionPad, ReplicationPad and CircularPad in 1d, 2d and 3d,
as their ``torch.nn`` namesakes (same arguments, no params, the same numbers, batched or not).

One class does the work for all fifteen (:class:`_Pad`); a named layer only says how many
trailing dims it pads (``n``) and how (``mode``, F.pad's). ``padding`` is an int (every side) or
``2n`` ints in F.pad's order, last dim first: ``(left, right)``, then ``(top, bottom)``, then
``(front, back)``; stored as that ``2n``-tuple. A negative amount crops, as in torch.

The input checks are torch's own conditions, raised before ``F.pad`` with the layer's name (on
static shapes: nothing runs for them in a compiled graph). For a padded dim of size ``s`` and
amounts ``l, r``:

- constant (Zero/ConstantPad): any input with at least ``n`` dims; a crop leaves a size ``>= 0``
  (``s + min(l, 0) + min(r, 0) >= 0``);
- reflect: ``[N, C, *n]`` or ``[C, *n]``, non-empty except the batch; ``l, r < s`` (a reflection
  does not repeat the edge, so it has ``s - 1`` values to give), an output size ``>= 0``, and
  ``>= 1`` in at least one padded dim (torch's rule: a crop may empty the others);
- replicate: ``[N, C, *n]`` or ``[C, *n]``, non-empty except the batch; output sizes as reflect's;
- circular: ``[N, C, *n]`` or ``[C, *n]``; torch crops first, then wraps what is left around, at
  most once: ``core = s + min(l, 0) + min(r, 0) >= 0`` and ``l, r <= core``. (torch 2.13 itself
  refuses some of the rest with a memory-overlap error and returns uninitialized memory for others,
  such as ``(-s, 1)``.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from .. import _check
from ..module import Module
from ._util import expect

_SIDES = {1: "(left, right)", 2: "(left, right, top, bottom)",
          3: "(left, right, top, bottom, front, back)"}


@dataclass(frozen=True)
class _Pad(Module):
    """Pads the last ``n`` dims of ``input`` by ``padding`` (see the module docstring)."""

    padding: Any

    n: ClassVar[int] = 1
    mode: ClassVar[str] = "constant"  # F.pad's mode

    def __post_init__(self):
        v, count = self.padding, 2 * self.n
        what = f"an int or a tuple of {count} ints {_SIDES[self.n]}"
        items = tuple(v) if isinstance(v, (tuple, list)) else (v,) * count
        owner = type(self).__name__
        pads = tuple(_check.integer(owner, "padding", p, expected=what, shown=v) for p in items)
        if len(pads) != count:
            _check.fail(owner, "padding", what, repr(v))
        object.__setattr__(self, "padding", pads)

    @property
    def _fill(self) -> float | None:
        return None

    def _check_input(self, x) -> None:
        n, name = self.n, type(self).__name__
        dims = ", ".join("*" * n)
        if self.mode == "constant":
            expect(self, isinstance(x, torch.Tensor) and x.ndim >= n, f"input with at least {n} dims "
                   f"(the last {n} padded), e.g. [N, C, {dims}]", x)
        else:
            expect(self, isinstance(x, torch.Tensor) and x.ndim in (n + 1, n + 2),
                   f"input [N, C, {dims}] or unbatched [C, {dims}]", x)
            if self.mode != "circular":
                kept = x.shape[1:] if x.ndim == n + 2 else x.shape
                expect(self, all(s > 0 for s in kept), f"non-empty dims except the batch (mode {self.mode!r})", x)
        outs = []
        for i in range(n):  # padding pairs run from the last dim back
            s, (lo, hi) = x.shape[x.ndim - 1 - i], self.padding[2 * i:2 * i + 2]
            outs.append(s + lo + hi)
            if self.mode == "constant":
                ok, why = s + min(lo, 0) + min(hi, 0) >= 0, "crops more than the dim holds"
            elif self.mode == "reflect":
                ok, why = lo < s and hi < s and outs[-1] >= 0, (
                    "must be smaller than the dim (a reflection has size - 1 values to give) and leave a size >= 0")
            elif self.mode == "replicate":
                ok, why = outs[-1] >= 0, "must leave a size >= 0"
            else:  # torch crops first, then wraps what is left around
                core = s + min(lo, 0) + min(hi, 0)
                ok, why = core >= 0 and max(lo, hi) <= core, (
                    "must wrap around at most once: each pad at most the size left after the crops")
            if not ok:
                raise ValueError(f"{name}(padding={self.padding}): padding ({lo}, {hi}) of dim {x.ndim - 1 - i} "
                                 f"(size {s}) of input {list(x.shape)} {why}")
        if self.mode in ("reflect", "replicate") and max(outs) < 1:  # torch: some padded dim non-empty
            raise ValueError(f"{name}(padding={self.padding}): input {list(x.shape)} is too small: the padded "
                             f"dims would all be empty (sizes {outs[::-1]})")

    def apply(self, params, input, *, key=None, train=False):
        """``input: [N, C, *]`` or ``[C, *]`` (constant modes: any rank >= n) -> each of the
        last ``n`` dims grown by its two amounts."""
        self._check_input(input)
        return F.pad(input, self.padding, self.mode, self._fill)


@dataclass(frozen=True)
class _ConstantPad(_Pad):
    """Pads with ``value``: a real number (``-inf`` is a fill for a max that follows)."""

    value: float

    def __post_init__(self):
        super().__post_init__()
        _check.real(type(self).__name__, "value", self.value, finite=False, expected="a real number")

    @property
    def _fill(self) -> float:
        return self.value


@dataclass(frozen=True)
class _ZeroPad(_Pad):
    """Pads with zeros (torch's ZeroPad: a ConstantPad with value 0)."""

    value: ClassVar[float] = 0.0

    @property
    def _fill(self) -> float:
        return 0.0


@dataclass(frozen=True)
class ZeroPad1d(_ZeroPad):
    """input: ``[N, C, W]`` or ``[C, W]``; ``padding (left, right)``."""


@dataclass(frozen=True)
class ZeroPad2d(_ZeroPad):
    """input: ``[N, C, H, W]`` or ``[C, H, W]``; ``padding (left, right, top, bottom)``."""

    n = 2


@dataclass(frozen=True)
class ZeroPad3d(_ZeroPad):
    """input: ``[N, C, D, H, W]`` or ``[C, D, H, W]``; ``padding (left, right, top, bottom, front, back)``."""

    n = 3


@dataclass(frozen=True)
class ConstantPad1d(_ConstantPad):
    """input: ``[N, C, W]`` or ``[C, W]``; ``padding (left, right)``, filled with ``value``."""


@dataclass(frozen=True)
class ConstantPad2d(_ConstantPad):
    """input: ``[N, C, H, W]`` or ``[C, H, W]``; ``padding (left, right, top, bottom)``."""

    n = 2


@dataclass(frozen=True)
class ConstantPad3d(_ConstantPad):
    """input: ``[N, C, D, H, W]`` or ``[C, D, H, W]``; ``padding (left, right, top, bottom, front, back)``."""

    n = 3


@dataclass(frozen=True)
class ReflectionPad1d(_Pad):
    """input: ``[N, C, W]`` or ``[C, W]``; mirrors without repeating the edge (``abc`` -> ``cbabcba``)."""

    mode = "reflect"


@dataclass(frozen=True)
class ReflectionPad2d(_Pad):
    """input: ``[N, C, H, W]`` or ``[C, H, W]``; mirrors without repeating the edge."""

    n, mode = 2, "reflect"


@dataclass(frozen=True)
class ReflectionPad3d(_Pad):
    """input: ``[N, C, D, H, W]`` or ``[C, D, H, W]``; mirrors without repeating the edge."""

    n, mode = 3, "reflect"


@dataclass(frozen=True)
class ReplicationPad1d(_Pad):
    """input: ``[N, C, W]`` or ``[C, W]``; repeats the edge value (``abc`` -> ``aabccc``)."""

    mode = "replicate"


@dataclass(frozen=True)
class ReplicationPad2d(_Pad):
    """input: ``[N, C, H, W]`` or ``[C, H, W]``; repeats the edge values."""

    n, mode = 2, "replicate"


@dataclass(frozen=True)
class ReplicationPad3d(_Pad):
    """input: ``[N, C, D, H, W]`` or ``[C, D, H, W]``; repeats the edge values."""

    n, mode = 3, "replicate"


@dataclass(frozen=True)
class CircularPad1d(_Pad):
    """input: ``[N, C, W]`` or ``[C, W]``; wraps around (``abc`` -> ``cabca``), as a periodic signal."""

    mode = "circular"


@dataclass(frozen=True)
class CircularPad2d(_Pad):
    """input: ``[N, C, H, W]`` or ``[C, H, W]``; wraps around (a torus)."""

    n, mode = 2, "circular"


@dataclass(frozen=True)
class CircularPad3d(_Pad):
    """input: ``[N, C, D, H, W]`` or ``[C, D, H, W]``; wraps around."""

    n, mode = 3, "circular"
