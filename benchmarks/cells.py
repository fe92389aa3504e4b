"""Forward + backward of fnnet's LSTM / GRU / RNN against nn.LSTM / nn.GRU / nn.RNN (the
native kernels: oneDNN on CPU, cuDNN on CUDA) in the same run: eager, and compiled with
fn.jit (compile time in its own column).

Cases (I=32, H=128, B=32): each kind at T=64 and 256; a 2-layer bidirectional LSTM at T=64;
LSTM compile time at T=16 and T=1024 (flat: the time loop is one op, not unrolled); an
LSTMCell under the generic ``fnnet.scan``, forward only (torch's scan op), and trained as a
user's cell in ``cells.Recurrent`` (``fnnet._loop``: compiled chunks of the step, flat in T) at
T=16, 64 and 256, with a row for the same step recomputing each chunk's forward in its backward
(``fnnet._loop.RESIDUALS`` off) beside the default residual path; a long
T=4096 LSTM with peak memory (CPU: peak RSS of a fresh process running one step; CUDA:
``max_memory_allocated``). With jax installed (the ``bench`` extra) a column for the same
LSTM written with ``jax.lax.scan`` under ``jax.jit(value_and_grad)``. On CUDA also H=256,
B=64 against cuDNN. ``--quick``: LSTM/GRU/RNN at T=64 only, eager and compiled.

A WGAN-GP critic step through an LSTM critic (I=8, H=64, B=64, T=32; a second derivative):
the baseline is ``nn.LSTM`` with ``torch.autograd.grad(create_graph=True)``; against it the
layer eagerly (``cells.fused``'s differentiable backward), with ``fused=False`` (the cell
stepped by ``fnnet.scan``, differentiated by autograd), and under ``fn.jit`` (where a second
derivative steps the cell: ``cells.fused.steps_the_cell``). ``torch.compile`` of the
``nn.LSTM`` step is not timed: its ``autograd.grad`` inside the compiled function breaks the
graph, and a compiled backward cannot be differentiated again.

Implementations of a case are timed in interleaved rounds (median per implementation), so
load from other jobs drifts over all of them alike; compile time is the first call minus a
steady one, with inductor's FX graph cache off (its kernel cache may still be warm: the
long-sequence compile runs first). On a shared 2-core machine run it with
``OMP_NUM_THREADS=1``: oversubscribed OpenMP threads make every number meaningless.
"""

from __future__ import annotations

import functools
import multiprocessing
import resource
import statistics
import time

import torch
from torch import nn

import cells
import fnnet as fn
from fnnet import _loop

from .common import first_call, row, sync, timeit

I, H, B = 32, 128, 32  # noqa: E741
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _setup(kind: str, T: int, i: int, h: int, b: int, seed: int = 0, ours_kw: dict | None = None, **kw):
    torch.manual_seed(seed)
    native = getattr(nn, kind)(i, h, **kw).to(DEVICE)
    ours = getattr(cells, kind)(i, h, **kw, **(ours_kw or {}))
    params = {k: v.detach() for k, v in fn.params_from_module(native).items()}
    x = torch.randn(T, b, i, device=DEVICE)

    def native_step():
        native.zero_grad(set_to_none=True)
        out, _ = native(x)
        out.square().mean().backward()

    def loss(p, x):
        out, _ = ours.apply(p, x)
        return out.square().mean()

    return native_step, fn.value_and_grad(loss), params, x


def _interleaved(fns: dict, repeats: int) -> dict:
    """Median ms of each function, timed in rounds (one call of each per round) so that load
    from other jobs on a shared machine drifts over all of them alike."""
    for f in fns.values():
        timeit(f, warmup=2, repeats=1, device=DEVICE)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            times[name].append(timeit(f, warmup=0, repeats=1, device=DEVICE))
    return {name: statistics.median(t) for name, t in times.items()}


def _compiled(step, params, x) -> tuple:
    """``fn.jit(step)`` and its compile time: first call minus a steady call, FX graph cache
    off (inductor's compiled kernels on disk may still be reused).
    Dynamo is reset first: every case compiles the same code object (fn.value_and_grad's
    wrapper), and past its recompile limit dynamo would quietly run it eagerly."""
    torch._dynamo.reset()
    compiled = fn.jit(step, dynamic=False)
    with torch._inductor.config.patch(fx_graph_cache=False):
        first = first_call(lambda: compiled(params, x), device=DEVICE)
    steady = timeit(lambda: compiled(params, x), warmup=0, repeats=1, device=DEVICE) / 1e3
    return compiled, max(first - steady, 0.0)


