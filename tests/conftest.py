"""Shared test settings: hypothesis profiles and the tolerance used by parity tests.

Profiles: ``default`` (20 examples, no deadline: CPU timings on shared machines are noisy),
``ci`` (derandomized, the same examples every run) and ``thorough`` (300 examples, to hunt
bugs after a change to the layers). Pick with ``HYPOTHESIS_PROFILE=ci``.
"""

from __future__ import annotations

import os

import torch
from hypothesis import HealthCheck, settings

_common = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}
settings.register_profile("default", max_examples=20, **_common)
settings.register_profile("ci", max_examples=20, derandomize=True, **_common)
settings.register_profile("thorough", max_examples=300, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# float64: the same math in the same order agrees to ~1e-12; 1e-10 leaves room for
# reductions done in a different order. float32: rounding level (torch.testing's defaults).
TOL = {torch.float64: {"rtol": 1e-10, "atol": 1e-10}, torch.float32: {"rtol": 1.3e-6, "atol": 1e-5}}


def assert_close(actual, expected, dtype=None, msg: str = "") -> None:
    """``torch.testing.assert_close`` at the parity tolerance of ``dtype`` (default: actual's)."""
    dtype = dtype or (actual.dtype if actual.is_floating_point() else torch.float64)
    torch.testing.assert_close(actual, expected, **TOL.get(dtype, TOL[torch.float32]),
                               msg=(lambda m: f"{msg}\n{m}") if msg else None)


def assert_trees_close(actual: dict, expected: dict, dtype=None, msg: str = "") -> None:
    """Same dotted paths and, leaf by leaf, :func:`assert_close`."""
    from fnnet import tree
    a, e = dict(tree.flatten_with_paths(actual)), dict(tree.flatten_with_paths(expected))
    assert a.keys() == e.keys(), f"{msg}: paths differ: {sorted(a)} vs {sorted(e)}"
    for p, x in a.items():
        assert_close(x, e[p], dtype, msg=f"{msg} {p}")


def pytest_terminal_summary(terminalreporter):
    """The bad-input tally (tests/badinput.py): per suite, calls tried, clear errors, silent results."""
    try:
        from badinput import TALLY
    except ImportError:
        return
    suites = sorted({s for s, _ in TALLY})
    if not suites:
        return
    terminalreporter.write_line("bad-input suites: tried / clear error / silent / foreign error")
    for s in suites:
        terminalreporter.write_line(f"  {s}: {TALLY[s, 'tried']} / {TALLY[s, 'clear']} / {TALLY[s, 'silent']} / "
                                    f"{TALLY[s, 'foreign']}")
