"""The transformer family with ``torch.nn``'s names, arguments, params and numbers:
``TransformerEncoderLayer``, ``TransformerEncoder``, ``TransformerDecoderLayer``,
``TransformerDecoder``, ``Transformer``.

Each layer's PRNG key is ``key=`` (as every fnnet module's); a layer splits it for its
attention (passed on as ``rng=``, attention's ``key`` being its input) and its dropouts.

Two places where torch's module computes something its own slow path would not, and fnnet
follows torch's module:

- ``TransformerEncoder`` in inference (``train=False``) with a ``src_key_padding_mask`` and no
  ``mask`` runs its layers on a nested tensor when the layer allows torch's fast path
  (``enable_nested_tensor``, ``batch_first``, post-norm, biases, relu/gelu, an even number of
  heads): the padded positions come out as zeros (then through ``norm``). fnnet zeroes them
  too, in the same cases. With ``mask_check=True`` torch does so only when every row's padding
  is at its end (otherwise it takes the slow path: no zeros); with ``mask_check=False`` the
  nested tensor holds each row's first ``count(not padded)`` positions, wherever the padding
  is. fnnet reproduces both, without a data-dependent branch (a ``torch.where``), so it
  compiles.
- ``is_causal=None`` (the encoder's and decoder's default): torch compares the mask with the
  causal mask to decide whether to pass the hint on; fnnet passes ``False`` and attends
  through the mask, which gives the same numbers without reading the mask's values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from .. import _check
from .. import init as I
from .. import random
from .. import tree as T
from ..module import Module
from . import _util as U
from .attention import MultiheadAttention, additive_mask
from .dropout import dropout as _dropout
from .linear import Linear
from .norm import LayerNorm

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def _child(**kw) -> Any:
    """A sub-module built in ``__post_init__`` from the hyperparameters: a field (so it names
    its params) but not an argument, and not part of equality (the hyperparameters are)."""
    return field(init=False, repr=False, compare=False, **kw)


def _keys(key, n: int) -> list:
    return [None] * n if key is None else list(random.split(key, n))


def _check_activation(layer: Module) -> None:
    a = layer.activation
    if isinstance(a, str):
        if a not in _ACTIVATIONS:
            raise ValueError(f"{type(layer).__name__}: activation must be 'relu', 'gelu' or a callable, got {a!r}")
    elif not callable(a):
        raise TypeError(f"{type(layer).__name__}: activation must be 'relu', 'gelu' or a callable, "
                        f"got {type(a).__name__}")


def _activate(layer: Module, params: dict, x: torch.Tensor) -> torch.Tensor:
    a = layer.activation
    if isinstance(a, str):
        return _ACTIVATIONS[a](x)
    if isinstance(a, Module):
        return a.apply(params.get("activation", {}), x)
    return a(x)


def _relu_or_gelu(a: Any) -> bool:
    """What torch's fast path recognizes (``activation_relu_or_gelu``)."""
    return (a in ("relu", "gelu") or a is F.relu or a is F.gelu
            or isinstance(a, (torch.nn.ReLU, torch.nn.GELU)))


def _check_src(layer: Module, x: Any, name: str, d_model: int) -> None:
    ok = isinstance(x, torch.Tensor) and x.ndim in (2, 3) and x.shape[-1] == d_model and x.is_floating_point()
    if not ok:
        got = f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{type(layer).__name__}: expected {name} [S, N, {d_model}] ([N, S, {d_model}] with "
                         f"batch_first, [S, {d_model}] unbatched), floating point, got {got}")


