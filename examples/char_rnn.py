'''Character RNN: learn "hello" -> "ohlol" three ways, as the course does.

1. ``cells.RNNCell`` stepped over time by ``fn.scan`` (the cell is a pure function
   ``(h, x_t) -> h``, so the loop is a scan), one-hot inputs;
2. ``cells.RNN``, the whole sequence in one call;
3. ``fn.Embedding`` + a 2-layer ``cells.RNN`` (``batch_first``) + ``fn.Linear``.

Each part has its own model, loss and compiled step; the training loop is the same.
Data: inline (the vocabulary e, h, l, o). Defaults (200 Adam steps per part, lr 0.1) predict
"ohlol" in all three parts, in about 7 s. With 4 hidden units that are also the logits, parts 1 and 2 get
stuck at "ohlll" or "ohool" from about one initialization in ten (try ``--seed``): the two
l's need different outputs, so the state has to remember what came before.
'''

from __future__ import annotations

from dataclasses import dataclass

import torch

import cells
import fnnet as fn
import losses
from fnnet import optim, random

from . import common

STEPS = 200
VOCAB = "ehlo"
SOURCE, TARGET = "hello", "ohlol"


@dataclass(frozen=True)
class CellModel(fn.Module):
    """Part 1: an RNNCell scanned over the time steps; the hidden state is the output."""
    cell: cells.RNNCell = cells.RNNCell(4, 4)

    def apply(self, params, x, *, key=None, train=False):          # x: [T, B, 4] one-hot
        def step(h, x_t):
            h = self.cell.apply(params["cell"], x_t, h)
            return h, h
        _, hs = fn.scan(step, torch.zeros(x.shape[1], 4, device=x.device), x)
        return hs                                                    # [T, B, 4] logits


@dataclass(frozen=True)
class SeqModel(fn.Module):
    """Part 2: the same as one nn.RNN-style layer over the sequence."""
    rnn: cells.RNN = cells.RNN(4, 4)

    def apply(self, params, x, *, key=None, train=False):           # x: [T, B, 4] one-hot
        out, _ = self.rnn.apply(params["rnn"], x)
        return out                                                   # [T, B, 4] logits


@dataclass(frozen=True)
class EmbedModel(fn.Module):
    """Part 3: characters as indices, embedded, 2-layer RNN, linear read-out."""
    emb: fn.Embedding = fn.Embedding(4, 10)
    rnn: cells.RNN = cells.RNN(10, 8, num_layers=2, batch_first=True)
    fc: fn.Linear = fn.Linear(8, 4)

    def apply(self, params, x, *, key=None, train=False):           # x: [B, T] indices
        out, _ = self.rnn.apply(params["rnn"], self.emb.apply(params["emb"], x))
        return self.fc.apply(params["fc"], out)                      # [B, T, 4] logits


def train(name, model, x, target, key, steps, compile, progress):
    """Fit ``model`` so that ``model.apply(params, x)`` predicts ``target``; returns (params, history)."""
    params = fn.tree.map(lambda p: p.to(x.device), model.init(key))
    opt = optim.adam(0.1)
    state = opt.init(params)

    def loss_fn(params, x, target):
        logits = model.apply(params, x)
        return losses.cross_entropy(logits.reshape(-1, 4), target.reshape(-1))

    def step(params, state, x, target):
        loss, grads = fn.value_and_grad(loss_fn)(params, x, target)
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state, loss

    step = common.compile_step(step, compile)
    history = []
    for _ in (bar := common.progress(steps, name, progress)):
        params, state, loss = step(params, state, x, target)
        history.append(common.finite(loss))
        bar.set_postfix(loss=f"{history[-1]:.3f}", refresh=False)
    return params, history


def decode(logits: torch.Tensor) -> str:
    return "".join(VOCAB[i] for i in logits.argmax(-1).reshape(-1).tolist())


def run(steps=None, device="cpu", seed=0, out=None, compile=None, progress=True):
    steps = STEPS if steps is None else steps
    dev = common.device(device)
    out = common.out_dir(out, "char_rnn")
    src = torch.tensor([VOCAB.index(c) for c in SOURCE], device=dev)
    tgt = torch.tensor([VOCAB.index(c) for c in TARGET], device=dev)
    one_hot = torch.eye(4, device=dev)[src].unsqueeze(1)             # [T=5, B=1, 4]
    k1, k2, k3 = (random.fold_in(random.key(seed), part) for part in range(3))

    parts = {"RNNCell + scan": (CellModel(), one_hot, tgt.unsqueeze(1), k1),
             "RNN": (SeqModel(), one_hot, tgt.unsqueeze(1), k2),
             "Embedding + RNN": (EmbedModel(), src.unsqueeze(0), tgt.unsqueeze(0), k3)}
    predictions, curves = {}, {}
    for name, (model, x, target, key) in parts.items():
        params, curves[name] = train(name, model, x, target, key, steps, compile, progress)
        predictions[name] = decode(model.apply(params, x))

    fig, ax = common.plt.subplots(figsize=(6, 3.5))
    for name, curve in curves.items():
        ax.plot(curve, label=f"{name}: {predictions[name]!r}")
    ax.set(xlabel="step", ylabel="cross entropy", yscale="log", title=f"{SOURCE!r} -> {TARGET!r}")
    ax.legend()
    plot = common.save(fig, out, "loss.png")

    result = {"predictions": predictions, "loss": max(c[-1] for c in curves.values()) if steps else float("nan"),
              "plots": [plot]}
    common.report("char_rnn", {f"{name} predicts": f"{p!r} (target {TARGET!r})" for name, p in predictions.items()},
                  [plot])
    return result
