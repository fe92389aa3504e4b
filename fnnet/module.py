"""The Module protocol and the combinators that build models out of modules.

A module is a frozen dataclass of hyperparameters: hashable, so ``torch.compile``
treats it as a constant. It has two pure methods::

    params = module.init(key)                       # nested dict of tensors
    y = module.apply(params, x, key=None, train=False)

Stateful modules (BatchNorm) also have ``init_state()`` and return ``(y, new_state)``
from ``apply(params, x, state=..., train=...)``; ``module.stateful`` tells which form,
and a module is stateful when one of its children is (the combinators thread the state).

**Children.** A user model is a frozen dataclass subclassing :class:`Module`; its children
are the modules in its fields, also inside tuple, list and dict fields (keyed ``"field.0"``,
``"field.key"``, as ``nn.ModuleList`` / ``nn.ModuleDict`` name them). The default ``init``
initializes each child under its name (children without parameters get no key), so the
params tree has the names ``nn.Module`` would give it::

    @dataclass(frozen=True)
    class MLP(fn.Module):
        fc1: fn.Linear
        fc2: fn.Linear

        def apply(self, params, x, *, key=None, train=False):
            return self.fc2.apply(params["fc2"], fn.relu(self.fc1.apply(params["fc1"], x)))

A plain class that sets its children in ``__init__`` (``self.fc1 = fn.Linear(2, 4)``, as in an
``nn.Module``) works too: its public instance attributes are its fields, in assignment order.
A class that declares fields (annotations, or modules as class attributes) without
``@dataclass`` is refused with a ``TypeError``: those fields would not exist.

**A custom parameter.** Override ``init``: call ``super().init(key)`` for the children's params
and add yours, made on ``key.device`` (the expected shapes are computed from ``init`` on the
meta device)::

    @dataclass(frozen=True)
    class Scaled(fn.Module):
        fc: fn.Linear

        def init(self, key):
            k_fc, k_scale = random.split(key)
            params = super().init(k_fc)
            params["scale"] = torch.ones(self.fc.out_features, device=key.device)
            return params

        def apply(self, params, x, *, key=None, train=False):
            return self.fc(params["fc"], x) * params["scale"]

**A block with running statistics.** A user module whose children include a stateful layer
(BatchNorm) is stateful itself: ``init_state()`` collects the children's states under their
names, and its ``apply`` takes ``state=`` and returns ``(y, new_state)``. :meth:`Module.call`
threads that state child by child, so a ResNet basic block reads as its math::

    def apply(self, params, x, *, state, key=None, train=False):
        y, state = self.call("conv1", params, x, state)
        y, state = self.call("bn1", params, y, state, train=train)
        y, state = self.call("conv2", params, torch.relu(y), state)
        y, state = self.call("bn2", params, y, state, train=train)
        return torch.relu(y + x), state

**The PRNG key's two names.** ``apply(..., key=k)`` and ``apply(..., rng=k)`` are the same call
for every module whose ``apply`` has no parameter named ``rng``; giving both is a ``TypeError``.
A module whose ``apply`` takes ``rng`` (attention, whose second input is torch's ``key``) gets it
untouched, and the combinators pass each child its key under the name the child takes.

**The params check.** The ``apply`` of every Module subclass (layers, cells, combinators, user
models) is wrapped when the class is created (``Module.__init_subclass__``) so that the
*outermost* call checks ``params`` (and ``state=``, for a stateful module) against the tree
``init`` (``init_state``) builds, by path: a missing, extra or misshaped leaf raises
:class:`ParamsError` naming its path and expected shape. The expected tree is computed once
per module, on the meta device, and cached on it (modules are immutable); children called
from inside a checked ``apply`` skip the check (a per-thread flag), so the cost is one walk
of the tree per outermost call. Under ``torch.compile`` the check runs while tracing (shapes
are static), never in the compiled code. Inside ``vmap`` the params look unbatched, as the
check expects (ensembles of stacked params work).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import threading
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable

import torch

from . import _check, _compat, random

__all__ = ["Module", "Sequential", "Residual", "Concat", "Lambda", "ParamsError", "check_params",
           "param_shapes"]


class ParamsError(ValueError):
    """A params (or state) tree does not fit the module it is given to."""


# -- the params check: one mechanism for every module -------------------------------------------

class _Local(threading.local):
    def __init__(self):  # run in each thread on first use: the flag lives in the per-thread dict
        self.inside = False  # True while a checked apply runs in this thread: children skip the check


_local = _Local()


def _checked(apply: Callable) -> Callable:
    """``apply`` with the params (and state) check at the outermost call."""

    @functools.wraps(apply)
    def checked_apply(self, params, *inputs, **kwargs):
        if "rng" in kwargs and not _takes_rng(self):
            kwargs = _rng_as_key(self, kwargs)
        local = _local
        if local.inside:
            return apply(self, params, *inputs, **kwargs)
        if torch.compiler.is_compiling():
            spec = _nest(_flat_spec(self, "params"))
        else:
            try:
                spec = self.__dict__["_fnnet_params"]
            except KeyError:
                spec = _expected(self, "params")
        if not _fits(spec, params):
            _raise_misfit(self, "params", spec, params)
        state = kwargs.get("state")
        if state is not None and self.stateful:
            _check_state(self, state)
        if type(self)._fnnet_input_dtype_check:
            _check_input_dtypes(self, params, inputs, kwargs.get("input"))
        local.inside = True
        try:
            return apply(self, params, *inputs, **kwargs)
        finally:
            local.inside = False

    checked_apply._fnnet_checked = True
    return checked_apply


# -- the PRNG key's two names -------------------------------------------------------------------
# Attention's second input is torch's ``key``, so MultiheadAttention takes its PRNG key as
# ``rng=``; for every other module ``rng=`` is a synonym of ``key=``, and the combinators pass
# each child its key under the name the child takes. One spelling works everywhere.

_takes_rng_cache: dict[type, bool] = {}


@_compat.assume_constant_result  # (inspect.signature: run for real while dynamo traces)
def _takes_rng(module: Module) -> bool:
    """Whether ``module``'s own apply has a parameter named ``rng`` (then ``rng=`` is its PRNG
    key and ``key=`` may be something else, as attention's key input)."""
    cls = type(module)
    try:
        return _takes_rng_cache[cls]
    except KeyError:
        ok = "rng" in inspect.signature(inspect.unwrap(cls.apply)).parameters
        _takes_rng_cache[cls] = ok
        return ok


