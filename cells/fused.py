"""Hand-written VJPs for the RNN, LSTM and GRU recurrences, the way JAX users write
``custom_vjp``.

Differentiating the time loop op by op makes autograd record ~10 nodes per step and replay
them. Here the forward loop runs without recording and keeps what the backward needs (gate
activations and cell states; the previous hidden states are the outputs, shifted, so memory
stays at ``nn.LSTM``'s); the backward is itself a loop, the BPTT
recurrence, with per step a few elementwise ops and one ``[B, G*H] @ [G*H, H]`` matmul; the
weight gradients are one matmul over all steps after the loop.

    ys, finals = recurrence(kind, xp, states, w_hh, b_hh=None, w_hr=None, mask=None, reverse=False)

``kind``: ``"lstm"`` (states ``(h, c)``; ``w_hr`` for ``proj_size``), ``"gru"`` (state ``h``;
``b_hh`` stays inside the recurrence since ``b_hn`` sits inside ``r * (W_hn h + b_hn)``),
``"rnn_tanh"``, ``"rnn_relu"`` (state ``h``). ``xp: [T, B, G*H]`` is the hoisted input
projection (with every bias that can be folded in); ``mask: [T, B, 1]`` bool holds the state
and zeroes the output past each sequence's end. Gradients flow to ``xp``, the states and the
weights (autograd carries them on to ``x``, ``w_ih`` and the folded biases).

Two ways to run, one math:

* eager: a ``torch.autograd.Function`` (``setup_context``, generated vmap rule) whose forward
  and backward are the Python loops below, so ``fn.grad`` and ``fn.vmap`` compose with it;
* under ``torch.compile`` (``fn.jit``): the same Function, but its forward and backward each
  call one opaque custom op (``cells::recurrence``, ``cells::recurrence_backward``) that runs
  the loop. The compiler sees two ops whatever ``T`` is, so compile time does not grow with
  the sequence length and ``fullgraph=True`` holds (the rest of the step - projections, loss,
  optimizer - is compiled and fused as usual). torch.compile cannot yet ``vmap`` an
  ``autograd.Function``; under a compiled ``vmap`` (an ensemble) the layers step the cell.

Second derivatives (a gradient penalty, ``create_graph=True``, autograd of a ``fn.grad``
result), eagerly: the saved activations are differentiable outputs of the Function, and when
its backward finds itself differentiated (:func:`_differentiated_again`) it runs as a second
Function, ``_RecurrenceBackward`` (the same loop), whose own backward is one op,
``cells::recurrence_double_backward``: it reruns the backward loop under autograd and
differentiates it. Gradient reaching the saved activations flows back through the first
Function's backward as their cotangents (``dextra``). A third derivative is refused by name.
Compiled, torch 2.13 differentiates an autograd.Function's backward as a constant (zeros,
silently), so there, and for a third derivative or under ``jvp``/``vmap``, the layers step
the cell instead (:func:`steps_the_cell`).

The op-by-op path (``cells.cell`` cells stepped by ``fnnet.scan``, ``fused=False`` on the
layers) is the reference these loops are tested against.

Measured (``python -m benchmarks cells``, torch 2.13, 2-core shared CPU, one thread; I=32
H=128 B=32 fwd+bwd, ratio to ``nn.*``'s native kernels): compile time 0.8 s at T=1024 and
0.6 s at T=16 in one process (the first compile of a process 2-4 s; the unrolled loop took
28 s at T=16 and 132 s at T=64); compiled GRU 0.88x at T=64 and 256, RNN 0.78x/0.76x, LSTM
1.61x/1.22x (eager 1.99x/1.49x), 2-layer bidirectional LSTM 1.26x (eager 1.47x); peak memory
of an eager LSTM step at T=4096 0.94x. Tried and dropped for the LSTM: inductor-compiled
per-step elementwise kernels called from the loop (the backward's elementwise halves, the
call overhead eats it: no net change), compiled chunks of 8 unrolled steps (1.2-1.5x, 30 s
to compile), keeping tanh(c) from the forward (no change). What is left is per-op dispatch:
~40 small ops a step from Python against oneDNN's fused kernels - so where oneDNN's LSTM
applies (CPU, float32, no proj, no mask) the layers call it instead (``cells.native``:
compiled 0.97x/0.91x of ``nn.LSTM``), and this recurrence serves float64, ``proj_size``,
``lengths``, ``vmap``, GPUs, and GRU/RNN (oneDNN's GRU is not wired into torch on CPU).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch._C._functorch import TransformType, maybe_get_level
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

from fnnet._island import eager_island, fresh_views

Tensor = torch.Tensor

__all__ = ["recurrence"]


def _order(T: int, reverse: bool) -> range:
    return range(T - 1, -1, -1) if reverse else range(T)


class _Steps:
    """Per-step results written into one ``[T, ...]`` tensor at their time index as the loop
    runs (a list of T tensors stacked at the end would hold everything twice at the peak).
    The buffer is made from the first result, so under vmap it is batched like the results.
    While autograd records (the double backward reruns a backward loop), a list stacked at the
    end instead: a write into a slice of a buffer would be a node whose backward copies the
    whole buffer's gradient, at every step."""

    def __init__(self, T: int):
        self.T, self._out, self._list = T, None, ({} if torch.is_grad_enabled() else None)

    def __setitem__(self, t: int, value: Tensor) -> None:
        if self._list is not None:
            self._list[t] = value
            return
        if self._out is None:
            self._out = value.new_empty((self.T, *value.shape))
        self._out[t].copy_(value)

    @property
    def out(self) -> Tensor:
        if self._list is not None:
            return torch.stack([self._list[t] for t in range(self.T)])
        return self._out


