"""The course's WGAN-GP critic step (D: 2-400-400-400-1 ReLU, batch 512): loss + lambda * penalty
and its gradient w.r.t. the critic params. fnnet (torch.func, eager and fn.jit) against the
classic nn.Module + autograd.grad(create_graph=True) step (eager, and torch.compile where it
compiles at all), in the same run."""

from __future__ import annotations

import torch
from torch import nn

import fnnet as fn
import losses
from fnnet import random

from .common import first_call, row, timeit

LAMBDA = 10.0


def _classic(batch: int):
    torch.manual_seed(0)
    D = nn.Sequential(nn.Linear(2, 400), nn.ReLU(), nn.Linear(400, 400), nn.ReLU(),
                      nn.Linear(400, 400), nn.ReLU(), nn.Linear(400, 1))

    def step(real, fake, eps):
        D.zero_grad(set_to_none=True)
        x = (eps * real + (1 - eps) * fake).requires_grad_()
        out = D(x)
        (g,) = torch.autograd.grad(out, x, torch.ones_like(out), create_graph=True)
        gp = ((g.norm(2, dim=1) - 1) ** 2).mean()
        loss = D(fake).mean() - D(real).mean() + LAMBDA * gp
        loss.backward()
        return loss

    return D, step


def run(quick: bool = False) -> list[dict]:
    batch = 128 if quick else 512
    repeats = 5 if quick else 20
    real, fake = torch.randn(batch, 2), torch.randn(batch, 2)
    eps = torch.rand(batch, 1)
    D, classic = _classic(batch)

    critic = fn.Sequential(fn.Linear(2, 400), fn.relu, fn.Linear(400, 400), fn.relu,
                           fn.Linear(400, 400), fn.relu, fn.Linear(400, 1))
    params = fn.params_from_module(D)

    def critic_loss(p, real, fake, key):
        w = losses.discriminator_loss(critic.apply(p, real), critic.apply(p, fake), "wasserstein")
        return w + LAMBDA * losses.gradient_penalty(critic, p, real, fake, key)

    step = fn.value_and_grad(critic_loss)
    compiled = fn.jit(step)
    key = random.key(0)
    case = f"WGAN-GP critic step, D 2-400-400-400-1, batch {batch}"
    base = timeit(lambda: classic(real, fake, eps), repeats=repeats)
    rows = [row("losses", case, "classic nn.Module + autograd.grad, eager", base, base)]
    try:
        classic_c = torch.compile(classic)
        ct = first_call(lambda: classic_c(real, fake, eps))
        rows.append(row("losses", case, "classic, torch.compile (graph breaks allowed)",
                        timeit(lambda: classic_c(real, fake, eps), repeats=repeats), base, compile_s=round(ct, 1)))
    except Exception as e:
        rows.append(row("losses", case, f"classic, torch.compile: fails ({type(e).__name__})", float("nan")))
    rows.append(row("losses", case, "fnnet torch.func, eager", timeit(lambda: step(params, real, fake, key),
                                                                      repeats=repeats), base))
    ct = first_call(lambda: compiled(params, real, fake, key))
    rows.append(row("losses", case, "fnnet torch.func, fn.jit (fullgraph)",
                    timeit(lambda: compiled(params, real, fake, key), repeats=repeats), base,
                    compile_s=round(ct, 1)))
    return rows
