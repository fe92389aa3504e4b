"""L-BFGS, as ``torch.optim.LBFGS``. It evaluates the loss several times per step, so its API
takes the loss function instead of gradients:

    opt = optim.lbfgs(lr=1, line_search_fn="strong_wolfe")
    state = opt.init(params)
    params, state, loss = opt.step(loss_fn, params, state)   # one LBFGS.step(closure)

The algorithm is torch's, line for line, on the params flattened into one vector; the strong
Wolfe line search is torch's own ``_strong_wolfe``. Its control flow reads values on the
host, so it runs eagerly (compile ``loss_fn`` instead). The state is a dict of tensors,
floats and lists of tensors (the curvature history).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.optim.lbfgs import _strong_wolfe

from .. import tree as T
from ..transforms import value_and_grad


class LBFGS(NamedTuple):
    init: Callable[[Any], dict]
    step: Callable[[Callable, Any, dict], tuple[Any, dict, torch.Tensor]]


def _flat(tree: Any) -> torch.Tensor:
    return torch.cat([x.reshape(-1) for x in T.leaves(tree)])


def _unflat(vec: torch.Tensor, like: Any) -> Any:
    flat, spec = T.flatten(like)
    out, offset = [], 0
    for x in flat:
        out.append(vec[offset:offset + x.numel()].view_as(x))
        offset += x.numel()
    return T.unflatten(spec, out)


def lbfgs(lr: float = 1.0, max_iter: int = 20, max_eval: int | None = None, tolerance_grad: float = 1e-7,
          tolerance_change: float = 1e-9, history_size: int = 100,
          line_search_fn: str | None = None) -> LBFGS:
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    if line_search_fn not in (None, "strong_wolfe"):
        raise ValueError(f"lbfgs: line_search_fn must be None or 'strong_wolfe', got {line_search_fn!r}")

    def init(params):
        return {"func_evals": 0, "n_iter": 0}

    def step(loss_fn, params, state):
        vg = value_and_grad(loss_fn)
        state = dict(state)

        def evaluate(x: torch.Tensor) -> tuple[float, torch.Tensor]:
            loss, grads = vg(_unflat(x, params))
            return loss, _flat(grads)

        x = _flat(params).clone()
        orig_loss, flat_grad = evaluate(x)
        loss = float(orig_loss)
        current_evals = 1
        state["func_evals"] += 1
        if flat_grad.abs().max() <= tolerance_grad:
            return params, state, orig_loss

        d, t = state.get("d"), state.get("t")
        old_dirs, old_stps, ro = state.get("old_dirs"), state.get("old_stps"), state.get("ro")
        H_diag, prev_flat_grad, prev_loss = state.get("H_diag"), state.get("prev_flat_grad"), state.get("prev_loss")

        n_iter = 0
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            if state["n_iter"] == 1:
                d = flat_grad.neg()
                old_dirs, old_stps, ro = [], [], []
                H_diag = 1
            else:
                y = flat_grad.sub(prev_flat_grad)
                s = d.mul(t)
                ys = y.dot(s)
                if ys > 1e-10:
                    if len(old_dirs) == history_size:
                        old_dirs, old_stps, ro = old_dirs[1:], old_stps[1:], ro[1:]
                    old_dirs, old_stps, ro = old_dirs + [y], old_stps + [s], ro + [1.0 / ys]
                    H_diag = ys / y.dot(y)
                num_old = len(old_dirs)
                al = [None] * num_old
                q = flat_grad.neg()
                for i in range(num_old - 1, -1, -1):
                    al[i] = old_stps[i].dot(q) * ro[i]
                    q = q.add(old_dirs[i], alpha=-al[i])
                r = torch.mul(q, H_diag)
                for i in range(num_old):
                    be_i = old_dirs[i].dot(r) * ro[i]
                    r = r.add(old_stps[i], alpha=al[i] - be_i)
                d = r

            prev_flat_grad = flat_grad.clone()
            prev_loss = loss
            t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if state["n_iter"] == 1 else lr
            gtd = flat_grad.dot(d)
            if gtd > -tolerance_change:
                break

            ls_func_evals = 0
            if line_search_fn is not None:
                def obj_func(x0, step_t, direction):
                    loss_t, grad_t = evaluate(x0 + direction * step_t)
                    return float(loss_t), grad_t

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                    obj_func, x, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals)
                x = x + d * t
                opt_cond = flat_grad.abs().max() <= tolerance_grad
            else:
                x = x + d * t
                if n_iter != max_iter:
                    loss_t, flat_grad = evaluate(x)
                    loss = float(loss_t)
                    opt_cond = flat_grad.abs().max() <= tolerance_grad
                    ls_func_evals = 1
                else:
                    opt_cond = False

            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals
            if n_iter == max_iter or current_evals >= max_eval or opt_cond:
                break
            if d.mul(t).abs().max() <= tolerance_change:
                break
            if abs(loss - prev_loss) < tolerance_change:
                break

        state.update(d=d, t=t, old_dirs=old_dirs, old_stps=old_stps, ro=ro, H_diag=H_diag,
                     prev_flat_grad=prev_flat_grad, prev_loss=prev_loss)
        return _unflat(x, params), state, orig_loss

    return LBFGS(init, step)