def _split(d_state: Tensor, d_out: Tensor | None, m_t: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The gradient reaching a step's new state (from the next state and from this step's
    output): the part that goes through the cell, and the part that skips it (a masked step,
    ``m_t = 0``, passes the state on unchanged and outputs zero)."""
    d = d_state if d_out is None else d_state + d_out
    if m_t is None:
        return d, None
    return m_t * d, (1 - m_t) * d_state


def _per_step(*tensors):
    """Each ``[T, ...]`` tensor as what ``[t]`` reads per step: while autograd records (a double
    backward reruns a backward loop), its T views from one ``unbind`` (whose backward is one
    stack; T separate selects would each scatter into a zero ``[T, ...]`` gradient); else the
    tensor itself. ``None`` and lists pass through."""
    if not torch.is_grad_enabled():
        return tensors
    return tuple(t.unbind(0) if isinstance(t, Tensor) else t for t in tensors)


def _float_mask(mask: Tensor | None, T: int, dtype: torch.dtype) -> Tensor | list:
    return [None] * T if mask is None else mask.to(dtype)


def _plus(a: Tensor, b: Tensor | None) -> Tensor:
    return a if b is None else a + b


def _previous(ys: Tensor, s0: Tensor, mask: Tensor | None, reverse: bool) -> Tensor:
    """The state each step started from, ``[T, B, P]``, rebuilt from the outputs instead of
    saved: ``s0`` for the first step, the previous step's output after it. Only steps inside
    each sequence matter (the others get zero gradient); in reverse a sequence's first step
    is its last valid one, which starts from ``s0`` too."""
    s0 = s0.unsqueeze(0)
    prev = torch.cat([ys[1:], s0]) if reverse else torch.cat([s0, ys[:-1]])
    if mask is None or not reverse:
        return prev
    starts = mask & ~torch.cat([mask[1:], torch.zeros_like(mask[:1])])
    return torch.where(starts, s0, prev)


# Each kind: forward(xp, states, w_hh, b_hh, w_hr, mask, reverse) -> (ys, finals, extra) with
# extra what its backward needs beyond ys and the initial states, and
# backward(dys, dfinals, w_hh, b_hh, w_hr, mask, reverse, ys, states0, extra)
#   -> (dxp, dstates, {"w_hh": ..., ["b_hh"|"w_hr"]: ...}).

# -- LSTM: gates i, f, g, o; c' = f c + i g; h' = o tanh(c') (then W_hr h' with proj_size) --------
def _lstm_cell(gates, c):
    """The elementwise part of a step: ``a = [i, f, tanh g, o]``, ``c'``, ``o tanh(c')``."""
    H = c.shape[-1]
    a = torch.sigmoid(gates)  # one sigmoid for the three sigmoid gates, then g's slot
    a[..., 2 * H:3 * H] = torch.tanh(gates[..., 2 * H:3 * H])
    i, f, g, o = a.chunk(4, -1)
    c_new = torch.addcmul(f * c, i, g)
    return a, c_new, o * torch.tanh(c_new)


def _lstm_cell_backward(a, c, c_prev, dh, dc, da=None):
    """Its VJP: ``(d gates [B, 4H], d c_prev)`` from ``dh``, ``dc`` at the new state (and
    ``da``, a cotangent on the activations ``a`` themselves: see ``_run_backward``)."""
    H = c.shape[-1]
    i, f, g, o = a.chunk(4, -1)
    tc = torch.tanh(c)
    dc = torch.addcmul(dc, dh, o * (1 - tc * tc))
    d_act = a * (1 - a)  # sigmoid' for i, f, o; tanh' for g
    if torch.is_grad_enabled():  # recorded (a double backward): no write into a slice
        d_act = torch.cat([d_act[..., :2 * H], 1 - g * g, d_act[..., 3 * H:]], -1)
    else:
        d_act[..., 2 * H:3 * H] = 1 - g * g
    return d_act * _plus(torch.cat([dc * g, dc * c_prev, dc * i, dh * tc], -1), da), dc * f


def _lstm_forward(xp, states, w_hh, b_hh, w_hr, mask, reverse):
    h, c = states
    T = xp.shape[0]
    w_t, w_hr_t = w_hh.t(), (None if w_hr is None else w_hr.t())
    acts, cs, ys = _Steps(T), _Steps(T), _Steps(T)
    for t in _order(T, reverse):
        a, c_new, h_new = _lstm_cell(torch.addmm(xp[t], h, w_t), c)
        if w_hr_t is not None:
            h_new = h_new @ w_hr_t
        if mask is None:
            h, c = h_new, c_new
            ys[t] = h_new
        else:
            m = mask[t]
            h, c = torch.where(m, h_new, h), torch.where(m, c_new, c)
            ys[t] = h_new * m
        acts[t], cs[t] = a, c
    return ys.out, (h, c), [acts.out, cs.out]


def _lstm_backward(dys, dfinals, w_hh, b_hh, w_hr, mask, reverse, ys, states0, extra, dextra):
    acts, cs = extra  # cs: the cell state after each step (held past a sequence's end)
    d_acts, d_cs = dextra or (None, None)
    dh, dc = dfinals
    T, H = acts.shape[0], cs.shape[-1]
    c_prev = _previous(cs, states0[1], None, reverse)  # cs holds through masks: exact
    m = _float_mask(mask, T, acts.dtype)
    dgates, dh_out = _Steps(T), _Steps(T)
    dys_, acts_, cs_, c_prev, d_acts, d_cs = _per_step(dys, acts, cs, c_prev, d_acts, d_cs)
    for t in _order(T, not reverse):
        dh_t, dh_keep = _split(dh, dys_[t], m[t])
        dc_t, dc_keep = _split(dc if d_cs is None else dc + d_cs[t], None, m[t])
        if w_hr is not None:
            dh_out[t] = dh_t
            dh_t = dh_t @ w_hr
        dg, dc = _lstm_cell_backward(acts_[t], cs_[t], c_prev[t], dh_t, dc_t, None if d_acts is None else d_acts[t])
        dgates[t] = dg
        dh = dg @ w_hh if dh_keep is None else torch.addmm(dh_keep, dg, w_hh)
        dc = _plus(dc, dc_keep)
    dgates = dgates.out
    h_prev = _previous(ys, states0[0], mask, reverse)
    grads = {"w_hh": dgates.flatten(0, -2).t() @ h_prev.flatten(0, -2)}
    if w_hr is not None:
        o, tc = acts[..., 3 * H:], torch.tanh(cs)
        grads["w_hr"] = dh_out.out.flatten(0, -2).t() @ (o * tc).flatten(0, -2)
    return dgates, (dh, dc), grads


# -- GRU: gates r, z, n; n = tanh(x_n + r (W_hn h + b_hn)); h' = n + z (h - n) ---------------------
def _gru_forward(xp, states, w_hh, b_hh, w_hr, mask, reverse):
    (h,) = states
    T, H = xp.shape[0], h.shape[-1]
    w_t = w_hh.t()
    rz_all, n_all, hn_all, ys = _Steps(T), _Steps(T), _Steps(T), _Steps(T)
    for t in _order(T, reverse):
        x_t = xp[t]
        hp = h @ w_t if b_hh is None else torch.addmm(b_hh, h, w_t)
        rz = torch.sigmoid(x_t[..., :2 * H] + hp[..., :2 * H])
        hn = hp[..., 2 * H:]
        n = torch.tanh(torch.addcmul(x_t[..., 2 * H:], rz[..., :H], hn))
        h_new = torch.addcmul(n, rz[..., H:], h - n)
        rz_all[t], n_all[t], hn_all[t] = rz, n, hn
        if mask is None:
            h = h_new
            ys[t] = h_new
        else:
            h = torch.where(mask[t], h_new, h)
            ys[t] = h_new * mask[t]
    return ys.out, (h,), [rz_all.out, n_all.out, hn_all.out]


def _gru_backward(dys, dfinals, w_hh, b_hh, w_hr, mask, reverse, ys, states0, extra, dextra):
    rz, n, hn = extra
    (dh,) = dfinals
    T, H = n.shape[0], n.shape[-1]
    h_prev = _previous(ys, states0[0], mask, reverse)
    r, z = rz[..., :H], rz[..., H:]
    Dn = (1 - z) * (1 - n * n)  # dh' -> d pre_n
    Dz = (h_prev - n) * z * (1 - z)  # dh' -> d pre_z
    Dr = hn * r * (1 - r)  # d pre_n -> d pre_r
    e_n = e_rz = e_hn = [None] * T
    if dextra:  # cotangents on the saved rz, n, hn: onto pre_rz, pre_n, hn
        e_rz, e_n, e_hn = dextra[0] * rz * (1 - rz), dextra[1] * (1 - n * n), dextra[2]
    m = _float_mask(mask, T, n.dtype)
    dxp, dhp = _Steps(T), _Steps(T)
    dys, Dn, Dz, Dr, r_, z_, e_n, e_rz, e_hn = _per_step(dys, Dn, Dz, Dr, r, z, e_n, e_rz, e_hn)
    for t in _order(T, not reverse):
        d, d_keep = _split(dh, dys[t], m[t])
        dpn = _plus(d * Dn[t], e_n[t])
        drz = _plus(torch.cat([dpn * Dr[t], d * Dz[t]], -1), e_rz[t])
        dxp[t] = torch.cat([drz, dpn], -1)
        dhp_t = torch.cat([drz, _plus(dpn * r_[t], e_hn[t])], -1)
        dhp[t] = dhp_t
        dh = _plus(torch.addmm(d * z_[t], dhp_t, w_hh), d_keep)
    dxp, dhp = dxp.out, dhp.out.flatten(0, -2)
    grads = {"w_hh": dhp.t() @ h_prev.flatten(0, -2)}
    if b_hh is not None:
        grads["b_hh"] = dhp.sum(0)
    return dxp, (dh,), grads


# -- Elman RNN: h' = act(x_t + W_hh h) -----------------------------------------------------------
def _rnn_forward(relu):
    def forward(xp, states, w_hh, b_hh, w_hr, mask, reverse):
        (h,) = states
        act = torch.relu if relu else torch.tanh
        w_t, ys = w_hh.t(), _Steps(xp.shape[0])
        for t in _order(xp.shape[0], reverse):
            h_new = act(torch.addmm(xp[t], h, w_t))
            if mask is None:
                h = h_new
                ys[t] = h_new
            else:
                h = torch.where(mask[t], h_new, h)
                ys[t] = h_new * mask[t]
        return ys.out, (h,), []
    return forward


def _rnn_backward(relu):
    def backward(dys, dfinals, w_hh, b_hh, w_hr, mask, reverse, ys, states0, extra, dextra):
        # ys holds each step's new h (zero where masked: the gradient there is zero too)
        (dh,) = dfinals
        D = (ys > 0).to(ys.dtype) if relu else 1 - ys * ys
        m = _float_mask(mask, ys.shape[0], ys.dtype)
        dxp = _Steps(ys.shape[0])
        dys, D = _per_step(dys, D)
        for t in _order(ys.shape[0], not reverse):
            d, d_keep = _split(dh, dys[t], m[t])
            dpre = d * D[t]
            dxp[t] = dpre
            dh = _plus(dpre @ w_hh, d_keep)
        dxp = dxp.out
        h_prev = _previous(ys, states0[0], mask, reverse)
        return dxp, (dh,), {"w_hh": dxp.flatten(0, -2).t() @ h_prev.flatten(0, -2)}
    return backward


_KINDS = {  # kind -> (forward, backward, number of state tensors)
    "lstm": (_lstm_forward, _lstm_backward, 2),
    "gru": (_gru_forward, _gru_backward, 1),
    "rnn_tanh": (_rnn_forward(False), _rnn_backward(False), 1),
    "rnn_relu": (_rnn_forward(True), _rnn_backward(True), 1),
}


def _run_forward(kind, reverse, xp, states, w_hh, b_hh, w_hr, mask) -> list[Tensor]:
    """``[ys, *finals, *extra]``, fresh tensors (T >= 1: the finals are not the inputs)."""
    ys, finals, extra = _KINDS[kind][0](xp, tuple(states), w_hh, b_hh, w_hr, mask, reverse)
    return [ys, *finals, *extra]


def _run_backward(kind, reverse, grads, w_hh, b_hh, w_hr, mask, saved) -> list[Tensor]:
    """``[dxp, *dstates, dw_hh, (db_hh), (dw_hr)]``; ``grads = [dys, *dfinals, *dextra]``,
    ``saved = [ys, *states0, *extra]``. ``dextra`` (cotangents on the saved activations, shaped
    like ``extra``) is present only in a second derivative: there the first backward reads the
    saved activations, so gradient reaches them and is carried on to the inputs here."""
    n = _KINDS[kind][2]
    dys, dfinals, dextra = grads[0], tuple(grads[1:1 + n]), grads[1 + n:]
    ys, states0, extra = saved[0], saved[1:1 + n], saved[1 + n:]
    dxp, dstates, dw = _KINDS[kind][1](dys, dfinals, w_hh, b_hh, w_hr, mask, reverse, ys, states0, extra, dextra)
    return [dxp, *dstates, dw["w_hh"], *([dw["b_hh"]] if b_hh is not None else []),
            *([dw["w_hr"]] if w_hr is not None else [])]


def _full_grads(grads, saved, n: int) -> list[Tensor]:
    """``[dys, *dfinals]`` with zeros for absent ones, then the cotangents of the saved
    activations only if one of them is present (zeros for the others)."""
    out = [torch.zeros_like(s) if g is None else g for g, s in zip(grads[:1 + n], saved[:1 + n])]
    dextra = grads[1 + n:]
    if any(g is not None for g in dextra):
        out += [torch.zeros_like(s) if g is None else g for g, s in zip(dextra, saved[1 + n:])]
    return out


def _run_double_backward(kind, reverse, grads, w_hh, b_hh, w_hr, mask, saved, cotangents) -> list[Tensor]:
    """The VJP of ``_run_backward`` (what a second derivative needs): its loop is rerun with
    autograd recording, then differentiated with ``cotangents`` (one per output of
    ``_run_backward``; ``None``: zero). ``[*d grads, d w_hh, (d b_hh), (d w_hr), *d saved]``.
    The forward recurrence is not rerun: gradient reaching the saved activations goes back to
    the forward's own (hand-written) backward as their cotangents."""
    weights = [w for w in (w_hh, b_hh, w_hr) if w is not None]
    inputs = [t.detach().requires_grad_() for t in (*grads, *weights, *saved)]
    n = len(grads)
    g, s = inputs[:n], inputs[n + len(weights):]
    w_hh, b_hh, w_hr = _weight_grads(b_hh, w_hr, inputs[n:n + len(weights)])  # (the weights, in that order)
    with torch.enable_grad():
        outs = _run_backward(kind, reverse, g, w_hh, b_hh, w_hr, mask, s)
    pairs = [(o, c) for o, c in zip(outs, cotangents) if c is not None and o.requires_grad]
    res = torch.autograd.grad([o for o, _ in pairs], inputs, [c for _, c in pairs], allow_unused=True) \
        if pairs else [None] * len(inputs)
    return [torch.zeros_like(i) if r is None else r for i, r in zip(inputs, res)]


