"""``fn.checkpoint``: peak memory and step time of a deep MLP training step, without
checkpoint, with it, and with each named policy.

- ``remat_<mode>_N``: N residual blocks ``h + Linear(H->D)(tanh(Linear(D->H)(h)))`` (D=256,
  H=1024, batch B; float32), loss ``mean(h**2)``, one training step:
  ``eager_autograd`` (``loss.backward()``), ``eager_grad`` (``fn.value_and_grad``),
  ``jit_autograd`` (``fn.jit`` of the loss, then ``.backward()``) and ``jit_grad``
  (``fn.jit(fn.value_and_grad(loss))``, the usual compiled step). ``impl``: ``none`` (the
  baseline), ``checkpoint`` (each block ``fn.checkpoint``-ed, ``policy=None``) and, under plain
  autograd where a policy is honoured, ``fn.checkpoint_policies.<name>``.
- ``peak_mb``: the step's peak resident memory above the resident memory before it, in a fresh
  process per row (``/proc/self/clear_refs`` resets the peak; ``MALLOC_MMAP_THRESHOLD_`` makes
  every large tensor its own mapping, returned when freed, so resident memory follows the live
  tensors); ``mem_ratio`` is to ``none`` of the same mode. ``ms``: the median step after
  warm-up, in that process; ``compile_s``: the first call.

Each row is its own process, so the step times of a mode are not timed in turns: on a shared
machine read ``ratio`` as rough.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from .common import row

SUITE = "remat"
D, H = 256, 1024
POLICIES = ("everything_saveable", "nothing_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")


def _child(mode: str, impl: str, n: int, b: int, repeats: int) -> dict:
    """Runs in the fresh process: one mode and impl, measured."""
    import gc

    import torch

    import fnnet as fn
    from fnnet import random, tree

    from .common import first_call, timeit

    block = fn.Sequential(fn.Linear(D, H), fn.tanh, fn.Linear(H, D))
    params = [block.init(k) for k in random.split(random.key(0), n)]
    x = torch.randn(b, D, generator=torch.Generator().manual_seed(0))

    def blk(p, h):
        return h + block.apply(p, h)

    f = blk if impl == "none" else fn.checkpoint(
        blk, policy=None if impl == "checkpoint" else getattr(fn.checkpoint_policies, impl))

    def loss(ps, x):
        h = x
        for p in ps:
            h = f(p, h)
        return (h * h).mean()

    if mode.endswith("autograd"):
        ps = tree.map(lambda p: p.detach().requires_grad_(), params)
        c = fn.jit(loss) if mode.startswith("jit") else loss

        def step():
            for p in tree.leaves(ps):
                p.grad = None
            v = c(ps, x)
            v.backward()
            return v
    else:
        g = fn.value_and_grad(loss)
        g = fn.jit(g) if mode.startswith("jit") else g

        def step():
            return g(params, x)

    compile_s = first_call(step)
    ms = timeit(step, warmup=1, repeats=repeats)

    def status(key: str) -> float:
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) / 1024
        raise KeyError(key)

    gc.collect()
    base = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # resets the peak (VmHWM) to the current resident size
    out = step()
    peak = status("VmHWM") - base
    del out
    return {"ms": ms, "peak_mb": peak, "compile_s": compile_s if mode.startswith("jit") else None}


def _measure(mode: str, impl: str, n: int, b: int, repeats: int) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    code = (f"import json; from benchmarks.remat import _child; "
            f"print(json.dumps(_child({mode!r}, {impl!r}, {n}, {b}, {repeats})))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        raise RuntimeError(f"benchmarks.remat: {mode}/{impl} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    n, b, repeats = (8, 1024, 3) if quick else (16, 2048, 10)
    policies = ("dots_saveable",) if quick else POLICIES
    rows = []
    for mode in ("eager_autograd", "eager_grad", "jit_autograd", "jit_grad"):
        impls = ["none", "checkpoint"] + (list(policies) if mode.endswith("autograd") else [])
        base = None
        for impl in impls:
            m = _measure(mode, impl, n, b, repeats)
            if impl == "none":
                base = m
            extra = {"peak_mb": round(m["peak_mb"], 1), "mem_ratio": round(m["peak_mb"] / base["peak_mb"], 3)}
            if m["compile_s"] is not None:
                extra["compile_s"] = round(m["compile_s"], 1)
            rows.append(row(SUITE, f"remat_{mode}_{n}", impl, m["ms"], base["ms"], **extra))
    return rows