def _check_masks(layer: Module, x: torch.Tensor, mem: torch.Tensor, masks: tuple) -> None:
    """Each ``(name, mask, padding)`` under the layer's argument names: ``[L, S]`` or per head
    ``[N * nhead, L, S]`` for an attention mask, ``[N, S]`` (``[S]`` unbatched) for a padding
    mask; bool, or float of the input's dtype."""
    batched = x.ndim == 3
    seq = 1 if layer.batch_first and batched else 0
    L, S = x.shape[seq], mem.shape[seq]
    n = x.shape[0 if layer.batch_first else 1] if batched else 1
    for name, m, padding in masks:
        if m is None:
            continue
        if padding:
            shapes, what = [(n, S) if batched else (S,)], "[N, S]" if batched else "[S]"
        else:
            shapes, what = [(L, S), (n * layer.nhead, L, S)], "[L, S] or [N * nhead, L, S]"
        ok = isinstance(m, torch.Tensor) and tuple(m.shape) in shapes
        if ok and m.dtype not in (torch.bool, x.dtype):
            raise TypeError(f"{layer!r}: {name} must be bool (True: not attended) or {x.dtype} (the input's dtype, "
                            f"added to the scores), got {m.dtype}")
        if not ok:
            got = list(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"{layer!r}: {name} must have shape {what} = {' or '.join(str(list(s)) for s in shapes)}, "
                             f"got {got}")


@dataclass(frozen=True)
class _Layer(Module):
    """Hyperparameters shared by the encoder and decoder layers (torch's, by name and order)."""

    d_model: int
    nhead: int
    dim_feedforward: int = 2048
    dropout: float = 0.1
    activation: Any = "relu"
    layer_norm_eps: float = 1e-5
    batch_first: bool = False
    norm_first: bool = False
    bias: bool = True

    def _check_hyperparameters(self) -> None:
        U.ints(self, "d_model", "nhead", "dim_feedforward")
        U.real(self, "dropout", 0.0, 1.0)
        U.real(self, "layer_norm_eps", 0.0, open_low=True)
        U.flags(self, "batch_first", "norm_first", "bias")
        _check_activation(self)
        if self.d_model % self.nhead:
            raise ValueError(f"{type(self).__name__}: d_model ({self.d_model}) must be divisible by nhead "
                             f"({self.nhead})")

    def _attention(self) -> MultiheadAttention:
        return MultiheadAttention(self.d_model, self.nhead, dropout=self.dropout, bias=self.bias,
                                  batch_first=self.batch_first)

    def _norm(self) -> LayerNorm:
        return LayerNorm(self.d_model, eps=self.layer_norm_eps, bias=self.bias)

    def _build_feedforward(self) -> None:
        object.__setattr__(self, "linear1", Linear(self.d_model, self.dim_feedforward, bias=self.bias))
        object.__setattr__(self, "linear2", Linear(self.dim_feedforward, self.d_model, bias=self.bias))

    def _drop(self, x, key, train):
        return _dropout(x, self.dropout, key) if train and self.dropout > 0.0 else x

    def _ff_block(self, params, x, k_mid, k_out, train):
        h = self._drop(_activate(self, params, self.linear1.apply(params["linear1"], x)), k_mid, train)
        return self._drop(self.linear2.apply(params["linear2"], h), k_out, train)

    def _attend(self, attn, params, x, mem, mask, pad, is_causal, k_attn, k_drop, train):
        y = attn.apply(params, x, mem, mem, attn_mask=mask, key_padding_mask=pad, is_causal=is_causal,
                       need_weights=False, rng=k_attn, train=train)[0]
        return self._drop(y, k_drop, train)


