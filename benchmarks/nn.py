"""Attention layers against their torch.nn twins, on the same weights, in the same run:

- a ``TransformerEncoderLayer`` training step (d_model 256, 4 heads, feed-forward 1024,
  dropout 0.1, batch_first, seq 128, batch 32; ``--quick``: seq 32, batch 8): loss
  ``mean(y^2)``, gradients and an SGD update. torch: ``nn.TransformerEncoderLayer`` +
  ``backward()`` + ``torch.optim.SGD`` (foreach), eager (the baseline) and with the module
  ``torch.compile``'d (the usual recipe: forward and backward compiled, the optimizer eager);
  fnnet: ``fn.value_and_grad`` + ``optim.sgd`` eager, and the whole step under ``fn.jit``.
  Dropout masks come from torch's RNG there and from keys here (Threefry), so the step
  includes drawing them.
- ``MultiheadAttention`` forward alone (self-attention, same sizes), inference
  (``torch.no_grad``, eval: torch's eager module runs its native fused kernel), with and
  without the attention weights.

Implementations are timed round-robin (one call of each per round, medians over rounds), so
load from other jobs falls on all alike; compile time (the first call) is reported apart.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import fnnet as fn
from fnnet import optim, random

from .common import first_call, row, sync

D_MODEL, HEADS, FF, DROPOUT, LR = 256, 4, 1024, 0.1, 1e-2


def _round_robin(fs: dict[str, Callable], rounds: int, warmup: int = 2) -> dict[str, list[float]]:
    for f in fs.values():
        for _ in range(warmup):
            f()
    sync()
    times = {k: [] for k in fs}
    for _ in range(rounds):
        for k, f in fs.items():
            t0 = time.perf_counter()
            f()
            sync()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return times


def _rows(case: str, times: dict, baseline: str, compile_s: dict) -> list[dict]:
    base = statistics.median(times[baseline])
    return [row("nn", case, name, statistics.median(t), base, min_ms=round(min(t), 2),
                **({"compile_s": round(compile_s[name], 1)} if name in compile_s else {}))
            for name, t in times.items()]


def _encoder_step(seq: int, batch: int, rounds: int, device) -> list[dict]:
    torch.manual_seed(0)
    tmod = nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, DROPOUT, batch_first=True).to(device).train()
    layer = fn.TransformerEncoderLayer(D_MODEL, HEADS, FF, DROPOUT, batch_first=True)
    x = torch.randn(batch, seq, D_MODEL, device=device)
    t_opt = torch.optim.SGD(tmod.parameters(), lr=LR, foreach=True)
    compiled_tmod = torch.compile(tmod)

    def torch_step(m):
        def step():
            t_opt.zero_grad(set_to_none=True)
            loss = m(x).square().mean()
            loss.backward()
            t_opt.step()
            return loss
        return step

    opt = optim.sgd(LR)
    params = fn.params_from_module(tmod)
    state = opt.init(params)
    key = random.key(0, device=device)

    def step(p, s, x, k):
        loss, grads = fn.value_and_grad(lambda p: layer.apply(p, x, key=k, train=True).square().mean())(p)
        updates, s = opt.update(grads, s, p)
        return optim.apply_updates(p, updates), s, loss

    jitted = fn.jit(step)
    # the same function on the same weights (inference: no dropout), or the timings compare different work
    with torch.no_grad():
        want = tmod.eval()(x)
    tmod.train()
    assert torch.allclose(layer.apply(params, x), want, atol=1e-4, rtol=1e-4)

    fns = {"torch nn.TransformerEncoderLayer, eager": torch_step(tmod),
           "torch, torch.compile(module)": torch_step(compiled_tmod),
           "fnnet, eager": lambda: step(params, state, x, key),
           "fnnet, fn.jit (fullgraph)": lambda: jitted(params, state, x, key)}
    compile_s = {"torch, torch.compile(module)": first_call(fns["torch, torch.compile(module)"], device),
                 "fnnet, fn.jit (fullgraph)": first_call(fns["fnnet, fn.jit (fullgraph)"], device)}
    case = f"TransformerEncoderLayer train step d{D_MODEL} h{HEADS} ff{FF} seq{seq} batch{batch} {device}"
    return _rows(case, _round_robin(fns, rounds), "torch nn.TransformerEncoderLayer, eager", compile_s)


def _attention_forward(seq: int, batch: int, rounds: int, device) -> list[dict]:
    torch.manual_seed(0)
    tmod = nn.MultiheadAttention(D_MODEL, HEADS, batch_first=True).to(device).eval()
    layer = fn.MultiheadAttention(D_MODEL, HEADS, batch_first=True)
    params = fn.params_from_module(tmod)
    x = torch.randn(batch, seq, D_MODEL, device=device)
    rows = []
    for need_weights in (True, False):
        torch._dynamo.reset()
        compiled_tmod = torch.compile(tmod)

        def fwd(p, x, need_weights=need_weights):
            return layer.apply(p, x, x, x, need_weights=need_weights)

        jitted = fn.jit(fwd)
        with torch.no_grad():
            want = tmod(x, x, x, need_weights=need_weights)[0]
            assert torch.allclose(fwd(params, x)[0], want, atol=1e-4, rtol=1e-4)
        fns = {"torch nn.MultiheadAttention, eager": lambda nw=need_weights: tmod(x, x, x, need_weights=nw),
               "torch, torch.compile(module)": lambda nw=need_weights, c=compiled_tmod: c(x, x, x, need_weights=nw),
               "fnnet, eager": lambda f=fwd: f(params, x),
               "fnnet, fn.jit (fullgraph)": lambda j=jitted: j(params, x)}
        with torch.no_grad():
            compile_s = {name: first_call(fns[name], device)
                         for name in ("torch, torch.compile(module)", "fnnet, fn.jit (fullgraph)")}
            times = _round_robin(fns, rounds)
        case = (f"MultiheadAttention forward (no grad) d{D_MODEL} h{HEADS} seq{seq} batch{batch} "
                f"need_weights={need_weights} {device}")
        rows += _rows(case, times, "torch nn.MultiheadAttention, eager", compile_s)
    return rows


def run(quick: bool = False) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    seq, batch, rounds = (32, 8, 5) if quick else (128, 32, 10)
    torch._dynamo.reset()
    rows = _encoder_step(seq, batch, rounds, device)
    return rows + _attention_forward(seq, batch, 5 * rounds, device)  # milliseconds each: more rounds