# -- the custom ops: what torch.compile sees ---------------------------------------------------------
@torch.library.custom_op("cells::recurrence", mutates_args=())
def _recurrence_op(kind: str, reverse: bool, xp: Tensor, states: list[Tensor], w_hh: Tensor,
                   b_hh: Optional[Tensor], w_hr: Optional[Tensor], mask: Optional[Tensor]) -> list[Tensor]:  # noqa: UP045
    return _run_forward(kind, reverse, xp, states, w_hh, b_hh, w_hr, mask)


@_recurrence_op.register_fake
def _(kind, reverse, xp, states, w_hh, b_hh, w_hr, mask):
    T, B = xp.shape[0], xp.shape[1]
    h = states[0]
    H, P = (states[1].shape[-1], h.shape[-1]) if kind == "lstm" else (h.shape[-1], h.shape[-1])
    new = xp.new_empty
    extra = {"lstm": [(4 * H,), (H,)], "gru": [(2 * H,), (H,), (H,)]}
    return [new(T, B, P), *(new(s.shape) for s in states),
            *(new(T, B, *shape) for shape in extra.get(kind, []))]


@torch.library.custom_op("cells::recurrence_backward", mutates_args=())
def _recurrence_backward_op(kind: str, reverse: bool, grads: list[Tensor], w_hh: Tensor,
                            b_hh: Optional[Tensor], w_hr: Optional[Tensor],  # noqa: UP045
                            mask: Optional[Tensor], saved: list[Tensor]) -> list[Tensor]:  # noqa: UP045
    return _run_backward(kind, reverse, grads, w_hh, b_hh, w_hr, mask, saved)