@dataclass(frozen=True)
class TransformerEncoderLayer(_Layer):
    """``nn.TransformerEncoderLayer``: self-attention then a feed-forward block, each with a
    residual connection, dropout and a LayerNorm (after the sum, or before the block with
    ``norm_first``). src: ``[S, N, E]`` (``[N, S, E]`` with ``batch_first``, ``[S, E]``
    unbatched) -> the same shape. ``src_mask``: ``[S, S]`` or ``[N * nhead, S, S]``;
    ``src_key_padding_mask``: ``[N, S]`` (bool ``True`` or float ``-inf``: padding).
    Params: ``self_attn``, ``linear1``, ``linear2``, ``norm1``, ``norm2`` (torch's names).
    ``activation``: ``"relu"``, ``"gelu"`` or a function."""

    self_attn: MultiheadAttention = _child()
    linear1: Linear = _child()
    linear2: Linear = _child()
    norm1: LayerNorm = _child()
    norm2: LayerNorm = _child()

    def __post_init__(self):
        self._check_hyperparameters()
        object.__setattr__(self, "self_attn", self._attention())
        self._build_feedforward()
        object.__setattr__(self, "norm1", self._norm())
        object.__setattr__(self, "norm2", self._norm())

    def apply(self, params, src, src_mask=None, src_key_padding_mask=None, is_causal=False, *,
              key=None, train=False):
        _check_src(self, src, "src", self.d_model)
        _check_masks(self, src, src, (("src_mask", src_mask, False),
                                      ("src_key_padding_mask", src_key_padding_mask, True)))
        if train and self.dropout > 0.0:
            U.dropout_inputs(self, src, key)
        k_attn, k1, k_mid, k2 = _keys(key, 4)
        n1 = lambda x: self.norm1.apply(params["norm1"], x)
        n2 = lambda x: self.norm2.apply(params["norm2"], x)

        def sa(x):
            return self._attend(self.self_attn, params["self_attn"], x, x, src_mask, src_key_padding_mask,
                                is_causal, k_attn, k1, train)

        x = src
        if self.norm_first:
            x = x + sa(n1(x))
            return x + self._ff_block(params, n2(x), k_mid, k2, train)
        x = n1(x + sa(x))
        return n2(x + self._ff_block(params, x, k_mid, k2, train))


@dataclass(frozen=True)
class TransformerDecoderLayer(_Layer):
    """``nn.TransformerDecoderLayer``: self-attention over ``tgt``, attention from ``tgt`` to
    ``memory``, then a feed-forward block; residuals, dropout and LayerNorms as the encoder
    layer's. tgt: ``[T, N, E]``, memory: ``[S, N, E]`` (batch first with ``batch_first``;
    unbatched ``[T, E]``, ``[S, E]``) -> ``tgt``'s shape. ``tgt_mask``: ``[T, T]``,
    ``memory_mask``: ``[T, S]`` (or per head ``[N * nhead, ., .]``); padding masks ``[N, T]``,
    ``[N, S]``. Params: ``self_attn``, ``multihead_attn``, ``linear1``, ``linear2``, ``norm1``,
    ``norm2``, ``norm3``."""

    self_attn: MultiheadAttention = _child()
    multihead_attn: MultiheadAttention = _child()
    linear1: Linear = _child()
    linear2: Linear = _child()
    norm1: LayerNorm = _child()
    norm2: LayerNorm = _child()
    norm3: LayerNorm = _child()

    def __post_init__(self):
        self._check_hyperparameters()
        object.__setattr__(self, "self_attn", self._attention())
        object.__setattr__(self, "multihead_attn", self._attention())
        self._build_feedforward()
        for name in ("norm1", "norm2", "norm3"):
            object.__setattr__(self, name, self._norm())

    def apply(self, params, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
              memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False, *, key=None,
              train=False):
        _check_src(self, tgt, "tgt", self.d_model)
        _check_src(self, memory, "memory", self.d_model)
        if memory.ndim != tgt.ndim:
            raise ValueError(f"{self!r}: tgt and memory must both be batched (3-D) or both unbatched (2-D), got "
                             f"tgt {list(tgt.shape)} and memory {list(memory.shape)}")
        _check_masks(self, tgt, tgt, (("tgt_mask", tgt_mask, False),
                                      ("tgt_key_padding_mask", tgt_key_padding_mask, True)))
        _check_masks(self, tgt, memory, (("memory_mask", memory_mask, False),
                                         ("memory_key_padding_mask", memory_key_padding_mask, True)))
        if train and self.dropout > 0.0:
            U.dropout_inputs(self, tgt, key)
        k_sa, k1, k_mha, k2, k_mid, k3 = _keys(key, 6)
        norm = {i: (lambda x, i=i: getattr(self, f"norm{i}").apply(params[f"norm{i}"], x)) for i in (1, 2, 3)}

        def sa(x):
            return self._attend(self.self_attn, params["self_attn"], x, x, tgt_mask, tgt_key_padding_mask,
                                bool(tgt_is_causal), k_sa, k1, train)

        def mha(x):
            return self._attend(self.multihead_attn, params["multihead_attn"], x, memory, memory_mask,
                                memory_key_padding_mask, memory_is_causal, k_mha, k2, train)

        x = tgt
        if self.norm_first:
            x = x + sa(norm[1](x))
            x = x + mha(norm[2](x))
            return x + self._ff_block(params, norm[3](x), k_mid, k3, train)
        x = norm[1](x + sa(x))
        x = norm[2](x + mha(x))
        return norm[3](x + self._ff_block(params, x, k_mid, k3, train))