def _case(kind: str, T: int, compile_: bool, repeats: int, i: int = I, h: int = H, b: int = B, **kw) -> list[dict]:
    native_step, step, params, x = _setup(kind, T, i, h, b, **kw)
    desc = f"{kind} I={i} H={h} B={b} T={T}" + "".join(f" {k}={v}" for k, v in kw.items())
    fns = {f"nn.{kind} (native kernel)": native_step, "fnnet eager": lambda: step(params, x)}
    extra = {}
    if compile_:
        compiled, ct = _compiled(step, params, x)
        fns["fnnet fn.jit"] = lambda: compiled(params, x)
        extra["fnnet fn.jit"] = {"compile_s": round(ct, 1)}
    if kind == "LSTM" and DEVICE == "cpu":  # the LSTM above runs on oneDNN; also the hand-written recurrence
        _, hand, _, _ = _setup(kind, T, i, h, b, ours_kw={"native": False}, **kw)
        fns["fnnet eager native=False"] = lambda: hand(params, x)
        if compile_:
            hand_compiled, hct = _compiled(hand, params, x)
            fns["fnnet fn.jit native=False"] = lambda: hand_compiled(params, x)
            extra["fnnet fn.jit native=False"] = {"compile_s": round(hct, 1)}
    ms = _interleaved(fns, repeats)
    base = ms[f"nn.{kind} (native kernel)"]
    rows = [row("cells", desc, name, t, base, **extra.get(name, {})) for name, t in ms.items()]
    if kind == "LSTM" and not kw:
        rows += _jax_row(desc, T, i, h, b, base, repeats)
    return rows


def _gradient_penalty(compile_: bool, repeats: int, T: int = 32, b: int = 64, i: int = 8, h: int = 64) -> list[dict]:
    """The critic step of WGAN-GP through an LSTM critic (see the module doc)."""
    torch.manual_seed(0)
    native = nn.LSTM(i, h).to(DEVICE)
    head = torch.randn(h, device=DEVICE, requires_grad=True)
    real, fake = torch.randn(T, b, i, device=DEVICE), torch.randn(T, b, i, device=DEVICE)
    mix = torch.rand(1, b, 1, device=DEVICE)
    x_hat = mix * real + (1 - mix) * fake
    params = {"lstm": {k: v.detach() for k, v in fn.params_from_module(native).items()}, "head": head.detach()}

    def torch_step():
        xr = x_hat.clone().requires_grad_()
        (gx,) = torch.autograd.grad((native(xr)[0][-1] @ head).sum(), xr, create_graph=True)
        penalty = (gx.square().sum((0, 2)).sqrt() - 1).square().mean()
        loss = (native(fake)[0][-1] @ head).mean() - (native(real)[0][-1] @ head).mean() + 10 * penalty
        return torch.autograd.grad(loss, [*native.parameters(), head])

    def gp_step(layer):
        def critic(p, x):
            return layer.apply(p["lstm"], x)[0][-1] @ p["head"]

        def loss(p):
            gx = fn.grad(lambda x: critic(p, x).sum())(x_hat)
            penalty = (gx.square().sum((0, 2)).sqrt() - 1).square().mean()
            return critic(p, fake).mean() - critic(p, real).mean() + 10 * penalty
        return fn.value_and_grad(loss)

    fast, stepped = gp_step(cells.LSTM(i, h)), gp_step(cells.LSTM(i, h, fused=False))
    fns = {"nn.LSTM autograd.grad(create_graph=True)": torch_step, "fnnet eager": lambda: fast(params),
           "fnnet eager fused=False": lambda: stepped(params)}
    extra = {}
    if compile_:
        torch._dynamo.reset()
        compiled = fn.jit(fast, dynamic=False)
        with torch._inductor.config.patch(fx_graph_cache=False):
            first = first_call(lambda: compiled(params), device=DEVICE)
        steady = timeit(lambda: compiled(params), warmup=0, repeats=1, device=DEVICE) / 1e3
        fns["fnnet fn.jit (steps the cell)"] = lambda: compiled(params)
        extra["fnnet fn.jit (steps the cell)"] = {"compile_s": round(max(first - steady, 0.0), 1)}
    ms = _interleaved(fns, repeats)
    desc = f"WGAN-GP critic step, LSTM critic I={i} H={h} B={b} T={T}"
    base = ms["nn.LSTM autograd.grad(create_graph=True)"]
    return [row("cells", desc, name, t, base, **extra.get(name, {})) for name, t in ms.items()]