def _rng_as_key(module: Module, kwargs: dict) -> dict:
    """``rng=k`` as ``key=k`` for a module whose apply has no ``rng`` parameter."""
    kwargs = dict(kwargs)
    rng = kwargs.pop("rng")
    if kwargs.get("key") is not None and rng is not None:
        raise TypeError(f"{_describe(module)}: got both key= and rng=; they are the same PRNG key "
                        f"(rng= is key='s other name), pass one")
    if rng is not None or "key" not in kwargs:
        kwargs["key"] = rng
    return kwargs


def _key_kwarg(module: Module, key: Any) -> dict:
    """The PRNG key as the keyword ``module``'s apply takes it: ``rng=`` or ``key=``."""
    return {"rng": key} if _takes_rng(module) else {"key": key}


def _first_float(tree: Any) -> torch.Tensor | None:
    """The first floating leaf of a params tree, depth first (None if there is none)."""
    if isinstance(tree, torch.Tensor):
        return tree if tree.is_floating_point() else None
    if isinstance(tree, dict):
        for v in tree.values():
            leaf = _first_float(v)
            if leaf is not None:
                return leaf
    return None


def _check_input_dtypes(module: Module, params: Any, inputs: tuple, keyword_input: Any) -> None:
    """A floating input (the first, or ``input=``) of another dtype than the module's floating
    params is a TypeError naming the module, at its outermost call: float64 data into a float32
    model otherwise fails deep inside a torch kernel, or inside a compiled graph. Only a model
    whose floating params share one dtype is checked (a model mixing dtypes casts for itself);
    further inputs (attention's key and value) are the layers' own checks, by name."""
    x = inputs[0] if inputs else keyword_input
    if not (isinstance(x, torch.Tensor) and x.is_floating_point()):
        return
    leaf = _first_float(params)
    if leaf is None or x.dtype == leaf.dtype:
        return
    dtypes = {v.dtype for v in _leaves(params).values() if isinstance(v, torch.Tensor) and v.is_floating_point()}
    if len(dtypes) == 1:
        raise TypeError(f"{_describe(module)}: the input is {x.dtype} but the params are {leaf.dtype}: cast "
                        f"one to the other (x.to({leaf.dtype}) or fn.tree.astype(params, {x.dtype})), or "
                        f"run the model under fn.MixedPrecision")


