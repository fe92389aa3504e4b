"""The LSTM on torch's native fused CPU kernel, the one ``nn.LSTM`` itself runs: oneDNN's
LSTM (``aten::mkldnn_rnn_layer`` and its backward), one call per layer and direction.

    ys, (h_n, c_n) = lstm_layer(x, w_ih, w_hh, b_ih, b_hh, (h0, c0), reverse=False)

x: ``[T, B, I]``; w_ih ``[4H, I]``, w_hh ``[4H, H]``, b_ih, b_hh ``[4H]`` (``None``: no bias);
h0, c0 ``[B, H]`` -> ys ``[T, B, H]``, h_n, c_n ``[B, H]``. Bit for bit ``nn.LSTM``'s numbers.

Why: on CPU ``nn.LSTM`` does not step through time op by op; oneDNN runs the whole sequence
(input projection, recurrence, and its BPTT) in one fused primitive. A recurrence stepped
from Python (``cells.fused``) pays ~40 small-op dispatches a step and stays 1.2-2x behind it.
Here the same primitive is wrapped the functional way: a ``torch.autograd.Function``
(``setup_context``, so ``fn.grad`` composes) whose forward and backward each call one
custom op. oneDNN's workspace (what its backward needs) travels as an output of the forward,
so nothing is hidden in the op; under ``fn.jit`` the compiler sees two opaque ops whatever T
is.

``available(...)`` says when it applies: CPU, float32, oneDNN built and enabled
(``torch.backends.mkldnn``), a non-empty batch, no ``proj_size``, no ``lengths`` mask, and no ``vmap``
(the kernel has no batching rule). Otherwise the layers use ``cells.fused``. oneDNN's backward
cannot be differentiated: where a second derivative is seen coming (a gradient penalty) the
layers run ``cells.fused``, whose backward can; an unforeseen one (``create_graph=True``) reruns
the layer on ``cells.fused`` inside this backward.
"""

from __future__ import annotations

from typing import Optional

import warnings

import torch

from fnnet._compat import parse_torch_version
from fnnet.transforms import inside_vmap

from fnnet._island import fresh_views

from .fused import _differentiated_again, recurrence, refuse_second_derivative

Tensor = torch.Tensor

__all__ = ["available", "lstm_layer"]

_MODE_LSTM = 2  # aten's RNN mode enum: RNN_RELU, RNN_TANH, LSTM, GRU
_HAVE_OP = (hasattr(torch.ops.aten, "mkldnn_rnn_layer") and hasattr(torch.ops.aten, "mkldnn_rnn_layer_backward")
            and torch.backends.mkldnn.is_available())


def available(x: Tensor, proj: bool, mask: Tensor | None) -> bool:
    """Whether ``lstm_layer`` can run this LSTM layer."""
    return (_HAVE_OP and not proj and mask is None and x.device.type == "cpu" and x.dtype == torch.float32
            and x.shape[1] > 0 and _enabled() and not inside_vmap()  # oneDNN fails on an empty batch
            and not (not COMPILES_WITH_GRAD and torch.compiler.is_compiling() and torch.is_grad_enabled()
                     and _compiled_with_grad_falls_back()))


# Before torch 2.13 dynamo fails on this op inside a compiled gradient (its workspace output,
# of a size known only at run time, trips "Expected FakeTensor" under torch.func.grad; measured
# on 2.9-2.11, 2.12 not run): there a compiled training step runs the LSTM on cells.fused's
# hand-written recurrence instead (the same math, ~1.5x slower on CPU), and says so once.
COMPILES_WITH_GRAD = parse_torch_version(torch.__version__) >= (2, 13)
_warned = [False]


@torch.compiler.assume_constant_result  # runs for real while dynamo traces: the warning is raised once, not traced
def _compiled_with_grad_falls_back() -> bool:
    if not _warned[0]:
        _warned[0] = True
        warnings.warn(
            f"cells: torch {torch.__version__} cannot compile the native (oneDNN) LSTM kernel inside a "
            "gradient; compiled training steps run the LSTM on cells.fused's recurrence instead (same "
            "numbers to rounding, slower). torch >= 2.13 compiles the native kernel.", RuntimeWarning,
            stacklevel=2)
    return True


@torch.compiler.assume_constant_result  # a flag dynamo cannot read; the compiled step assumes it stays
def _enabled() -> bool:
    return torch.backends.mkldnn.enabled


def _call_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, train):
    H = w_hh.shape[1]
    return torch.ops.aten.mkldnn_rnn_layer(
        x.contiguous(), w_ih.contiguous(), w_hh.contiguous(), b_ih.contiguous(), b_hh.contiguous(),
        h0.contiguous(), c0.contiguous(), reverse, [], _MODE_LSTM, H, 1, True, False, False, train)


@torch.library.custom_op("cells::onednn_lstm", mutates_args=())
def _forward_op(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, h0: Tensor, c0: Tensor,
                reverse: bool, train: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if not train:  # inference: no workspace
        ys, h, c, _ = _call_forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, False)
        return ys, h, c, x.new_empty(0, dtype=torch.uint8)
    # oneDNN fills its workspace (what its backward reads) only in grad mode; the inputs
    # are detached, so nothing is recorded
    with torch.enable_grad():
        ys, h, c, ws = _call_forward(x.detach(), w_ih.detach(), w_hh.detach(), b_ih.detach(), b_hh.detach(),
                                     h0.detach(), c0.detach(), reverse, True)
    return ys, h, c, ws