def _compile_times() -> list[dict]:
    """Compile time of the LSTM training step at a long and a short sequence (the long one
    first: what caches warm up helps the short one)."""
    rows = []
    for T in (1024, 16):
        _, step, params, x = _setup("LSTM", T, I, H, B)
        _, ct = _compiled(step, params, x)
        rows.append(row("cells", f"LSTM I={I} H={H} B={B} T={T}", "fnnet fn.jit compile only", ct * 1e3,
                        compile_s=round(ct, 1)))
    return rows


def _scanned_cell(T: int, **scan_kw):
    """nn.LSTM, its weights as an LSTMCell's params, x, and ``scanned(p, x)``: the cell under
    fnnet.scan, returning the stacked h ``[T, B, H]``."""
    torch.manual_seed(0)
    native = nn.LSTM(I, H).to(DEVICE)
    params = {k.removesuffix("_l0"): v.detach() for k, v in fn.params_from_module(native).items()}
    cell = cells.LSTMCell(I, H)
    x = torch.randn(T, B, I, device=DEVICE)

    def scanned(p, x):
        h = x.new_zeros(B, H)
        return fn.scan(lambda s, x_t: (lambda new: (new, new[0]))(cell.apply(p, x_t, s)), (h, h), x, **scan_kw)[1]
    return native, params, x, scanned


def _scan_inference(T: int) -> list[dict]:
    """fnnet.scan of an LSTMCell under fn.jit without gradients (torch's scan op): compile
    time, and steady time against nn.LSTM's forward."""
    native, params, x, forward = _scanned_cell(T)
    with torch.no_grad():
        compiled, ct = _compiled(forward, params, x)
        ms = _interleaved({"native": lambda: native(x), "scan": lambda: compiled(params, x)}, repeats=5)
    desc = f"LSTMCell scanned, forward only, I={I} H={H} B={B} T={T}"
    return [row("cells", desc, "nn.LSTM forward (native kernel)", ms["native"], ms["native"]),
            row("cells", desc, "fnnet.scan fn.jit (scan op)", ms["scan"], ms["native"], compile_s=round(ct, 1))]


def _scan_training(T: int) -> list[dict]:
    """A user's cell trained compiled: ``cells.Recurrent(LSTMCell)`` under
    ``fn.jit(fn.value_and_grad)``, which runs the generic ``fnnet._loop`` (the step compiled in
    chunks, the graph flat in T): compile time, and steady time against nn.LSTM forward+backward."""
    native, params, x, _ = _scanned_cell(T)
    layer = cells.Recurrent(cells.LSTMCell(I, H))
    p = {"l0": params}

    def native_step():
        native.zero_grad(set_to_none=True)
        native(x)[0].square().mean().backward()

    step = fn.value_and_grad(lambda p, x: layer.apply(p, x)[0].square().mean())
    compiled, ct = _compiled(step, p, x)

    def scan_loss(p, x):  # the same cell under a bare fn.scan, its params named by a partial
        h = x.new_zeros(B, H)
        return fn.scan(functools.partial(_lstm_step, layer.cell, p["l0"]), (h, h), x)[1].square().mean()
    scanned, sct = _compiled(fn.value_and_grad(scan_loss), p, x)
    # the same step on the recompute path (each chunk's forward recomputed in the backward), for
    # comparison: compiled with fnnet._loop.RESIDUALS off, and called with it off (dynamo's guard)
    recompute = fn.jit(step, dynamic=False)

    def without_residuals():
        _loop.RESIDUALS = False
        try:
            return recompute(p, x)
        finally:
            _loop.RESIDUALS = True
    without_residuals()
    ms = _interleaved({"native": native_step, "loop": lambda: compiled(p, x), "recompute": without_residuals,
                       "scan": lambda: scanned(p, x)}, repeats=5)
    desc = f"LSTMCell in Recurrent, fwd+bwd, I={I} H={H} B={B} T={T}"
    return [row("cells", desc, "nn.LSTM (native kernel)", ms["native"], ms["native"]),
            row("cells", desc, "Recurrent(cell) fn.jit (fnnet._loop)", ms["loop"], ms["native"],
                compile_s=round(ct, 1)),
            row("cells", desc, "Recurrent(cell) fn.jit, recomputing backward", ms["recompute"], ms["native"]),
            row("cells", desc, "fn.scan(partial(step, cell, params)) fn.jit (fnnet._loop)", ms["scan"],
                ms["native"], compile_s=round(sct, 1))]


def _lstm_step(cell, p, state, x_t):
    """One step of ``cell`` as a scan body: ``(state, x_t) -> (state, h)``."""
    new = cell.apply(p, x_t, state)
    return new, new[0]


