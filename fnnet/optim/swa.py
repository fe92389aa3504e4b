"""Weight averaging, as ``torch.optim.swa_utils``: an averaged copy of the params (SWA's running
mean or an EMA), SWALR's annealing to a fixed lr, and BatchNorm statistics recomputed for the
averaged weights.

    swa = optim.averaged()                       # AveragedModel(model): the running mean
    avg = swa.init(params)                       # (ema: optim.averaged("ema", decay=0.999))
    for ...:
        params, opt_state = train_step(params, opt_state, batch)
        avg = swa.update(avg, params)            # update_parameters(model)
    bn_state = optim.update_bn(model, swa.params(avg), bn_state, loader)
    y = model.apply(swa.params(avg), x, state=bn_state)

Pure: an update returns a new average (a dict of tensors with the count ``n_averaged``), never
touching the params, and compiles under ``fn.jit`` (the first update is a ``torch.where`` on the
count, not a Python branch). Trees are matched by path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

from .. import random
from .. import tree as T
from ..layers.norm import _BatchNorm
from ..module import Module
from . import _check as C
from .schedules import Schedule, _clip, _cos, _f, _is_t

AvgFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Averaged(NamedTuple):
    """What :func:`averaged` returns: pure ``init``/``update`` and readers of the average."""

    init: Callable[..., dict]
    update: Callable[..., dict]

    @staticmethod
    def params(avg: dict) -> Any:
        """The averaged params (``AveragedModel.module``'s parameters)."""
        return avg["params"]

    @staticmethod
    def state(avg: dict) -> Any:
        """The averaged model's buffers (the BatchNorm state): averaged with ``use_buffers=True``,
        else the last one passed to ``update``."""
        if "state" not in avg:
            raise ValueError("averaged: this average holds no state (init was given none)")
        return avg["state"]


def _swa(avg: torch.Tensor, new: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """The running mean after ``n`` models: ``avg + (new - avg) / (n + 1)`` (torch's
    ``get_swa_avg_fn``; on an accelerator torch lerps by ``1 / (n + 1)``, an ulp away)."""
    return avg + (new - avg) / (n + 1)


def _ema(decay: float) -> AvgFn:
    """``decay * avg + (1 - decay) * new`` as torch's ``get_ema_multi_avg_fn``: ``lerp(avg, new,
    1 - decay)`` for floating leaves, the formula itself (truncated back) for integer ones."""
    def ema(avg, new, n):
        if avg.is_floating_point() or avg.is_complex():
            return torch.lerp(avg, new.to(avg.dtype), 1 - decay)
        return avg * decay + new * (1 - decay)
    return ema


def averaged(avg_fn: str | AvgFn = "swa", *, decay: float = 0.999, use_buffers: bool = False) -> Averaged:
    """``AveragedModel``'s average of the params seen by ``update``, as pure functions.

    ``avg_fn``: ``"swa"`` (default: the equally weighted running mean, torch's ``avg_fn=None``),
    ``"ema"`` (``multi_avg_fn=get_ema_multi_avg_fn(decay)``: ``decay * avg + (1 - decay) * params``),
    or a function ``f(avg_leaf, params_leaf, n_averaged) -> new_leaf`` (torch's ``avg_fn``).

    ``init(params, state=None)`` copies the params (and the BatchNorm state, if given) with
    ``n_averaged = 0``, as torch deep-copies the model. ``update(avg, params, state=None)``: the
    first update copies the params, as torch's does whatever ``avg_fn`` is; later ones average.
    ``use_buffers=True`` averages the state as well, so no :func:`update_bn` is needed (integer
    leaves, ``num_batches_tracked``, are averaged and truncated back as torch's ``copy_`` does);
    otherwise the state is replaced by the one passed, as torch keeps the buffers in sync.
    ``swa.params(avg)`` and ``swa.state(avg)`` read the result.
    """
    if isinstance(avg_fn, str):
        C.choice("averaged", "avg_fn", avg_fn, ("swa", "ema"))
        if avg_fn == "ema":
            C.number("averaged", "decay", decay, lo=0.0, hi=1.0)
        fn = _swa if avg_fn == "swa" else _ema(float(decay))
    elif callable(avg_fn):
        fn = avg_fn
    else:
        raise TypeError(f"averaged: avg_fn must be 'swa', 'ema' or a function (avg, params, n_averaged) -> avg, "
                        f"got {type(avg_fn).__name__}")
    C.flag("averaged", "use_buffers", use_buffers)

    def copy(tree):
        return T.map(lambda x: x.detach().clone(), tree)

    def init(params, state=None):
        n = torch.zeros((), dtype=torch.int64, device=_device(params, state))
        avg = {"params": copy(params), "n_averaged": n}
        if state is not None:
            avg["state"] = copy(state)
        return avg

    def mean(avg_tree, new_tree, n, what):
        spec, (olds, news) = T.match(avg_tree, new_tree, names=("the average", what), what="averaged update")
        first = n == 0

        def one(a, x):
            x = x.detach().to(a.device)
            value = fn(a, x, n)
            if value.dtype != a.dtype:  # an integer leaf: torch's copy_ truncates toward zero
                value = value.to(a.dtype)
            return torch.where(first, x.to(a.dtype), value)

        return T.unflatten(spec, [one(a, x) for a, x in zip(olds, news)])

    def update(avg, params, state=None):
        if not isinstance(avg, dict) or "params" not in avg or "n_averaged" not in avg:
            raise ValueError("averaged update: avg must be this averager's init(params), got "
                             f"{type(avg).__name__}{' with keys ' + str(sorted(avg)) if isinstance(avg, dict) else ''}")
        if ("state" in avg) != (state is not None):
            raise ValueError("averaged update: pass state= exactly when init was given a state (the average "
                             f"{'holds' if 'state' in avg else 'holds no'} state)")
        n = avg["n_averaged"]
        new = {"params": mean(avg["params"], params, n, "params"), "n_averaged": n + 1}
        if state is not None:
            if use_buffers:
                new["state"] = mean(avg["state"], state, n, "state")
            else:
                spec, (_, flat) = T.match(avg["state"], state, names=("the average's state", "state"),
                                          what="averaged update")
                new["state"] = T.unflatten(spec, [x.detach().clone() for x in flat])
        return new

    return Averaged(init, update)


def _device(*trees) -> torch.device | None:
    for t in trees:
        for x in T.leaves(t):
            if isinstance(x, torch.Tensor):
                return x.device
    return None


def swa_lr(lr: float, swa_lr: float, anneal_epochs: int = 10, anneal_strategy: str = "cos") -> Schedule:
    """``SWALR``: from ``lr`` to ``swa_lr`` over ``anneal_epochs`` steps, then ``swa_lr``:
    ``swa_lr * a + lr * (1 - a)`` with ``a = anneal(min(count / anneal_epochs, 1))``,
    ``anneal(t) = (1 - cos(pi t)) / 2`` (``"cos"``) or ``t`` (``"linear"``); with
    ``anneal_epochs=0`` it is ``swa_lr`` from count 0. torch's SWALR recovers the starting lr
    from the current one at each step; this closed form equals it to rounding. It anneals from
    ``lr``: after another schedule (``sequential_lr``), pass the lr that one reached."""
    C.nonneg("swa_lr", "lr", lr)
    C.nonneg("swa_lr", "swa_lr", swa_lr)
    C.integer("swa_lr", "anneal_epochs", anneal_epochs, lo=0)
    C.choice("swa_lr", "anneal_strategy", anneal_strategy, ("cos", "linear"))
    target = swa_lr

    def schedule(count):
        c = _f(count)
        if anneal_epochs == 0:  # torch's step = max(1, step)
            c = torch.clamp(c, min=1.0) if _is_t(c) else max(1.0, c)
        t = _clip(c / max(1, anneal_epochs), 0.0, 1.0)
        a = t if anneal_strategy == "linear" else (1 - _cos(math.pi * t)) / 2
        return target * a + lr * (1 - a)
    return schedule


def _batch_norms(model: Module) -> list[tuple[tuple[str, ...], _BatchNorm]]:
    """Every BatchNorm with running statistics in ``model``, with its state's path (the children's
    names, as ``init_state`` keys them)."""
    out = []

    def visit(m: Module, path: tuple[str, ...]) -> None:
        if isinstance(m, _BatchNorm):
            if m.track_running_stats:
                out.append((path, m))
            return
        for name, child in m.children().items():
            visit(child, path + tuple(name.split(".")))

    visit(model, ())
    return out


def _get(tree: Any, path: tuple[str, ...], where: str) -> dict:
    node = tree
    for k in path:
        if not isinstance(node, dict) or k not in node:
            raise ValueError(f"update_bn: the state has no {'.'.join(path) or '<root>'!r} for the {where} there "
                             "(pass the model's state, from model.init_state())")
        node = node[k]
    if not isinstance(node, dict) or not {"running_mean", "running_var", "num_batches_tracked"} <= set(node):
        raise ValueError(f"update_bn: the state at {'.'.join(path) or '<root>'!r} is not a BatchNorm's "
                         "(running_mean, running_var, num_batches_tracked)")
    return node


def _set(tree: Any, path: tuple[str, ...], value: dict) -> Any:
    if not path:
        return value
    return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


@torch.no_grad()
def update_bn(model: Module, params: Any, state: Any, batches: Iterable, *, key: torch.Tensor | None = None,
              device: Any = None) -> Any:
    """``torch.optim.swa_utils.update_bn``: the BatchNorm running statistics recomputed for
    ``params`` over one pass of ``batches``, as the cumulative average of each batch's statistics
    (what torch gets by resetting them and setting ``momentum=None``): returns the new state.

    Each batch is a tensor, or a list/tuple whose first element is the input (torch's rule);
    ``device`` moves it; the model runs with ``train=True`` (``key`` folded with the batch index,
    for dropout). Other state is carried along as the training passes update it.
    ``num_batches_tracked`` ends at the number of batches; no batches leaves the reset statistics
    (mean 0, variance 1), as torch's does. fnnet's modules are immutable, so the momentum is not
    switched off: each pass starts from zeroed statistics, which a BatchNorm with
    ``momentum=None`` returns as the batch's statistics exactly, and one with momentum ``m``
    returns times ``m`` (divided back here: equal to torch's to rounding). A BatchNorm with
    ``momentum=0`` never reads its batch, and is refused.
    """
    if not isinstance(model, Module):
        raise TypeError(f"update_bn: model must be an fnnet Module, got {type(model).__name__}")
    bns = _batch_norms(model)
    if not bns:
        return state
    for path, bn in bns:
        _get(state, path, repr(bn))
        if bn.momentum == 0:
            raise ValueError(f"update_bn: the BatchNorm at {'.'.join(path) or '<root>'!r} has momentum=0, so its "
                             "running statistics never see a batch; build it with momentum=None (the cumulative "
                             "average) or > 0")

    def zeroed(s):
        return {**s, "running_mean": torch.zeros_like(s["running_mean"]),
                "running_var": torch.zeros_like(s["running_var"]),
                "num_batches_tracked": torch.zeros_like(s["num_batches_tracked"])}

    acc = {path: (torch.zeros_like(_get(state, path, "")["running_mean"]),
                  torch.ones_like(_get(state, path, "")["running_var"])) for path, _ in bns}
    n = 0
    carried = state
    for i, batch in enumerate(batches):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        if device is not None:
            x = x.to(device)
        probe = carried
        for path, _ in bns:
            probe = _set(probe, path, zeroed(_get(carried, path, "")))
        k = random.fold_in(key, i) if key is not None else None
        out = model.apply(params, x, state=probe, key=k, train=True)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TypeError(f"update_bn: {type(model).__name__}.apply(..., state=, train=True) must return "
                            f"(y, new_state), got {type(out).__name__}")
        carried = out[1]
        n += 1
        w = 1.0 / n
        for path, bn in bns:
            s = _get(carried, path, repr(bn))
            mean, var = s["running_mean"], s["running_var"]
            if bn.momentum is not None:  # the probe's statistics came back times the momentum
                mean, var = mean / bn.momentum, var / bn.momentum
            old_mean, old_var = acc[path]
            acc[path] = ((1 - w) * old_mean + w * mean, (1 - w) * old_var + w * var)
    for path, _ in bns:
        s = _get(carried, path, "")
        mean, var = acc[path]
        count = torch.full_like(s["num_batches_tracked"], n)
        carried = _set(carried, path, {**s, "running_mean": mean, "running_var": var, "num_batches_tracked": count})
    return carried