@_recurrence_backward_op.register_fake
def _(kind, reverse, grads, w_hh, b_hh, w_hr, mask, saved):
    n = _KINDS[kind][2]
    xp_last = w_hh.shape[0]
    T, B = grads[0].shape[0], grads[0].shape[1]
    return [grads[0].new_empty(T, B, xp_last), *(g.new_empty(g.shape) for g in grads[1:1 + n]),
            w_hh.new_empty(w_hh.shape), *([b_hh.new_empty(b_hh.shape)] if b_hh is not None else []),
            *([w_hr.new_empty(w_hr.shape)] if w_hr is not None else [])]


@torch.library.custom_op("cells::recurrence_double_backward", mutates_args=())
def _double_backward_op(kind: str, reverse: bool, grads: list[Tensor], w_hh: Tensor,
                        b_hh: Optional[Tensor], w_hr: Optional[Tensor], mask: Optional[Tensor],  # noqa: UP045
                        saved: list[Tensor], cotangents: list[Optional[Tensor]]) -> list[Tensor]:  # noqa: UP045
    with eager_island():
        return _run_double_backward(kind, reverse, grads, w_hh, b_hh, w_hr, mask, saved, cotangents)


@_double_backward_op.register_fake
def _(kind, reverse, grads, w_hh, b_hh, w_hr, mask, saved, cotangents):
    return [t.new_empty(t.shape) for t in (*grads, w_hh, b_hh, w_hr, *saved) if t is not None]


