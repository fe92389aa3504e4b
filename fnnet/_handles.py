"""Handles: the ints that name a Python object (a loop's body, a rematerialized function) to an
opaque custom op in a compiled graph, ``torch.ops.fnnet.loop(handle, ...)``.

Why not 0, 1, 2, ...: inductor's FX graph cache and AOT autograd's cache key a graph by its
code and constants, on disk, across processes, and a handle is one of those constants. Two
processes whose first loops differ only in what the graph cannot see (the chunk length, the
body, the residuals the body's partition stores) would build the same graph around handle 0,
and the second would run the first one's compiled graph, its output sizes and counts included,
with its own loop. Each process numbers its handles from its own random start instead: a graph
compiled around another process's handle never matches one of this process's (the chunks'
own graphs, plain torch ops, stay cacheable).
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterator

__all__ = ["counter"]


def counter() -> Iterator[int]:
    """A sequence of handles from a random start of this process's own (below 2**60: a handle is
    an int64 argument of the ops)."""
    return itertools.count(secrets.randbits(40) << 20)