def _check_call(module: Module, params: Any, state: Any) -> None:
    """What the outermost apply checks (``check_params`` too)."""
    spec = _expected(module, "params")
    if not _fits(spec, params):
        _raise_misfit(module, "params", spec, params)
    if state is not None and module.stateful:
        _check_state(module, state)


def _check_state(module: Module, state: Any) -> None:
    spec = _expected(module, "state")
    if not _fits(spec, state):
        _raise_misfit(module, "state", spec, state)


def _fits(spec: dict, given: Any) -> bool:
    """Fast path: ``given`` has exactly the keys of ``spec`` at every level and its tensors
    the shapes (``None`` in ``spec``: a non-tensor leaf, any value). Two levels per call (a
    container and its layers' dicts): one Python call per layer would cost more than the
    comparisons."""
    if not isinstance(given, dict):
        return given is None and not spec
    if given.keys() != spec.keys():
        return False
    for k, s in spec.items():
        g = given[k]
        # (isinstance, not type(s) is dict: dynamo cannot guard a constant's type)
        if isinstance(s, dict):
            if not isinstance(g, dict) or g.keys() != s.keys():
                return False
            for k2, s2 in s.items():
                g2 = g[k2]
                if isinstance(s2, dict):
                    if not _fits(s2, g2):
                        return False
                elif s2 is not None and (not isinstance(g2, torch.Tensor) or g2.shape != s2):
                    return False
        elif s is not None and (not isinstance(g, torch.Tensor) or g.shape != s):
            return False
    return True


def _expected(module: Module, what: str) -> dict:
    """The expected tree of ``what`` ("params" or "state"): nested dicts, ``torch.Size`` leaves.
    Cached on the module; while dynamo traces it comes from a constant-folded call."""
    if torch.compiler.is_compiling():
        return _nest(_flat_spec(module, what))
    return _cached_spec(module, what)


def _cached_spec(module: Module, what: str) -> dict:
    try:
        return module.__dict__["_fnnet_" + what]
    except KeyError:
        spec = _compute_spec(module, what)
        module.__dict__["_fnnet_" + what] = spec
        return spec


def _compute_spec(module: Module, what: str) -> dict:
    def shapes(tree):
        if isinstance(tree, dict):
            return {k: shapes(v) for k, v in tree.items()}
        return tree.shape if isinstance(tree, torch.Tensor) else None

    def build(device):
        if what == "params":
            return module.init(random.key(0, device=device))
        return module.init_state(device)
    try:
        tree = build("meta")
    except Exception:  # an init the meta device cannot run (reads a value): run it for real, once
        tree = build(None)
    if not isinstance(tree, dict):
        raise TypeError(f"{type(module).__name__}.{'init' if what == 'params' else 'init_state'} must "
                        f"return a dict, got {type(tree).__name__}")
    return shapes(tree)


