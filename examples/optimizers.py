"""The course's optimizer comparison: SGD, Adagrad, Adam, Adamax, ASGD, LBFGS, RMSprop and
Rprop train the same network from the same initial params on the same batches.

Every fnnet optimizer is a pair of pure functions (``init``, ``update``), so one compiled
``value_and_grad`` serves all of them and the loop is the same for each; only LBFGS, which
re-evaluates the loss inside its line search, has its own ``opt.step(loss_fn, params, state)``
and runs on the full batch.

Data: 1,000 points y = x^2 + noise on [-1, 1], generated from the seed; the model is the
1-20-1 ReLU MLP. Defaults (300 steps of batch 32 each; LBFGS 15 full-batch steps) write one
plot of the loss curves in about 6 s; every optimizer ends well below the variance of y
(0.09): full-data MSE 0.0093 (LBFGS) to 0.020 (Rprop, a full-batch method, on mini-batches),
against the noise floor of 0.01.
"""

from __future__ import annotations

import torch

import fnnet as fn
import losses
from fnnet import optim, random

from . import common

STEPS = 300

OPTIMIZERS = {
    "SGD": lambda: optim.sgd(0.1, momentum=0.9),
    "Adagrad": lambda: optim.adagrad(0.1),
    "Adam": lambda: optim.adam(0.01),
    "Adamax": lambda: optim.adamax(0.02),
    "ASGD": lambda: optim.asgd(0.1),
    "RMSprop": lambda: optim.rmsprop(0.01),
    "Rprop": lambda: optim.rprop(0.001),
}


def run(steps=None, device="cpu", seed=0, out=None, compile=None, progress=True):
    steps = STEPS if steps is None else steps
    dev = common.device(device)
    out = common.out_dir(out, "optimizers")
    kdata, kinit, kbatch = random.split(random.key(seed), 3)

    x = torch.linspace(-1, 1, 1000).unsqueeze(1)
    y = (x ** 2 + 0.1 * random.normal(kdata, (1000, 1))).to(dev)
    x = x.to(dev)

    model = fn.Sequential(fn.Linear(1, 20), fn.relu, fn.Linear(20, 1))
    init_params = fn.tree.map(lambda p: p.to(dev), model.init(kinit))

    def loss_fn(params, x, y):
        return losses.mse(model.apply(params, x), y)

    # one compiled function for all of them: the optimizers differ only in their update
    loss_and_grad = common.compile_step(fn.value_and_grad(loss_fn), compile)

    curves = {}
    for name, make in OPTIMIZERS.items():
        opt = make()
        params, state = init_params, opt.init(init_params)
        data, curve = common.batches(kbatch, (x, y), 32), []   # same key: same batches for all
        for _ in common.progress(steps, name, progress):
            loss, grads = loss_and_grad(params, *next(data))
            updates, state = opt.update(grads, state, params)
            params = optim.apply_updates(params, updates)
            curve.append(common.finite(loss))
        curves[name] = (curve, loss_fn(params, x, y).item())

    # LBFGS: each step is up to 20 iterations with a line search, on the full batch
    opt = optim.lbfgs(1.0, max_iter=20, line_search_fn="strong_wolfe")
    params, state, curve = init_params, opt.init(init_params), []
    for _ in common.progress(max(1, steps // 20) if steps else 0, "LBFGS", progress):
        params, state, loss = opt.step(lambda p: loss_fn(p, x, y), params, state)
        curve.append(common.finite(loss))
    curves["LBFGS"] = (curve, loss_fn(params, x, y).item())

    fig, ax = common.plt.subplots(figsize=(8, 5))
    for name, (curve, _) in curves.items():
        if name == "LBFGS":
            ax.plot([20 * i for i in range(len(curve))], curve, "k-o", ms=3, label="LBFGS (per 20 iters, full batch)")
        else:
            smooth = torch.tensor(curve).unfold(0, min(10, len(curve)), 1).mean(1) if curve else []
            ax.plot(smooth, label=name)
    ax.set(xlabel="step", ylabel="MSE (batch, smoothed)", yscale="log", title="optimizers on y = x^2")
    ax.axhline(0.01, color="gray", ls=":", label="noise floor (0.01)")
    ax.legend()
    plot = common.save(fig, out, "losses.png")

    final = {name: f for name, (_, f) in curves.items()}
    common.report("optimizers", {f"{n} final MSE": f"{v:.4f}" for n, v in final.items()}, [plot])
    return {"final": final, "loss": max(final.values()), "plots": [plot]}
