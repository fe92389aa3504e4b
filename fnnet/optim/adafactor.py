"""Adafactor, as ``torch.optim.Adafactor``: second moments factored into row and column means."""

from __future__ import annotations

import torch

from . import _check as C
from . import _ops
from ._aux_state import optimizer_with_aux
from .base import GradientTransformation, hyperparam_dtype


def adafactor(lr=1e-2, beta2_decay: float = -0.8, eps: tuple[float | None, float] = (None, 1e-3),
              d: float = 1.0, weight_decay: float = 0.0, *, maximize: bool = False) -> GradientTransformation:
    """Adafactor (Shazeer & Stern, 2018) as torch implements it: no first moment, and for a
    param of two or more dims a second moment kept as its row and column means only (memory
    ``R + C`` instead of ``R C`` per matrix).

    At step ``t``, with ``b_t = t^beta2_decay`` and ``rho_t = min(lr, 1 / sqrt(t))``:
    a param of 2+ dims ``[..., R, C]`` keeps ``row_var = lerp(row_var, mean_C(g^2), b_t)``
    ``[..., R, 1]`` and ``col_var = lerp(col_var, mean_R(g^2), b_t)`` ``[..., 1, C]``, and
    estimates ``v = row_var col_var / max(mean_R(row_var), eps1)``; a 0-d or 1-D param keeps
    ``v = variance = lerp(variance, g^2, b_t)``. Then ``u = g / sqrt(max(v, eps1^2))``, clipped
    to RMS ``d``: ``u /= max(1, rms(u) / d)``, and scaled relative to the param:
    ``p -= max(eps2, rms(p)) rho_t u``. ``weight_decay`` decays ``p -= lr wd p`` (decoupled).
    ``eps = (eps1, eps2)``; ``eps1=None`` is the machine epsilon of each param's dtype.

    State: ``row_var``, ``col_var`` (for the params of 2+ dims) and ``variance`` (the others),
    each a ``{dotted path: tensor}`` dict, torch's names and shapes. ``lr``, ``beta2_decay``,
    ``eps1`` (if given), ``eps2``, ``d`` and ``weight_decay`` are held hyperparameters.
    """
    C.lr("adafactor", lr)
    C.number("adafactor", "beta2_decay", beta2_decay, hi=0.0)
    if not isinstance(eps, (tuple, list)) or len(eps) != 2:
        raise ValueError(f"adafactor: eps must be a pair (eps1 or None, eps2), got {eps!r}")
    eps1, eps2 = eps
    if eps1 is not None:
        C.nonneg("adafactor", "eps[0]", eps1)
    C.nonneg("adafactor", "eps[1]", eps2)
    C.number("adafactor", "d", d, lo=1.0)
    C.nonneg("adafactor", "weight_decay", weight_decay)
    C.flag("adafactor", "maximize", maximize)
    hp = {"lr": lr, "beta2_decay": beta2_decay, "eps2": eps2, "d": d}
    if eps1 is not None:
        hp["eps1"] = eps1
    if weight_decay != 0:
        hp["weight_decay"] = weight_decay

    def aux_init(leaves, paths):
        row, col, var = {}, {}, {}
        for path, p in zip(paths, leaves):
            if p.dim() > 1:
                row[path] = p.new_zeros((*p.shape[:-1], 1))
                col[path] = p.new_zeros((*p.shape[:-2], 1, p.shape[-1]))
            else:
                var[path] = torch.zeros_like(p)
        return {"row_var": row, "col_var": col, "variance": var}

    def step(ops, g, p, s, h, count, aux, paths):
        if g and p[0] is None:
            raise ValueError("adafactor needs params (its step is relative to their RMS): call "
                             "update(grads, state, params)")
        if maximize:
            g = ops.neg(g)
        factored = [i for i, x in enumerate(g) if x.dim() > 1]
        vector = [i for i, x in enumerate(g) if x.dim() <= 1]
        row, col, var = _matched_state(aux, paths, g, factored, vector)
        lr, d, wd = h["lr"], h["d"], h.get("weight_decay")
        host = _ops.is_number(count)
        t = count if host else count.to(h["lr"].dtype)
        decay = t ** h["beta2_decay"]                               # 1 - beta2_t
        rho_t = min(lr, 1 / (t ** 0.5)) if host else torch.clamp(1 / torch.sqrt(t), max=lr)
        eps1 = [h["eps1"]] * len(g) if "eps1" in h else [torch.finfo(x.dtype).eps for x in g]   # per leaf

        estimate: list = [None] * len(g)
        new_row, new_col, new_var = [], [], []
        if factored:
            gf = [g[i] for i in factored]
            row_mean = [torch.linalg.vector_norm(x, dim=-1, keepdim=True).square() / x.shape[-1] for x in gf]
            col_mean = [torch.linalg.vector_norm(x, dim=-2, keepdim=True).square() / x.shape[-2] for x in gf]
            new_row = ops.lerp(row, row_mean, decay)
            new_col = ops.lerp(col, col_mean, decay)
            for j, i in enumerate(factored):   # the rank-1 estimate, normalised by the mean row
                r = new_row[j]
                estimate[i] = (r @ new_col[j]) / torch.clamp(r.mean(dim=-2, keepdim=True), min=eps1[i])
        if vector:
            gv = [g[i] for i in vector]
            new_var = ops.lerp(var, ops.mul(gv, gv), decay)
            for j, i in enumerate(vector):
                estimate[i] = new_var[j]
        u = ops.mul(ops.rsqrt(ops.clamp(estimate, lo=[e * e for e in eps1])), g)   # g / sqrt(max(v, eps1^2))

        # per leaf: alpha = max(eps2, rms(p)) rho_t, and the clipping max(1, rms(u) / d)
        sqrt_n = [x.numel() ** 0.5 for x in g]
        p_norm, u_norm = ops.norms(p, 2.0), ops.norms(u, 2.0)
        differentiated = torch.is_grad_enabled() and any(x.requires_grad for x in (*p, *g))
        if host and not differentiated:  # as torch: Python floats read from the norms
            p_norm, u_norm = torch.stack(p_norm).tolist(), torch.stack(u_norm).tolist()
            scales = [-(max(h["eps2"], pn / n) * rho_t) / max(1.0, un / (n * d))
                      for pn, un, n in zip(p_norm, u_norm, sqrt_n)]
        else:  # tensors: no host sync, and a gradient through the update reaches rms(p)
            dtype = hyperparam_dtype(p[0]) if host else t.dtype
            n = torch.tensor(sqrt_n, dtype=dtype, device=p[0].device)
            alpha = torch.clamp(torch.stack(p_norm).to(dtype) / n, min=h["eps2"]) * rho_t
            clip = torch.clamp(torch.stack(u_norm).to(dtype) / (n * d), min=1.0)
            scales = list(torch.unbind(-alpha / clip))
        updates = ops.scale_each(u, scales)
        if wd is not None:
            updates = ops.add(updates, p, alpha=-lr * wd)           # p.mul_(1 - lr * wd), first
        new = {"row_var": dict(zip((paths[i] for i in factored), new_row)),
               "col_var": dict(zip((paths[i] for i in factored), new_col)),
               "variance": dict(zip((paths[i] for i in vector), new_var))}
        return updates, {}, new

    return optimizer_with_aux(hp, lambda params: {}, ("row_var", "col_var", "variance"), aux_init, step,
                              "adafactor")


