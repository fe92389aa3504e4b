"""Scan over layers (``fn.Stacked``) against the unrolled Sequential of the same blocks, and
rematerialization (``fn.checkpoint``) against storing activations.

- ``stack_fwd_N`` / ``stack_train_N``: an MLP of N residual blocks (D -> H -> D, batch B),
  ``fn.jit`` of a forward under ``no_grad`` and of a training step (``value_and_grad`` of an MSE
  loss), ``fn.Stacked(block, N)`` vs ``fn.Sequential`` of N blocks (baseline). ``compile_s`` is
  the first call (dynamo reset and inductor's caches off before each, so each compile is
  cold), ``ms`` the median step after warm-up, the two timed in turns. Goals (issue 15): compile time at 48 blocks
  <= 1.5x that at 4; step time <= 1.1x the unrolled Sequential's.
  Training rows also time ``fn.Stacked(block, N, remat=True)``: the compiled loop recomputing
  each chunk's forward in its backward instead of keeping each layer's residuals.
- ``stack_train_16_wide``: the same with D=256, H=1024, batch 128.
- ``remat_N``: bytes kept for the backward of one eager training step of N blocks (plain
  autograd): each storage counted once through ``saved_tensors_hooks`` on the CPU, peak
  ``max_memory_allocated`` on a GPU; ``fn.Stacked(..., remat=True)`` vs the Sequential.

Numbers are per call; ratios are to the Sequential of the same run.
"""

from __future__ import annotations

import statistics

import torch

import fnnet as fn
from fnnet import random

from .common import first_call, row, timeit

SUITE = "stack"
D, H, B = 64, 128, 32


def _block(d: int = D, h: int = H):
    return fn.Residual([fn.Linear(d, h), fn.relu, fn.Linear(h, d)])


def _compiled(f):
    """``fn.jit(f)`` compiled cold: no dynamo cache, no inductor FX/AOT caches."""
    torch._dynamo.reset()
    return fn.jit(f, dynamic=False)


def _case(n: int, train: bool, repeats: int, d: int = D, h: int = H, b: int = B, tag: str = "") -> list[dict]:
    stacked = fn.Stacked(_block(d, h), n)
    seq = stacked.as_sequential()
    params = stacked.init(random.key(0))
    x, target = torch.randn(b, d), torch.randn(b, d)
    impls = {"Sequential": (seq, stacked.unstack(params)), "Stacked": (stacked, params)}
    if train:  # the recompute path (each chunk's forward recomputed in the backward) beside the residual one
        impls["Stacked(remat=True)"] = (fn.Stacked(_block(d, h), n, remat=True), params)
    out = {}
    for name, (model, p) in impls.items():
        if train:
            def loss(p, model=model):
                return (model.apply(p, x) - target).square().mean()
            f = _compiled(fn.value_and_grad(loss))

            def call(f=f, p=p):
                return f(p)
        else:
            f = _compiled(model.apply)

            def call(f=f, p=p):
                with torch.no_grad():
                    return f(p, x)
        out[name] = (first_call(call), call)
    # steps timed in turns, so that load from other processes hits both alike
    times: dict = {name: [] for name in out}
    for _, call in out.values():
        timeit(call, warmup=3, repeats=1)
    for _ in range(repeats):
        for name, (_, call) in out.items():
            times[name].append(timeit(call, warmup=0, repeats=1))
    ms = {name: statistics.median(t) for name, t in times.items()}
    case = f"stack_{'train' if train else 'fwd'}_{n}{tag}"
    return [row(SUITE, case, name, ms[name], ms["Sequential"], compile_s=round(c, 2))
            for name, (c, _) in out.items()]


def _saved_bytes(step) -> int:
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        return torch.cuda.max_memory_allocated() - before
    seen: dict = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values())


def _remat(n: int) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows, base = [], None
    for name, model in (("Sequential", fn.Sequential(*[_block()] * n)),
                        ("Stacked(remat=True)", fn.Stacked(_block(), n, remat=True))):
        p = fn.tree.map(lambda v: v.to(device).requires_grad_(), model.init(random.key(0)))
        x = torch.randn(256, D, device=device)

        def step(model=model, p=p, x=x):
            loss = model.apply(p, x).square().mean()
            if not torch.cuda.is_available():
                return loss  # the hooks counted what the backward would read
            loss.backward()

        mb = _saved_bytes(step) / 2**20
        base = base or mb
        rows.append(row(SUITE, f"remat_{n}", name, 0.0, None, saved_mb=round(mb, 2), mem_ratio=round(mb / base, 3)))
    return rows


def run(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    depths = (4, 16) if quick else (4, 16, 48)
    repeats = 5 if quick else 20
    rows = []
    with torch.compiler.config.patch(force_disable_caches=True):  # every compile cold
        warm = _compiled(lambda x: x * 2)
        first_call(lambda: warm(torch.ones(2)))  # the process's first compile (imports), not counted
        for train in (False, True):
            for n in depths:
                rows += _case(n, train, repeats)
        if not quick:  # wider blocks: the arithmetic, not per-op overhead, dominates the step
            rows += _case(16, True, 5, d=256, h=1024, b=128, tag="_wide")
    for n in (16, 64):
        rows += _remat(n)
    return rows
