"""One Adam step over a 100-leaf, 10M-parameter tree: fnnet eager and compiled against
torch.optim.Adam (foreach=True, and fused=True where the build has it), in the same run."""

from __future__ import annotations

import torch

import fnnet as fn
from fnnet import optim, random

from .common import first_call, row, timeit


def run(quick: bool = False) -> list[dict]:
    leaves, size = (20, 50_000) if quick else (100, 100_000)
    repeats = 5 if quick else 20
    keys = random.split(random.key(0), 2 * leaves)
    params = {f"w{i}": random.normal(keys[i], (size,)) for i in range(leaves)}
    grads = {f"w{i}": random.normal(keys[leaves + i], (size,)) for i in range(leaves)}
    case = f"Adam step, {leaves} leaves, {leaves * size / 1e6:g}M params"

    tparams = [p.clone().requires_grad_() for p in params.values()]
    for p, g in zip(tparams, grads.values()):
        p.grad = g.clone()
    base_opt = torch.optim.Adam(tparams, 1e-3, foreach=True)
    base = timeit(base_opt.step, repeats=repeats)
    rows = [row("optim", case, "torch.optim.Adam(foreach=True)", base, base)]
    try:
        fused = torch.optim.Adam([p.detach().clone().requires_grad_() for p in tparams], 1e-3, fused=True)
        for p, g in zip(fused.param_groups[0]["params"], grads.values()):
            p.grad = g.clone()
        rows.append(row("optim", case, "torch.optim.Adam(fused=True)", timeit(fused.step, repeats=repeats), base))
    except (RuntimeError, ValueError) as e:  # fused needs a build that has the kernel for this device
        rows.append(row("optim", case, f"torch.optim.Adam(fused=True): unavailable ({type(e).__name__})", float("nan")))

    opt = optim.adam(1e-3)

    def step(params, state):
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state

    box = {"p": params, "s": opt.init(params)}

    def eager():
        box["p"], box["s"] = step(box["p"], box["s"])

    rows.append(row("optim", case, "fnnet adam, eager (_foreach)", timeit(eager, repeats=repeats), base))
    compiled = fn.jit(step)
    cbox = {"p": params, "s": opt.init(params)}

    def comp():
        cbox["p"], cbox["s"] = compiled(cbox["p"], cbox["s"])

    ct = first_call(comp)
    rows.append(row("optim", case, "fnnet adam, fn.jit", timeit(comp, repeats=repeats), base, compile_s=round(ct, 1)))
    return rows