def _matched_state(aux: dict, paths: list[str], grads: list, factored: list[int], vector: list[int]):
    """The state's ``row_var``/``col_var`` (for ``factored`` leaves) and ``variance`` (for
    ``vector`` leaves), in leaf order, looked up by path; any missing, extra or misshaped entry
    is a ``ValueError`` naming its path."""
    expected = {"row_var": {paths[i]: (*grads[i].shape[:-1], 1) for i in factored},
                "col_var": {paths[i]: (*grads[i].shape[:-2], 1, grads[i].shape[-1]) for i in factored},
                "variance": {paths[i]: tuple(grads[i].shape) for i in vector}}
    out = []
    for name, shapes in expected.items():
        held = aux[name]
        if not isinstance(held, dict):
            raise ValueError(f"adafactor update: state[{name!r}] must be a {{path: tensor}} dict (from init), "
                             f"got {type(held).__name__}")
        for path in held:
            if path not in shapes:
                raise ValueError(f"adafactor update: state[{name!r}] has an entry at {path!r}, which the grads "
                                 "do not have (or have with another number of dims); state from other params?")
        for path, shape in shapes.items():
            if path not in held:
                raise ValueError(f"adafactor update: state[{name!r}] has no entry at {path!r}, where the grads "
                                 f"have a leaf of shape {list(grads[paths.index(path)].shape)}")
            if tuple(held[path].shape) != shape:
                raise ValueError(f"adafactor update: at {path!r}, state[{name!r}] has shape {list(held[path].shape)}, "
                                 f"expected {list(shape)} for grads of shape {list(grads[paths.index(path)].shape)}")
        out.append([held[path] for path in shapes])
    return out
