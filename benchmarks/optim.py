"""One Adam step over a 100-leaf, 10M-parameter tree: fnnet eager and compiled against
torch.optim.Adam (foreach=True, and fused=True where the build has it), in the same run.

The implementations are timed round-robin (one step of each per round, medians over rounds),
so load from other processes on a shared machine falls on all of them alike.

On the CPU, fnnet's eager step is bound by fresh memory, not arithmetic: a pure update writes
new ``exp_avg``, ``exp_avg_sq``, updates and params where torch.optim writes in place, and
glibc's malloc hands large freed blocks back to the OS, so every new buffer page-faults. Run
with ``MALLOC_TRIM_THRESHOLD_=<big> MALLOC_MMAP_THRESHOLD_=<big>`` (or jemalloc/tcmalloc) to see
the arithmetic alone; CUDA's caching allocator has no such cost.
"""

from __future__ import annotations

import statistics
import time

import torch

import fnnet as fn
from fnnet import optim, random

from .common import first_call, row, sync


def _round_robin(fs: dict, repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median ms of each ``f`` over ``repeats`` rounds, each round calling every ``f`` once."""
    for f in fs.values():
        for _ in range(warmup):
            f()
    sync()
    times = {k: [] for k in fs}
    for _ in range(repeats):
        for k, f in fs.items():
            t0 = time.perf_counter()
            f()
            sync()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def run(quick: bool = False) -> list[dict]:
    leaves, size = (20, 50_000) if quick else (100, 100_000)
    repeats = 7 if quick else 25
    device = "cuda" if torch.cuda.is_available() else "cpu"
    keys = random.split(random.key(0), 2 * leaves)
    params = {f"w{i}": random.normal(keys[i], (size,)).to(device) for i in range(leaves)}
    grads = {f"w{i}": random.normal(keys[leaves + i], (size,)).to(device) for i in range(leaves)}
    case = f"Adam step, {leaves} leaves, {leaves * size / 1e6:g}M params, {device}"

    def torch_adam(**kw):
        ps = [p.clone().requires_grad_() for p in params.values()]
        for p, g in zip(ps, grads.values()):
            p.grad = g.clone()
        return torch.optim.Adam(ps, 1e-3, **kw).step

    fs = {"torch.optim.Adam(foreach=True)": torch_adam(foreach=True)}
    try:
        fs["torch.optim.Adam(fused=True)"] = torch_adam(fused=True)
        fs["torch.optim.Adam(fused=True)"]()
    except (RuntimeError, ValueError) as e:  # fused needs a build with the kernel for this device
        del fs["torch.optim.Adam(fused=True)"]
        unavailable = type(e).__name__
    else:
        unavailable = None

    opt = optim.adam(1e-3)

    def step(params, state):
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state

    def runner(f):
        box = {"p": params, "s": opt.init(params)}

        def go():
            box["p"], box["s"] = f(box["p"], box["s"])
        return go

    fs["fnnet adam, eager (_foreach)"] = runner(step)
    comp = runner(fn.jit(step))
    compile_s = first_call(comp)
    fs["fnnet adam, fn.jit"] = comp

    ms = _round_robin(fs, repeats)
    base = ms["torch.optim.Adam(foreach=True)"]
    rows = [row("optim", case, k, v, base, **({"compile_s": round(compile_s, 1)} if k.endswith("fn.jit") else {}))
            for k, v in ms.items()]
    if unavailable:
        rows.append(row("optim", case, f"torch.optim.Adam(fused=True): unavailable ({unavailable})", float("nan")))
    return rows
