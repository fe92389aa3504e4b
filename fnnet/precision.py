"""Mixed precision as a policy over a whole model (jmp's ``Policy``, Flax's ``param_dtype`` /
``dtype``): parameters are *stored* in one dtype and *computed* in another.

    policy = fn.Policy(param_dtype=torch.float32, compute_dtype=torch.bfloat16,
                       output_dtype=torch.float32)
    model = fn.MixedPrecision(net, policy)
    params = model.init(key)               # float32: the master copy the optimizer updates
    y = model.apply(params, x)             # params and x cast to bfloat16, y cast to float32

The params tree is ``net``'s, same paths and shapes (only the dtype differs), so
``params_from_module``/``to_state_dict`` and every optimizer work on it unchanged. Gradients
come back in ``param_dtype``: the cast to ``compute_dtype`` is part of the differentiated
function, so ``fn.grad`` of a loss of ``model.apply`` gives float32 gradients of float32
params, and optimizer state stays in float32 (``optim`` keeps hyperparameters and slots in
the params' dtype). Only floating tensors are cast; integer inputs (token ids, ``lengths``)
and boolean masks pass through.

Running statistics (BatchNorm) are passed to ``net`` in ``compute_dtype`` and returned in
``param_dtype``. With ``float16`` compute, scale the loss (``optim.dynamic_loss_scale``), as
``torch.amp.GradScaler`` does: small gradients underflow in float16 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from . import tree as T
from .module import Module, _as_module

__all__ = ["Policy", "MixedPrecision"]

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _cast(x: Any, dtype: torch.dtype) -> Any:
    """Floating tensor leaves of ``x`` cast to ``dtype``; everything else as it is."""
    return T.map(lambda v: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point()
                 and v.dtype != dtype else v, x)


@dataclass(frozen=True)
class Policy:
    """Which dtype params are stored in (``param_dtype``), computed in (``compute_dtype``), and
    outputs are returned in (``output_dtype``; ``None``: ``compute_dtype``, as jmp)."""

    param_dtype: torch.dtype = torch.float32
    compute_dtype: torch.dtype = torch.float32
    output_dtype: torch.dtype | None = None

    def __post_init__(self):
        for name in ("param_dtype", "compute_dtype", "output_dtype"):
            value = getattr(self, name)
            if value is None and name == "output_dtype":
                continue
            if value not in _FLOATS:
                raise TypeError(f"Policy: {name} must be one of {list(_FLOATS)}, got {value!r}")
        if self.output_dtype is None:
            object.__setattr__(self, "output_dtype", self.compute_dtype)

    def cast_to_param(self, tree: Any) -> Any:
        return _cast(tree, self.param_dtype)

    def cast_to_compute(self, tree: Any) -> Any:
        return _cast(tree, self.compute_dtype)

    def cast_to_output(self, tree: Any) -> Any:
        return _cast(tree, self.output_dtype)


@dataclass(frozen=True)
class MixedPrecision(Module):
    """``model`` run under ``policy``: the same params tree as ``model`` (stored in
    ``policy.param_dtype``), applied in ``policy.compute_dtype``; see the module docstring."""

    _fnnet_input_dtype_check = False  # it casts the inputs itself

    model: Any
    policy: Policy

    def __post_init__(self):
        object.__setattr__(self, "model", _as_module(self.model, "MixedPrecision"))
        if not isinstance(self.policy, Policy):
            raise TypeError(f"MixedPrecision: policy must be an fn.Policy, got {type(self.policy).__name__}")

    def children(self) -> dict[str, Module]:
        return {}  # the params tree is the model's own, not nested under a name

    @property
    def stateful(self) -> bool:
        return self.model.stateful

    def init(self, key: torch.Tensor) -> dict:
        return self.policy.cast_to_param(self.model.init(key))

    def init_state(self, device: Any = None) -> dict:
        return self.policy.cast_to_param(self.model.init_state(device))

    def apply(self, params, *inputs, state=None, **kwargs):
        p = self.policy.cast_to_compute(params)
        xs = self.policy.cast_to_compute(inputs)
        if not self.model.stateful:
            return self.policy.cast_to_output(type(self.model)._fnnet_apply(self.model, p, *xs, **kwargs))
        if state is None:
            raise ValueError(f"MixedPrecision: {type(self.model).__name__} is stateful: pass "
                             f"state=model.init_state()")
        y, new_state = type(self.model)._fnnet_apply(self.model, p, *xs,
                                                      state=self.policy.cast_to_compute(state), **kwargs)
        return self.policy.cast_to_output(y), self.policy.cast_to_param(new_state)
