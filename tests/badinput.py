"""The contract of the bad-input suites (``tests/test_bad_input_*.py``): an invalid argument is
refused by fnnet's own code with a clear error, never a silent result and never an error from
deep inside torch.

    expect_clear_error(lambda: fn.Linear(-1, 3), match="Linear")

passes when the call raises one of :data:`CLEAR` and the frame that raised it is in fnnet,
cells or losses (not torch, not numpy). Each call is counted, per suite, for the tally that
``python -m pytest tests/test_bad_input_*.py -p no:xdist -s`` prints at the end (tried /
clear error / silent = returned without an error).
"""

from __future__ import annotations

import collections
import os
import re
import traceback
from collections.abc import Callable
from typing import Any

from fnnet.module import ParamsError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = tuple(os.path.join(ROOT, pkg) + os.sep for pkg in ("fnnet", "cells", "losses"))

# the library's error types; ParamsError and CheckpointError are ValueError subclasses
CLEAR = (ValueError, TypeError, ParamsError, IndexError)

TALLY: collections.Counter = collections.Counter()


def _raised_by_us(exc: BaseException) -> bool:
    frames = traceback.extract_tb(exc.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(OURS)


def expect_clear_error(call: Callable[[], Any], match: str | None = None, suite: str = "") -> BaseException:
    """Run ``call``; it must raise a :data:`CLEAR` error from fnnet's own code (``match``: a
    regex the message must contain). Returns the exception."""
    suite = suite or _caller_suite()
    TALLY[suite, "tried"] += 1
    try:
        result = call()
    except CLEAR as exc:
        if not _raised_by_us(exc):
            TALLY[suite, "foreign"] += 1
            where = traceback.extract_tb(exc.__traceback__)[-1]
            raise AssertionError(f"{type(exc).__name__} raised outside fnnet, at {where.filename}:{where.lineno}: "
                                 f"{exc}") from exc
        if match is not None and not re.search(match, str(exc)):
            raise AssertionError(f"error message {str(exc)!r} does not match {match!r}") from exc
        TALLY[suite, "clear"] += 1
        return exc
    except Exception as exc:  # any other type: not the library's clear error
        TALLY[suite, "foreign"] += 1
        raise AssertionError(f"expected a ValueError/TypeError from fnnet, got {type(exc).__name__}: {exc}") from exc
    TALLY[suite, "silent"] += 1
    raise AssertionError(f"no error: the call returned {type(result).__name__}")


def _caller_suite() -> str:
    for frame in reversed(traceback.extract_stack()[:-2]):
        name = os.path.basename(frame.filename)
        if name.startswith("test_"):
            return name.removesuffix(".py")
    return "?"