# -- stacks ---------------------------------------------------------------------------------------

def _from_torch(m: Any) -> Any:
    """The fnnet twin of a torch.nn transformer layer, stack or LayerNorm (its hyperparameters; the
    weights come with ``params_from_module``), so torch's constructor arguments work as they
    are; anything else is returned unchanged."""
    if isinstance(m, (torch.nn.TransformerEncoderLayer, torch.nn.TransformerDecoderLayer)):
        a = m.activation
        a = "relu" if a is F.relu else "gelu" if a is F.gelu else a
        cls = TransformerEncoderLayer if isinstance(m, torch.nn.TransformerEncoderLayer) else TransformerDecoderLayer
        return cls(m.self_attn.embed_dim, m.self_attn.num_heads, m.linear1.out_features, m.dropout.p, a,
                   m.norm1.eps, m.self_attn.batch_first, m.norm_first, m.linear1.bias is not None)
    if isinstance(m, torch.nn.LayerNorm):
        return LayerNorm(tuple(m.normalized_shape), m.eps, m.elementwise_affine, m.bias is not None)
    if isinstance(m, torch.nn.TransformerEncoder):
        return TransformerEncoder(m.layers[0], m.num_layers, m.norm, m.enable_nested_tensor,
                                  getattr(m, "mask_check", True))
    if isinstance(m, torch.nn.TransformerDecoder):
        return TransformerDecoder(m.layers[0], m.num_layers, m.norm)
    return m


def _stack(obj: Any, layer: Any, num_layers: Any, norm: Any, what: str) -> None:
    name = type(obj).__name__
    layer, norm = _from_torch(layer), _from_torch(norm)
    if not isinstance(layer, Module):
        raise TypeError(f"{name}: {what} must be an fnnet Module (a {what.replace('_', ' ').title().replace(' ', '')} "
                        f"or your own), got {type(layer).__name__}")
    num_layers = _check.integer(name, "num_layers", num_layers, 1)
    if norm is not None and not isinstance(norm, Module):
        raise TypeError(f"{name}: norm must be None or an fnnet Module (a LayerNorm), got {type(norm).__name__}")
    object.__setattr__(obj, "layers", (layer,) * num_layers)  # one description, num_layers sets of params
    object.__setattr__(obj, "num_layers", num_layers)
    object.__setattr__(obj, "norm", norm)


def _recording(x: torch.Tensor, params: dict) -> bool:
    """Autograd records this call (torch's fast paths step aside then): grad mode is on and the
    input or a param of the first layer requires grad (also inside ``fn.grad``)."""
    return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in T.leaves(params)))