def _weight_grads(b_hh, w_hr, rest) -> tuple:
    """``(d w_hh, d b_hh or None, d w_hr or None)`` from the weight part of an op's result."""
    rest = iter(rest)
    return next(rest), (next(rest) if b_hh is not None else None), (next(rest) if w_hr is not None else None)


class _Recurrence(torch.autograd.Function):
    # in-place writes only into fresh tensors made from batched results: the loops run under vmap as they are
    generate_vmap_rule = True

    # The states are two fixed parameters (c0 None but for the LSTM), not ``*states``: when no
    # input requires grad, dynamo inlines ``forward`` and tells a setup_context-style forward
    # from a ``forward(ctx, ...)`` by counting its parameters, which ``*states`` miscounts
    # (torch 2.13: the LSTM's two states made it pass its ctx as ``kind``).
    @staticmethod
    def forward(kind, reverse, mask, xp, w_hh, b_hh, w_hr, h0, c0):
        states = (h0,) if c0 is None else (h0, c0)
        if torch.compiler.is_compiling():
            with torch.no_grad():  # the op's autograd is this Function's backward
                return tuple(_recurrence_op(kind, reverse, xp, list(states), w_hh, b_hh, w_hr, mask))
        return tuple(_run_forward(kind, reverse, xp, states, w_hh, b_hh, w_hr, mask))

    @staticmethod
    def setup_context(ctx, inputs, output):
        # the saved activations are outputs like ys: differentiable, so that a second
        # derivative (which differentiates the backward that reads them) reaches the inputs
        kind, reverse, mask, _, w_hh, b_hh, w_hr, h0, c0 = inputs
        states = (h0,) if c0 is None else (h0, c0)
        n = len(states)
        ctx.save_for_backward(w_hh, b_hh, w_hr, mask, output[0], *states, *output[1 + n:])
        ctx.kind, ctx.reverse, ctx.n = kind, reverse, n
        if torch.compiler.is_compiling():  # compiled, no second derivative comes here (see recurrence)
            ctx.mark_non_differentiable(*output[1 + n:])
        ctx.set_materialize_grads(False)  # no zero-filled gradients for the saved outputs

    @staticmethod
    def backward(ctx, dys, *d_outputs):
        w_hh, b_hh, w_hr, mask, *saved = ctx.saved_tensors
        if torch.compiler.is_compiling():  # (the compiled Function fills zeros for the saved outputs)
            d_outputs = d_outputs[:ctx.n]
        grads = _full_grads([dys, *d_outputs], saved, ctx.n)
        if torch.compiler.is_compiling():
            # grad mode as it is: differentiated again, the op refuses (its autograd formula
            # raises; compiled, the layers step the cell for second derivatives: see
            # second_derivative_ahead); under no_grad it would silently count as a constant
            out = _recurrence_backward_op(ctx.kind, ctx.reverse, grads, w_hh, b_hh, w_hr, mask, saved)
        elif _differentiated_again(saved):
            # a second derivative: the backward as a differentiable Function (its own backward
            # is cells::recurrence_double_backward); the saved activations are differentiable
            # outputs, so the cotangents reaching them come back here as d_outputs
            out = _RecurrenceBackward.apply(ctx.kind, ctx.reverse, mask, w_hh, b_hh, w_hr, *_slots(grads),
                                            *_slots(saved))
        else:
            with torch.no_grad():  # fn.grad runs backwards with grad mode on: do not record the loop
                out = _run_backward(ctx.kind, ctx.reverse, grads, w_hh, b_hh, w_hr, mask, saved)
        dxp, dstates = out[0], out[1:1 + ctx.n]
        return (None, None, None, dxp, *_weight_grads(b_hh, w_hr, out[1 + ctx.n:]), *dstates,
                *[None] * (2 - ctx.n))