@_compat.assume_constant_result  # run for real while dynamo traces; the result is a constant
def _flat_spec(module: Module, what: str) -> tuple:
    def flat(tree, prefix):
        for k, v in tree.items():
            if type(v) is dict:
                yield from flat(v, prefix + (k,))
            else:
                yield prefix + (k,), None if v is None else tuple(v)
    return tuple(flat(_cached_spec(module, what), ()))


def _nest(flat: tuple) -> dict:
    out: dict = {}
    for path, shape in flat:
        d = out
        for k in path[:-1]:
            d = d.setdefault(k, {})
        # torch <= 2.11's dynamo cannot compare a shape with a folded tuple (NotImplementedError
        # in its `!=` polyfill); with a torch.Size it can
        d[path[-1]] = shape if _compat.DYNAMO_PASSES_OBJECTS or shape is None else torch.Size(shape)
    return out


def _leaves(tree: Any, prefix: str = "") -> dict:
    """``{dotted path: leaf}``; empty dicts have no leaves."""
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            out.update(_leaves(v, f"{prefix}{k}."))
    elif prefix:
        out[prefix[:-1]] = tree
    return out


def _shape_str(x: Any) -> str:
    return f"shape {list(x.shape)}" if isinstance(x, torch.Tensor) else f"a {type(x).__name__}"


def _problems(module: Module, spec: dict, given: Any) -> list[str]:
    want, got = _leaves(spec), _leaves(given)
    out = []
    for p, s in want.items():
        if p not in got:
            out.append(f"missing {p!r} (expected shape {list(s) if s is not None else '?'})")
        elif s is not None and not isinstance(got[p], torch.Tensor):
            out.append(f"{p!r} is {_shape_str(got[p])}, expected a tensor of shape {list(s)}")
        elif s is not None and got[p].shape != s:
            out.append(f"{p!r} has {_shape_str(got[p])}, expected {list(s)}")
    for p, x in got.items():
        if p not in want:
            out.append(f"unexpected {p!r} ({_shape_str(x)}){_owner_note(module, p)}")
    return out


@_compat.assume_constant_result  # (run for real while dynamo traces, as _describe)
def _owner_note(module: Module, path: str) -> str:
    """For an unexpected path: which module it falls under, and that it has no such params."""
    parts, m, i = path.split("."), module, 0
    while i < len(parts):
        kids = m.children()
        for j in range(len(parts) - 1, i, -1):  # dotted child names ("blocks.0") first
            name = ".".join(parts[i:j])
            if name in kids:
                m, i = kids[name], j
                break
        else:
            break
    if m is module:
        return ""
    return f": {_name(m)} has no parameters" if not _cached_spec(m, "params") else f" under {_name(m)}"


@_compat.assume_constant_result  # dynamo cannot trace a dataclass repr (reprlib's thread id)
def _describe(module: Module) -> str:
    return _name(module)


def _raise_misfit(module: Module, what: str, spec: dict, given: Any) -> None:
    """Raise the ParamsError listing every problem. While dynamo traces, fn.jit reports it as
    its own error with this message in it (an exception cannot leave a full graph as itself)."""
    if not isinstance(given, dict) and given is not None:
        raise ParamsError(f"{what} for {_describe(module)} must be a nested dict of tensors, "
                          f"got {type(given).__name__}")
    problems = _problems(module, spec, given or {})
    if problems:  # otherwise only empty sub-dicts differed: harmless
        raise ParamsError(f"{what} do not fit {_describe(module)}:\n  " + "\n  ".join(problems))


# -- children -----------------------------------------------------------------------------------

_undeclared_cache: dict[type, tuple] = {}


