"""Cross entropy of a linear head's logits, computed a chunk of rows at a time.

``linear_cross_entropy(input, linear_weight, target)`` is ``cross_entropy(input @ W.T + b,
target)``, as ``torch.nn.functional.linear_cross_entropy`` (torch 2.13) defines it, but the
``[N, C]`` logits are never held whole: forward and backward each run over chunks of rows, and
backward recomputes a chunk's logits from the saved ``input`` and ``linear_weight`` instead of
keeping them. This is the loss of a language model's head, where ``C`` (a
vocabulary) dwarfs everything else: what forward keeps for backward and what backward holds at
once grow with ``N * D + C * D + chunk * C``, never with ``N * C``.

The chunked forward and backward are two ops the compiler does not trace into
(``losses::linear_cross_entropy`` and its backward, registered with ``torch.library``): a
compiled graph calls them as they run eagerly (the reduction around them is the compiler's, equal
at rounding level), and the compiler cannot undo the recomputation by keeping the logits. Each
chunk is computed in the input's dtype, as torch's reference path (``options=None``) computes
the whole logits.

The math, for one position ``r`` with logits ``z`` over ``C`` classes and ``logp = log_softmax(z)``:
``loss_r = -sum_c q_rc logp_rc``, where ``q_r`` is the weighted, smoothed target distribution
(class indices: ``(1 - eps) w[t] onehot(t) + eps / C * w``, zero where ignored; probabilities
``y``: ``w * ((1 - eps) y + eps / C)``). Its gradient is ``dz = g_r (sum(q_r) softmax(z) - q_r)``.
"""

from __future__ import annotations

import math

import torch

from fnnet._island import fresh_views

from ._util import check_reduction, float_input, float_weight, number, tensor, value_target
from .classification import _checked_indices

NAME = "linear_cross_entropy"


# -- the chunked kernels (eager code; the ops below wrap them) --------------------------------------

def _chunks(n: int, chunk: int):
    for start in range(0, n, chunk):
        yield start, min(start + chunk, n)


def _chunk_logits(x, w, b, classes: int):
    """``[n, C, P]`` logits of rows ``x`` ``[n, D]`` (``w`` ``[C * P, D]``, ``b`` ``[C * P]`` or None)."""
    z = torch.mm(x, w.t()) if b is None else torch.addmm(b, x, w.t())
    return z.view(x.shape[0], classes, -1)


def _chunk_q(target, start, end, class_weight, probabilities: bool, ignore_index: int, smoothing: float,
             classes: int, like: torch.Tensor):
    """``q`` (the weighted, smoothed target distribution) of rows ``start:end``: ``[n, C, P]``."""
    if probabilities:
        y = target[start:end].to(like.dtype)
        if smoothing:
            y = y * (1 - smoothing) + smoothing / classes
        return y if class_weight is None else y * class_weight.view(1, -1, 1)
    t = target[start:end]  # [n, P]
    kept = t != ignore_index
    onehot = (torch.arange(classes, device=t.device).view(1, -1, 1) == t.unsqueeze(1)).to(like.dtype)
    w = torch.ones(classes, dtype=like.dtype, device=like.device) if class_weight is None else class_weight
    q = onehot * ((1 - smoothing) * w).view(1, -1, 1)
    if smoothing:
        q = q + (smoothing / classes) * w.view(1, -1, 1)
    return q * kept.unsqueeze(1).to(like.dtype)


def _forward(x, w, b, target, class_weight, probabilities, ignore_index, smoothing, classes, chunk):
    """``loss`` ``[N, P]``, per position."""
    n, positions = x.shape[0], w.shape[0] // classes
    loss = x.new_empty((n, positions))
    for start, end in _chunks(n, chunk):
        z = _chunk_logits(x[start:end], w, b, classes)
        logp = torch.log_softmax(z, 1)
        q = _chunk_q(target, start, end, class_weight, probabilities, ignore_index, smoothing, classes, z)
        loss[start:end] = -(q * logp).sum(1)
        del z, logp, q
    return loss