_SLOTS = 5  # the most gradients, saved tensors or cotangents a backward takes (LSTM: [dys, dh, dc, d acts, d cs])


def _slots(tensors) -> list:
    """``tensors`` padded with ``None`` to ``_SLOTS``: the Functions below take fixed parameters,
    not ``*tensors`` (dynamo counts a forward's parameters to tell its style, see ``_Recurrence``)."""
    return [*tensors, *[None] * (_SLOTS - len(tensors))]


def _present(*tensors) -> list:
    return [t for t in tensors if t is not None]


class _RecurrenceBackward(torch.autograd.Function):
    """``_Recurrence``'s backward as a function of its own, so that it can be differentiated:
    inputs ``grads`` (``g*``) and ``saved`` (``s*``) as ``_run_backward`` takes them, outputs its
    ``[dxp, *dstates, dw_hh, (db_hh), (dw_hr)]``. Its backward is ``_RecurrenceDoubleBackward``."""

    @staticmethod
    def forward(kind, reverse, mask, w_hh, b_hh, w_hr, g0, g1, g2, g3, g4, s0, s1, s2, s3, s4):
        grads, saved = _present(g0, g1, g2, g3, g4), _present(s0, s1, s2, s3, s4)
        return tuple(_run_backward(kind, reverse, grads, w_hh, b_hh, w_hr, mask, saved))

    @staticmethod
    def setup_context(ctx, inputs, output):
        kind, reverse, mask, w_hh, b_hh, w_hr, *tensors = inputs
        grads, saved = _present(*tensors[:_SLOTS]), _present(*tensors[_SLOTS:])
        ctx.save_for_backward(w_hh, b_hh, w_hr, mask, *grads, *saved)
        ctx.kind, ctx.reverse, ctx.n_grads = kind, reverse, len(grads)

    @staticmethod
    def backward(ctx, *cotangents):
        w_hh, b_hh, w_hr, mask, *tensors = ctx.saved_tensors
        n = ctx.n_grads
        grads, saved = tensors[:n], tensors[n:]
        out = _RecurrenceDoubleBackward.apply(ctx.kind, ctx.reverse, mask, w_hh, b_hh, w_hr, *_slots(grads),
                                              *_slots(saved), *_slots(cotangents))
        d_grads, d_weights, d_saved = out[:n], _weight_grads(b_hh, w_hr, out[n:]), out[len(out) - len(saved):]
        return (None, None, None, *d_weights, *_slots(d_grads), *_slots(d_saved))


