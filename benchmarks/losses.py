"""The course's WGAN-GP critic step (D: 2-400-400-400-1 ReLU, batch 512): Wasserstein loss +
lambda * gradient penalty, and its gradient w.r.t. the critic params.

Rows, all in the same run and on the same weights and interpolation weights:
- classic: ``nn.Module`` + ``autograd.grad(create_graph=True)`` + ``backward()``, eager (the
  baseline), and every way of compiling it that we know of (each fails today: the row says how);
- fnnet: ``fn.value_and_grad`` of a loss whose penalty takes the input gradient with
  ``torch.func``, eager and under ``fn.jit`` (fullgraph), as the library runs it now: ``fn.relu``
  (a backward with no derivative w.r.t. ``x``: ``fnnet/layers/_relu.py``) and, compiled, the
  GEMM that ``gemm=auto`` measured faster on this machine for each class of matmul
  (``fnnet/layers/_gemm.py``: ``gemm_for``; the ``gemm`` column counts those on oneDNN; the
  narrow matmuls of the 2-input layer's gradients may run as the transposed problem; eager,
  ``auto`` keeps torch's GEMM inside ``torch.func`` transforms);
- before: the same with ``F.relu``, whose backward has a zero derivative w.r.t. ``x`` that the
  double backward pushes through every layer (four more 400x400 matmuls, 17% of the step's
  FLOPs), and torch's GEMM: the library as it was;
- the two ends of that choice: ``gemm=torch`` under ``fn.jit``, and ``gemm=onednn`` forced,
  eager (``fn.Linear``'s oneDNN Function) and ``fn.jit`` with ``**jit_options()`` (the inductor
  pass that puts every big matmul of the compiled step on oneDNN);
- no row for a ReLU written as an ``autograd.Function`` with a hand-written backward (an earlier
  what-if, "0.6x"): under ``fn.jit`` torch 2.13 gets its gradients wrong inside the nested
  ``torch.func.grad`` (relative error ~1 against eager; the torch bug is pinned in
  ``tests/test_linear_gemm.py``), so its speed was that of a different computation. Every row's
  gradients are now checked against eager's before anything is timed;
- JAX, ``jit(value_and_grad)`` over ``vmap(grad(D))``, where ``jax`` is importable, on as many
  CPU threads as torch (``threads`` column): XLA sizes its thread pool from the CPUs it may run
  on, ignoring ``OMP_NUM_THREADS`` and its own ``intra_op_parallelism_threads`` flag, so jax is
  initialized with the process held to torch's number of CPUs (:func:`_import_jax`); a JAX
  step on every core against torch on one measured threads, not the libraries.

The step is the GEMMs: twenty ``512 x 400 x 400`` matmuls (forward of x, real and fake: 6; the
input gradient: 2; the real/fake backward: 4 input + 4 weight gradients; the penalty's double
backward: 2 + 2), the same twenty in JAX's optimized HLO. On one core their floor is the CPU's
peak FLOP rate, whichever library multiplies.

Implementations are timed in interleaved rounds, so that load from other jobs on a shared
machine falls on all of them alike; compile time is reported apart (``compile_s``), medians and
the fastest round (``min_ms``).
"""

from __future__ import annotations

import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import fnnet as fn
import losses
from fnnet import random
from fnnet.layers import _gemm, linear

from .common import gemm_mode, first_call, row, sync

LAMBDA = 10.0
WIDTHS = [2, 400, 400, 400, 1]


def _classic_step(D: nn.Module) -> Callable:
    def step(real, fake, eps):
        D.zero_grad(set_to_none=True)
        x = (eps * real + (1 - eps) * fake).requires_grad_()
        out = D(x)
        (g,) = torch.autograd.grad(out, x, torch.ones_like(out), create_graph=True)
        gp = ((g.norm(2, dim=1) - 1) ** 2).mean()
        loss = D(fake).mean() - D(real).mean() + LAMBDA * gp
        loss.backward()
        return loss

    return step




def _in_mode(mode: str, f: Callable) -> Callable:
    """``f`` run with fnnet's GEMM set to ``mode`` (eager fn.Linear reads it at each call)."""
    def run():
        with gemm_mode(mode):
            return f()
    return run


def _fnnet_step(act: Callable) -> Callable:
    layers = [m for a, b in itertools.pairwise(WIDTHS) for m in (fn.Linear(a, b), act)][:-1]
    critic = fn.Sequential(*layers)

    def critic_loss(p, real, fake, key):
        w = losses.discriminator_loss(critic(p, real), critic(p, fake), "wasserstein")
        return w + LAMBDA * losses.gradient_penalty(critic, p, real, fake, key)

    return fn.value_and_grad(critic_loss)


