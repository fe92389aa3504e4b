"""``Recurrent``: one sequence layer over any cell, with the options of ``cells.LSTM``.

    layer = cells.Recurrent(PeepholeLSTMCell(I, H), num_layers=2, bidirectional=True)
    params = layer.init(key)
    out, state = layer.apply(params, x, lengths=lengths)     # out [T, B, 2*H]; state like the cell's

**The cell protocol.** A cell is any hashable object (a frozen dataclass subclassing
``fn.Module``, like the built-in cells) with

* ``input_size``: an int, the size ``I`` of one step's input;
* ``init(key) -> params``: a nested dict of floating-point tensors;
* ``apply(params, x_t, state) -> state``: one step, ``x_t: [B, I]``; the state is a pytree of
  ``[B, ...]`` tensors (``h``, or ``(h, c)``, ...) and comes back with the same structure,
  shapes and dtypes (torch's ``cell(x, (h, c)) -> (h, c)``, not Flax's ``(carry, y)``);
* ``initial_state(batch, device=None, dtype=None) -> state``: the state a sequence starts from
  (zeros);
* ``output(state) -> h`` (optional): the step's output ``[B, H]`` read from its state; without
  it, the state itself if it is a tensor, else its first leaf (``h`` of ``(h, c)``).

The recurrent state is a cell's only state: a cell with running statistics (a BatchNorm child)
is refused. ``cells.RNNCell``, ``LSTMCell`` and ``GRUCell`` satisfy it. Every part is checked, naming the
cell and what was expected: the methods and ``input_size`` at construction, the initial state
and each step's new state and output while running.

**The layer.** ``Recurrent(cell, num_layers=1, bidirectional=False, batch_first=False,
dropout=0.0, reverse=False, learn_initial_state=False)``;
``apply(params, x, state=None, *, lengths=None, key=None, train=False) -> (out, final_state)``.

* x: ``[T, B, I]`` (``[B, T, I]`` with ``batch_first``), or unbatched ``[T, I]``.
* out: ``[T, B, D*H]`` (D = 2 when bidirectional: forward and reverse outputs concatenated).
* state / final_state: the cell's state structure, each leaf ``[L*D, B, ...]`` (unbatched
  ``[L*D, ...]``), entry ``layer*D + direction`` as ``nn.LSTM``'s ``h_0``/``h_n``; ``None``: the
  cells' ``initial_state`` (or the learned one). A built-in LSTM cell gives ``(h_n, c_n)``.
* ``lengths`` (``[B]`` integers in ``[1, T]``, any order): what ``nn.LSTM`` gives on
  ``pack_padded_sequence(..., enforce_sorted=False)`` then ``pad_packed_sequence``: the final
  state of each sequence is taken at its last real step, outputs past it are zero, and a
  reverse direction starts at each sequence's own end. Checked as ``cells.LSTM`` checks it (in
  a compiled call too: ``cells::checked_lengths``).
* ``reverse=True``: the one direction runs from each sequence's end to its start (outputs
  still stored at their own time index); with ``bidirectional`` that is the second direction.
* Stacking: layer 0's cell is ``cell``; each layer above reads the ``D*H`` outputs below it,
  so its cell is ``dataclasses.replace(cell, input_size=D*H)``, as ``nn.LSTM`` builds its
  upper layers from the same hyperparameters (a cell that is not a dataclass with an
  ``input_size`` field stacks only as separate ``Recurrent`` layers).
* ``dropout``: between layers (not after the last), in training only, masks from ``key``
  (``fold_in(key, layer)``, the masks ``cells.LSTM`` draws).
* Params: ``{"l0": cell params, "l0_reverse": ..., "l1": ...}`` (torch's suffixes ``_l0``,
  ``_l0_reverse`` as keys); with ``learn_initial_state`` also ``"initial_state"``:
  ``{"0": [L*D, ...], "1": ...}``, one entry per leaf of the cell's state (``fn.tree.leaves``
  order: ``h`` then ``c`` for the LSTM cell), the state without its batch axis, broadcast over
  the batch (zeros at init).

Input, params and states share one floating dtype and device (as ``nn.RNN`` requires), checked
before any step. An empty batch (B = 0) runs; T must be at least 1.

**How it runs.** Each layer and direction is ``fnnet.scan`` over the cell's ``apply``, so any
cell differentiates (``fn.grad``), batches (``fn.vmap``) and compiles (``fn.jit``) as ``scan``
does: compiled inference traces the step once. A compiled training step (``fn.jit`` with grad
mode on, at most one level of ``fn.grad``, no ``vmap``) runs each layer and direction as
``fnnet._loop``'s loop instead: two opaque ops, the step compiled by inductor in chunks of
``fnnet._loop.DEFAULT_CHUNK`` steps (the cell's params its constants, the state its carry,
``x`` and the lengths' mask its inputs): the forward keeps each step's residuals (what the
step's backward reads, ``[T, ...]``; the weights are not copied per step) and the backward runs
the step's backward graph on them in compiled chunks, without recomputing the forward; the
outer graph and the compile time do not grow with T. Under compiled inference torch's scan
op refuses a step that iterates over a params tensor (``a, b, c = params["w"]``:
"Encountered aliasing during higher order op tracing", torch 2.13); ``params["w"].unbind(0)``
or indexing traces. The built-in cells run here step
by step too; ``cells.RNN``, ``LSTM`` and ``GRU`` stay their fast path (the input projection
hoisted out of the loop, a hand-written VJP behind an opaque op, oneDNN's LSTM) with the same
numbers.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

import fnnet as fn
from fnnet import _loop, random
from fnnet.layers._util import expect
from fnnet.scan import scan

from .cell import check_bool, check_dtypes, check_int, check_tensor
from .layer import lengths_tensor

__all__ = ["Recurrent", "output_of"]

_PROTOCOL = ("input_size (an int), init(key) -> params, apply(params, x_t, state) -> state, "
             "initial_state(batch, device=None, dtype=None) -> state and optionally output(state) -> h")


def output_of(cell: Any, state: Any) -> torch.Tensor:
    """The output ``h`` of a cell's state: ``cell.output(state)`` where the cell has one, else
    the state itself if it is a tensor, else its first leaf (``h`` of ``(h, c)``)."""
    read = getattr(cell, "output", None)
    if read is not None:
        return read(state)
    return state if isinstance(state, torch.Tensor) else fn.tree.leaves(state)[0]


def _describe(tree: Any) -> str:
    if isinstance(tree, torch.Tensor):
        return f"a tensor {list(tree.shape)} {tree.dtype}"
    if isinstance(tree, (tuple, list)):
        return f"a {type(tree).__name__} of {len(tree)}"
    return f"a {type(tree).__name__}"


def _leaf(path: str) -> str:
    """How a state leaf is named in errors: the state itself, or its leaf at ``path``."""
    return f"state leaf {path!r}" if path else "state"


def _check_protocol(cell: Any) -> None:
    """The cell has what the layer calls (at construction, naming the cell)."""
    for name in ("init", "apply", "initial_state"):
        if not callable(getattr(cell, name, None)):
            raise TypeError(f"Recurrent: the cell {cell!r} has no {name}() method; a cell provides "
                            f"{_PROTOCOL} (see cells.recurrent)")
    if getattr(cell, "output", None) is not None and not callable(cell.output):
        raise TypeError(f"Recurrent: the cell {cell!r} has an output attribute that is not a method")
    size = getattr(cell, "input_size", None)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise TypeError(f"Recurrent: the cell {cell!r} needs an input_size attribute (an int >= 1, the "
                        f"size of x_t), got {size!r}; a cell provides {_PROTOCOL}")
    if isinstance(cell, fn.Module) and cell.stateful:
        raise TypeError(f"Recurrent: the cell {cell!r} has running statistics (a stateful child such as "
                        f"BatchNorm); a cell's only state is the recurrent one its apply returns")
    try:
        hash(cell)
    except TypeError:
        raise TypeError(f"Recurrent: the cell {cell!r} is not hashable; a layer is a constant to "
                        f"torch.compile, so its cell is too: make it a @dataclass(frozen=True)") from None


def _template(cell: Any) -> tuple[Any, int]:
    """(the cell's state for a batch of 1 on the meta device, the output size H), checked:
    every leaf a tensor ``[1, ...]``, the output a tensor ``[1, H]``."""
    state = cell.initial_state(1, device="meta")
    leaves = fn.tree.leaves(state)
    if not leaves or any(not isinstance(s, torch.Tensor) or s.ndim < 1 or s.shape[0] != 1 for s in leaves):
        raise ValueError(f"Recurrent: {cell!r}.initial_state(1) should be a pytree of [1, ...] tensors (a "
                         f"batch of one), got {_describe(state)}")
    h = output_of(cell, state)
    if not isinstance(h, torch.Tensor) or h.ndim != 2 or h.shape[0] != 1:
        got = list(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(f"Recurrent: the output of {cell!r} (output(state)) should be a tensor [B, H], "
                         f"got {got} for a batch of one")
    return state, h.shape[1]


def _loop_body(layer: Recurrent, spec: tuple):
    """The step of ``layer``'s loop: consts the cell's param leaves at ``paths``, carry the state's
    leaves, x_t ``[x_t]`` or ``[x_t, m_t]`` (masked: past a sequence's end the state is kept, the
    output zero), y_t ``[h_t]``; the same checks as the scanned step."""
    index, paths, masked = spec
    cell = layer._cells[index]
    structure = fn.tree.structure(cell.initial_state(1, device="meta"))

    def body(consts, carry, x_t):
        state = fn.tree.unflatten(structure, list(carry))
        new, h = layer._step(cell, _loop.nest(paths, consts))(state, x_t[0])
        if masked:
            m_t = x_t[1]
            new = fn.tree.map(lambda a, b: torch.where(m_t.view(-1, *(1,) * (a.ndim - 1)), a, b), new, state)
            h = torch.where(m_t.unsqueeze(-1), h, torch.zeros((), dtype=h.dtype, device=h.device))
        return fn.tree.leaves(new), [h]
    return body


_loop.register_kind("recurrent", _loop_body)


def _upper_cell(cell: Any, input_size: int, layer: int) -> Any:
    """Layer ``layer``'s cell: ``cell`` reading ``input_size`` features."""
    fields = {f.name for f in dataclasses.fields(cell)} if dataclasses.is_dataclass(cell) else set()
    if "input_size" not in fields:
        raise TypeError(f"Recurrent: num_layers > 1 builds layer {layer}'s cell as dataclasses.replace(cell, "
                        f"input_size={input_size}), but {cell!r} is not a dataclass with an input_size field; "
                        f"stack Recurrent layers one by one instead")
    try:
        return dataclasses.replace(cell, input_size=input_size)
    except (TypeError, ValueError) as e:
        raise TypeError(f"Recurrent: could not build layer {layer}'s cell as dataclasses.replace({cell!r}, "
                        f"input_size={input_size}): {e}") from None


@dataclass(frozen=True)
class Recurrent(fn.Module):
    """A sequence layer running ``cell`` over time (see the module docstring for the protocol,
    shapes and params): ``out, final_state = layer.apply(params, x, state, lengths=...)``."""

    _fnnet_input_dtype_check = False  # dtypes checked by the cell protocol's checks

    cell: Any
    num_layers: int = 1
    bidirectional: bool = False
    batch_first: bool = False
    dropout: float = 0.0
    reverse: bool = False
    learn_initial_state: bool = False

    def __post_init__(self):
        check_int("Recurrent", "num_layers", self.num_layers)
        for name in ("bidirectional", "batch_first", "reverse", "learn_initial_state"):
            check_bool("Recurrent", name, getattr(self, name))
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d <= 1.0:  # NaN fails too
            raise ValueError(f"Recurrent: dropout should be a number in [0, 1] (the probability of an element "
                             f"being zeroed), got {d!r}")
        if self.reverse and self.bidirectional:
            raise ValueError("Recurrent: reverse=True and bidirectional=True together: a bidirectional layer "
                             "already runs a reverse direction; use one of them")
        _check_protocol(self.cell)
        state, size = _template(self.cell)
        cells = [self.cell]
        for layer in range(1, self.num_layers):
            upper = _upper_cell(self.cell, size * self.num_directions, layer)
            _check_protocol(upper)
            s, h = _template(upper)
            if h != size or fn.tree.structure(s) != fn.tree.structure(state) or \
                    [x.shape for x in fn.tree.leaves(s)] != [x.shape for x in fn.tree.leaves(state)]:
                raise ValueError(f"Recurrent: layer {layer}'s cell {upper!r} has another state or output shape "
                                 f"than layer 0's {self.cell!r}; the final states of all layers are stacked")
            cells.append(upper)
        object.__setattr__(self, "_cells", tuple(cells))  # not a field: eq, hash and repr see `cell` only
        object.__setattr__(self, "_output_size", size)
        object.__setattr__(self, "_state_shapes", tuple(x.shape[1:] for x in fn.tree.leaves(state)))

    # -- structure ------------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """H, the size of one direction's output."""
        return self._output_size

    @property
    def layer_cells(self) -> tuple:
        """The cell of each layer (layer 0's is ``cell``)."""
        return self._cells

    def _key(self, layer: int, direction: int) -> str:
        return f"l{layer}" + ("_reverse" if direction else "")

    def init(self, key):
        n = self.num_layers * self.num_directions
        keys = random.split(key, n)
        params = {}
        for layer, cell in enumerate(self._cells):
            for d in range(self.num_directions):
                params[self._key(layer, d)] = cell.init(keys[layer * self.num_directions + d])
        if self.learn_initial_state:
            params["initial_state"] = {str(i): torch.zeros(n, *shape, device=key.device)
                                       for i, shape in enumerate(self._state_shapes)}
        return params

    # -- apply --------------------------------------------------------------------------------
    def _check_input(self, x: Any) -> tuple[torch.Tensor, bool]:
        check_tensor(self, "input", x)
        i = self.cell.input_size
        layout = "[B, T, {0}]" if self.batch_first else "[T, B, {0}]"
        expect(self, x.ndim in (2, 3) and x.shape[-1] == i,
               f"input of shape {layout.format(i)} or unbatched [T, {i}]", x)
        unbatched = x.ndim == 2
        expect(self, x.shape[1 if self.batch_first and not unbatched else 0] >= 1,
               "a sequence of at least one step", x)
        if unbatched:
            return x.unsqueeze(1), True
        return (x.transpose(0, 1) if self.batch_first else x), False

    def _start(self, cell: Any, batch: int, x: torch.Tensor) -> Any:
        """``cell.initial_state(batch)`` on x's device and dtype, checked."""
        state = cell.initial_state(batch, device=x.device, dtype=x.dtype)
        for path, s in fn.tree.flatten_with_paths(state):
            if (not isinstance(s, torch.Tensor) or s.ndim < 1 or s.shape[0] != batch or s.dtype != x.dtype
                    or s.device != x.device):
                raise ValueError(f"Recurrent: the cell {cell!r}.initial_state({batch}, device={x.device}, "
                                 f"dtype={x.dtype}) gave its {_leaf(path)} as {_describe(s)}; expected [{batch}, ...] "
                                 f"tensors of that dtype and device")
        return state

    def _initial_states(self, params: dict, given: Any, batch: int, x: torch.Tensor, unbatched: bool) -> list:
        """The start state of each (layer, direction), in ``layer*D + direction`` order."""
        n, D = self.num_layers * self.num_directions, self.num_directions
        starts = [self._start(self._cells[i // D], batch, x) for i in range(n)]
        if given is None and not self.learn_initial_state:
            return starts
        spec = fn.tree.structure(starts[0])
        lead = (n,) if unbatched else (n, batch)
        if given is not None:
            if fn.tree.structure(given) != spec:
                raise TypeError(f"{self!r}: the initial state must have the structure of the cell's state "
                                f"({_describe(starts[0])}), each leaf stacked over layers and directions "
                                f"[{n}, B, ...]; got {_describe(given)}")
            leaves = []
            for (path, s), like in zip(fn.tree.flatten_with_paths(given), fn.tree.leaves(starts[0])):
                check_tensor(self, _leaf(path), s)
                want = (*lead, *like.shape[1:])
                if tuple(s.shape) != want:
                    raise ValueError(f"{self!r}: expected {_leaf(path)} of shape {list(want)} ([L*D, B, ...]), "
                                     f"got {list(s.shape)}")
                leaves.append(s.unsqueeze(1) if unbatched else s)
        else:
            learned = params["initial_state"]
            leaves = [learned[str(j)].unsqueeze(1).expand(n, batch, *learned[str(j)].shape[1:])
                      for j in range(len(self._state_shapes))]
        return [fn.tree.unflatten(spec, [s[i] for s in leaves]) for i in range(n)]

    def _check_dtypes(self, params: dict, x: torch.Tensor, states: list) -> None:
        """Params, input and states: one floating dtype, one device (as nn.RNN)."""
        weights = dict(fn.tree.flatten_with_paths(params))
        named = {_leaf(p): s for p, s in fn.tree.flatten_with_paths(states[0])}
        if weights:
            check_dtypes(self, x, weights, named)
            return
        for name, s in named.items():
            if s.dtype != x.dtype or s.device != x.device:
                raise ValueError(f"{self!r}: {name} is {s.dtype} on {s.device}, expected the input's {x.dtype} "
                                 f"on {x.device}")

    def _check_lengths(self, lengths: Any, T: int, batch: int, unbatched: bool) -> torch.Tensor:
        # (dynamo cannot trace a dataclass repr: compiled, a short name)
        return lengths_tensor(self, f"Recurrent({type(self.cell).__name__}(...), ...)", lengths, T, batch, unbatched)

    def _step(self, cell: Any, params: Any) -> Any:
        """``cell.apply`` for one step, its new state and output checked against the protocol."""
        H = self._output_size

        def step(state, x_t):
            new = cell.apply(params, x_t, state)
            if fn.tree.structure(new) != fn.tree.structure(state):
                hint = (" (a cell returns its new state only, not (state, output))"
                        if isinstance(new, tuple) and len(new) == 2 and isinstance(state, torch.Tensor) else "")
                raise ValueError(f"Recurrent: the cell {cell!r}.apply(params, x_t, state) returned {_describe(new)}; "
                                 f"expected a state of the structure it was given, {_describe(state)}{hint}")
            for (path, a), b in zip(fn.tree.flatten_with_paths(new), fn.tree.leaves(state)):
                if not isinstance(a, torch.Tensor) or a.shape != b.shape or a.dtype != b.dtype:
                    raise ValueError(f"Recurrent: the cell {cell!r}.apply(params, x_t, state) returned its "
                                     f"{_leaf(path)} as {_describe(a)}; expected {list(b.shape)} {b.dtype}, as the "
                                     f"state it was given (a cell keeps its state's structure, shapes and dtypes)")
            h = output_of(cell, new)
            B = x_t.shape[0]
            if not isinstance(h, torch.Tensor) or h.shape != (B, H) or h.dtype != x_t.dtype:
                raise ValueError(f"Recurrent: the output of the cell {cell!r} (output(state)) is {_describe(h)}; "
                                 f"expected [{B}, {H}] {x_t.dtype}")
            return new, h
        return step

    def _run_direction(self, cell: Any, params: Any, x: torch.Tensor, state: Any, mask: torch.Tensor | None,
                       reverse: bool, layer: int = 0) -> tuple[Any, torch.Tensor]:
        """One layer, one direction: x ``[T, B, I]`` -> (final state, outputs ``[T, B, H]``)."""
        if _loop.applies(x):
            return self._run_loop(layer, params, x, state, mask, reverse)
        step = self._step(cell, params)
        if mask is None:
            return scan(step, state, x, reverse=reverse)

        def masked(s, inp):  # past a sequence's end: the state is kept, the output is zero
            x_t, m_t = inp
            new, h = step(s, x_t)
            new = fn.tree.map(lambda a, b: torch.where(m_t.view(-1, *(1,) * (a.ndim - 1)), a, b), new, s)
            return new, torch.where(m_t.unsqueeze(-1), h, torch.zeros((), dtype=h.dtype, device=h.device))
        return scan(masked, state, (x, mask), reverse=reverse)

    def _run_loop(self, layer: int, params: Any, x: torch.Tensor, state: Any, mask: torch.Tensor | None,
                  reverse: bool) -> tuple[Any, torch.Tensor]:
        """``_run_direction`` as fnnet._loop's opaque chunked loop (compiled training): the cell's
        params are the loop's consts, the state's leaves its carry, x (and the mask) its xs."""
        flat = _loop.flat(params)
        paths = tuple(p for p, _ in flat)
        xs = [x] if mask is None else [x, mask]
        carry, (out,) = _loop.loop("recurrent", self, (layer, paths, mask is not None), [v for _, v in flat],
                                   fn.tree.leaves(state), xs, ys_grad=(True,), reverse=reverse)
        return fn.tree.unflatten(fn.tree.structure(state), carry), out

    def apply(self, params, x, state=None, *, lengths=None, key=None, train=False):
        x, unbatched = self._check_input(x)
        T, B = x.shape[0], x.shape[1]
        states = self._initial_states(params, state, B, x, unbatched)
        self._check_dtypes(params, x, states)
        mask = None
        if lengths is not None:
            lengths = self._check_lengths(lengths, T, B, unbatched)
            mask = torch.arange(T, device=x.device).unsqueeze(1) < lengths.to(x.device).unsqueeze(0)  # [T, B]
        dropping = train and self.dropout > 0 and self.num_layers > 1
        if dropping and key is None:
            raise ValueError(f"{self!r}: train=True with dropout needs a key=")

        D, finals, inp = self.num_directions, [], x
        for layer, cell in enumerate(self._cells):
            outs = []
            for d in range(D):
                final, y = self._run_direction(cell, params[self._key(layer, d)], inp, states[layer * D + d], mask,
                                               reverse=self.reverse or d == 1, layer=layer)
                finals.append(final)
                outs.append(y)
            inp = torch.cat(outs, -1) if D > 1 else outs[0]
            if dropping and layer < self.num_layers - 1:
                inp = fn.dropout(inp, self.dropout, random.fold_in(key, layer))

        out, final = inp, fn.tree.map(lambda *s: torch.stack(s), *finals)  # leaves [L*D, B, ...]
        if unbatched:
            return out.squeeze(1), fn.tree.map(lambda s: s.squeeze(1), final)
        return (out.transpose(0, 1) if self.batch_first else out), final
