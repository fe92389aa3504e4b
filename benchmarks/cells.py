"""Forward + backward of fnnet's LSTM / GRU / RNN against nn.LSTM / nn.GRU / nn.RNN (the
native kernels) in the same run: eager, and compiled with fn.jit (compile time apart).
I=32, H=128, B=32 at T=64 (and 256), a 2-layer bidirectional LSTM at T=64, and a long
T=4096 LSTM with peak memory (eager)."""

from __future__ import annotations

import resource
import time

import torch
from torch import nn

import cells
import fnnet as fn

from .common import first_call, row, timeit

I, H, B = 32, 128, 32  # noqa: E741


def _case(kind: str, T: int, compile_: bool, repeats: int, **kw) -> list[dict]:
    torch.manual_seed(0)
    native = getattr(nn, kind)(I, H, **kw)
    ours = getattr(cells, kind)(I, H, **kw)
    params = fn.params_from_module(native)
    x = torch.randn(T, B, I)
    desc = f"{kind} I={I} H={H} B={B} T={T}" + "".join(f" {k}={v}" for k, v in kw.items())

    def native_step():
        native.zero_grad(set_to_none=True)
        out, _ = native(x)
        out.square().mean().backward()

    def loss(p, x):
        out, _ = ours.apply(p, x)
        return out.square().mean()

    step = fn.value_and_grad(loss)
    base = timeit(native_step, repeats=repeats)
    rows = [row("cells", desc, f"nn.{kind} (native kernel)", base, base),
            row("cells", desc, "fnnet eager", timeit(lambda: step(params, x), repeats=repeats), base)]
    if compile_:
        compiled = fn.jit(step)
        ct = first_call(lambda: compiled(params, x))
        rows.append(row("cells", desc, "fnnet fn.jit (unrolled scan)",
                        timeit(lambda: compiled(params, x), repeats=repeats), base, compile_s=round(ct, 1)))
    return rows


def _peak_rss_mb(f) -> float:
    """Peak resident memory of the process after ``f`` (a high-water mark: run the smaller first)."""
    f()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _long(repeats: int) -> list[dict]:
    T = 4096
    torch.manual_seed(0)
    native = nn.LSTM(I, H)
    params = fn.params_from_module(native)
    x = torch.randn(T, B, I)
    desc = f"LSTM I={I} H={H} B={B} T={T}"

    def native_step():
        native.zero_grad(set_to_none=True)
        native(x)[0].square().mean().backward()

    ours = cells.LSTM(I, H)
    step = fn.value_and_grad(lambda p: ours.apply(p, x)[0].square().mean())
    t0 = time.perf_counter()
    native_mb = _peak_rss_mb(native_step)
    base = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    ours_mb = _peak_rss_mb(lambda: step(params))
    ms = (time.perf_counter() - t0) * 1e3
    return [row("cells", desc, "nn.LSTM (native kernel)", base, base, peak_rss_mb=round(native_mb)),
            row("cells", desc, "fnnet eager", ms, base, peak_rss_mb=round(ours_mb))]


def run(quick: bool = False) -> list[dict]:
    repeats = 3 if quick else 10
    rows = []
    for kind in ("LSTM", "GRU", "RNN"):
        rows += _case(kind, 64, compile_=not quick or kind == "LSTM", repeats=repeats)
    if not quick:
        rows += _case("LSTM", 256, compile_=False, repeats=repeats)
        rows += _case("LSTM", 64, compile_=False, repeats=repeats, num_layers=2, bidirectional=True)
        rows += _long(repeats)
    return rows