@_forward_op.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, train):
    workspace = torch.library.get_ctx().new_dynamic_size()  # oneDNN's choice, known at run time
    return (x.new_empty(x.shape[0], x.shape[1], w_hh.shape[1]), h0.new_empty(h0.shape),
            c0.new_empty(c0.shape), x.new_empty(workspace, dtype=torch.uint8))


@torch.library.custom_op("cells::onednn_lstm_backward", mutates_args=())
def _backward_op(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor, h0: Tensor, c0: Tensor,
                 ys: Tensor, h: Tensor, c: Tensor, workspace: Tensor, dys: Optional[Tensor],  # noqa: UP045
                 dh: Optional[Tensor], dc: Optional[Tensor], reverse: bool  # noqa: UP045
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    dx, dw_ih, dw_hh, db, _, dh0, dc0 = torch.ops.aten.mkldnn_rnn_layer_backward(
        x.contiguous(), w_ih.contiguous(), w_hh.contiguous(), b_ih.contiguous(), b_hh.contiguous(),
        h0.contiguous(), c0.contiguous(), ys, h, c, dys, dh, dc, reverse, _MODE_LSTM, w_hh.shape[1], 1,
        True, True, False, [], False, workspace)
    return dx, dw_ih, dw_hh, db, dh0, dc0


@_backward_op.register_fake
def _(x, w_ih, w_hh, b_ih, b_hh, h0, c0, ys, h, c, workspace, dys, dh, dc, reverse):
    return tuple(t.new_empty(t.shape) for t in (x, w_ih, w_hh, b_ih, h0, c0))


refuse_second_derivative(_backward_op, "LSTM's native (oneDNN) backward")


class _OneDNNLSTM(torch.autograd.Function):
    @staticmethod
    def forward(x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse):
        with torch.no_grad():  # the op's autograd is this Function's backward
            return _forward_op(x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, True)

    @staticmethod
    def setup_context(ctx, inputs, output):
        *tensors, reverse = inputs
        ctx.save_for_backward(*tensors, *output)
        ctx.reverse = reverse
        ctx.mark_non_differentiable(output[3])
        ctx.set_materialize_grads(False)  # oneDNN takes absent gradients as zero, without a zero fill

    @staticmethod
    def backward(ctx, dys, dh, dc, _):
        saved = ctx.saved_tensors
        if not torch.compiler.is_compiling() and _differentiated_again(saved):
            return (*_backward_through_fused(*saved[:7], dys, dh, dc, ctx.reverse), None)
        if torch.compiler.is_compiling():  # differentiated again, the op refuses (see fused.py)
            dx, dw_ih, dw_hh, db, dh0, dc0 = _backward_op(*saved, dys, dh, dc, ctx.reverse)
        else:
            with torch.no_grad():
                dx, dw_ih, dw_hh, db, dh0, dc0 = _backward_op(*saved, dys, dh, dc, ctx.reverse)
        return dx, dw_ih, dw_hh, db, db, dh0, dc0, None


def _backward_through_fused(x, w_ih, w_hh, b_ih, b_hh, h0, c0, dys, dh, dc, reverse) -> tuple:
    """oneDNN's backward is not differentiable: when this backward is itself differentiated (an
    unforeseen second derivative, ``create_graph=True``; the layers route foreseen ones to
    ``cells.fused`` directly), the layer is rerun on ``cells.fused``'s recurrence, whose backward
    is differentiable, and differentiated with the incoming gradients, recording. One more
    forward; the same numbers to rounding."""
    ins = (x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    with torch.enable_grad():
        xp = torch.nn.functional.linear(x, w_ih, b_ih + b_hh)
        ys, (h, c) = recurrence("lstm", xp, (h0, c0), w_hh, reverse=reverse)
        pairs = [(o, g) for o, g in ((ys, dys), (h, dh), (c, dc)) if g is not None]
        wanted = [t for t in ins if t.requires_grad]
        if not pairs or not wanted:
            return (None,) * len(ins)
        grads = iter(torch.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs], create_graph=True,
                                         allow_unused=True))
        return tuple(next(grads) if t.requires_grad else None for t in ins)


def lstm_layer(x: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
               states: tuple[Tensor, Tensor], reverse: bool = False) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One LSTM layer in one direction on oneDNN (see the module doc; check ``available`` first)."""
    h0, c0 = states
    if b_ih is None:
        b_ih = b_hh = w_hh.new_zeros(w_hh.shape[0])
    if not torch.is_grad_enabled():  # inference: oneDNN skips its workspace
        ys, h, c, _ = _forward_op(x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, False)
        return ys, (h, c)
    # compiled: views, so that dynamo reads every input's requires_grad right (see fresh_views)
    x, w_ih, w_hh, b_ih, b_hh, h0, c0 = fresh_views(x, w_ih, w_hh, b_ih, b_hh, h0, c0)
    ys, h, c, _ = _OneDNNLSTM.apply(x, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse)
    return ys, (h, c)
