"""GAN: the course's generator and discriminator on a mixture of 8 Gaussians.

G: noise (2) -> 400 -> 400 -> 400 -> 2; D: 2 -> 400 -> 400 -> 400 -> 1 with a sigmoid (as in
the course; ``losses.discriminator_loss``/``generator_loss`` take its probabilities with
``from_logits=False``). Two players are just two params trees and two optimizers; each has a
compiled step that differentiates its own loss with respect to its own params only
(``fn.value_and_grad`` differentiates argument 0), so nothing needs detaching.

Data: 8 Gaussians (std 0.05) on a circle of radius 2, sampled fresh each step from the seed.
Defaults (1,000 steps of each player, batch 256, Adam 2e-4, betas (0.5, 0.999)) write a plot
of samples against the centres in about a minute; the printout counts the modes the samples
reach, as ``wgan_gp`` does: 8/8, with 85% of the samples within 4 std of a centre (a plain
GAN is known to drop modes on other seeds and settings: compare ``wgan_gp``).
"""

from __future__ import annotations

from itertools import pairwise

import fnnet as fn
import losses
from fnnet import optim, random

from . import common, data

STEPS = 1000
BATCH, NOISE = 256, 2


def mlp(sizes, out=None) -> fn.Sequential:
    layers = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        layers += [fn.Linear(a, b)] + ([fn.relu] if i < len(sizes) - 2 else [])
    return fn.Sequential(*layers, *([out] if out else []))


def coverage(samples, centres, std: float = 0.05):
    """(modes reached, fraction of samples near a mode): a sample is near a mode when within
    4 std of its centre; a mode counts as reached when at least 1% of the samples are near it."""
    dist = (samples[:, None, :] - centres[None, :, :].to(samples.device)).norm(dim=2)
    near, which = dist.min(1)
    near = near < 4 * std
    per_mode = [(which[near] == m).sum().item() for m in range(len(centres))]
    reached = sum(c >= 0.01 * len(samples) for c in per_mode)
    return reached, near.float().mean().item()


def plot_samples(samples, centres, title):
    fig, ax = common.plt.subplots(figsize=(5, 5))
    ax.scatter(*samples.detach().cpu().T, s=3, alpha=0.4, label="generated")
    ax.scatter(*centres.T, c="r", marker="x", s=80, label="centres")
    ax.set(xlim=(-3, 3), ylim=(-3, 3), aspect="equal", title=title)
    ax.legend(loc="upper right", fontsize=8)
    return fig


def run(steps=None, device="cpu", seed=0, out=None, compile=None, progress=True):
    steps = STEPS if steps is None else steps
    dev = common.device(device)
    out = common.out_dir(out, "gan")
    kg, kd, kdata, knoise, keval = random.split(random.key(seed), 5)

    G = mlp([NOISE, 400, 400, 400, 2])
    D = mlp([2, 400, 400, 400, 1], out=fn.sigmoid)
    g_params = fn.tree.map(lambda p: p.to(dev), G.init(kg))
    d_params = fn.tree.map(lambda p: p.to(dev), D.init(kd))
    g_opt, d_opt = optim.adam(2e-4, betas=(0.5, 0.999)), optim.adam(2e-4, betas=(0.5, 0.999))
    g_state, d_state = g_opt.init(g_params), d_opt.init(d_params)

    def d_loss(d_params, g_params, real, z):
        fake = G.apply(g_params, z)
        return losses.discriminator_loss(D.apply(d_params, real), D.apply(d_params, fake), from_logits=False)

    def g_loss(g_params, d_params, z):
        return losses.generator_loss(D.apply(d_params, G.apply(g_params, z)), from_logits=False)

    def d_step(d_params, d_state, g_params, real, z):
        loss, grads = fn.value_and_grad(d_loss)(d_params, g_params, real, z)
        updates, d_state = d_opt.update(grads, d_state, d_params)
        return optim.apply_updates(d_params, updates), d_state, loss

    def g_step(g_params, g_state, d_params, z):
        loss, grads = fn.value_and_grad(g_loss)(g_params, d_params, z)
        updates, g_state = g_opt.update(grads, g_state, g_params)
        return optim.apply_updates(g_params, updates), g_state, loss

    d_step, g_step = common.compile_step(d_step, compile), common.compile_step(g_step, compile)
    history = []
    for i in (bar := common.progress(steps, "gan", progress)):
        kz1, kz2 = random.split(random.fold_in(knoise, i))
        real = data.eight_gaussians(random.fold_in(kdata, i), BATCH, device=dev)
        d_params, d_state, dl = d_step(d_params, d_state, g_params, real, random.normal(kz1, (BATCH, NOISE)).to(dev))
        g_params, g_state, gl = g_step(g_params, g_state, d_params, random.normal(kz2, (BATCH, NOISE)).to(dev))
        history.append((common.finite(dl), common.finite(gl)))
        bar.set_postfix(d=f"{history[-1][0]:.3f}", g=f"{history[-1][1]:.3f}", refresh=False)

    samples = G.apply(g_params, random.normal(keval, (2000, NOISE)).to(dev))
    centres = data.centres()
    modes, quality = coverage(samples, centres)
    plot = common.save(plot_samples(samples, centres, f"GAN after {steps} steps: {modes}/8 modes"),
                       out, "samples.png")
    result = {"modes": modes, "near_mode": quality, "loss": history[-1][0] if history else float("nan"),
              "plots": [plot]}
    common.report("gan", {"mode coverage": f"{modes}/8 modes reached; {quality:.0%} of samples within "
                                           "4 std of a centre"}, [plot])
    return result
