"""Names: which country is a surname from? Characters are embedded and read by a
bidirectional 2-layer ``cells.GRU``; variable lengths go in as ``lengths=``.

Shows padded batches with ``lengths=`` (what ``nn.GRU`` gets from ``pack_padded_sequence(...,
enforce_sorted=False)``: the forward direction's state is taken at each name's last
character, the backward direction starts there; no sorting, no packing), and a classifier
on the final states of both directions.

Data: surnames of 16 countries from faker's per-locale lists (MIT; romanized Chinese and
Japanese), accents dropped, lower-cased; names that two countries share are dropped, at most
300 per country: 3,420 names, the largest class 8.8%. 20% of the names held out.
Defaults (500 Adam steps of 64, the step compiled) reach a held-out accuracy of 0.71 over 16
classes (majority class: 0.09), as the same run eagerly (``--no-compile``) does; the printout
gives the median step time and the compile time apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

import cells
import fnnet as fn
import losses
from fnnet import optim, random

from . import common, data

# The step is compiled by default (fn.jit, fullgraph=True). With lengths= the GRU's recurrence is
# one opaque op of cells.fused whatever the length, so the graph does not grow with MAX_LEN; the
# embedding, classifier, loss and Adam around it are fused. Every batch has one shape ([64,
# MAX_LEN], names padded, lengths= marking their ends), so the step compiles once and never again.
# The held-out evaluation runs once, eagerly: compiling it would cost more than it saves.
COMPILE = True
STEPS = 500
MAX_LEN = 16
CHARS = " '-abcdefghijklmnopqrstuvwxyz"   # index 0 is padding


@dataclass(frozen=True)
class NameClassifier(fn.Module):
    emb: fn.Embedding
    gru: cells.GRU
    fc: fn.Linear

    @classmethod
    def make(cls, classes: int, emb: int = 32, hidden: int = 64):
        return cls(fn.Embedding(len(CHARS) + 1, emb, padding_idx=0),
                   cells.GRU(emb, hidden, num_layers=2, bidirectional=True, batch_first=True),
                   fn.Linear(2 * hidden, classes))

    def apply(self, params, x, lengths, *, key=None, train=False):
        """x ``[B, T]`` character indices (0-padded), lengths ``[B]`` -> logits ``[B, classes]``."""
        _, h_n = self.gru.apply(params["gru"], self.emb.apply(params["emb"], x), lengths=lengths)
        last = torch.cat([h_n[-2], h_n[-1]], dim=1)     # top layer, forward and backward
        return self.fc.apply(params["fc"], last)


def encode(names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Names -> (indices ``[N, MAX_LEN]``, lengths ``[N]``); longer names are cut."""
    x = torch.zeros(len(names), MAX_LEN, dtype=torch.int64)
    lengths = torch.tensor([min(len(n), MAX_LEN) for n in names])
    for i, n in enumerate(names):
        for j, c in enumerate(n[:MAX_LEN]):
            x[i, j] = CHARS.index(c) + 1
    return x, lengths


def run(steps=None, device="cpu", seed=0, out=None, compile=None, progress=True):
    steps = STEPS if steps is None else steps
    dev = common.device(device)
    out = common.out_dir(out, "names")
    names, labels, countries = data.surnames()
    x, lengths = encode(names)
    y = torch.tensor(labels)
    ksplit, kinit, kbatch = random.split(random.key(seed), 3)
    train, test = data.split(ksplit, len(names), len(names) // 5)
    x, lengths, y = x.to(dev), lengths.to(dev), y.to(dev)

    model = NameClassifier.make(len(countries))
    params = fn.tree.map(lambda p: p.to(dev), model.init(kinit))
    opt = optim.adam(3e-3)
    state = opt.init(params)

    def loss_fn(params, x, lengths, y):
        return losses.cross_entropy(model.apply(params, x, lengths), y)

    def step(params, state, x, lengths, y):
        loss, grads = fn.value_and_grad(loss_fn)(params, x, lengths, y)
        updates, state = opt.update(grads, state, params)
        return optim.apply_updates(params, updates), state, loss

    timer = common.StepTimer(dev, common.compiles(compile, COMPILE))
    step = timer.wrap(common.compile_step(step, compile, default=COMPILE))
    history = []
    batches = common.batches(kbatch, (x[train], lengths[train], y[train]), 64)
    for _ in (bar := common.progress(steps, "names", progress)):
        params, state, loss = step(params, state, *next(batches))
        history.append(common.finite(loss))
        bar.set_postfix(loss=f"{history[-1]:.3f}", refresh=False)

    logits = model.apply(params, x[test], lengths[test])
    acc = losses.accuracy(logits, y[test]).item()
    majority = torch.bincount(y[train], minlength=len(countries)).max().item() / len(train)
    confusion = torch.zeros(len(countries), len(countries))
    confusion.index_put_((y[test].cpu(), logits.argmax(1).cpu()), torch.ones(len(test)), accumulate=True)
    confusion = confusion / confusion.sum(1, keepdim=True).clamp(min=1)

    fig, ax = common.plt.subplots(figsize=(7, 6))
    ax.imshow(confusion, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(countries)), countries, rotation=90, fontsize=8)
    ax.set_yticks(range(len(countries)), countries, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=f"held-out accuracy {acc:.2f} ({len(countries)} countries)")
    plot = common.save(fig, out, "confusion.png")

    samples = ", ".join(f"{n} -> {countries[p]}" for n, p in zip(["smith", "nakamura", "rossi", "virtanen", "dubois"],
                        model.apply(params, *(t.to(dev) for t in encode(["smith", "nakamura", "rossi", "virtanen",
                                                                         "dubois"]))).argmax(1).tolist()))
    result = {"test_accuracy": acc, "majority": majority, "classes": len(countries),
              "loss": history[-1] if history else float("nan"), "plots": [plot], **timer.numbers()}
    common.report("names", {"held-out accuracy": f"{acc:.3f} over {len(countries)} countries "
                            f"(majority class {majority:.3f}, {len(test)} names)", "examples": samples,
                            **timer.lines()}, [plot])
    return result