def _one_step_peak(kind: str, impl: str, T: int, threads: int, queue) -> None:
    """In a fresh process: peak RSS growth (MB) over one fwd+bwd step, after setup and a
    warm-up step on a short sequence."""
    torch.set_num_threads(threads)
    native_step, step, params, x = _setup(kind, T, I, H, B)
    # a first call on a short sequence: what is measured is the step, not the process's
    # one-time setup (oneDNN primitives, torch.library and functorch machinery)
    warm_native, warm_step, warm_params, warm_x = _setup(kind, 2, I, H, B)
    warm_native() if impl == "native" else warm_step(warm_params, warm_x)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    native_step() if impl == "native" else step(params, x)
    ms = (time.perf_counter() - t0) * 1e3
    queue.put(((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, ms))


def _peak(kind: str, impl: str, T: int) -> tuple[float, float]:
    if DEVICE == "cuda":
        native_step, step, params, x = _setup(kind, T, I, H, B)
        f = native_step if impl == "native" else (lambda: step(params, x))
        f()  # warm-up
        sync(DEVICE)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ms = timeit(f, warmup=0, repeats=1, device=DEVICE)
        return (torch.cuda.max_memory_allocated() - base) / 2**20, ms
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    p = ctx.Process(target=_one_step_peak, args=(kind, impl, T, torch.get_num_threads(), queue))
    p.start()
    out = queue.get()
    p.join()
    return out


def _long() -> list[dict]:
    T = 4096
    desc = f"LSTM I={I} H={H} B={B} T={T} (one step, fresh process)"
    native_mb, base = _peak("LSTM", "native", T)
    ours_mb, ms = _peak("LSTM", "fnnet", T)
    return [row("cells", desc, "nn.LSTM (native kernel)", base, base, peak_mb=round(native_mb)),
            row("cells", desc, "fnnet eager", ms, base, peak_mb=round(ours_mb),
                peak_ratio=round(ours_mb / native_mb, 2) if native_mb > 0 else None)]


def _jax_row(desc: str, T: int, i: int, h: int, b: int, base: float, repeats: int) -> list[dict]:
    """The same LSTM in JAX: ``lax.scan`` of the cell under ``jit(value_and_grad)``."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return []
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    s = 1 / h ** 0.5
    p = {"w_ih": jax.random.uniform(k[0], (4 * h, i), minval=-s, maxval=s),
         "w_hh": jax.random.uniform(k[1], (4 * h, h), minval=-s, maxval=s),
         "b": jax.random.uniform(k[2], (4 * h,), minval=-s, maxval=s)}
    x = jax.random.normal(k[3], (T, b, i))

    def loss(p, x):
        xp = x @ p["w_ih"].T + p["b"]

        def cell(carry, xp_t):
            hh, c = carry
            gi, gf, gg, go = jnp.split(xp_t + hh @ p["w_hh"].T, 4, -1)
            c = jax.nn.sigmoid(gf) * c + jax.nn.sigmoid(gi) * jnp.tanh(gg)
            hh = jax.nn.sigmoid(go) * jnp.tanh(c)
            return (hh, c), hh
        zeros = jnp.zeros((b, h))
        _, ys = jax.lax.scan(cell, (zeros, zeros), xp)
        return jnp.mean(ys ** 2)

    step = jax.jit(jax.value_and_grad(loss))
    t0 = time.perf_counter()
    jax.block_until_ready(step(p, x))
    ct = time.perf_counter() - t0
    ms = timeit(lambda: jax.block_until_ready(step(p, x)), repeats=repeats)
    return [row("cells", desc, "jax lax.scan jit", ms, base, compile_s=round(ct, 1))]


def run(quick: bool = False) -> list[dict]:
    repeats = 3 if quick else 10
    rows = []
    for kind in ("LSTM", "GRU", "RNN"):
        rows += _case(kind, 64, compile_=True, repeats=repeats)
    if quick:
        return rows
    for kind in ("LSTM", "GRU", "RNN"):
        rows += _case(kind, 256, compile_=True, repeats=repeats)
    rows += _case("LSTM", 64, compile_=True, repeats=repeats, num_layers=2, bidirectional=True)
    rows += _gradient_penalty(compile_=True, repeats=repeats)
    rows += _compile_times()
    rows += _scan_inference(1024) + _scan_inference(16)  # the long one first, as above
    rows += _scan_training(16) + _scan_training(64) + _scan_training(256)
    rows += _long()
    if DEVICE == "cuda":
        for kind in ("LSTM", "GRU"):
            rows += _case(kind, 256, compile_=True, repeats=repeats, h=256, b=64)
    return rows
