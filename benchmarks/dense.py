"""Dense layers per shape class: ``fn.Linear`` against ``nn.Linear``, float32 on the CPU, on each
GEMM fnnet can pick (``fnnet/layers/_gemm.py``).

Cases (batch x in -> out): small 32x64->64, medium 512x400->400 (the course's WGAN-GP critic),
large 2048x1024->1024; each ``forward`` (no autograd recording: torch under ``no_grad``) and
``forward+backward`` (gradients of ``sum(y * g)`` w.r.t. weight, bias and input: ``.backward()``
for torch, ``fn.grad`` for fnnet). Rows:

- ``nn.Linear`` (the baseline of its case);
- ``fn.Linear, gemm=torch``: ``F.linear``, torch's GEMM (BLAS; MKL on x86);
- ``fn.Linear, gemm=onednn``: oneDNN's GEMM where the matmul is at least ``MIN_WORK``
  multiply-adds (the small case stays on torch's by that rule, so its row shows the rule's cost);
- ``fn.Linear, gemm=auto``: what this machine's probe chose for the forward (``chosen`` column);
  inside ``fn.grad`` ``auto`` keeps torch's GEMM (the eager Function's functorch dispatch costs
  more than the kernel saves), so its forward+backward row is torch's whatever ``chosen`` says;
- ``oneDNN kernel alone`` (forward only): ``_linear_pointwise`` without fnnet, whatever the size:
  what the ``MIN_WORK`` rule turns down for small matmuls.

Per matmul class (``... layout``), the kernels compiled code chooses between, as inductor calls
them: torch's ``addmm``/``mm`` (the baseline), ``fnnet::onednn_mm`` and torch's GEMM on the
transposed problem ``(b^T @ a^T)^T``, for the three layouts of a dense layer's matmuls:
``x @ W^T + b`` (forward), ``g @ W`` (input gradient), ``g^T @ x`` (weight gradient); the
``auto`` column (on the baseline's row) is the kernel compiled ``gemm=auto`` takes for that class
in this process (``gemm_for``: only the kernels that apply to the class are weighed: oneDNN from
``MIN_WORK``, the transposed problem for narrow matmuls). ``narrow 512x2->400`` is the WGAN-GP
critic's first layer, whose gradients are matmuls with 2 output columns.

Implementations are timed in interleaved rounds (each round a loop of calls), so that load from
other processes on a shared machine falls on all of them alike; medians over the rounds.
"""

from __future__ import annotations

import statistics
import time

import torch

import fnnet as fn
from fnnet.layers import _gemm

from .common import gemm_mode, row

SUITE = "dense"
SHAPES = {"small 32x64->64": (32, 64, 64), "narrow 512x2->400": (512, 2, 400), "medium 512x400->400": (512, 400, 400),
          "large 2048x1024->1024": (2048, 1024, 1024)}




def _in_mode(mode: str, f):
    def run():
        with gemm_mode(mode):
            return f()
    return run