@dataclass(frozen=True, init=False)
class TransformerEncoder(Module):
    """``nn.TransformerEncoder``: ``num_layers`` copies of ``encoder_layer`` (each with its own
    params, ``layers.0``, ``layers.1``, ...), then ``norm`` if given. src as the layer's.
    ``encoder_layer`` and ``norm`` may be fnnet modules or torch.nn's (their hyperparameters are
    read). See the module docstring for inference with a padding mask (zeros at padding)."""

    layers: tuple
    num_layers: int
    norm: Any = None
    enable_nested_tensor: bool = True
    mask_check: bool = True

    def __init__(self, encoder_layer, num_layers, norm=None, enable_nested_tensor=True, mask_check=True):
        _stack(self, encoder_layer, num_layers, norm, "encoder_layer")
        object.__setattr__(self, "enable_nested_tensor", enable_nested_tensor)
        object.__setattr__(self, "mask_check", mask_check)
        U.flags(self, "enable_nested_tensor", "mask_check")

    @property
    def use_nested_tensor(self) -> bool:
        """torch's construction-time conditions for running its layers on a nested tensor."""
        layer = self.layers[0]
        return (self.enable_nested_tensor and isinstance(layer, TransformerEncoderLayer) and not layer.norm_first
                and layer.batch_first and layer.bias and _relu_or_gelu(layer.activation) and layer.nhead % 2 == 0)

    def apply(self, params, src, mask=None, src_key_padding_mask=None, is_causal=None, *, key=None, train=False):
        if not isinstance(src, torch.Tensor) or not src.is_floating_point():
            raise ValueError(f"TransformerEncoder: expected src to be a floating-point tensor, got "
                             f"{type(src).__name__ if not isinstance(src, torch.Tensor) else src.dtype}")
        pad = additive_mask(self, src_key_padding_mask, "src_key_padding_mask", src.dtype)
        mask = additive_mask(self, mask, "mask", src.dtype)
        nested = (not train and self.use_nested_tensor and src.ndim == 3 and pad is not None and mask is None
                  and not _recording(src, params["layers"]["0"]))
        zero = None
        if nested:
            s = src.shape[1]
            if tuple(pad.shape) != (src.shape[0], s):
                raise ValueError(f"TransformerEncoder: src_key_padding_mask must have shape {[src.shape[0], s]} "
                                 f"([N, S]), got {list(pad.shape)}")
            real = pad == 0  # torch's nested tensor: logical_not of the (float) mask
            first = torch.arange(s, device=src.device) < real.sum(-1, keepdim=True)  # each row's first tokens
            if self.mask_check:  # only when every row's padding is at its end (else the slow path)
                use = (first == real).all()
                zero = use & ~first
                pad = torch.where(use, additive_mask(self, ~first, "", src.dtype), pad)
            else:
                zero = ~first
                pad = additive_mask(self, ~first, "", src.dtype)
        keys = _keys(key, self.num_layers)
        out = src
        for i, (layer, k) in enumerate(zip(self.layers, keys)):
            out = layer.apply(params["layers"][str(i)], out, src_mask=mask, src_key_padding_mask=pad,
                              is_causal=bool(is_causal), key=k, train=train)
        if zero is not None:
            out = out.masked_fill(zero.unsqueeze(-1), 0.0)
        if self.norm is not None:
            out = self.norm.apply(params.get("norm", {}), out)
        return out


@dataclass(frozen=True, init=False)
class TransformerDecoder(Module):
    """``nn.TransformerDecoder``: ``num_layers`` copies of ``decoder_layer`` (params
    ``layers.0``, ...), then ``norm`` if given. tgt and memory as the layer's."""

    layers: tuple
    num_layers: int
    norm: Any = None

    def __init__(self, decoder_layer, num_layers, norm=None):
        _stack(self, decoder_layer, num_layers, norm, "decoder_layer")

    def apply(self, params, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
              memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False, *, key=None, train=False):
        keys = _keys(key, self.num_layers)
        out = tgt
        for i, (layer, k) in enumerate(zip(self.layers, keys)):
            out = layer.apply(params["layers"][str(i)], out, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                              tgt_key_padding_mask=tgt_key_padding_mask,
                              memory_key_padding_mask=memory_key_padding_mask,
                              tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal, key=k,
                              train=train)
        if self.norm is not None:
            out = self.norm.apply(params.get("norm", {}), out)
        return out