def _undeclared(cls: type) -> tuple:
    """Names a class declares (annotations, or modules with params as class attributes) that
    are not its dataclass fields: what a forgotten ``@dataclass`` leaves behind."""
    try:
        return _undeclared_cache[cls]
    except KeyError:
        pass
    fields = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    names = []
    for klass in cls.__mro__:
        if klass is Module or not issubclass(klass, Module):
            continue
        for name, ann in inspect.get_annotations(klass).items():
            text = ann if isinstance(ann, str) else repr(ann)
            if "ClassVar" in text or "InitVar" in text:
                continue
            if name not in fields:
                names.append(name)
        # a module as a class attribute: a child that would be missed, unless it has nothing to
        # initialize (a shared activation)
        names += [n for n, v in vars(klass).items() if isinstance(v, Module) and n not in fields
                  and (_cached_spec(v, "params") or v.stateful)]
    _undeclared_cache[cls] = result = tuple(dict.fromkeys(names))
    return result


@_compat.assume_constant_result  # dataclass introspection: run for real while dynamo traces
def _field_names(module: Module) -> tuple:
    """The names children are looked for under: dataclass fields, then public instance
    attributes (a plain class); refuses fields declared without @dataclass."""
    cls = type(module)
    missing = [n for n in _undeclared(cls) if n not in module.__dict__]
    if missing:
        raise TypeError(f"{cls.__name__} declares {missing} but they are not dataclass fields: "
                        f"decorate {cls.__name__} with @dataclass(frozen=True) (a module's children "
                        f"and hyperparameters are its fields)")
    names = [f.name for f in dataclasses.fields(module)] if dataclasses.is_dataclass(module) else []
    names += [n for n in module.__dict__ if not n.startswith("_") and n not in names]
    return tuple(names)


def _collect(name: str, value: Any, kids: dict) -> None:
    """Modules in ``value`` under ``name``; tuples/lists keyed ``name.i``, dicts ``name.key``."""
    if isinstance(value, Module):
        kids[name] = value
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            _collect(f"{name}.{i}", v, kids)
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, Module) and (not isinstance(k, str) or "." in k or not k):
                raise TypeError(f"the dict field {name!r} holds a module under {k!r}: keys of modules "
                                f"must be non-empty strings without '.' (they name the params)")
            _collect(f"{name}.{k}", v, kids)


def _put(tree: dict, dotted: str, value: Any) -> None:
    *head, last = dotted.split(".")
    for k in head:
        tree = tree.setdefault(k, {})
    tree[last] = value


