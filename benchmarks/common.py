"""Timing helpers shared by every benchmark suite.

Timings on shared machines are noisy, so a suite reports each implementation's median
over repeats after warm-up, and its ratio to a baseline measured in the same run;
compile time is measured apart from steady-state time.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import Any
from collections.abc import Callable

import torch


def sync(device: Any = None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def timeit(f: Callable[[], Any], *, warmup: int = 3, repeats: int = 10, min_time: float = 0.0,
           device: Any = None) -> float:
    """Median wall time of ``f()`` in milliseconds, after ``warmup`` calls."""
    for _ in range(warmup):
        f()
    sync(device)
    times = []
    start_all = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start_all) < min_time:
        t0 = time.perf_counter()
        f()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def first_call(f: Callable[[], Any], device: Any = None) -> float:
    """Seconds taken by the first call (compile time for a freshly compiled function)."""
    t0 = time.perf_counter()
    f()
    sync(device)
    return time.perf_counter() - t0


def row(suite: str, case: str, impl: str, ms: float, baseline_ms: float | None = None,
        **extra: Any) -> dict:
    r = {"suite": suite, "case": case, "impl": impl, "ms": round(ms, 4)}
    if baseline_ms:
        r["ratio"] = round(ms / baseline_ms, 3)
    r.update(extra)
    return r


@contextlib.contextmanager
def gemm_mode(mode: str):
    """``fnnet.layers.linear.set_gemm(mode)`` for the block, the previous choice restored after."""
    from fnnet.layers import linear
    before = linear.get_gemm()
    linear.set_gemm(mode)
    try:
        yield
    finally:
        linear.set_gemm(before)
