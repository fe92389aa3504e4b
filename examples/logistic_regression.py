"""Logistic regression: ``Linear(1, 1)`` + sigmoid with binary cross entropy.

Hours studied -> pass/fail, the course's first classifier. The model outputs a probability
(``fn.sigmoid`` after the linear layer, as in the course) and the loss is
``losses.binary_cross_entropy`` on probabilities; the decision boundary is where
``w x + b = 0``.

Data: 200 points x ~ U[0, 5), label 1 when x > 2.5, with 5% of the labels flipped, generated
from the seed. Defaults (1000 full-batch Adam steps, lr 0.1) put the boundary at x = 2.48,
between 2 and 3, with training accuracy 0.93 (the flipped labels cap it near 0.95), in
about 7 s.
"""

from __future__ import annotations

import torch

import fnnet as fn
import losses
from fnnet import optim, random

from . import common

STEPS = 1000


def run(steps=None, device="cpu", seed=0, out=None, compile=None, progress=True):
    steps = STEPS if steps is None else steps
    dev = common.device(device)
    out = common.out_dir(out, "logistic_regression")
    kx, kflip, kinit = random.split(random.key(seed), 3)

    x = random.uniform(kx, (200, 1), minval=0.0, maxval=5.0)
    y = (x > 2.5).float()
    flip = random.bernoulli(kflip, 0.05, (200, 1))
    y = torch.where(flip, 1.0 - y, y)
    x, y = x.to(dev), y.to(dev)

    model = fn.Sequential(fn.Linear(1, 1), fn.sigmoid)
    params = fn.tree.map(lambda p: p.to(dev), model.init(kinit))
    opt = optim.adam(0.1)
    state = opt.init(params)

    def loss_fn(params, x, y):
        return losses.binary_cross_entropy(model.apply(params, x), y)

    def step(params, state, x, y):
        loss, grads = fn.value_and_grad(loss_fn)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state, loss

    step = common.compile_step(step, compile)
    history = []
    for _ in (bar := common.progress(steps, "logistic_regression", progress)):
        params, state, loss = step(params, state, x, y)
        history.append(common.finite(loss))
        bar.set_postfix(loss=f"{history[-1]:.4f}", refresh=False)

    w, b = params["0"]["weight"].item(), params["0"]["bias"].item()
    boundary = -b / w
    acc = losses.binary_accuracy(model.apply(params, x), y, from_logits=False).item()

    fig, ax = common.plt.subplots(figsize=(6, 3.5))
    ax.scatter(x.cpu(), y.cpu(), s=10, alpha=0.5, label="data (5% labels flipped)")
    xs = torch.linspace(0, 5, 200, device=dev).unsqueeze(1)
    ax.plot(xs.cpu(), model.apply(params, xs).detach().cpu(), "r", label="P(pass | x)")
    ax.axvline(boundary, color="k", ls="--", label=f"boundary x = {boundary:.2f}")
    ax.set(xlabel="hours", ylabel="probability", title="logistic regression")
    ax.legend()
    plot = common.save(fig, out, "boundary.png")

    result = {"boundary": boundary, "accuracy": acc, "loss": history[-1] if history else float("nan"),
              "plots": [plot]}
    common.report("logistic_regression", {"decision boundary": f"x = {boundary:.3f} (between 2 and 3)",
                                          "training accuracy": f"{acc:.3f}",
                                          "final BCE": f"{result['loss']:.4f}"}, [plot])
    return result
