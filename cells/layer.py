"""Sequence layers: RNN, LSTM and GRU with every ``torch.nn`` option, as one implementation
parametrised by the cell.

    out, h_n = cells.GRU(I, H, num_layers=2, bidirectional=True).apply(params, x, h0, lengths=lengths)
    out, (h_n, c_n) = cells.LSTM(I, H).apply(params, x, (h0, c0))

x: ``[T, B, I]`` (``[B, T, I]`` with ``batch_first``) or unbatched ``[T, I]``.
h0, c0: ``[L*D, B, H]`` (``[L*D, H]`` unbatched; LSTM's h with ``proj_size`` P: ``[L*D, B, P]``),
zeros when ``None``. out: ``[T, B, D*H_out]``; h_n, c_n like h0, c0.
Params: torch's names (``weight_ih_l0``, ``weight_hh_l1_reverse``, ``bias_ih_l0``, LSTM's
``weight_hr_l0``), so ``fn.params_from_module(nn.LSTM(...))`` is directly usable; with
``learn_initial_state=True`` also ``h0`` (and ``c0``) of shape ``[L*D, H]``, broadcast
over the batch.

``lengths`` (``[B]`` integers, any order, no sorting needed) gives what ``nn.LSTM`` gives on
``pack_padded_sequence(..., enforce_sorted=False)`` followed by ``pad_packed_sequence``:
outputs are zero past each sequence's length, ``h_n`` is taken at each sequence's last valid
step, and the reverse direction starts at each sequence's own end. Each length must lie in
``[1, T]``, as ``pack_padded_sequence`` requires; compiled, that value check is an op of the
graph (``cells::checked_lengths``), so a bad length raises there too.

Checked before any arithmetic, naming the layer: the constructor's arguments (as torch's
``RNNBase``: int sizes, bool flags, ``dropout`` in [0, 1], ``proj_size < hidden_size``), the
input's shape, one dtype and device for input, params and states (a mismatch named as
``nn.RNN`` names it), the states' structure (the LSTM's is the pair ``(h0, c0)``) and shapes,
``lengths``. The params tree is checked by ``fnnet.module`` (every Module's outermost apply).
An empty batch (B = 0) gives ``nn.LSTM``'s empty outputs.

``dropout`` applies between layers (not after the last), in training only, with masks drawn
from ``key``. The input projection of all time steps is one matmul outside the time loop.

``fused=True`` (default): each layer and direction runs as one recurrence with a hand-written
VJP (``cells.fused``); under ``fn.jit`` that recurrence is one opaque op, so the compiled step
has the same graph, and compile time, for any sequence length. Eagerly its backward is itself
differentiable once (a gradient penalty, ``create_graph=True``, autograd of a ``fn.grad``
result). With ``native=True`` (default) an LSTM layer runs on the fused kernel ``nn.LSTM``
itself runs where that one applies (oneDNN: CPU, float32, no ``proj_size``, no ``lengths``,
outside ``vmap``, no second derivative seen coming; ``cells.native``), with the same numbers
bit for bit; ``native=False`` keeps the hand-written recurrence everywhere.
``fused=False``: the cell's step scanned over time (``fnnet.scan``) and differentiated by
autograd - the reference the fused path is tested against, and what runs whatever ``fused``
says where the fused backward does not reach (``cells.fused.steps_the_cell``: a second
derivative under ``fn.jit`` or under ``vmap``/``jvp``, a third one) and for a ``vmap`` inside
``fn.jit`` (torch.compile cannot vmap the fused ops' autograd.Function yet); compiled, its scan
traces the step once (unrolled inside ``vmap``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

import fnnet as fn
from fnnet import random
from fnnet.layers._util import expect, param
from fnnet.scan import scan

from .cell import (GRUCell, LSTMCell, RNNCell, _Cell, check_bool, check_dtypes, check_int,
                   check_nonlinearity, check_tensor)
from . import native
from .fused import recurrence, second_derivative_ahead, steps_the_cell


def check_length_values(lengths: torch.Tensor, T: int, layer: str) -> None:
    """Every length in ``[1, T]``, as ``pack_padded_sequence`` requires (0 would be an empty
    sequence, more than T would read past the padded input)."""
    if lengths.numel() and (bool((lengths < 1).any()) or bool((lengths > T).any())):
        raise ValueError(f"{layer}: lengths must be in [1, {T}] (the padded length), got {lengths.tolist()}")


@torch.library.custom_op("cells::checked_lengths", mutates_args=())
def checked_lengths(lengths: torch.Tensor, T: int, layer: str) -> torch.Tensor:
    """``lengths`` (a copy: an op's output may not alias its input) after
    :func:`check_length_values`: in a compiled graph the check runs on the values of each
    call, and the mask is built from this output, so the check cannot be dropped."""
    check_length_values(lengths, T, layer)
    return lengths.clone()


@checked_lengths.register_fake
def _(lengths, T, layer):
    return torch.empty_like(lengths)


def lengths_tensor(owner: Any, compiled_name: str, lengths: Any, T: int, batch: int,
                   unbatched: bool) -> torch.Tensor:
    """``lengths`` as a ``[B]`` integer tensor, checked as ``pack_padded_sequence`` checks it
    (every length in ``[1, T]``), errors naming ``owner``; under ``torch.compile`` the value
    check is an op of the graph (``cells::checked_lengths``, naming ``compiled_name``), so a
    compiled call with a bad length raises too. One check for every sequence layer."""
    if not isinstance(lengths, torch.Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError) as e:
            raise TypeError(f"{owner!r}: lengths must be a 1-D integer tensor (or list of ints), got "
                            f"{type(lengths).__name__}: {e}") from None
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise ValueError(f"{owner!r}: lengths must be an integer tensor, got {lengths.dtype}")
    want = () if unbatched else (batch,)
    if tuple(lengths.shape) != want:
        raise ValueError(f"{owner!r}: lengths must have shape {list(want)} (one per sequence), "
                         f"got {list(lengths.shape)}")
    lengths = lengths.reshape(batch)
    if torch.compiler.is_compiling():
        return checked_lengths(lengths, T, compiled_name)
    check_length_values(lengths, T, repr(owner))
    return lengths


@dataclass(frozen=True)
class _RNNBase(fn.Module):
    _fnnet_input_dtype_check = False  # dtypes checked by check_dtypes, in nn.RNN's words

    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    batch_first: bool = False
    dropout: float = 0.0
    bidirectional: bool = False
    learn_initial_state: bool = False
    fused: bool = True
    native: bool = True

    cell_type: ClassVar[type] = RNNCell

    def __post_init__(self):
        """The checks of torch.nn's ``RNNBase``, at construction, naming the layer."""
        name = type(self).__name__
        for field in ("input_size", "hidden_size", "num_layers"):
            check_int(name, field, getattr(self, field))
        for field in ("bias", "batch_first", "bidirectional", "learn_initial_state", "fused", "native"):
            check_bool(name, field, getattr(self, field))
        d = self.dropout
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0.0 <= d <= 1.0:  # NaN fails too
            raise ValueError(f"{name}: dropout should be a number in [0, 1] (the probability of an element "
                             f"being zeroed), got {d!r}")

    # -- structure ------------------------------------------------------------------------------
    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Size of h (per direction)."""
        return self.hidden_size

    def cell(self) -> _Cell:
        return self.cell_type(self.input_size, self.hidden_size, self.bias)

    def _suffix(self, layer: int, direction: int) -> str:
        return f"_l{layer}" + ("_reverse" if direction else "")

    def _layer_input(self, layer: int) -> int:
        return self.input_size if layer == 0 else self.output_size * self.num_directions

    def _extra_shapes(self, suffix: str) -> dict:
        return {}

    def _shapes(self) -> dict:
        cell, shapes = self.cell(), {}
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                sfx = self._suffix(layer, d)
                shapes.update(cell.shapes(self._layer_input(layer), self.output_size, sfx))
                shapes.update(self._extra_shapes(sfx))
        return shapes

    def _state_sizes(self) -> tuple[int, ...]:
        return (self.output_size,)

    def init(self, key):
        k_w, k_h = random.split(key)
        params = self.cell().init_from_shapes(k_w, self._shapes())
        if self.learn_initial_state:
            n = self.num_layers * self.num_directions
            for name, size in zip(("h0", "c0"), self._state_sizes()):
                params[name] = fn.init.zeros(k_h, (n, size))
        return params

    # -- apply --------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> tuple[torch.Tensor, bool]:
        check_tensor(self, "input", x)
        layout = "[B, T, {0}]" if self.batch_first else "[T, B, {0}]"
        expect(self, x.ndim in (2, 3) and x.shape[-1] == self.input_size,
               f"input of shape {layout.format(self.input_size)} or unbatched [T, {self.input_size}]", x)
        unbatched = x.ndim == 2
        expect(self, x.shape[1 if self.batch_first and not unbatched else 0] >= 1,
               "a sequence of at least one step", x)
        if unbatched:
            x = x.unsqueeze(1)
        elif self.batch_first:
            x = x.transpose(0, 1)
        return x, unbatched

    def _initial_states(self, params: dict, h0: Any, batch: int, x: torch.Tensor, unbatched: bool) -> list:
        """One tensor ``[L*D, B, size]`` per state component (h; and c for LSTM)."""
        n, sizes = self.num_layers * self.num_directions, self._state_sizes()
        if len(sizes) == 1:
            given = (h0,)
        elif h0 is None or (isinstance(h0, tuple) and len(h0) == 2):
            given = h0
        else:  # a bare tensor would be unpacked along its first axis: refuse it
            got = f"a tuple of {len(h0)}" if isinstance(h0, (tuple, list)) else type(h0).__name__
            raise TypeError(f"{self!r}: the initial state must be a tuple (h0, c0), got {got}")
        states = []
        for i, size in enumerate(sizes):
            name = ("h0", "c0")[i]
            if h0 is not None:
                s = given[i]
                check_tensor(self, name, s)
                want = (n, size) if unbatched else (n, batch, size)
                if tuple(s.shape) != want:
                    raise ValueError(f"{self!r}: expected {name} of shape {list(want)}, got {list(s.shape)}")
                states.append(s.unsqueeze(1) if unbatched else s)
            elif self.learn_initial_state:
                learned = param(self, params, name, (n, size))
                states.append(learned.unsqueeze(1).expand(n, batch, size))
            else:
                states.append(x.new_zeros(n, batch, size))
        return states

    def _check_lengths(self, lengths: Any, T: int, batch: int, unbatched: bool) -> torch.Tensor:
        # (dynamo cannot trace a dataclass repr: compiled, a short name)
        return lengths_tensor(self, f"{type(self).__name__}({self.input_size}, {self.hidden_size}, ...)",
                              lengths, T, batch, unbatched)

    def _run_direction(self, weights: tuple, x: torch.Tensor, state: Any, mask: torch.Tensor | None,
                       reverse: bool) -> tuple[Any, torch.Tensor]:
        """One layer, one direction. x ``[T, B, I]`` -> (final state, outputs ``[T, B, H]``)."""
        w_ih, w_hh, b_ih, b_hh, *extra = weights
        cell = self.cell()
        # the cell is stepped instead (a) compiled inside vmap (an ensemble): torch.compile cannot
        # vmap an autograd.Function yet, and (b) where what differentiates the layer is more than
        # the fused backward supports (steps_the_cell: a compiled second derivative, a third one,
        # a second one under jvp or vmap). An eager second derivative (a gradient penalty,
        # autograd of a fn.grad result) runs the fused recurrence, whose backward is
        # differentiable; not oneDNN's, whose backward is not
        states = state if isinstance(state, tuple) else (state,)
        fused = self.fused and not (
            (torch.compiler.is_compiling() and fn.transforms.inside_vmap())
            or steps_the_cell(weights, (x, *states)))
        if (fused and self.native and cell.kind == "lstm" and native.available(x, len(extra) > 0, mask)
                and not second_derivative_ahead(weights, (x, *states))):
            ys, finals = native.lstm_layer(x, w_ih, w_hh, b_ih, b_hh, state, reverse=reverse)
            return finals, ys
        xp = cell.project(w_ih, b_ih, b_hh, x)  # all time steps in one matmul
        if fused:
            states = state if isinstance(state, tuple) else (state,)
            b = None if cell.folds_hidden_bias else b_hh
            ys, finals = recurrence(cell.kind, xp, states, w_hh, b, *extra, mask=mask, reverse=reverse)
            return (finals if len(finals) > 1 else finals[0]), ys

        if mask is None:
            def body(s, xp_t):
                return cell.step(w_hh, b_hh, xp_t, s, *extra)
            return scan(body, state, xp, reverse=reverse)

        def masked(s, inp):
            xp_t, m_t = inp
            new, y = cell.step(w_hh, b_hh, xp_t, s, *extra)
            new = fn.tree.map(lambda a, b: torch.where(m_t, a, b), new, s)  # past the end: keep
            return new, y * m_t
        return scan(masked, state, (xp, mask), reverse=reverse)

    def _weights(self, params: dict, layer: int, d: int) -> tuple:
        sfx = self._suffix(layer, d)
        return self.cell().weights(params, sfx, self._layer_input(layer), self.output_size)

    def _check_dtypes(self, params: dict, x: torch.Tensor, states: list) -> None:
        """Params, input and initial states: one floating dtype, one device (as nn.RNN)."""
        shapes = self._shapes()
        weights = {name: param(self, params, name, shape) for name, shape in shapes.items()}
        if self.learn_initial_state:
            n = self.num_layers * self.num_directions
            weights.update({name: param(self, params, name, (n, size))
                            for name, size in zip(("h0", "c0"), self._state_sizes())})
        check_dtypes(self, x, weights, dict(zip(("h0", "c0"), states)))

    def apply(self, params, x, h0=None, *, lengths=None, key=None, train=False):
        x, unbatched = self._check_input(x)
        T, B = x.shape[0], x.shape[1]
        states = self._initial_states(params, h0, B, x, unbatched)
        self._check_dtypes(params, x, states)
        mask = None
        if lengths is not None:
            lengths = self._check_lengths(lengths, T, B, unbatched)
            steps = torch.arange(T, device=x.device).unsqueeze(1)
            mask = (steps < lengths.to(x.device).unsqueeze(0)).unsqueeze(-1)  # [T, B, 1]
        dropping = train and self.dropout > 0 and self.num_layers > 1
        if dropping and key is None:
            raise ValueError(f"{self!r}: train=True with dropout needs a key=")

        finals: list[list[torch.Tensor]] = [[] for _ in states]
        inp = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                i = layer * self.num_directions + d
                s0 = tuple(s[i] for s in states)
                s0 = s0 if len(s0) > 1 else s0[0]
                final, y = self._run_direction(self._weights(params, layer, d), inp, s0, mask, reverse=d == 1)
                for store, f in zip(finals, final if isinstance(final, tuple) else (final,)):
                    store.append(f)
                outs.append(y)
            inp = torch.cat(outs, -1) if len(outs) > 1 else outs[0]
            if dropping and layer < self.num_layers - 1:
                inp = fn.dropout(inp, self.dropout, random.fold_in(key, layer))

        out = inp
        finals = [torch.stack(f) for f in finals]
        if unbatched:
            out, finals = out.squeeze(1), [f.squeeze(1) for f in finals]
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, (tuple(finals) if len(finals) > 1 else finals[0])


@dataclass(frozen=True)
class RNN(_RNNBase):
    """Elman RNN (``nn.RNN``); ``nonlinearity`` ``"tanh"`` or ``"relu"``."""

    nonlinearity: str = "tanh"

    def __post_init__(self):
        super().__post_init__()
        check_nonlinearity("RNN", self.nonlinearity)

    def cell(self) -> _Cell:
        return RNNCell(self.input_size, self.hidden_size, self.bias, self.nonlinearity)


@dataclass(frozen=True)
class GRU(_RNNBase):
    """``nn.GRU``."""

    cell_type: ClassVar[type] = GRUCell


@dataclass(frozen=True)
class LSTM(_RNNBase):
    """``nn.LSTM``, with ``proj_size`` (h projected to P by ``weight_hr_l{k}``: ``[P, H]``)."""

    proj_size: int = 0

    cell_type: ClassVar[type] = LSTMCell

    def __post_init__(self):
        super().__post_init__()
        check_int("LSTM", "proj_size", self.proj_size, minimum=0)
        if self.proj_size >= self.hidden_size:
            raise ValueError(f"LSTM: proj_size has to be smaller than hidden_size ({self.hidden_size}), "
                             f"got {self.proj_size}")

    @property
    def output_size(self) -> int:
        return self.proj_size or self.hidden_size

    def _state_sizes(self) -> tuple[int, ...]:
        return (self.output_size, self.hidden_size)

    def _extra_shapes(self, suffix: str) -> dict:
        return {f"weight_hr{suffix}": (self.proj_size, self.hidden_size)} if self.proj_size else {}

    def _weights(self, params, layer, d):
        w = super()._weights(params, layer, d)
        if self.proj_size:
            sfx = self._suffix(layer, d)
            return (*w, param(self, params, f"weight_hr{sfx}", (self.proj_size, self.hidden_size)))
        return w
