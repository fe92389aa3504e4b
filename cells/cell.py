"""Recurrent cells with ``torch.nn``'s names, weight layouts, gate orders and init.

    h = cells.RNNCell(i, h_size).apply(params, x, h)
    h, c = cells.LSTMCell(i, h_size).apply(params, x, (h, c))
    h = cells.GRUCell(i, h_size).apply(params, x, h)

x: ``[B, I]`` or unbatched ``[I]``; states ``[B, H]`` or ``[H]`` (``None``: zeros).
Params: ``weight_ih [G*H, I]``, ``weight_hh [G*H, H]``, ``bias_ih [G*H]``, ``bias_hh [G*H]``
with G = 1 (RNN), 4 (LSTM: gates i, f, g, o), 3 (GRU: r, z, n).

Each cell splits its math in two, so that sequence layers can hoist the input half out of
the time loop as one matmul over all steps:
``project(w_ih, b_ih, b_hh, x)`` (``x W_ih^T + b_ih``, plus ``b_hh`` where the cell's math
allows folding it in; any leading dims), and ``step(w_hh, b_hh, xp, state) -> (state, h)``,
the recurrence given a projected input ``xp: [B, G*H]``: one ``addmm`` and a few fused
elementwise ops per step.

The cells satisfy the cell protocol of ``cells.Recurrent`` (``cells/recurrent.py``): besides
``init`` and ``apply``, ``initial_state(batch, device=None, dtype=None)`` (zeros) and
``output(state) -> h``, so ``cells.Recurrent(cells.GRUCell(i, h))`` runs them over sequences
like any user cell.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

import fnnet as fn
from fnnet import _check, random
from fnnet.layers._util import expect, param
from fnnet.module import Module


# Constructor checks: fnnet._check in torch.nn.RNNBase's words (users match them): an ``int``
# itself (not a bool, not a numpy int) for a size, a bool for a switch.

def check_int(layer: str, name: str, value: Any, minimum: int = 1) -> None:
    """A constructor size, checked as torch.nn's ``RNNBase`` checks it: an ``int`` (not a bool)
    of at least ``minimum``; ``TypeError`` / ``ValueError`` naming the layer."""
    _check.integer(layer, name, value, minimum, exact=True, words={
        TypeError: "{name} should be of type int, got {got}",
        ValueError: f"{{name}} must be at least {minimum}, got {{got}}"})


def check_bool(layer: str, name: str, value: Any) -> None:
    _check.flag(layer, name, value, words={TypeError: "{name} should be a bool, got {got}"})


def check_tensor(layer: Module, name: str, value: Any) -> None:
    _check.tensor(layer, name, value)


def check_dtypes(layer: Module, x: torch.Tensor, weights: dict, states: dict) -> None:
    """Input, params and states share one floating dtype and one device, as ``nn.RNN``
    requires; a mismatch is named the way torch names it (``ValueError``), before any matmul.
    ``weights`` and ``states``: name -> tensor."""
    first = next(iter(weights))
    dtype, device = weights[first].dtype, weights[first].device
    for name, w in weights.items():
        if not w.is_floating_point() or w.dtype != dtype or w.device != device:
            raise ValueError(f"{layer!r}: params[{name!r}] is {w.dtype} on {w.device}; every param must be "
                             f"floating point with the dtype and device of {first!r} ({dtype} on {device})")
    if x.dtype != dtype:
        raise ValueError(f"{layer!r}: input dtype ({x.dtype}) does not match weight dtype ({dtype}). Convert "
                         f"input: x.to({dtype}), or convert params: fn.tree.map(lambda p: p.to({x.dtype}), params)")
    if x.device != device:
        raise ValueError(f"{layer!r}: input is on {x.device} but the params are on {device}")
    for name, s in states.items():
        if s.dtype != dtype or s.device != device:
            raise ValueError(f"{layer!r}: {name} is {s.dtype} on {s.device}, expected the params' {dtype} on {device}")


@dataclass(frozen=True)
class _Cell(fn.Module):
    _fnnet_input_dtype_check = False  # dtypes checked by check_dtypes, in nn.RNN's words

    input_size: int
    hidden_size: int
    bias: bool = True

    gates: ClassVar[int] = 1
    state_names: ClassVar[tuple] = ("h",)

    def __post_init__(self):
        name = type(self).__name__
        check_int(name, "input_size", self.input_size)
        check_int(name, "hidden_size", self.hidden_size)
        check_bool(name, "bias", self.bias)

    # -- params ------------------------------------------------------------------------------
    def shapes(self, input_size: int | None = None, state_size: int | None = None, suffix: str = "") -> dict:
        """Param shapes, by name (with a layer suffix such as ``_l0_reverse``)."""
        g, h = self.gates * self.hidden_size, self.hidden_size
        out = {f"weight_ih{suffix}": (g, input_size or self.input_size),
               f"weight_hh{suffix}": (g, state_size or h)}
        if self.bias:
            out[f"bias_ih{suffix}"] = (g,)
            out[f"bias_hh{suffix}"] = (g,)
        return out

    def init_from_shapes(self, key: torch.Tensor, shapes: dict) -> dict:
        """torch.nn's RNN init: every weight and bias uniform on ``+-1/sqrt(hidden_size)``."""
        bound = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0.0
        keys = random.split(key, len(shapes))
        return {name: fn.init.uniform(k, shape, bound) for (name, shape), k in zip(shapes.items(), keys)}

    def init(self, key):
        return self.init_from_shapes(key, self.shapes())

    def weights(self, params: dict, suffix: str = "", input_size: int | None = None,
                state_size: int | None = None) -> tuple:
        """``(w_ih, w_hh, b_ih, b_hh)`` checked against their expected shapes."""
        shapes = self.shapes(input_size, state_size, suffix)
        names = list(shapes)
        got = [param(self, params, n, shapes[n]) for n in names]
        return tuple(got) if self.bias else (*got, None, None)

    # -- math --------------------------------------------------------------------------------
    folds_hidden_bias: ClassVar[bool] = True  # W_hh h + b_hh enters the gates additively

    def project(self, w_ih, b_ih, b_hh, x: torch.Tensor) -> torch.Tensor:
        if self.folds_hidden_bias and b_hh is not None:
            b_ih = b_ih + b_hh  # one bias add over [T, B, G*H], one reduction for both bias grads
        return F.linear(x, w_ih, b_ih)

    def _hidden(self, w_hh, b_hh, xp, h):
        """``xp + h W_hh^T`` (+ ``b_hh`` unless folded into ``xp``), as one addmm."""
        if not self.folds_hidden_bias and b_hh is not None:
            xp = xp + b_hh
        return torch.addmm(xp, h, w_hh.t()) if h.ndim == 2 else xp + h @ w_hh.t()

    def zero_state(self, batch_shape: tuple, like: torch.Tensor) -> Any:
        return torch.zeros(*batch_shape, self.hidden_size, dtype=like.dtype, device=like.device)

    # -- the cell protocol (cells.Recurrent) ----------------------------------------------------
    def initial_state(self, batch: int, device: Any = None, dtype: torch.dtype | None = None) -> Any:
        """Zeros ``[batch, hidden_size]`` (the LSTM cell: the pair ``(h, c)``), the state
        ``apply`` starts from when given none, as ``nn.RNNCell``'s."""
        if isinstance(batch, bool) or not isinstance(batch, (int, torch.SymInt)) or batch < 0:
            raise ValueError(f"{self!r}: initial_state needs a batch size (an int >= 0), got {batch!r}")
        zeros = [torch.zeros(batch, self.hidden_size, device=device, dtype=dtype) for _ in self.state_names]
        return tuple(zeros) if len(zeros) > 1 else zeros[0]

    def output(self, state: Any) -> torch.Tensor:
        """The cell's output ``h`` read from its state: the state itself (the LSTM cell: ``h`` of
        ``(h, c)``)."""
        return state[0] if len(self.state_names) > 1 else state

    def apply(self, params, x, state=None, *, key=None, train=False):
        check_tensor(self, "input", x)
        expect(self, x.ndim in (1, 2) and x.shape[-1] == self.input_size,
               f"input [B, {self.input_size}] or [{self.input_size}]", x)
        w_ih, w_hh, b_ih, b_hh = weights = self.weights(params)
        batch = tuple(x.shape[:-1])
        given = {} if state is None else self._state_parts(state, batch)
        check_dtypes(self, x, dict(zip(("weight_ih", "weight_hh", "bias_ih", "bias_hh"), weights[:2 + 2 * self.bias])),
                     given)
        if state is None:
            state = self.zero_state(batch, x)
        new_state, _ = self.step(w_hh, b_hh, self.project(w_ih, b_ih, b_hh, x), state)
        return new_state

    def _state_parts(self, state, batch: tuple) -> dict:
        """The state's tensors by name, checked: a tensor (a tuple ``(h, c)`` for the LSTM
        cell) of shape ``[*batch, hidden_size]``."""
        if len(self.state_names) == 1:
            parts = (state,)
        elif isinstance(state, tuple) and len(state) == len(self.state_names):
            parts = state
        else:
            got = f"a tuple of {len(state)}" if isinstance(state, (tuple, list)) else type(state).__name__
            raise TypeError(f"{self!r}: state must be a tuple ({', '.join(self.state_names)}), got {got}")
        want = (*batch, self.hidden_size)
        for name, s in zip(self.state_names, parts):
            check_tensor(self, f"state {name}", s)
            if tuple(s.shape) != want:
                raise ValueError(f"{self!r}: expected state {name} of shape {list(want)}, got {list(s.shape)}")
        return dict(zip(self.state_names, parts))


