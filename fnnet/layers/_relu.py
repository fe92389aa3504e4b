"""ReLU whose backward is a select by a constant mask, so that differentiating the backward
(a gradient penalty's second derivative) costs one more select and nothing else.

Why: ``F.relu``'s derivative is ``threshold_backward(grad, result, 0)``, itself an op of two
differentiable inputs. Differentiated again (``fn.grad`` of a loss that holds ``fn.grad``),
autograd and inductor both carry its (zero) derivative w.r.t. ``result`` back through every
layer below: one more matmul per layer, in every step. Here the mask ``x <= 0`` is a boolean
tensor, which has no derivative, and the value on the masked side is ``relu(x)`` detached:

    relu(x) = where(x <= 0, relu(x).detach(), x)

Values are ``torch.relu``'s bit for bit (``-0.0`` stays ``-0.0``, NaN stays NaN, as the masked side
is relu itself); the gradient is ``where(x <= 0, 0, grad)``, what ``threshold_backward`` gives
(0 at ``x == 0``, ``grad`` where ``x`` is NaN). Made of ``where`` and ``relu``, so forward-mode AD,
``vmap`` and ``torch.compile`` (inductor fuses the three into one loop) work as for any op.
"""

from __future__ import annotations

import torch


def relu(x: torch.Tensor) -> torch.Tensor:
    """``max(x, 0)`` elementwise, any shape; ``torch.relu``'s values and first derivative, with a
    second derivative that does not flow back through ``x`` (see the module doc)."""
    return torch.where(x <= 0, torch.relu(x).detach(), x)