@dataclass(frozen=True, init=False)
class Transformer(Module):
    """``nn.Transformer``: an encoder over ``src`` and a decoder over ``tgt`` attending to the
    encoder's output. src ``[S, N, E]``, tgt ``[T, N, E]`` (batch first with ``batch_first``;
    ``[S, E]``, ``[T, E]`` unbatched) -> ``[T, N, E]``. Params ``encoder.layers.0...``,
    ``encoder.norm``, ``decoder...`` as torch's; every weight with more than one dim is
    re-drawn xavier-uniform, as torch's ``_reset_parameters`` does."""

    encoder: Module
    decoder: Module
    d_model: int = 512
    nhead: int = 8
    batch_first: bool = False

    def __init__(self, d_model=512, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048,
                 dropout=0.1, activation="relu", custom_encoder=None, custom_decoder=None, layer_norm_eps=1e-5,
                 batch_first=False, norm_first=False, bias=True):
        object.__setattr__(self, "d_model", d_model)
        object.__setattr__(self, "nhead", nhead)
        object.__setattr__(self, "batch_first", batch_first)
        U.ints(self, "d_model", "nhead")
        U.flags(self, "batch_first")
        if d_model % nhead:
            raise ValueError(f"Transformer: d_model ({d_model}) must be divisible by nhead ({nhead})")
        args = (d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first, norm_first, bias)
        if custom_encoder is not None:
            encoder = _from_torch(custom_encoder)
        else:
            encoder = TransformerEncoder(TransformerEncoderLayer(*args), num_encoder_layers,
                                         LayerNorm(d_model, eps=layer_norm_eps, bias=bias))
        if custom_decoder is not None:
            decoder = _from_torch(custom_decoder)
        else:
            decoder = TransformerDecoder(TransformerDecoderLayer(*args), num_decoder_layers,
                                         LayerNorm(d_model, eps=layer_norm_eps, bias=bias))
        for name, m in (("custom_encoder", encoder), ("custom_decoder", decoder)):
            if not isinstance(m, Module):
                raise TypeError(f"Transformer: {name} must be an fnnet Module, got {type(m).__name__}")
        object.__setattr__(self, "encoder", encoder)
        object.__setattr__(self, "decoder", decoder)

    def init(self, key):
        k_children, k_xavier = random.split(key)
        params = super().init(k_children)
        matrices = [p for p, x in T.flatten_with_paths(params) if x.ndim > 1]
        keys = dict(zip(matrices, random.split(k_xavier, max(len(matrices), 1))))
        return T.map_with_path(lambda p, x: I.xavier_uniform(keys[p], x.shape, dtype=x.dtype) if p in keys else x,
                               params)

    @staticmethod
    def generate_square_subsequent_mask(sz: int, device=None, dtype=None) -> torch.Tensor:
        """``[sz, sz]``: 0 on and below the diagonal, ``-inf`` above (position i attends to
        positions <= i), as torch's."""
        sz = _check.integer("Transformer.generate_square_subsequent_mask", "sz", sz, 0)
        return torch.triu(torch.full((sz, sz), float("-inf"), dtype=dtype, device=device), diagonal=1)

    def apply(self, params, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None,
              tgt_key_padding_mask=None, memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None,
              memory_is_causal=False, *, key=None, train=False):
        for name, x in (("src", src), ("tgt", tgt)):
            if not isinstance(x, torch.Tensor) or x.ndim not in (2, 3) or x.shape[-1] != self.d_model:
                got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise ValueError(f"Transformer: expected {name} with {self.d_model} (d_model) features in its last "
                                 f"dim, batched (3-D) or not (2-D), got {got}")
        if src.ndim != tgt.ndim:
            raise ValueError(f"Transformer: src and tgt must both be batched or both unbatched, got src "
                             f"{list(src.shape)} and tgt {list(tgt.shape)}")
        b = 0 if self.batch_first else 1
        if src.ndim == 3 and src.shape[b] != tgt.shape[b]:
            raise ValueError(f"Transformer: src and tgt must have the same batch size (dim {b}), got src "
                             f"{list(src.shape)} and tgt {list(tgt.shape)}")
        k_enc, k_dec = _keys(key, 2)
        memory = self.encoder.apply(params["encoder"], src, mask=src_mask, src_key_padding_mask=src_key_padding_mask,
                                    is_causal=src_is_causal, key=k_enc, train=train)
        return self.decoder.apply(params["decoder"], tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                                  tgt_key_padding_mask=tgt_key_padding_mask,
                                  memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                                  memory_is_causal=memory_is_causal, key=k_dec, train=train)