class Module:
    """Base class of every fnnet model. Subclasses are ``@dataclass(frozen=True)``."""

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        apply = cls.apply
        if apply is not Module.apply and not getattr(apply, "_fnnet_checked", False):
            cls.apply = _checked(apply)
            cls._fnnet_apply = apply  # unchecked: what combinators call, already inside a check

    # -- structure ---------------------------------------------------------------------------
    def children(self) -> dict[str, Module]:
        """Named sub-modules, in field order: modules in dataclass fields (and in tuple, list and
        dict fields, as ``"field.0"``, ``"field.key"``); for a plain class, in its public
        instance attributes."""
        names = _field_names(self)
        kids: dict[str, Module] = {}
        for name in names:
            _collect(name, getattr(self, name), kids)
        return kids

    @property
    def stateful(self) -> bool:
        """True if ``apply`` takes ``state=`` and returns ``(y, new_state)``."""
        # Asked on every apply of every container: computed once per (immutable) module and
        # remembered in its __dict__ (not a field: eq, hash and repr are unaffected). While
        # torch.compile traces, computed for real by a constant-folded call.
        if not _compat.DYNAMO_PASSES_OBJECTS and torch.compiler.is_compiling():
            return _stateful(self)  # torch <= 2.11's dynamo cannot read a dataclass's __dict__
        try:
            return self.__dict__["_fnnet_stateful"]
        except KeyError:
            return _stateful(self)

    # -- the two pure methods ----------------------------------------------------------------
    def init(self, key: torch.Tensor) -> dict:
        """Parameters of every child under its name; children without parameters are left out."""
        kids = self.children()
        params: dict = {}
        if kids:
            keys = random.split(key, len(kids))
            for (name, child), k in zip(kids.items(), keys):
                p = child.init(k)
                if p:
                    _put(params, name, p)
        return params

    def init_state(self, device: Any = None) -> dict:
        """Initial non-trainable state (running statistics), keyed like the params."""
        state: dict = {}
        for name, c in self.children().items():
            if c.stateful:
                _put(state, name, c.init_state(device))
        return state

    def apply(self, params: dict, *inputs: Any, key: torch.Tensor | None = None,
              train: bool = False) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define apply(params, *inputs, key=None, train=False)")

    def __call__(self, params: dict, *inputs: Any, **kwargs: Any) -> Any:
        """Same as :meth:`apply`, so a module is a function ``(params, x) -> y``."""
        return self.apply(params, *inputs, **kwargs)

    def call(self, name: str, params: dict, x: Any, state: dict | None = None, *,
             key: torch.Tensor | None = None, train: bool = False, **kwargs: Any) -> tuple[Any, Any]:
        """Apply the child ``name`` inside this module's ``apply``, threading the state::

            y, state = self.call("bn1", params, y, state, train=train)

        ``params`` and ``state`` are this module's own trees (what its ``apply`` was given); the
        child gets its subtrees by its name (dotted for children in tuple, list and dict fields:
        ``"blocks.0"``). Returns ``(y, state)``: for a stateful child, ``state`` with the child's
        entry replaced by its new state (new dicts along the path; the given ``state`` is not
        changed); for any other child, ``state`` as it came (``None`` stays ``None``). So a
        block with several BatchNorms is a chain of ``call`` lines returning the last ``state``,
        which has the structure of ``init_state()`` by construction. ``key`` reaches the child
        as it is (as ``rng=`` if that is the child's name for it): split it to give children
        different streams. Other keywords (``lengths=``) are passed on.
        """
        if "rng" in kwargs:
            key = _rng_as_key(self, {"key": key, "rng": kwargs.pop("rng")})["key"]
        child = self.children().get(name)
        if child is None:
            raise ValueError(f"{type(self).__name__}.call: no child named {name!r}; its children are "
                             f"{list(self.children())}")
        if child.stateful and state is None:
            raise ValueError(f"{type(self).__name__}.call({name!r}): {_name(child)} is stateful (running "
                             f"statistics): pass this module's state (from init_state()) to call")
        y, new = _run(child, _get(params, name), x, _get(state, name) if child.stateful else None,
                      key, train, **kwargs)
        return y, (_replaced(state, name, new) if child.stateful else state)

    # -- introspection -------------------------------------------------------------------------
    def param_shapes(self) -> dict:
        return param_shapes(self)

    def check(self, params: dict, state: dict | None = None) -> None:
        check_params(self, params, state)


Module._fnnet_apply = Module.apply
Module._fnnet_input_dtype_check = True  # False where a module checks (or casts) input dtypes itself


@_compat.assume_constant_result  # dynamo cannot trace children() (dataclass introspection)
def _stateful(module: Module) -> bool:
    value = any(c.stateful for c in module.children().values())
    module.__dict__["_fnnet_stateful"] = value
    return value


def _name(module: Module) -> str:
    """The module's repr, or just its type for a container (whose repr is the whole model)."""
    return type(module).__name__ if module.children() else repr(module)


def param_shapes(module: Module) -> dict:
    """The params tree ``module.init`` would build, with ``torch.Size`` leaves (computed on the
    meta device: no memory, no arithmetic)."""
    def copy(tree):
        return {k: copy(v) for k, v in tree.items()} if type(tree) is dict else tree
    return copy(_expected(module, "params"))


def check_params(module: Module, params: Any, state: Any = None) -> None:
    """Raise :class:`ParamsError` naming every missing or extra path and every wrong shape of
    ``params`` (and of ``state``, when given) -- the check every outermost ``apply`` makes."""
    _check_call(module, params, None)
    if state is not None:
        _check_state(module, state)


