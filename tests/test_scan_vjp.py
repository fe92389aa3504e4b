"""Compiled gradients through fnnet.scan, and why they come from the unrolled loop.

fnnet.scan under ``fn.jit`` with gradients unrolls the loop (``fnnet/scan.py``). The JAX design
(the VJP of a scan is two scans: a forward one keeping the carries, a reverse one over the
body's VJP, each body traced once) was measured on the installed torch, and is pinned here as
what keeps it out:

* written by hand (an autograd.Function whose forward is torch's scan op and whose backward is
  a reverse scan op over ``torch.func.vjp`` of the body, torch never differentiating its op),
  it gets the same wrong gradients under inductor as torch's own scan autograd
  (pytorch/pytorch#153679): inductor lowers every higher-order op's subgraph in a backward graph
  with the *backward graph's* donated-buffer indices (pytorch/pytorch#192840, fixed upstream by
  #193960), so a subgraph input may be overwritten while still needed. With donated buffers
  off the same graph is right, which pins the diagnosis;
* the scan op cannot run at all inside a compiled ``torch.func.grad`` (``fn.jit(fn.grad)``,
  the usual training step), hand-written autograd.Function or not.

When these pins fail, torch is fixed there: the two-scan VJP becomes the way to a compiled
training step whose graph does not grow with T.

The first test is the specification fnnet.scan meets today: every feature of a scan in one
differentiated graph, compiled with the default (inductor) backend, equals eager in float64.
"""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close, assert_trees_close
from torch._higher_order_ops.scan import scan as torch_scan

import cells
import fnnet as fn
from fnnet import random
from fnnet.scan import scan

D = torch.float64
I, H, B, T = 3, 4, 2, 3  # noqa: E741
CELL = cells.LSTMCell(I, H)  # built outside the compiled step, as a model is


def _every_feature_loss(p, w, xs):
    """One loss through five scans: a user LSTMCell body (pytree carry ``(h, c)``, pytree ys,
    params closed over), chained into a reverse scan with ``unroll=2`` over its outputs
    (weight closed over, carry ``{"h", "n"}``), a length-1 scan, a T=0 scan, and a scan with
    ``xs=None``."""
    z = torch.zeros(B, H, dtype=D)

    def lstm(hc, x_t):
        h, c = CELL.apply(p, x_t, hc)
        return (h, c), {"h": h, "c2": 2 * c}
    (h, c), ys = scan(lstm, (z, z), xs)

    def back(carry, y_t):
        h = torch.tanh(carry["h"] @ w + y_t)
        return {"h": h, "n": carry["n"] + h.mean()}, h
    top, hs = scan(back, {"h": h, "n": torch.zeros((), dtype=D)}, ys["h"], reverse=True, unroll=2)
    one, y1 = scan(lstm, (h, c), xs[:1])
    none, y0 = scan(lstm, (c, h), xs[:0])
    spun, _ = scan(lambda s, _: (torch.sin(s @ w), None), top["h"], None, length=3)
    return (hs.square().mean() + ys["c2"].sin().sum() + top["n"] + y1["h"].sum() + one[1].square().sum()
            + none[0].sum() + spun.sum() + (y0 is None))


def _case():
    g = torch.Generator().manual_seed(0)
    p = fn.tree.map(lambda t: t.double(), CELL.init(random.key(3)))
    w = torch.randn(H, H, generator=g, dtype=D) * 0.5
    xs = torch.randn(T, B, I, generator=g, dtype=D)
    return (p, w, xs), fn.value_and_grad(_every_feature_loss, argnums=(0, 1, 2))


def test_every_feature_of_scan_in_one_compiled_training_step_equals_eager():
    """fn.jit(fn.value_and_grad) (scan inside torch.func) of ``_every_feature_loss``,
    inductor, float64, against eager: the value and the gradients w.r.t. the closed-over
    params, the closed-over weight and the scanned inputs."""
    args, step = _case()
    want_value, want = step(*args)
    got_value, got = fn.jit(step)(*args)
    assert_close(got_value, want_value)
    assert_trees_close({"g": got}, {"g": want}, msg="fn.jit(fn.value_and_grad)")