def check_nonlinearity(layer: str, value: Any) -> None:
    _check.choice(layer, "nonlinearity", value, ("tanh", "relu"), wrong_kind=ValueError,
                  words={ValueError: "unknown nonlinearity {value!r}; select from 'tanh' or 'relu'"})


@dataclass(frozen=True)
class RNNCell(_Cell):
    """``h' = act(W_ih x + b_ih + W_hh h + b_hh)``, act ``tanh`` or ``relu``."""

    nonlinearity: str = "tanh"

    def __post_init__(self):
        super().__post_init__()
        check_nonlinearity("RNNCell", self.nonlinearity)

    @property
    def kind(self) -> str:
        return f"rnn_{self.nonlinearity}"

    def step(self, w_hh, b_hh, xp, h):
        pre = self._hidden(w_hh, b_hh, xp, h)
        h = torch.tanh(pre) if self.nonlinearity == "tanh" else torch.relu(pre)
        return h, h


@dataclass(frozen=True)
class LSTMCell(_Cell):
    """Gates ``i, f, g, o``: ``c' = f c + i g``, ``h' = o tanh(c')``. State ``(h, c)``."""

    gates: ClassVar[int] = 4
    kind: ClassVar[str] = "lstm"
    state_names: ClassVar[tuple] = ("h", "c")

    def zero_state(self, batch_shape, like):
        z = super().zero_state(batch_shape, like)
        return z, z

    def step(self, w_hh, b_hh, xp, state, w_hr=None):
        h, c = state
        gates = self._hidden(w_hh, b_hh, xp, h)
        i, f, _, o = torch.sigmoid(gates).chunk(4, -1)  # one sigmoid for the three sigmoid gates
        g = torch.tanh(gates.narrow(-1, 2 * self.hidden_size, self.hidden_size))
        c = torch.addcmul(f * c, i, g)
        h = o * torch.tanh(c)
        if w_hr is not None:
            h = F.linear(h, w_hr)
        return (h, c), h


@dataclass(frozen=True)
class GRUCell(_Cell):
    """Gates ``r, z, n``: ``n = tanh(W_in x + b_in + r (W_hn h + b_hn))``, ``h' = (1 - z) n + z h``."""

    gates: ClassVar[int] = 3
    kind: ClassVar[str] = "gru"
    folds_hidden_bias: ClassVar[bool] = False  # b_hn sits inside r * (W_hn h + b_hn)

    def step(self, w_hh, b_hh, xp, h):
        hp = F.linear(h, w_hh, b_hh)
        xr, xz, xn = xp.chunk(3, -1)
        hr, hz, hn = hp.chunk(3, -1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        h = n + z * (h - n)
        return h, h
