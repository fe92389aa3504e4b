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

Tied weights (one Parameter under two names, as an encoder/decoder sharing an embedding) are
one leaf, under the first name ``named_parameters`` gives: its gradient is the total over both
uses and an optimizer updates it once. ``to_state_dict(params, module=net)`` writes it under
every name ``net.state_dict()`` has, so a strict ``load_state_dict`` takes it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.func

from . import _check
from . import tree as T
from .module import ParamsError

__all__ = ["flat", "functional", "nest", "params_from_module", "state_from_module", "to_state_dict"]


def nest(flat_dict: dict[str, Any]) -> dict:
    """``{"a.b.weight": x}`` -> ``{"a": {"b": {"weight": x}}}`` (insertion order kept)."""
    if not isinstance(flat_dict, dict):
        raise TypeError(f"nest: expected a dict of dotted names, got {type(flat_dict).__name__}")
    out: dict = {}
    for name, value in flat_dict.items():
        if not isinstance(name, str):
            raise TypeError(f"nest: names must be dotted strings, got {name!r}")
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


def _check_module(module: Any, where: str) -> None:
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"{where}: expected a torch.nn.Module, got {type(module).__name__} "
                        f"(an fnnet module's params come from its init(key))")


def params_from_module(module: torch.nn.Module) -> dict:
    """The module's parameters as a nested dict named as ``named_parameters`` names them
    (``"features.0.weight"`` -> ``params["features"]["0"]["weight"]``); detached copies."""
    _check_module(module, "params_from_module")
    return nest({n: _copy(p) for n, p in module.named_parameters()})


def _persistent_buffers(module: torch.nn.Module) -> Iterable[tuple[str, torch.Tensor]]:
    saved = module.state_dict(keep_vars=True).keys()
    return ((n, b) for n, b in module.named_buffers() if n in saved)


def state_from_module(module: torch.nn.Module) -> dict:
    """The module's persistent buffers (BatchNorm's ``running_mean``, ``running_var``,
    ``num_batches_tracked``) nested like the params; detached copies. This is the
    ``state`` that fnnet's stateful layers take and return."""
    _check_module(module, "state_from_module")
    return nest({n: _copy(b) for n, b in _persistent_buffers(module)})


def _aliases(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, str]:
    """``{alias: first name}`` for tensors that appear under several names (tied weights)."""
    first: dict[int, str] = {}
    out = {}
    for name, t in named:
        if id(t) in first:
            out[name] = first[id(t)]
        else:
            first[id(t)] = name
    return out


def to_state_dict(params: Any, state: Any = None, *, module: torch.nn.Module | None = None
                  ) -> dict[str, torch.Tensor]:
    """A flat ``{"a.b.weight": tensor}`` dict that ``module.load_state_dict`` (strict) accepts.
    The tensors are the leaves of ``params``/``state`` themselves, not copies
    (``load_state_dict`` copies them into the module).

    With ``module=``, the dict has exactly the names of ``module.state_dict()``: a tied weight
    (one leaf in ``params``) is written under each of its names, as torch writes it, and a
    missing or unexpected name raises :class:`~fnnet.module.ParamsError` naming it. Without
    it, a module with tied weights needs ``load_state_dict(..., strict=False)`` (torch reports
    the other names as missing)."""
    out = flat(params)
    if state is not None:
        for name, value in flat(state).items():
            if name in out:
                raise ValueError(f"to_state_dict: {name!r} is in both params and state")
            out[name] = value
    if module is None:
        return out
    _check_module(module, "to_state_dict(module=)")
    expected = module.state_dict(keep_vars=True)
    for alias, name in _aliases(expected.items()).items():
        if alias not in out and name in out:
            out[alias] = out[name]
    _check_names("to_state_dict", "params/state", out, {n: t.shape for n, t in expected.items()}, {})
    return {n: out[n] for n in expected}  # in the module's order


def _check_names(where: str, what: str, given: dict[str, Any], shapes: dict[str, torch.Size],
                 aliases: dict[str, str]) -> None:
    """``given`` (flat names -> tensors) must have exactly the names of ``shapes``, with those
    shapes; ParamsError names the first path that differs (module order, then extras)."""
    for name, shape in shapes.items():
        if name not in given:
            raise ParamsError(f"{where}: {what} have no {name!r} (the module's {list(shape)} tensor)")
        t = given[name]
        if not isinstance(t, torch.Tensor):
            raise ParamsError(f"{where}: {what} {name!r} is a {type(t).__name__}, expected a tensor of "
                              f"shape {list(shape)}")
        if t.shape != shape:
            raise ParamsError(f"{where}: {what} {name!r} has shape {list(t.shape)}, the module's is {list(shape)}")
    for name in given:
        if name in aliases:
            raise ParamsError(f"{where}: {what} {name!r} is tied to {aliases[name]!r} (one tensor in the "
                              f"module): give it once, as {aliases[name]!r}")
        if name not in shapes:
            raise ParamsError(f"{where}: {what} have an unexpected {name!r}; the module has "
                              f"{', '.join(map(repr, shapes)) or 'none'}")


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

    ``apply_fn`` is strict: a missing, misspelled or extra key, or a tensor of another shape,
    raises :class:`~fnnet.module.ParamsError` naming the path (it never falls back to the
    module's own weights, which would silently get no gradient). A tied weight is given once,
    under the name ``params`` has for it.
    """
    _check_module(module, "functional")
    _check.flag("functional", "return_buffers", return_buffers)
    params = params_from_module(module)
    buffers = nest({n: _copy(b) for n, b in module.named_buffers()})
    param_shapes = {n: p.shape for n, p in module.named_parameters()}
    buffer_shapes = {n: b.shape for n, b in module.named_buffers()}
    param_aliases = _aliases(module.named_parameters(remove_duplicate=False))
    buffer_aliases = _aliases(module.named_buffers(remove_duplicate=False))
    where = f"functional({type(module).__name__})"

    def apply_fn(params: dict, buffers: dict, *args: Any, **kwargs: Any) -> Any:
        given = flat(params)
        _check_names(where, "params", given, param_shapes, param_aliases)
        given_buffers = flat(buffers)
        _check_names(where, "buffers", given_buffers, buffer_shapes, buffer_aliases)
        bufs = {n: b.clone() for n, b in given_buffers.items()}
        out = torch.func.functional_call(module, {**given, **bufs}, args, kwargs, strict=True)
        return (out, nest(bufs)) if return_buffers else out

    apply_fn.__doc__ = f"{type(module).__name__} as apply_fn(params, buffers, *args, **kwargs)"
    return apply_fn, params, buffers