def _backward(grad, x, w, b, target, class_weight, probabilities, ignore_index, smoothing, classes,
              chunk, need_x, need_w, need_b):
    """``(d input, d linear_weight, d linear_bias)`` for the per-position loss's cotangent ``grad``
    ``[N, P]``, recomputing each chunk's logits."""
    n = x.shape[0]
    dx = torch.zeros_like(x) if need_x else x.new_empty(0)
    dw = torch.zeros_like(w) if need_w else w.new_empty(0)
    db = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device) if need_b and b is not None else w.new_empty(0)
    for start, end in _chunks(n, chunk):
        z = _chunk_logits(x[start:end], w, b, classes)
        q = _chunk_q(target, start, end, class_weight, probabilities, ignore_index, smoothing, classes, z)
        p = torch.softmax(z, 1)  # from z itself: exp(z - saved log-sum-exp) loses digits at huge logits
        g = grad[start:end]
        if not probabilities:  # an ignored position has no gradient, even where the mean is 0 / 0
            g = torch.where(target[start:end] != ignore_index, g, 0)
        dz = (p * q.sum(1, keepdim=True) - q) * g.unsqueeze(1)
        dz = dz.view(end - start, -1)
        del z, q, p
        if need_x:
            dx[start:end] = torch.mm(dz, w)
        if need_w:
            dw.addmm_(dz.t(), x[start:end])
        if db.numel():
            db += dz.sum(0)
    return dx, dw, db


# -- the ops: the compiler calls them, never traces into them ---------------------------------------

@torch.library.custom_op("losses::linear_cross_entropy", mutates_args=())
def _forward_op(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, target: torch.Tensor,
                class_weight: torch.Tensor | None, probabilities: bool, ignore_index: int, smoothing: float,
                classes: int, chunk: int) -> torch.Tensor:
    with torch.no_grad():
        return _forward(x, w, b, target, class_weight, probabilities, ignore_index, smoothing, classes, chunk)


