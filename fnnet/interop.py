"""To and from ``torch.nn``: weights move both ways without loss, under the same names.

    params = fn.params_from_module(net)        # {"conv1": {"weight": ..., "bias": ...}, ...}
    state = fn.state_from_module(net)          # BatchNorm running statistics, nested the same way
    net.load_state_dict(fn.to_state_dict(params, state))

    apply_fn, params, buffers = fn.functional(net)
    y = apply_fn(params, buffers, x)           # net(x), as a pure function of params
    grads = fn.grad(lambda p: apply_fn(p, buffers, x).sum())(params)

``params_from_module``, ``state_from_module`` and ``functional`` return copies
(``detach().clone()``): nothing aliases the module's storage, so training the copies
never changes the module and vice versa.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.func

from . import tree as T

__all__ = ["flat", "functional", "nest", "params_from_module", "state_from_module", "to_state_dict"]


def nest(flat_dict: dict[str, Any]) -> dict:
    """``{"a.b.weight": x}`` -> ``{"a": {"b": {"weight": x}}}`` (insertion order kept)."""
    out: dict = {}
    for name, value in flat_dict.items():
        node = out
        *parents, leaf = name.split(".")
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):  # a bad name, not a bad type
                raise ValueError(
                    f"nest: {'.'.join(parents[:i + 1])!r} is both a leaf and a prefix of {name!r}")
        if leaf in node:
            raise ValueError(f"nest: {name!r} is both a leaf and a prefix of another name")
        node[leaf] = value
    return out


def flat(tree: Any) -> dict[str, Any]:
    """Inverse of :func:`nest`: ``{"a.b.weight": x}`` from a nested tree (the same leaves)."""
    return dict(T.flatten_with_paths(tree))


def _copy(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone()


def params_from_module(module: torch.nn.Module) -> dict:
    """The module's parameters as a nested dict named as ``named_parameters`` names them
    (``"features.0.weight"`` -> ``params["features"]["0"]["weight"]``); detached copies."""
    return nest({n: _copy(p) for n, p in module.named_parameters()})


def _persistent_buffers(module: torch.nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    saved = module.state_dict(keep_vars=True).keys()
    return ((n, b) for n, b in module.named_buffers() if n in saved)


def state_from_module(module: torch.nn.Module) -> dict:
    """The module's persistent buffers (BatchNorm's ``running_mean``, ``running_var``,
    ``num_batches_tracked``) nested like the params; detached copies. This is the
    ``state`` that fnnet's stateful layers take and return."""
    return nest({n: _copy(b) for n, b in _persistent_buffers(module)})


def to_state_dict(params: Any, state: Any = None) -> dict[str, torch.Tensor]:
    """A flat ``{"a.b.weight": tensor}`` dict that ``module.load_state_dict`` (strict) accepts.
    The tensors are the leaves of ``params``/``state`` themselves, not copies
    (``load_state_dict`` copies them into the module)."""
    out = flat(params)
    if state is not None:
        for name, value in flat(state).items():
            if name in out:
                raise ValueError(f"to_state_dict: {name!r} is in both params and state")
            out[name] = value
    return out


def functional(module: torch.nn.Module, *, return_buffers: bool = False
               ) -> tuple[Callable[..., Any], dict, dict]:
    """``(apply_fn, params, buffers)``: the module as a pure function of its weights.

    ``apply_fn(params, buffers, *args, **kwargs)`` runs ``module(*args, **kwargs)`` through
    :func:`torch.func.functional_call` with ``params`` and ``buffers`` (nested dicts, as
    :func:`params_from_module` and :func:`state_from_module` return them) in place of the
    module's own tensors. It composes with ``fn.grad``, ``fn.vmap`` and ``fn.jit``.

    The module's mode (``module.train()`` / ``module.eval()``) at call time decides how
    Dropout and BatchNorm behave. ``buffers`` are never modified: they are cloned before the
    call, so a BatchNorm in training mode updates the clones; with ``return_buffers=True``
    ``apply_fn`` returns ``(output, new_buffers)`` holding those updated statistics.
    Dropout inside a torch module draws from torch's global generator (it is not keyed).

    ``params`` and ``buffers`` are detached copies of the module's tensors; the module
    itself is only read (its structure and mode), never written.
    """
    params = params_from_module(module)
    buffers = nest({n: _copy(b) for n, b in module.named_buffers()})

    def apply_fn(params: dict, buffers: dict, *args: Any, **kwargs: Any) -> Any:
        bufs = {n: b.clone() for n, b in flat(buffers).items()}
        tensors = {**flat(params), **bufs}
        out = torch.func.functional_call(module, tensors, args, kwargs, strict=False)
        return (out, nest(bufs)) if return_buffers else out

    apply_fn.__doc__ = f"{type(module).__name__} as apply_fn(params, buffers, *args, **kwargs)"
    return apply_fn, params, buffers