def _interleaved(fns: dict, calls: int, rounds: int) -> dict[str, list[float]]:
    """Per-call times (ms) of each function in ``rounds`` interleaved rounds of ``calls`` calls,
    after one warm-up round."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(rounds + 1):
        for name, f in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                f()
            if r:
                times[name].append((time.perf_counter() - t0) * 1e3 / calls)
    return times


def _case(name: str, rows_: int, i: int, o: int, quick: bool) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    tmod = torch.nn.Linear(i, o)
    layer, params = fn.Linear(i, o), fn.params_from_module(tmod)
    x, cot = torch.randn(rows_, i, generator=g), torch.randn(rows_, o, generator=g)
    work = rows_ * i * o
    calls = max(1, min(200, int(2e8 // (work * 3))))  # ~a few ms of work per round
    rounds = 5 if quick else 15

    def torch_forward():
        with torch.no_grad():
            return tmod(x)

    xt = x.clone().requires_grad_()

    def torch_step():
        tmod.zero_grad(set_to_none=True)
        xt.grad = None
        (tmod(xt) * cot).sum().backward()

    step = fn.grad(lambda p, x: (layer(p, x) * cot).sum(), argnums=(0, 1))
    forward = {"nn.Linear": torch_forward}
    backward = {"nn.Linear": torch_step}
    for mode in ("torch", "onednn", "auto"):
        forward[f"fn.Linear, gemm={mode}"] = _in_mode(mode, lambda: layer(params, x))
        backward[f"fn.Linear, gemm={mode}"] = _in_mode(mode, lambda: step(params, x))
    if _gemm._onednn_usable():
        w, b = params["weight"], params["bias"]
        forward["oneDNN kernel alone"] = lambda: _gemm._raw(x, w, b)

    with gemm_mode("onednn"):  # the same numbers, or the timings compare different work
        torch.testing.assert_close(layer(params, x), torch_forward(), rtol=1e-5, atol=1e-4)
    chosen = "onednn" if _gemm.applies(torch.float32, x.device, rows_, i, o) else "torch"
    out = []
    for what, fns in (("forward", forward), ("forward+backward", backward)):
        ms = _interleaved(fns, calls, rounds)
        base = statistics.median(ms["nn.Linear"])
        for impl, t in ms.items():
            extra = {"chosen": chosen} if impl.endswith("auto") else {}
            out.append(row(SUITE, f"{name} {what}", impl, statistics.median(t), base, min_ms=round(min(t), 4),
                           **extra))
    return out


def _layouts(name: str, rows_: int, i: int, o: int, quick: bool) -> list[dict]:
    """torch's GEMM against oneDNN's on each layout a dense layer's matmuls take in a compiled graph."""
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(rows_, i, generator=g), torch.randn(o, i, generator=g), torch.randn(o, generator=g)
    gy = torch.randn(rows_, o, generator=g)
    # (a, b, bias) of mm(a, b) / addmm(bias, a, b): a and b as they are stored in the graph
    cases = {"x @ W^T + b": (x, w.t(), b), "g @ W": (gy, w, None), "g^T @ x": (gy.t(), x, None)}
    work = rows_ * i * o
    calls = max(1, min(200, int(2e8 // (work * 3))))
    out = []
    for layout, (a, bm, bias) in cases.items():
        fns = {"torch addmm/mm": (lambda a=a, bm=bm, bias=bias: torch.addmm(bias, a, bm)) if bias is not None
               else (lambda a=a, bm=bm: torch.mm(a, bm)),
               "fnnet::onednn_mm": lambda a=a, bm=bm, bias=bias: torch.ops.fnnet.onednn_mm(a, bm, bias),
               "torch, transposed problem":
                   (lambda a=a, bm=bm, bias=bias: torch.addmm(bias.unsqueeze(1), bm.t(), a.t()).t()) if bias is not None
                   else (lambda a=a, bm=bm: torch.mm(bm.t(), a.t()).t())}
        for f in fns.values():
            torch.testing.assert_close(f(), fns["torch addmm/mm"](), rtol=1e-4, atol=1e-3)
        answer = _gemm.gemm_for(rows_, a.shape[1], bm.shape[1], _gemm._transposed(a), _gemm._transposed(bm),
                                int(bias is not None))
        with torch.no_grad():
            ms = _interleaved(fns, calls, 5 if quick else 15)
        base = statistics.median(ms["torch addmm/mm"])
        out += [row(SUITE, f"{name} {layout} layout", impl, statistics.median(t), base, min_ms=round(min(t), 4),
                    **({"auto": answer} if impl == "torch addmm/mm" else {}))
                for impl, t in ms.items()]
    return out


def run(quick: bool = False) -> list[dict]:
    with gemm_mode("auto"):
        _gemm.onednn_measured_faster()  # the probe, once, before anything is timed
    rows_ = []
    for name, shape in SHAPES.items():
        if quick and shape[0] > 512:
            continue
        rows_ += _case(name, *shape, quick)
        if _gemm._onednn_usable():
            rows_ += _layouts(name, *shape, quick)
    return rows_
