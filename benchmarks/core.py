"""Core overheads on a small MLP (2 -> 64 -> 64 -> 1, batch 32), the size where per-call
Python overhead dominates and any cost of the functional style shows.

- ``mlp_apply``: eager ``model.apply(params, x)`` vs ``nn.Module`` forward (both without
  autograd recording: fnnet params are plain tensors, torch runs under ``no_grad``).
  Goal: ratio <= 1.2.
- ``mlp_train_step``: ``fn.jit`` of (``value_and_grad`` of an MSE loss + plain SGD via
  ``tree.map``) vs ``nn.Module`` + ``torch.optim.SGD`` eager (zero_grad, forward, backward,
  step). Goal: ratio <= 0.67 (1.5x faster). Compile time is reported apart (``compile_s``).

Times are per call in ms: medians of repeats after warm-up, each repeat a loop of calls.
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F

import fnnet as fn
from fnnet import random, tree

from .common import first_call, row, timeit

SUITE = "core"
LOOP = 50  # calls per timed repeat: single calls of ~20 us are below the timer's noise


def _models():
    model = fn.Sequential(fn.Linear(2, 64), fn.relu, fn.Linear(64, 64), fn.relu, fn.Linear(64, 1))
    params = model.init(random.key(0))
    tmod = torch.nn.Sequential(torch.nn.Linear(2, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                               torch.nn.ReLU(), torch.nn.Linear(64, 1))
    tmod.load_state_dict(fn.to_state_dict(params))
    return model, params, tmod


def _paired(fs: list, quick: bool) -> list[float]:
    """Per-call medians (ms) of each function, their repeats interleaved so that load from
    other processes on a shared machine hits all of them alike."""
    def loop(f):
        for _ in range(LOOP):
            f()
    for f in fs:
        for _ in range(2 if quick else 5):
            loop(f)
    times: list[list[float]] = [[] for _ in fs]
    for _ in range(7 if quick else 31):
        for i, f in enumerate(fs):
            times[i].append(timeit(lambda f=f: loop(f), warmup=0, repeats=1) / LOOP)
    return [statistics.median(t) for t in times]


def run(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    model, params, tmod = _models()
    x, y = torch.randn(32, 2), torch.randn(32, 1)
    rows = []

    # -- eager apply vs forward ---------------------------------------------------------------
    assert torch.allclose(model.apply(params, x), tmod(x), atol=1e-6)

    def torch_forward():
        with torch.no_grad():
            return tmod(x)

    base, ours = _paired([torch_forward, lambda: model.apply(params, x)], quick)
    rows.append(row(SUITE, "mlp_apply", "torch nn.Module forward", base))
    rows.append(row(SUITE, "mlp_apply", "fnnet apply", ours, base))

    # -- train step -----------------------------------------------------------------------------
    lr = 0.01
    opt = torch.optim.SGD(tmod.parameters(), lr=lr)

    def torch_step():
        opt.zero_grad()
        loss = F.mse_loss(tmod(x), y)
        loss.backward()
        opt.step()
        return loss

    def loss_fn(p, x, y):
        return F.mse_loss(model.apply(p, x), y)

    def step(p, x, y):
        loss, grads = fn.value_and_grad(loss_fn)(p, x, y)
        return tree.map(lambda w, g: w - lr * g, p, grads), loss

    state = {"p": params}

    def fn_eager_step():
        state["p"], loss = step(state["p"], x, y)
        return loss

    compiled = fn.jit(step)

    def fn_jit_step():
        state["p"], loss = compiled(state["p"], x, y)
        return loss

    compile_s = first_call(fn_jit_step)
    base, eager, jitted = _paired([torch_step, fn_eager_step, fn_jit_step], quick)
    rows.append(row(SUITE, "mlp_train_step", "torch nn.Module + optim.SGD eager", base))
    rows.append(row(SUITE, "mlp_train_step", "fnnet value_and_grad + SGD eager", eager, base))
    rows.append(row(SUITE, "mlp_train_step", "fnnet jit(value_and_grad + SGD)", jitted, base,
                    compile_s=round(compile_s, 2)))
    return rows