def _import_jax(threads: int):
    """``(jax, threads it runs on)``, or None where jax is not installed. A jax not yet
    initialized here starts with the process held to ``threads`` of its CPUs (``sched_setaffinity``,
    Linux), so that XLA's CPU thread pool, sized from those CPUs, has ``threads`` threads; the
    process gets all its CPUs back after. A jax initialized before keeps its own pool: "all"."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    hold = "jax" not in sys.modules and 0 < threads < len(cpus)
    try:
        if hold:
            os.sched_setaffinity(0, cpus[:threads])
        try:
            import jax
            import jax.numpy as jnp
        except ImportError:
            return None
        (jnp.ones(8) + 1).block_until_ready()  # the CPU client and its thread pool start here
    finally:
        if hold:
            os.sched_setaffinity(0, cpus)
    return jax, threads if hold or threads >= len(cpus) else "all"


def _jax_step(params: dict, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor):
    """The same step in JAX on torch's number of threads, ``(step, threads)``, or None where jax is
    not installed."""
    imported = _import_jax(torch.get_num_threads())
    if imported is None:
        return None
    jax, threads = imported
    jnp = jax.numpy
    n = len(WIDTHS) - 1
    jp = [(jnp.asarray(params[str(2 * i)]["weight"].cpu().numpy()),
           jnp.asarray(params[str(2 * i)]["bias"].cpu().numpy())) for i in range(n)]

    def D(p, x):
        for i, (w, b) in enumerate(p):
            x = x @ w.T + b
            x = jax.nn.relu(x) if i < n - 1 else x
        return x

    def critic_loss(p, real, fake, eps):
        x = eps * real + (1 - eps) * fake
        g = jax.vmap(jax.grad(lambda x: D(p, x[None])[0, 0]))(x)
        gp = jnp.mean((jnp.sqrt(jnp.sum(g * g, axis=1)) - 1.0) ** 2)
        return jnp.mean(D(p, fake)) - jnp.mean(D(p, real)) + LAMBDA * gp

    step = jax.jit(jax.value_and_grad(critic_loss))
    args = [jnp.asarray(t.cpu().numpy()) for t in (real, fake, eps)]
    return (lambda: jax.block_until_ready(step(jp, *args))), threads


def _interleaved(fns: dict[str, Callable], rounds: int, per_round: int, device) -> dict[str, list[float]]:
    """ms per call of each function in each round, timed round-robin (after a warm-up round)."""
    times = {name: [] for name in fns}
    for r in range(rounds + 1):
        for name, f in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(per_round):
                f()
            sync(device)
            if r:
                times[name].append((time.perf_counter() - t0) * 1e3 / per_round)
    return times


def _compiled_classic_variants(D: nn.Module, step: Callable, args: tuple, device):
    """Each way of compiling the classic step: (name, callable or None, compile s, error)."""
    def with_compiled_autograd():
        compiled = torch.compile(step)

        def f(*args):
            with torch._dynamo.config.patch(compiled_autograd=True):
                return compiled(*args)

        return f

    variants = {
        "torch.compile(step)": lambda: torch.compile(step),
        "torch.compile(step), compiled autograd": with_compiled_autograd,
        "torch.compile(D) + eager autograd.grad": lambda: _classic_step(torch.compile(D)),
    }
    out = []
    for name, make in variants.items():
        torch._dynamo.reset()
        try:
            f = make()
            ct = first_call(lambda f=f: f(*args), device)
            f(*args)  # the first call may succeed and the second still refuse (double backward)
            out.append((name, f, ct, None))
        except Exception as e:  # the failure is what the row reports
            message = str(e).splitlines()[0].replace("torch.compile with aot_autograd ", "aot_autograd ")
            out.append((name, None, None, f"{type(e).__name__}: {message[:70]}"))
    return out


def run(quick: bool = False) -> list[dict]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batch = 128 if quick else 512
    rounds, per_round = (3, 2) if quick else (10, 3)
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(batch, 2, generator=g).to(device), torch.randn(batch, 2, generator=g).to(device)
    key = random.key(0)
    # the classic step draws the same interpolation weights as fnnet's penalty from this key
    eps = random.uniform(key, (batch, 1), real.dtype).to(device)

    torch.manual_seed(0)
    D = nn.Sequential(*[m for a, b in itertools.pairwise(WIDTHS) for m in (nn.Linear(a, b), nn.ReLU())][:-1])
    D = D.to(device)
    params = fn.params_from_module(D)
    classic = _classic_step(D)
    ours, before = _fnnet_step(fn.relu), _fnnet_step(F.relu)
    fns = {"classic nn.Module + autograd.grad, eager": lambda: classic(real, fake, eps),
           "fnnet torch.func, eager": _in_mode("auto", lambda: ours(params, real, fake, key)),
           "before: F.relu, gemm=torch, eager": _in_mode("torch", lambda: before(params, real, fake, key))}
    # eager, "auto" keeps torch's GEMM inside torch.func transforms (fnnet/layers/_gemm.py: applies)
    gemm_of = {"fnnet torch.func, eager": "torch", "before: F.relu, gemm=torch, eager": "torch"}
    compile_s, failed = {}, []

    for name, f, ct, err in _compiled_classic_variants(D, classic, (real, fake, eps), device):
        if err is None:
            fns[f"classic, {name}"] = lambda f=f: f(real, fake, eps)
            compile_s[f"classic, {name}"] = ct
        else:
            failed.append((f"classic, {name}", err))

    torch._dynamo.reset()

    def compiled(name: str, step: Callable, mode: str) -> None:
        with gemm_mode(mode):
            j = fn.jit(step, **linear.jit_options())
            compile_s[name] = first_call(lambda: j(params, real, fake, key), device)
        fns[name] = _in_mode(mode, lambda: j(params, real, fake, key))
        gemm_of[name] = mode

    # each compiled row on a step of its own (fn.value_and_grad gives each its own code object),
    # so that no row reuses another's compiled graph
    compiled("fnnet torch.func, fn.jit (fullgraph)", ours, "auto")
    compiled("before: F.relu, gemm=torch, fn.jit", before, "torch")
    if device == "cpu" and _gemm._onednn_usable():  # "auto" chose per matmul: both ends, measured
        compiled("fn.relu alone: gemm=torch, fn.jit", _fnnet_step(fn.relu), "torch")
        fns["gemm=onednn forced, eager"] = _in_mode("onednn", lambda: ours(params, real, fake, key))
        gemm_of["gemm=onednn forced, eager"] = "onednn"
        compiled("gemm=onednn forced, fn.jit + jit_options()", _fnnet_step(fn.relu), "onednn")
    for name, gemm in gemm_of.items():  # the rows that say oneDNN run on it, compiled ones too
        if name in compile_s:
            calls, raw = [], _gemm._raw
            _gemm._raw = lambda *a, calls=calls, raw=raw: calls.append(1) or raw(*a)
            try:
                fns[name]()
            finally:
                _gemm._raw = raw
            if gemm == "auto":  # the pass chose per matmul class (fnnet/layers/_gemm.py: onednn_faster_for)
                gemm_of[name] = f"auto: {len(calls)} of 20 big matmuls on oneDNN"
            else:
                assert bool(calls) == (gemm == "onednn"), (name, gemm, len(calls))

    jax_step = _jax_step(params, real, fake, eps) if device == "cpu" else None
    threads = {}
    if jax_step is not None:
        jax_name = "JAX jit(value_and_grad) over vmap(grad)"
        jax_step, threads[jax_name] = jax_step
        compile_s[jax_name] = first_call(jax_step)
        fns[jax_name] = jax_step

    # the same loss and gradients everywhere, or the timings compare different work
    reference = classic(real, fake, eps).item()
    ref_grads = {n: p.grad.clone() for n, p in D.named_parameters()}
    for name, f in fns.items():
        if not name.startswith("classic"):
            value, grads = f()  # (loss, grads), from fnnet and JAX alike
            assert abs(float(value) - reference) <= 1e-4 * max(1.0, abs(reference)), (name, float(value), reference)
            if isinstance(grads, dict):  # fnnet: the params tree, nn's names
                for n, gr in fn.to_state_dict(grads).items():
                    err = (gr - ref_grads[n]).abs().max().item() / max(ref_grads[n].abs().max().item(), 1e-30)
                    assert err <= 1e-3, (name, n, err)

    ms = _interleaved(fns, rounds, per_round, device)
    case = f"WGAN-GP critic step, D 2-400-400-400-1, batch {batch}, {device}"
    base = statistics.median(ms["classic nn.Module + autograd.grad, eager"])
    rows = [row("losses", case, name, statistics.median(t), base, min_ms=round(min(t), 2),
                threads=threads.get(name, torch.get_num_threads()),
                **({"gemm": gemm_of[name]} if name in gemm_of else {}),
                **({"compile_s": round(compile_s[name], 1)} if name in compile_s else {}))
            for name, t in ms.items()]
    rows += [row("losses", case, name, float("nan"), error=err) for name, err in failed]
    return rows
