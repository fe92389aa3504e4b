"""A hand-written VJP for the LSTM recurrence, the way JAX users write ``custom_vjp``.

Differentiating the time loop op by op makes autograd record ~10 nodes per step and replay
them; here the forward loop runs without recording and keeps what the backward needs (the
gate activations and the cell states), and the backward is itself a loop of the BPTT
recurrence: per step a few elementwise ops and one ``[B, 4H] @ [4H, H]`` matmul; the
weight gradient is one matmul over all steps after the loop.

``lstm_recurrence(xp, h0, c0, w_hh, mask, reverse)`` takes the hoisted input projection
``xp: [T, B, 4H]`` (biases folded in) and returns ``(ys [T, B, H], h_T, c_T)``; its
gradients flow to ``xp``, ``h0``, ``c0`` and ``w_hh`` (autograd carries them on to ``x``,
``w_ih`` and the biases). It is a ``torch.autograd.Function`` with ``setup_context`` and a
generated vmap rule, so ``fn.grad`` and ``fn.vmap`` compose with it. The op-by-op path in
``cells.cell.LSTMCell.step`` stays the reference it is tested against.

Under ``fn.jit`` both loops are unrolled. Steady state is then at or below ``nn.LSTM``
(I=32 H=128 B=32 fwd+bwd here: 1.06x at T=16, 0.67x at T=64), but compile time grows with
T (28 s at T=16, 132 s at T=64). Running the two loops - which are never differentiated -
as torch's scan higher-order op would keep it flat, but on torch 2.13 that still fails
inside a compiled ``torch.func.grad`` ("Expected FakeTensor").
"""

from __future__ import annotations

import torch


def _order(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


def _stack(items: list, reverse: bool) -> torch.Tensor:
    """Per-step tensors collected in loop order -> stacked in time order."""
    return torch.stack(items[::-1] if reverse else items)


class _LSTMRecurrence(torch.autograd.Function):
    # lists and stack, no in-place writes: the same code runs under vmap and torch.compile
    generate_vmap_rule = True

    @staticmethod
    def forward(xp, h0, c0, w_hh, mask, reverse):
        T, H = xp.shape[0], h0.shape[-1]
        w_t = w_hh.t()
        sig, tanh_g, c_new_all, h_prev_all, c_prev_all, ys = [], [], [], [], [], []
        h, c = h0, c0
        for t in _order(T, reverse):
            h_prev_all.append(h)
            c_prev_all.append(c)
            gates = torch.addmm(xp[t], h, w_t)
            s = torch.sigmoid(gates)
            g = torch.tanh(gates[..., 2 * H:3 * H])
            i, f, o = s[..., :H], s[..., H:2 * H], s[..., 3 * H:]
            c_new = torch.addcmul(f * c, i, g)
            h_new = o * torch.tanh(c_new)
            sig.append(s)
            tanh_g.append(g)
            c_new_all.append(c_new)
            if mask is None:
                h, c = h_new, c_new
                ys.append(h_new)
            else:
                m = mask[t]
                h, c = torch.where(m, h_new, h), torch.where(m, c_new, c)
                ys.append(h_new * m)
        saved = [_stack(x, reverse) for x in (sig, tanh_g, c_new_all, h_prev_all, c_prev_all)]
        return (_stack(ys, reverse), h, c, *saved)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, _, _, w_hh, mask, reverse = inputs
        saved = output[3:]
        ctx.save_for_backward(w_hh, mask, *saved)
        ctx.reverse = reverse
        ctx.mark_non_differentiable(*saved)
        ctx.set_materialize_grads(False)  # no zero-filled gradients for the saved outputs

    @staticmethod
    def backward(ctx, dys, dh_T, dc_T, *_):
        w_hh, mask, sig, g, c_new, h_prev, c_prev = ctx.saved_tensors
        T, H = sig.shape[0], g.shape[-1]
        i, f, o = sig[..., :H], sig[..., H:2 * H], sig[..., 3 * H:]
        tc = torch.tanh(c_new)
        # everything that does not depend on the incoming gradient, for all steps at once:
        # d gates_t = [dc, dc, dc, dh] * K_t and dc_t = dc_{t+1} + dh * A_t
        # three gates scale dc, the output gate scales dh: K3 [T, B, 3, H], Ko [T, B, H]
        K3 = torch.stack([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], -2)
        Ko = tc * o * (1 - o)
        A = o * (1 - tc * tc)
        w3, wo = w_hh[:3 * H].reshape(3, H, H), w_hh[3 * H:]
        keep = None if mask is None else 1 - mask.to(sig.dtype)
        dh = dh_T if dh_T is not None else torch.zeros_like(h_prev[0])
        dc = dc_T if dc_T is not None else torch.zeros_like(c_prev[0])
        d3, do = [], []
        for t in _order(T, not ctx.reverse):
            dh_new, dc_new = (dh + dys[t] if dys is not None else dh), dc
            if keep is not None:  # a masked step passed h and c through unchanged
                dh_keep, dc_keep = keep[t] * dh, keep[t] * dc
                dh_new, dc_new = dh_new - keep[t] * dh_new, dc_new - dc_keep
            dct = torch.addcmul(dc_new, dh_new, A[t])
            g3 = dct.unsqueeze(-2) * K3[t]  # [B, 3, H]
            go = dh_new * Ko[t]
            d3.append(g3)
            do.append(go)
            dh = torch.addmm(go @ wo, g3.flatten(-2), w3.flatten(0, 1))
            dc = dct * f[t]
            if keep is not None:
                dh, dc = dh + dh_keep, dc + dc_keep
        dgates = torch.cat([_stack(d3, not ctx.reverse).flatten(-2), _stack(do, not ctx.reverse)], -1)
        dw_hh = dgates.flatten(0, -2).t() @ h_prev.flatten(0, -2)
        return dgates, dh, dc, dw_hh, None, None


def lstm_recurrence(xp: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, w_hh: torch.Tensor,
                    mask: torch.Tensor | None = None, reverse: bool = False):
    """xp ``[T, B, 4H]``, h0/c0 ``[B, H]``, w_hh ``[4H, H]``, mask ``[T, B, 1]`` bool or None
    -> ``(ys [T, B, H], h_T, c_T)``."""
    ys, h, c, *_ = _LSTMRecurrence.apply(xp, h0, c0, w_hh, mask, reverse)
    return ys, h, c
