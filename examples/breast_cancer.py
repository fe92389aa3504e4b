"""Breast cancer: the course's 30-25-20-15-10-5-1 MLP, binary cross entropy, weight decay.

Shows a deeper ``fn.Sequential``, features standardized with statistics of the training split
only, ``losses.binary_cross_entropy_with_logits`` (the stable form of sigmoid + BCE), and
Adam's ``weight_decay=`` (L2, as ``torch.optim.Adam``'s).

Data: the Wisconsin Diagnostic Breast Cancer set (569 tumours, 30 features, 63% benign),
``sklearn.datasets.load_breast_cancer``, shipped with scikit-learn (BSD-3-Clause; data from
the UCI repository, CC BY 4.0). 114 held out at random. Defaults (500 Adam steps, batch 64)
reach a held-out accuracy of 0.965 in about 8 s (the issue asks for >= 0.9).
"""

from __future__ import annotations

from itertools import pairwise

import fnnet as fn
import losses
from fnnet import optim, random

from . import common, data

STEPS = 500


def run(steps=None, device="cpu", seed=0, out=None, compile=None, progress=True):
    steps = STEPS if steps is None else steps
    dev = common.device(device)
    out = common.out_dir(out, "breast_cancer")
    x, y = data.breast_cancer()
    ksplit, kinit, kbatch = random.split(random.key(seed), 3)
    train, test = data.split(ksplit, len(x), 114)
    mean, std = x[train].mean(0), x[train].std(0)
    x = ((x - mean) / std).to(dev)
    y = y.unsqueeze(1).to(dev)

    sizes = [30, 25, 20, 15, 10, 5, 1]
    layers = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        layers += [fn.Linear(a, b)] + ([fn.relu] if i < len(sizes) - 2 else [])
    model = fn.Sequential(*layers)          # logits; the sigmoid lives in the loss
    params = fn.tree.map(lambda p: p.to(dev), model.init(kinit))
    opt = optim.adam(1e-3, weight_decay=1e-4)
    state = opt.init(params)

    def loss_fn(params, x, y):
        return losses.binary_cross_entropy_with_logits(model.apply(params, x), y)

    def step(params, state, x, y):
        loss, grads = fn.value_and_grad(loss_fn)(params, x, y)
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state, loss

    def accuracy(params, idx):
        return losses.binary_accuracy(model.apply(params, x[idx]), y[idx]).item()

    step = common.compile_step(step, compile)
    history, evals = [], []
    batches = common.batches(kbatch, (x[train], y[train]), 64)
    for i in (bar := common.progress(steps, "breast_cancer", progress)):
        params, state, loss = step(params, state, *next(batches))
        history.append(common.finite(loss))
        if (i + 1) % 25 == 0 or i + 1 == steps:
            evals.append((i + 1, accuracy(params, train), accuracy(params, test)))
            bar.set_postfix(loss=f"{history[-1]:.3f}", test_acc=f"{evals[-1][2]:.3f}", refresh=False)

    test_acc = accuracy(params, test)
    fig, (ax1, ax2) = common.plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(history)
    ax1.set(xlabel="step", ylabel="BCE", yscale="log", title="training loss")
    if evals:
        s, tr, te = zip(*evals)
        ax2.plot(s, tr, label="train")
        ax2.plot(s, te, label="held out")
    ax2.set(xlabel="step", ylabel="accuracy", title="accuracy", ylim=(0.5, 1.0))
    ax2.legend()
    plot = common.save(fig, out, "training.png")

    result = {"test_accuracy": test_acc, "loss": history[-1] if history else float("nan"), "plots": [plot]}
    common.report("breast_cancer", {"held-out accuracy": f"{test_acc:.3f} (114 tumours)",
                                    "final BCE": f"{result['loss']:.4f}"}, [plot])
    return result
