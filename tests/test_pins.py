"""Workarounds for torch bugs, each pinned on the torch installed here.

Every test states the bug as torch behaves today (so it fails when torch fixes it: then drop the
workaround) and that the workaround gives eager's numbers."""

import torch

from fnnet._island import fresh_views


class _Twice(torch.autograd.Function):
    """Identity forward, backward doubling: a gradient that reveals whether it ran."""

    @staticmethod
    def forward(x):
        return x * 1.0

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, g):
        return 2 * g


def _compiled_grad(views: bool):
    def loss(x):
        (v,) = fresh_views(x) if views else (x,)
        return _Twice.apply(v).sum()

    x = torch.randn(3, dtype=torch.float64)
    eager = torch.func.grad(loss)(x)
    torch._dynamo.reset()
    return eager, torch.compile(torch.func.grad(loss), fullgraph=True)(x)


def test_dynamo_reads_a_func_grad_input_as_not_requiring_grad_and_drops_a_functions_backward():
    """torch.compile(torch.func.grad(f)) where f calls an autograd.Function on its own input:
    dynamo decides the Function needs no backward, and the gradient comes out as if the Function
    were the identity (1, not 2), silently. Used by fnnet._loop, fnnet.remat, cells.fused and
    losses.linear_cross_entropy through fnnet._island.fresh_views."""
    eager, compiled = _compiled_grad(views=False)
    assert torch.equal(eager, torch.full_like(eager, 2.0))
    assert not torch.equal(compiled, eager), "torch fixed it: fresh_views can go"


def test_fresh_views_give_the_function_its_backward_under_compile():
    eager, compiled = _compiled_grad(views=True)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_dynamo_drops_a_functions_backward_inside_nested_func_grad():
    """The nested case, which fresh views do not fix: under torch.compile, an autograd.Function
    inside nested torch.func.grad is not differentiated through its backward (torch 2.13). Why
    compiled code does not use fnnet._gemm's eager Function. When this fails, torch
    differentiates it right: the compiled path may call _gemm.linear directly."""
    x = torch.randn(3, dtype=torch.float64)
    w = torch.randn(3, dtype=torch.float64)

    def outer(w):
        return torch.func.grad(lambda x: (_Twice.apply(fresh_views((x * w).view(3))[0]) ** 2).sum())(x).sum()

    eager = torch.func.grad(outer)(w)
    torch._dynamo.reset()
    compiled = torch.compile(torch.func.grad(outer), fullgraph=True)(w)
    assert not torch.allclose(compiled, eager), "torch fixed it: the compiled path may use _gemm's Function"