def _split_or_none(key: torch.Tensor | None, n: int) -> list:
    return [None] * n if key is None else list(random.split(key, n))


@dataclass(frozen=True)
class Lambda(Module):
    """A parameter-free function ``f(x)`` as a module (activations inside Sequential)."""

    f: Callable

    def __post_init__(self):
        if not callable(self.f) or isinstance(self.f, Module):
            raise TypeError(f"Lambda: expected a function, got {type(self.f).__name__}")

    def __repr__(self) -> str:
        return f"Lambda({getattr(self.f, '__name__', None) or repr(self.f)})"

    def apply(self, params, *inputs, key=None, train=False):
        return self.f(*inputs)


def _as_module(m: Any, where: str = "Sequential") -> Module:
    """What a combinator accepts as a layer: a module, a function (a :class:`Lambda`), or a
    list/tuple of those (a :class:`Sequential`)."""
    if isinstance(m, Module):
        return m
    if isinstance(m, (list, tuple)):
        return Sequential(*[_as_module(x, where) for x in m])
    if callable(m):
        return Lambda(m)
    raise TypeError(f"{where}: expected an fnnet Module, a function or a list of them, got {type(m).__name__}")


_takes_state_cache: dict[type, bool] = {}


@_compat.assume_constant_result  # (inspect.signature: run for real while dynamo traces)
def _takes_state(layer: Module) -> bool:
    cls = type(layer)
    try:
        return _takes_state_cache[cls]
    except KeyError:
        params = inspect.signature(inspect.unwrap(cls.apply)).parameters
        ok = "state" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
        _takes_state_cache[cls] = ok
        return ok


def _get(tree: dict | None, dotted: str) -> Any:
    """The subtree of ``tree`` at a child's dotted name; ``{}`` where there is none (a child
    without parameters has no key)."""
    for k in dotted.split("."):
        if not isinstance(tree, dict) or k not in tree:
            return {}
        tree = tree[k]
    return tree


def _replaced(tree: dict, dotted: str, value: Any) -> dict:
    """``tree`` with the subtree at ``dotted`` replaced: new dicts along the path, the rest shared."""
    head, _, rest = dotted.partition(".")
    out = dict(tree)
    out[head] = _replaced(tree.get(head, {}), rest, value) if rest else value
    return out


def _run(layer: Module, params: dict, x: Any, state: dict, key, train: bool, **kwargs: Any):
    """Apply one child, threading its state if it has any. Called from inside a checked apply:
    the child's own apply runs unwrapped (its check would be skipped anyway)."""
    if layer.stateful:
        if not _takes_state(layer):
            raise TypeError(f"{_name(layer)} is stateful (it has a child with running statistics): its "
                            f"apply must take state= and return (y, new_state)")
        out = type(layer)._fnnet_apply(layer, params, x, state=state, train=train, **_key_kwarg(layer, key),
                                       **kwargs)
        if not (isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)):
            raise TypeError(f"{_name(layer)} is stateful (it has a child with running statistics): its "
                            f"apply must return (y, new_state), got {type(out).__name__}")
        return out
    return type(layer)._fnnet_apply(layer, params, x, train=train, **_key_kwarg(layer, key), **kwargs), state


class _Container(Module):
    """Children keyed by ``names`` (``"0"``, ``"1"``, ... as in ``nn.Sequential``); plain
    functions and lists of layers allowed."""

    def children(self) -> dict[str, Module]:
        return dict(zip(self.names, self.layers))

    def _init_layers(self, layers: tuple, where: str) -> None:
        object.__setattr__(self, "layers", tuple(_as_module(m, where) for m in layers))
        object.__setattr__(self, "names", tuple(str(i) for i in range(len(layers))))