class _RecurrenceDoubleBackward(torch.autograd.Function):
    """The VJP of ``_RecurrenceBackward`` (``_run_double_backward``, one opaque op):
    ``[*d grads, d w_hh, (d b_hh), (d w_hr), *d saved]``. A third derivative is refused by name."""

    @staticmethod
    def forward(kind, reverse, mask, w_hh, b_hh, w_hr, g0, g1, g2, g3, g4, s0, s1, s2, s3, s4,
                c0, c1, c2, c3, c4):
        grads, saved = _present(g0, g1, g2, g3, g4), _present(s0, s1, s2, s3, s4)
        n_outputs = 2 + _KINDS[kind][2] + (b_hh is not None) + (w_hr is not None)  # of _run_backward
        cotangents = [c0, c1, c2, c3, c4][:n_outputs]  # None: zero
        with torch.no_grad():
            return tuple(_double_backward_op(kind, reverse, grads, w_hh, b_hh, w_hr, mask, saved, cotangents))

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError(
            "cells: the second derivative of a fused recurrence cannot be differentiated again (a third "
            "derivative); build the layer with fused=False to differentiate the cells step by step")


def refuse_second_derivative(op, what: str) -> None:
    """Give a compiled backward op an autograd formula that refuses: a compiled second derivative
    through it raises instead of silently counting it as a constant (the layers step the cell
    where they see one coming, :func:`steps_the_cell`; eager backwards differentiate)."""
    def backward(ctx, *grads):
        raise RuntimeError(
            f"cells: the compiled {what} cannot be differentiated again (a second derivative the layer "
            "did not see coming); take it eagerly, or build the layer with fused=False to differentiate "
            "the cells step by step")
    op.register_autograd(backward, setup_context=lambda ctx, inputs, output: None)


refuse_second_derivative(_recurrence_backward_op, "hand-written backward of the recurrences")


@torch.compiler.assume_constant_result
def grad_nesting() -> int:
    """How many differentiating torch.func transforms (grad, jvp) enclose this call (read as a
    constant while dynamo traces)."""
    return sum(i.key() in (TransformType.Grad, TransformType.Jvp) for i in retrieve_all_functorch_interpreters())


def _base(t: Tensor) -> Tensor:
    """The plain tensor under every functorch wrapper (what autograd outside all transforms sees)."""
    while torch._C._functorch.is_functorch_wrapped_tensor(t):
        t = torch._C._functorch.get_unwrapped(t)
    return t