@_forward_op.register_fake
def _(x, w, b, target, class_weight, probabilities, ignore_index, smoothing, classes, chunk):
    return x.new_empty((x.shape[0], w.shape[0] // classes))


@torch.library.custom_op("losses::linear_cross_entropy_backward", mutates_args=())
def _backward_op(grad: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                 target: torch.Tensor, class_weight: torch.Tensor | None, probabilities: bool,
                 ignore_index: int, smoothing: float, classes: int, chunk: int, need_x: bool, need_w: bool,
                 need_b: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        return _backward(grad, x, w, b, target, class_weight, probabilities, ignore_index, smoothing,
                         classes, chunk, need_x, need_w, need_b)


@_backward_op.register_fake
def _(grad, x, w, b, target, class_weight, probabilities, ignore_index, smoothing, classes, chunk,
      need_x, need_w, need_b):
    return (torch.empty_like(x) if need_x else x.new_empty(0), torch.empty_like(w) if need_w else w.new_empty(0),
            w.new_empty(w.shape[0]) if need_b and b is not None else w.new_empty(0))


class _LinearCrossEntropy(torch.autograd.Function):
    """The two ops as one differentiable step: forward keeps its inputs (not the logits);
    backward is the backward op. An autograd.Function with ``setup_context``, because
    ``torch.func.grad`` cannot run a custom op's own autograd formula."""

    @staticmethod
    def forward(x, w, b, target, class_weight, probabilities, ignore_index, smoothing, classes, chunk):
        with torch.no_grad():  # the op's autograd is this Function's backward
            return _forward_op(x, w, b, target, class_weight, probabilities, ignore_index, smoothing, classes, chunk)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, b, target, class_weight, probabilities, ignore_index, smoothing, classes, chunk = inputs
        ctx.save_for_backward(x, w, b, target, class_weight)
        ctx.args = (probabilities, ignore_index, smoothing, classes, chunk)

    @staticmethod
    def backward(ctx, grad):
        x, w, b, target, class_weight = ctx.saved_tensors
        need = (ctx.needs_input_grad[0], ctx.needs_input_grad[1], b is not None and ctx.needs_input_grad[2])
        args = (grad, x, w, b, target, class_weight, *ctx.args, *need)
        # compiled, the op itself (its autograd formula refuses a second derivative; dynamo
        # cannot trace a Function inside a backward); eagerly, the op as a refusing Function
        dx, dw, db = _backward_op(*args) if torch.compiler.is_compiling() else _Backward.apply(*args)
        return (dx if need[0] else None, dw if need[1] else None, db if need[2] else None,
                None, None, None, None, None, None, None)


class _Backward(torch.autograd.Function):
    """The backward op as a step autograd can see: differentiating it (a second derivative) is
    refused by name instead of counting the gradients as constants."""

    @staticmethod
    def forward(*args):
        with torch.no_grad():
            return _backward_op(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        _refuse_second_derivative()


def _refuse_second_derivative(*_):
    raise RuntimeError(f"losses.{NAME}: the chunked backward cannot be differentiated again (a second "
                       "derivative); use losses.cross_entropy(F.linear(input, W, b), target) for that")


_backward_op.register_autograd(_refuse_second_derivative, setup_context=lambda ctx, inputs, output: None)


# -- the public function: checks, shapes, reduction -------------------------------------------------

def _shapes(input, linear_weight, linear_bias):
    """``(batched, classes, out_features)`` after checking input / linear_weight / linear_bias."""
    if input.ndim not in (1, 2):
        raise ValueError(f"losses.{NAME}: input must be [in_features] or [N, in_features], "
                         f"got shape {list(input.shape)}")
    if linear_weight.ndim < 2:
        raise ValueError(f"losses.{NAME}: linear_weight must be [C, in_features] or [C, d1, ..., dK, "
                         f"in_features], got shape {list(linear_weight.shape)}")
    if linear_weight.shape[-1] != input.shape[-1]:
        raise ValueError(f"losses.{NAME}: linear_weight's last dim (in_features) must equal the input's, "
                         f"got {linear_weight.shape[-1]} and {input.shape[-1]}")
    classes, out_features = linear_weight.shape[0], tuple(linear_weight.shape[1:-1])
    if classes < 1:
        raise ValueError(f"losses.{NAME}: linear_weight must have at least one class (dim 0), "
                         f"got shape {list(linear_weight.shape)}")
    if linear_bias is not None and tuple(linear_bias.shape) != (classes, *out_features):
        raise ValueError(f"losses.{NAME}: linear_bias must have shape {[classes, *out_features]} "
                         f"(linear_weight's but the last dim), got {list(linear_bias.shape)}")
    if out_features and input.ndim == 1:
        raise ValueError(f"losses.{NAME}: a K-dimensional linear_weight {list(linear_weight.shape)} needs a "
                         f"batched input [N, {input.shape[-1]}], got {list(input.shape)}")
    return input.ndim == 2, classes, out_features


def _default_chunk(rows: int, in_features: int, logits_per_row: int) -> int:
    """Rows per chunk such that a chunk's logits hold about as many numbers as the input."""
    return max(1, min(rows, rows // max(1, -(-logits_per_row // max(1, in_features)))))


def linear_cross_entropy(input: torch.Tensor, linear_weight: torch.Tensor, target: torch.Tensor, *,
                         linear_bias: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                         reduction: str = "mean", ignore_index: int | None = None, label_smoothing: float = 0.0,
                         chunk_size: int | None = None) -> torch.Tensor:
    """``cross_entropy(F.linear(input, W, b), target)`` without holding the logits whole, as
    ``torch.nn.functional.linear_cross_entropy`` (same names, same numbers).

    input: ``[N, D]`` or ``[D]``; linear_weight: ``[C, D]``, or ``[C, d1, ..., dK, D]`` for a
    K-dimensional loss (the logits are then ``[N, C, d1, ..., dK]``, the softmax over ``C``);
    linear_bias: ``[C, d1, ..., dK]``. target: class indices ``[N, d1, ..., dK]`` (``[]``
    unbatched; any integer dtype), or class probabilities ``[N, C, d1, ..., dK]`` (``[C]``
    unbatched; float). weight: ``[C]``, a rescaling per class. ``ignore_index=None`` is torch's
    -100 for indices; with probabilities it must stay None (torch refuses one). With indices and
    ``reduction="mean"`` the mean is weighted (divided by the sum of the kept targets' weights).

    Rows are processed ``chunk_size`` at a time (default: a chunk's logits about the input's
    size, one chunk when ``C * d1 * ... * dK <= D``); backward recomputes each chunk's logits,
    so nothing of size ``N * C`` is kept between forward and backward. Differentiable w.r.t.
    input, linear_weight and linear_bias (not ``weight`` or a probability target: refused when
    they require grad), once (a second derivative is refused). Under ``vmap`` there is no single
    batch to chunk: the loss is computed from the whole logits there (same values).
    """
    check_reduction(NAME, reduction)
    float_input(NAME, input)
    float_input(NAME, linear_weight, "linear_weight")
    tensor(NAME, target, "target")
    for what, t in (("linear_weight", linear_weight), ("linear_bias", linear_bias)):
        if t is not None:
            float_input(NAME, t, what)
            if t.dtype != input.dtype or t.device != input.device:
                raise TypeError(f"losses.{NAME}: {what} must have the input's dtype {input.dtype} and device "
                                f"{input.device}, got {t.dtype} on {t.device}")
    float_weight(NAME, input, weight)
    batched, classes, out_features = _shapes(input, linear_weight, linear_bias)
    if weight is not None and tuple(weight.shape) != (classes,):
        raise ValueError(f"losses.{NAME}: weight must have shape [{classes}] (one per class), got "
                         f"{list(weight.shape)}")
    label_smoothing = number(NAME, label_smoothing, "label_smoothing", low=0.0)
    if label_smoothing > 1.0:
        raise ValueError(f"losses.{NAME}: label_smoothing must be in [0, 1], got {label_smoothing}")
    if chunk_size is not None:
        number(NAME, chunk_size, "chunk_size", low=1, integer=True)

    n = input.shape[0] if batched else 1
    logits_shape = ((n,) if batched else ()) + (classes, *out_features)
    probabilities = target.is_floating_point()
    if probabilities:
        value_target(NAME, input, target, "class-probability target", same_dtype=True)
        if tuple(target.shape) != logits_shape:
            raise ValueError(f"losses.{NAME}: a class-probability target must have the logits' shape "
                             f"{list(logits_shape)}, got {list(target.shape)}")
        if ignore_index is not None:
            raise ValueError(f"losses.{NAME}: ignore_index must be None with a class-probability target "
                             f"(torch refuses one), got {ignore_index!r}")
        ignore_index = -100
    else:
        if target.dtype == torch.bool or target.is_complex():
            raise TypeError(f"losses.{NAME}: target must hold class indices (an integer tensor) or class "
                            f"probabilities (a float tensor), got {target.dtype}")
        value_target(NAME, input, target)
        expected = ((n,) if batched else ()) + out_features
        if tuple(target.shape) != expected:
            raise ValueError(f"losses.{NAME}: a class-index target must have shape {list(expected)} for input "
                             f"{list(input.shape)} and linear_weight {list(linear_weight.shape)}, got "
                             f"{list(target.shape)}")
        ignore_index = -100 if ignore_index is None else number(NAME, ignore_index, "ignore_index", integer=True)
        target = _checked_indices(NAME, target.long(), classes, ignore_index)
    if torch.is_grad_enabled():
        for what, t in (("weight", weight), ("a class-probability target", target if probabilities else None)):
            if t is not None and t.requires_grad:
                raise ValueError(f"losses.{NAME}: {what} that requires grad is not supported (its gradient is "
                                 f"not computed); detach it, or use losses.cross_entropy(F.linear(...))")

    positions = math.prod(out_features)
    x = input if batched else input.unsqueeze(0)
    w = linear_weight.reshape(classes * positions, input.shape[-1])
    b = None if linear_bias is None else linear_bias.reshape(classes * positions)
    if probabilities:
        t = (target if batched else target.unsqueeze(0)).reshape(n, classes, positions)
    else:
        t = (target if batched else target.unsqueeze(0)).reshape(n, positions)

    from fnnet._values import _inside_vmap
    x, w, b = fresh_views(x, w, b)  # compiled: dynamo reads these inputs' requires_grad right
    if _inside_vmap():
        per = _whole(x, w, b, t, weight, probabilities, ignore_index, label_smoothing, classes)
    else:
        chunk = chunk_size or _default_chunk(n, input.shape[-1], classes * positions)
        per = _LinearCrossEntropy.apply(x, w, b, t, weight, probabilities, ignore_index, float(label_smoothing),
                                        classes, chunk)
    out = per.reshape(((n,) if batched else ()) + out_features)
    if reduction == "none":
        return out
    if reduction == "sum":
        return out.sum()
    if probabilities:
        return out.sum() / (n * positions)
    kept = (t != ignore_index).to(input.dtype)
    if weight is not None:
        kept = kept * weight[torch.where(t != ignore_index, t, 0)]
    return out.sum() / kept.sum()


def _whole(x, w, b, t, class_weight, probabilities, ignore_index, smoothing, classes):
    """The per-position loss ``[N, P]`` from the whole logits (the same math in one chunk, through
    autograd: where no chunked op can run, under ``vmap``)."""
    z = (torch.mm(x, w.t()) if b is None else torch.addmm(b, x, w.t())).view(x.shape[0], classes, -1)
    logp = torch.log_softmax(z, 1)
    q = _chunk_q(t, 0, x.shape[0], class_weight, probabilities, ignore_index, smoothing, classes, z)
    return -(q * logp).sum(1)