@dataclass(frozen=True, init=False)
class Sequential(_Container):
    """``Sequential(fn.Linear(2, 400), fn.relu, fn.Linear(400, 1))``: params keyed ``"0"``, ``"2"``
    like ``nn.Sequential`` (layers without parameters have no key). A slice is a Sequential
    that keeps the names, as ``nn.Sequential``'s: ``model[2:]`` takes ``{"2": ..., "3": ...}``."""

    layers: tuple
    names: tuple = field(default=(), repr=False)

    def __init__(self, *layers: Any):
        self._init_layers(layers, "Sequential")

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i: int | slice) -> Module:
        if isinstance(i, slice):
            sub = Sequential(*self.layers[i])
            object.__setattr__(sub, "names", self.names[i])
            return sub
        return self.layers[i]

    def apply(self, params, x, *, state=None, key=None, train=False):
        if self.stateful and state is None:
            raise ValueError("Sequential contains stateful layers (BatchNorm): pass state=model.init_state()")
        params = params or {}
        keys = _split_or_none(key, len(self.layers))
        new_state = {}
        for name, layer, k in zip(self.names, self.layers, keys):
            x, s = _run(layer, params.get(name, {}), x, state.get(name) if state else None, k, train)
            if layer.stateful:
                new_state[name] = s
        return (x, new_state) if self.stateful else x


@dataclass(frozen=True)
class Residual(Module):
    """``activation(block(x) + shortcut(x))``; the shortcut is the identity when ``None``
    (a 1x1 convolution when the channel count changes). Each of the three may be a module, a
    function or a list of them (a Sequential), as a Sequential's layers may.
    Params: ``{"block", "shortcut", "activation"}`` (those that have any)."""

    block: Any
    shortcut: Any = None
    activation: Any = None

    def __post_init__(self):
        object.__setattr__(self, "block", _as_module(self.block, "Residual block"))
        for name in ("shortcut", "activation"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, _as_module(getattr(self, name), f"Residual {name}"))

    def apply(self, params, x, *, state=None, key=None, train=False):
        kb, ks = _split_or_none(key, 2)
        params, state = params or {}, state or {}
        new_state = {}
        y, new_state["block"] = _run(self.block, params.get("block", {}), x, state.get("block"), kb, train)
        if self.shortcut is not None:
            x, new_state["shortcut"] = _run(self.shortcut, params.get("shortcut", {}), x,
                                            state.get("shortcut"), ks, train)
        if not (isinstance(y, torch.Tensor) and isinstance(x, torch.Tensor) and y.shape == x.shape):
            got = [list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__ for v in (y, x)]
            raise ValueError(f"Residual: the block gives {got[0]} and the shortcut {got[1]}; they must have "
                             f"the same shape (no broadcasting): give a shortcut that maps the input to the "
                             f"block's output shape")
        y = y + x
        if self.activation is not None:
            y, new_state["activation"] = _run(self.activation, params.get("activation", {}), y,
                                              state.get("activation"), None, train)
        if not self.stateful:
            return y
        return y, {k: s for k, s in new_state.items() if getattr(self, k).stateful}


@dataclass(frozen=True, init=False)
class Concat(_Container):
    """Parallel branches on the same input, outputs concatenated along ``dim`` (channels: the
    Inception block). Branches are keyed ``"0"``, ``"1"``, ..."""

    layers: tuple
    dim: int = 1
    names: tuple = field(default=(), repr=False)

    def __init__(self, *branches: Any, dim: int = 1):
        dim = _check.integer("Concat", "dim", dim)
        if not branches:
            raise ValueError("Concat: expected at least one branch")
        self._init_layers(branches, "Concat")
        object.__setattr__(self, "dim", dim)

    def apply(self, params, x, *, state=None, key=None, train=False):
        params = params or {}
        keys = _split_or_none(key, len(self.layers))
        outs, new_state = [], {}
        for name, branch, k in zip(self.names, self.layers, keys):
            y, s = _run(branch, params.get(name, {}), x, (state or {}).get(name), k, train)
            outs.append(y)
            if branch.stateful:
                new_state[name] = s
        y = torch.cat(outs, dim=self.dim)
        return (y, new_state) if self.stateful else y