def derivative_order_ahead(weights: tuple, others: tuple = ()) -> int:
    """How many times the output of a recurrence over these tensors will be differentiated, as
    far as can be seen from inside it: the differentiating transforms enclosing the call, plus
    one when autograd underneath them also tracks one of the tensors (``torch.autograd.grad``
    of a ``fn.grad`` result: meta-learning, a penalty differentiated by ``.backward()``). 2 is a
    second derivative (a gradient penalty under ``fn.grad``). A plain ``create_graph=True``
    backward cannot be seen coming here (order 0): the backward finds out itself
    (:func:`_differentiated_again`).

    Compiled, only the weights are asked (dynamo reports ``requires_grad`` of a compiled
    function's own inputs as autograd outside the transforms sees them; intermediates always
    require grad inside a transform)."""
    nesting = grad_nesting()
    if nesting == 0:
        return 0
    if torch.compiler.is_compiling():
        tracked = any(w is not None and w.requires_grad for w in weights)
    else:
        tracked = any(t is not None and _base(t).requires_grad for t in (*weights, *others))
    return nesting + tracked


def second_derivative_ahead(weights: tuple, others: tuple = ()) -> bool:
    """Whether the backward of a recurrence over these tensors will itself be differentiated."""
    return derivative_order_ahead(weights, others) >= 2


@torch.compiler.assume_constant_result
def _forward_mode_or_vmap() -> bool:
    """Whether a ``jvp`` or ``vmap`` transform encloses this call (read as a constant while dynamo traces)."""
    return any(i.key() in (TransformType.Jvp, TransformType.Vmap) for i in retrieve_all_functorch_interpreters())


def steps_the_cell(weights: tuple, others: tuple = ()) -> bool:
    """Whether a layer must step the cell (differentiable to any order) instead of running the
    fused recurrence, because of what will differentiate it. The fused recurrence's backward is
    differentiable once (a second derivative: ``_RecurrenceBackward``), eagerly, in reverse mode,
    outside ``vmap``. So the cell is stepped for

    * a third derivative or more (its double backward refuses to be differentiated);
    * a second derivative under ``jvp`` or ``vmap`` (the double backward is one op with neither
      a forward-mode formula nor a batching rule);
    * a second derivative under ``torch.compile``: torch 2.13 differentiates a compiled
      ``autograd.Function``'s backward as a constant, silently (zero second derivatives; pinned
      by ``tests/test_cells_double_backward.py``).
    """
    order = derivative_order_ahead(weights, others)
    if order < 2:
        return False
    return order > 2 or torch.compiler.is_compiling() or _forward_mode_or_vmap()


def _differentiated_again(saved: list) -> bool:
    """Whether this backward is itself being differentiated (a second derivative).

    ``torch.func.grad`` runs every backward with grad mode on, in case a transform encloses
    it, so grad mode alone does not tell. A second derivative is taken when a differentiating
    transform (or ``create_graph=True``) encloses the one whose backward this is. That one is
    on top of functorch's stack, at the level of the saved tensors, unless it already
    returned (``vjp``), in which case every grad level on the stack encloses it.
    """
    if not torch.is_grad_enabled():
        return False
    stack = retrieve_all_functorch_interpreters()
    if not stack:
        return True  # plain autograd with create_graph=True
    if any(t is not None and _base(t).requires_grad for t in saved):
        return True  # autograd underneath the transforms differentiates this backward's result
    own = max(maybe_get_level(t) for t in saved)
    outer = stack[:-1] if stack[-1].level() == own else stack
    return any(i.key() in (TransformType.Grad, TransformType.Jvp) for i in outer)


def recurrence(kind: str, xp: Tensor, states: tuple, w_hh: Tensor, b_hh: Tensor | None = None,
               w_hr: Tensor | None = None, mask: Tensor | None = None, reverse: bool = False):
    """xp ``[T, B, G*H]``, states ``(h [B, P], c [B, H])`` (LSTM) or ``(h [B, H],)``, w_hh
    ``[G*H, P]``, b_hh ``[G*H]`` (GRU), w_hr ``[P, H]`` (LSTM proj), mask ``[T, B, 1]`` bool
    -> ``(ys [T, B, P], finals)`` with ``finals`` shaped like ``states``."""
    if kind not in _KINDS:
        raise ValueError(f"recurrence: kind must be one of {sorted(_KINDS)}, got {kind!r}")
    if xp.ndim != 3 or xp.shape[0] < 1:
        raise ValueError(f"recurrence: expected xp of shape [T, B, G*H] with T >= 1, got {list(xp.shape)}")
    n = len(states)
    if torch.compiler.is_compiling() and second_derivative_ahead((w_hh, b_hh, w_hr)):
        raise RuntimeError(
            "cells.fused.recurrence: a compiled second derivative through the fused recurrence would be "
            "silently wrong (torch differentiates a compiled autograd.Function's backward as a constant); "
            "the layers step the cell there (fused=False gives it)")
    xp, w_hh, b_hh, w_hr, *states = fresh_views(xp, w_hh, b_hh, w_hr, *states)
    out = _Recurrence.apply(kind, reverse, mask, xp, w_hh, b_hh, w_hr, *states, *[None] * (2 - n))
    return out[0], tuple(out[1:1 + n])
