"""WGAN-GP on a mixture of 8 Gaussians: the course's GAN with a Wasserstein critic trained
with the gradient penalty (``losses.gradient_penalty``, through ``torch.func``), 5 critic
steps per generator step. The critic step - loss, penalty and its gradient w.r.t. the
critic params, which differentiates through an input gradient - compiles in one graph.

Data: generated (the WGAN-GP paper's toy set). Reports mode coverage: how many of the 8
modes hold at least 2% of 2,000 generated samples within 0.25 of their centre.
"""

from __future__ import annotations

import torch

import fnnet as fn
import losses
from fnnet import optim, random

from . import data
from .common import Config, figure, progress, save

DEFAULT_STEPS = 1500  # generator steps
BATCH, NOISE, HIDDEN, LAMBDA, CRITIC_STEPS = 256, 2, 400, 0.1, 5


def mlp(n_in: int, n_out: int) -> fn.Sequential:
    return fn.Sequential(fn.Linear(n_in, HIDDEN), fn.relu, fn.Linear(HIDDEN, HIDDEN), fn.relu,
                         fn.Linear(HIDDEN, HIDDEN), fn.relu, fn.Linear(HIDDEN, n_out))


G, D = mlp(NOISE, 2), mlp(2, 1)


def critic_loss(d_params, g_params, real, noise, key):
    fake = G.apply(g_params, noise)
    w = losses.discriminator_loss(D.apply(d_params, real), D.apply(d_params, fake), "wasserstein")
    return w + LAMBDA * losses.gradient_penalty(D, d_params, real, fake, key)


def generator_loss(g_params, d_params, noise):
    return losses.generator_loss(D.apply(d_params, G.apply(g_params, noise)), "wasserstein")


def run(cfg: Config) -> dict:
    k_g, k_d, k_train, k_eval = random.split(cfg.key, 4)
    g_params, d_params = G.init(k_g), D.init(k_d)
    g_opt, d_opt = optim.adam(1e-4, betas=(0.5, 0.9)), optim.adam(1e-4, betas=(0.5, 0.9))
    g_state, d_state = g_opt.init(g_params), d_opt.init(d_params)

    @cfg.jit
    def critic_step(d_params, d_state, g_params, real, noise, key):
        loss, grads = fn.value_and_grad(critic_loss)(d_params, g_params, real, noise, key)
        updates, d_state = d_opt.update(grads, d_state, d_params)
        return optim.apply_updates(d_params, updates), d_state, loss

    @cfg.jit
    def generator_step(g_params, g_state, d_params, noise):
        loss, grads = fn.value_and_grad(generator_loss)(g_params, d_params, noise)
        updates, g_state = g_opt.update(grads, g_state, g_params)
        return optim.apply_updates(g_params, updates), g_state, loss

    bar = progress(cfg.steps, cfg, "wgan_gp")
    for step in bar:
        # sampling happens outside the compiled steps: they see data, not generators
        k_real, k_noise, k_gp = random.split(random.fold_in(k_train, step), 3)
        real = data.eight_gaussians(k_real, CRITIC_STEPS * BATCH).reshape(CRITIC_STEPS, BATCH, 2)
        noise = random.normal(k_noise, (CRITIC_STEPS + 1, BATCH, NOISE)).to(cfg.device)
        for i in range(CRITIC_STEPS):
            d_params, d_state, d_loss = critic_step(d_params, d_state, g_params, real[i], noise[i],
                                                    random.fold_in(k_gp, i))
        g_params, g_state, g_loss = generator_step(g_params, g_state, d_params, noise[-1])
        if step % 50 == 0:
            bar.set_postfix(critic=f"{d_loss.item():.3f}", gen=f"{g_loss.item():.3f}")

    samples = G.apply(g_params, random.normal(k_eval, (2000, NOISE)).to(cfg.device)).detach()
    covered, near = data.mode_coverage(samples)
    fig, ax = figure(figsize=(5, 5))
    real = data.eight_gaussians(random.key(1), 2000)
    ax.scatter(real[:, 0], real[:, 1], s=2, alpha=0.3, label="real")
    ax.scatter(samples[:, 0].cpu(), samples[:, 1].cpu(), s=2, alpha=0.5, label="generated")
    ax.scatter(*data.centres().T, marker="x", c="k", label="centres")
    ax.set_title(f"WGAN-GP: {covered}/8 modes covered")
    ax.legend(loc="upper right", markerscale=4)
    return {"modes_covered": covered, "near_a_mode": near, "critic_loss": d_loss.item(),
            "plots": [save(fig, cfg, "samples.png")]}