@pytest.mark.slow
def test_every_feature_of_scan_compiled_then_backward_equals_eager():
    """fn.jit(loss)(...).backward(): the scans compiled with autograd outside torch.func."""
    args, step = _case()
    _, want = step(*args)
    leaves = fn.tree.map(lambda t: t.clone().requires_grad_(), args)
    fn.jit(_every_feature_loss)(*leaves).backward()
    assert_trees_close({"g": fn.tree.map(lambda t: t.grad, leaves)}, {"g": want}, msg="fn.jit(loss).backward()")


# -- the two-scan VJP on the installed torch -----------------------------------------------------

def _tanh_cell(h, x, w):
    return torch.tanh(h @ w + x)


class _HandWrittenScanVJP(torch.autograd.Function):
    """``tanh(h @ w + x)`` over T, JAX's way: the forward is torch's scan op keeping every
    step's input carry; the backward a reverse scan op over the body's VJP, accumulating dw in
    its carry. Autograd never differentiates the op."""

    @staticmethod
    def forward(h0, xs, w):
        def body(h, x):
            new = _tanh_cell(h, x, w)
            return new.clone(), (new.clone(), h.clone())
        h, (ys, hs) = torch_scan(body, h0.clone(), xs)
        return h, ys, hs

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, xs, w = inputs
        ctx.save_for_backward(output[2], xs, w)
        ctx.mark_non_differentiable(output[2])

    @staticmethod
    def backward(ctx, dh, dys, _):
        hs, xs, w = ctx.saved_tensors

        def body(carry, step):
            g, dw = carry
            h, x, dy = step
            _, vjp = torch.func.vjp(_tanh_cell, h, x, w)
            gh, gx, gw = vjp(g + dy)
            return (gh.clone(), (dw + gw).clone()), gx.clone()
        (dh0, dw), dxs = torch_scan(body, (dh.clone(), torch.zeros_like(w)), (hs, xs, dys), reverse=True)
        return dh0, dxs, dw


def _chained(w1, w2, xs, hand_written):
    """Two tanh layers, the second scanning the first's outputs (the graph of #153679)."""
    def layer(w, xs):
        h0 = torch.zeros(xs.shape[1:], dtype=xs.dtype)
        if hand_written:
            return _HandWrittenScanVJP.apply(h0, xs, w)[1]
        return scan(lambda h, x: (_tanh_cell(h, x, w),) * 2, h0, xs)[1]
    return layer(w2, layer(w1, xs)).square().mean()


def _errors(donated_buffer: bool) -> list[float]:
    g = torch.Generator().manual_seed(0)
    w1, w2 = (torch.randn(16, 16, generator=g, dtype=D) * 0.5 for _ in range(2))
    xs = torch.randn(12, 3, 16, generator=g, dtype=D)
    want = torch.func.grad(_chained, argnums=(0, 1))(w1, w2, xs, False)
    a, b = w1.clone().requires_grad_(), w2.clone().requires_grad_()
    torch._dynamo.reset()
    with torch._functorch.config.patch(donated_buffer=donated_buffer):
        torch.compile(_chained, fullgraph=True)(a, b, xs, True).backward()
    return [((got - ref).abs().max() / ref.abs().max()).item() for got, ref in zip((a.grad, b.grad), want)]


@pytest.mark.slow
def test_a_hand_written_two_scan_vjp_still_gets_chained_gradients_wrong_under_inductor():
    """Pin: the hand-written VJP is wrong under inductor as torch's own scan autograd is (the
    first layer's gradient, float64), and right once inductor donates no buffers. When the
    first assertion fails, torch is fixed: fnnet.scan may run its compiled gradients as two
    scan ops (outside torch.func; see the next pin for inside)."""
    wrong = _errors(donated_buffer=True)
    assert max(wrong) > 1e-3, f"the two-scan VJP now differentiates right under inductor: {wrong}"
    right = _errors(donated_buffer=False)
    assert max(right) < 1e-10, f"without donated buffers the two-scan VJP should be right: {right}"


def test_torchs_scan_op_still_cannot_run_inside_a_compiled_torch_func_grad():
    """Pin: ``fn.jit(fn.grad(loss))`` with torch's scan op in ``loss`` (here inside the
    hand-written VJP, so torch never differentiates the op) fails to compile on the installed
    torch. When this test fails, torch traces it: the two-scan VJP could serve fn.grad too."""
    w = torch.randn(4, 4, dtype=D)
    xs = torch.randn(3, 2, 4, dtype=D)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="Expected FakeTensor"):
        torch.compile(torch.func.grad(_chained), fullgraph=True)(w, w * 0.5, xs, True)
