"""L-BFGS, as ``torch.optim.LBFGS``. One step evaluates the loss several times (up to
``max_iter`` iterations, each with a fixed step or a strong-Wolfe line search), so its API takes
the loss function instead of gradients:

    opt = optim.lbfgs(lr=1, line_search_fn="strong_wolfe")
    state = opt.init(params)
    params, state, loss = opt.step(loss_fn, params, state)   # one LBFGS.step(closure)

``loss_fn(params) -> scalar`` is differentiated with ``fn.value_and_grad``; ``loss`` is its value
at the params given (what ``LBFGS.step`` returns). The algorithm is torch's, line for line, on the
params flattened into one vector, with its ``_strong_wolfe`` and ``_cubic_interpolate`` ported
below (themselves ports of the Lua ``optim`` package). Its control flow reads values on the host,
so a step runs eagerly (compile ``loss_fn`` instead). Real params only.

The state is a dict of tensors on the params' device: counters ``n_iter`` and ``func_evals``,
the last direction ``d`` and step ``t``, ``prev_flat_grad``, ``prev_loss``, ``H_diag`` and the
curvature history ``old_dirs``, ``old_stps``, ``ro`` (lists of up to ``history_size`` tensors).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import tree as T
from . import _check as C
from ..transforms import value_and_grad


class LBFGS(NamedTuple):
    """``init(params) -> state``; ``step(loss_fn, params, state) -> (params, state, loss)``."""

    init: Callable[[Any], dict]
    step: Callable[[Callable, Any, dict], tuple[Any, dict, torch.Tensor]]


def _cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimizer of the cubic through ``(x1, f1, g1)`` and ``(x2, f2, g2)``, clamped to
    ``bounds`` (torch.optim.lbfgs._cubic_interpolate, from ``polyinterp.lua``)."""
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    # d1 = g1 + g2 - 3 (f1 - f2) / (x1 - x2); d2 = sqrt(d1^2 - g1 g2);
    # min_pos = x2 - (x2 - x1) (g2 + d2 - d1) / (g2 - g1 + 2 d2)  (x2 the farthest point)
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    d2_square = d1**2 - g1 * g2
    if d2_square >= 0:
        d2 = d2_square.sqrt()
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
        else:
            min_pos = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def _strong_wolfe(obj_func, x, t, d, f, g, gtd, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """A step ``t`` along ``d`` from ``x`` meeting the strong Wolfe conditions: bracket, then zoom
    by cubic interpolation (torch.optim.lbfgs._strong_wolfe, from ``lswolfe.lua``).
    ``obj_func(x, t, d) -> (loss float, flat grad)``; returns ``(f_new, g_new, t, evals)``."""
    d_norm = d.abs().max()
    g = g.clone(memory_format=torch.contiguous_format)
    f_new, g_new = obj_func(x, t, d)
    ls_func_evals = 1
    gtd_new = g_new.dot(d)

    # bracket an interval containing a point satisfying the Wolfe criteria
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g, gtd
    done = False
    ls_iter = 0
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g = [g_prev, g_new.clone(memory_format=torch.contiguous_format)]
            bracket_gtd = [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f, bracket_g = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f = [t_prev, t], [f_prev, f_new]
            bracket_g = [g_prev, g_new.clone(memory_format=torch.contiguous_format)]
            bracket_gtd = [gtd_prev, gtd_new]
            break
        # interpolate
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = _cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new, bounds=(min_step, max_step))
        # next step
        t_prev, f_prev = tmp, f_new
        g_prev = g_new.clone(memory_format=torch.contiguous_format)
        gtd_prev = gtd_new
        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1

    # reached max number of iterations?
    if ls_iter == max_ls:
        bracket, bracket_f, bracket_g = [0, t], [f, f_new], [g, g_new]

    # zoom phase: refine the bracket until a point satisfies the criteria
    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        # line-search bracket is so small
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = _cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0], bracket[1], bracket_f[1], bracket_gtd[1])
        # insufficient progress: t close to a boundary twice, or on it, moves to 0.1 of the
        # bracket's length away from the nearest boundary
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                t = max(bracket) - eps if abs(t - max(bracket)) < abs(t - min(bracket)) else min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False

        f_new, g_new = obj_func(x, t, d)
        ls_func_evals += 1
        gtd_new = g_new.dot(d)
        ls_iter += 1

        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            # Armijo condition not satisfied or not lower than lowest point
            bracket[high_pos], bracket_f[high_pos] = t, f_new
            bracket_g[high_pos] = g_new.clone(memory_format=torch.contiguous_format)
            bracket_gtd[high_pos] = gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True  # Wolfe conditions satisfied
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                # old high becomes new low
                bracket[high_pos], bracket_f[high_pos] = bracket[low_pos], bracket_f[low_pos]
                bracket_g[high_pos], bracket_gtd[high_pos] = bracket_g[low_pos], bracket_gtd[low_pos]
            # new point becomes new low
            bracket[low_pos], bracket_f[low_pos] = t, f_new
            bracket_g[low_pos] = g_new.clone(memory_format=torch.contiguous_format)
            bracket_gtd[low_pos] = gtd_new

    return bracket_f[low_pos], bracket_g[low_pos], bracket[low_pos], ls_func_evals


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
    """``torch.optim.LBFGS``'s arguments and defaults; see the module docstring for the API."""
    C.lr("lbfgs", lr, schedule_ok=False)
    C.integer("lbfgs", "max_iter", max_iter)
    if max_eval is None:
        max_eval = max_iter * 5 // 4
    C.integer("lbfgs", "max_eval", max_eval)
    C.nonneg("lbfgs", "tolerance_grad", tolerance_grad)
    C.nonneg("lbfgs", "tolerance_change", tolerance_change)
    C.integer("lbfgs", "history_size", history_size)
    C.choice("lbfgs", "line_search_fn", line_search_fn, (None, "strong_wolfe"))
    lr = float(lr)

    def init(params):
        flat = _flat(params)
        i64 = {"dtype": torch.int64, "device": flat.device}
        f64 = {"dtype": torch.float64, "device": flat.device}
        return {"func_evals": torch.zeros((), **i64), "n_iter": torch.zeros((), **i64),
                "d": torch.zeros_like(flat), "t": torch.tensor(lr, **f64), "H_diag": torch.ones((), **f64),
                "prev_flat_grad": torch.zeros_like(flat), "prev_loss": torch.zeros((), **f64),
                "old_dirs": [], "old_stps": [], "ro": []}

    def step(loss_fn, params, state):
        vg = value_and_grad(loss_fn)
        func_evals, state_n_iter = int(state["func_evals"]), int(state["n_iter"])

        def evaluate(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            loss, grads = vg(_unflat(x, params))
            return loss.detach(), _flat(grads)

        # evaluate initial f(x) and df/dx
        x = _flat(params).detach().clone()
        if not isinstance(state, dict) or "d" not in state or state["d"].shape != x.shape:
            got = f"{state['d'].numel()} elements" if isinstance(state, dict) and "d" in state else type(state).__name__
            raise ValueError(f"lbfgs: the state must be this optimizer's init(params) for params of {x.numel()} "
                             f"elements, got a state for {got}")
        orig_loss, flat_grad = evaluate(x)
        loss = float(orig_loss)
        current_evals = 1
        func_evals += 1
        if flat_grad.abs().max() <= tolerance_grad:  # optimal condition
            return params, {**state, "func_evals": state["func_evals"] + 1}, orig_loss

        d, t = state["d"], float(state["t"])
        old_dirs, old_stps, ro = list(state["old_dirs"]), list(state["old_stps"]), list(state["ro"])
        H_diag, prev_flat_grad, prev_loss = state["H_diag"], state["prev_flat_grad"], float(state["prev_loss"])

        n_iter = 0
        while n_iter < max_iter:  # optimize for a max of max_iter iterations
            n_iter += 1
            state_n_iter += 1

            # compute gradient descent direction
            if state_n_iter == 1:
                d = flat_grad.neg()
                old_dirs, old_stps, ro = [], [], []
                H_diag = 1
            else:
                # do lbfgs update (update memory)
                y = flat_grad.sub(prev_flat_grad)
                s = d.mul(t)
                ys = y.dot(s)  # y*s
                if ys > 1e-10:
                    if len(old_dirs) == history_size:  # shift history by one (limited-memory)
                        old_dirs.pop(0)
                        old_stps.pop(0)
                        ro.pop(0)
                    old_dirs.append(y)
                    old_stps.append(s)
                    ro.append(1.0 / ys)
                    H_diag = ys / y.dot(y)  # update scale of initial Hessian approximation
                # the approximate (L-BFGS) inverse Hessian times the gradient: two-loop recursion
                num_old = len(old_dirs)
                al = [None] * num_old
                q = flat_grad.neg()
                for i in range(num_old - 1, -1, -1):
                    al[i] = old_stps[i].dot(q) * ro[i]
                    q = q.add(old_dirs[i], alpha=-al[i])
                d = r = torch.mul(q, H_diag)  # multiply by initial Hessian
                for i in range(num_old):
                    be_i = old_dirs[i].dot(r) * ro[i]
                    d = r = r.add(old_stps[i], alpha=al[i] - be_i)

            prev_flat_grad = flat_grad.clone(memory_format=torch.contiguous_format)
            prev_loss = loss

            # compute step length: reset initial guess for step size
            t = min(1.0, 1.0 / flat_grad.abs().sum()) * lr if state_n_iter == 1 else lr
            gtd = flat_grad.dot(d)  # directional derivative
            if gtd > -tolerance_change:  # directional derivative is below tolerance
                break

            ls_func_evals = 0
            if line_search_fn is not None:
                def obj_func(x0, step_t, direction):
                    loss_t, grad_t = evaluate(x0.add(direction, alpha=step_t))  # torch's _add_grad
                    return float(loss_t), grad_t

                loss, flat_grad, t, ls_func_evals = _strong_wolfe(
                    obj_func, x, t, d, loss, flat_grad, gtd, max_ls=max_eval - current_evals)
                x = x.add(d, alpha=t)
                opt_cond = flat_grad.abs().max() <= tolerance_grad
            else:
                x = x.add(d, alpha=t)  # no line search, simply move with fixed-step
                if n_iter != max_iter:
                    # re-evaluate function only if not in last iteration (as torch)
                    loss_t, flat_grad = evaluate(x)
                    loss = float(loss_t)
                    opt_cond = flat_grad.abs().max() <= tolerance_grad
                    ls_func_evals = 1

            current_evals += ls_func_evals
            func_evals += ls_func_evals

            # check conditions
            if n_iter == max_iter:
                break
            if current_evals >= max_eval:
                break
            if opt_cond:  # optimal condition
                break
            if d.mul(t).abs().max() <= tolerance_change:  # lack of progress
                break
            if abs(loss - prev_loss) < tolerance_change:
                break

        dev = x.device
        f64 = {"dtype": torch.float64, "device": dev}
        new_state = {
            "func_evals": torch.tensor(func_evals, device=dev), "n_iter": torch.tensor(state_n_iter, device=dev),
            "d": d, "t": torch.as_tensor(t, **f64).reshape(()), "H_diag": torch.as_tensor(H_diag, **f64).reshape(()),
            "prev_flat_grad": prev_flat_grad, "prev_loss": torch.tensor(prev_loss, **f64),
            "old_dirs": old_dirs, "old_stps": old_stps, "ro": ro,
        }
        return _unflat(x, params), new_state, orig_loss

    return LBFGS(init, step)
