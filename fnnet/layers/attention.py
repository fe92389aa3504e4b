"""Multi-head attention with ``nn.MultiheadAttention``'s arguments, params and numbers.

The one name clash of the library: attention's second input is torch's ``key``, so here the
PRNG key (dropout on the attention weights) is passed as ``rng=``::

    out, weights = mha.apply(params, query, key, value, key_padding_mask=pad, rng=k, train=True)

Every other module takes ``rng=`` as a synonym of its ``key=``; the transformer layers call
their attention with ``rng=``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import init as I
from .. import random
from ..module import Module
from . import _util as U
from .dropout import dropout as _dropout


def _describe(x) -> str:
    return f"{x.dtype} {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def additive_mask(layer: Module, mask, name: str, dtype: torch.dtype):
    """A mask as the float one torch's ``_canonical_mask`` makes: bool ``True`` -> ``-inf``
    (not attended), ``False`` -> 0; a float mask is added to the scores as it is, so it must
    have the inputs' dtype. Any other dtype is refused by name."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or not (mask.dtype == torch.bool or mask.dtype == dtype):
        raise TypeError(f"{layer!r}: {name} must be a bool tensor (True: not attended) or a float tensor "
                        f"of the inputs' dtype {dtype} (added to the attention scores), got {_describe(mask)}")
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask


@dataclass(frozen=True)
class MultiheadAttention(Module):
    """``nn.MultiheadAttention``: ``softmax(q k^T / sqrt(head_dim) + mask) v`` over ``num_heads``
    heads of ``embed_dim / num_heads`` features, then the output projection.

    Shapes (``E = embed_dim``, ``L`` queries, ``S`` keys, ``N`` batch, ``H = num_heads``):
    query ``[L, N, E]``, key ``[S, N, kdim]``, value ``[S, N, vdim]`` (``[N, L, E]`` ... with
    ``batch_first``; ``[L, E]`` ... unbatched). ``key_padding_mask``: ``[N, S]`` (``[S]``
    unbatched); ``attn_mask``: ``[L, S]`` or ``[N * H, L, S]``. A bool mask's ``True`` is not
    attended; a float mask is added to the scores. Returns ``(attn_output [L, N, E],
    attn_weights)``: weights ``[N, L, S]`` averaged over heads (``[N, H, L, S]`` with
    ``average_attn_weights=False``), or ``None`` with ``need_weights=False``.

    Params as torch's: ``in_proj_weight [3E, E]`` (or ``q_proj_weight [E, E]``,
    ``k_proj_weight [E, kdim]``, ``v_proj_weight [E, vdim]`` when kdim or vdim differ from E),
    ``in_proj_bias [3E]``, ``bias_k``/``bias_v [1, 1, E]`` (``add_bias_kv``),
    ``out_proj.weight [E, E]``, ``out_proj.bias [E]``.

    With ``need_weights=False`` the attention is ``F.scaled_dot_product_attention``, as in
    torch's module (the fused kernels on a GPU; ``is_causal`` reaches it as a hint). Dropout
    (``train=True``, ``dropout > 0``) is drawn from ``rng`` and applied to the softmax
    weights explicitly, since SDPA's dropout reads torch's global RNG: the mask has
    torch's distribution, not its random stream. A fully masked row is NaN on the weights
    path and 0 on the SDPA path, as in torch.
    """

    embed_dim: int
    num_heads: int
    dropout: float = 0.0
    bias: bool = True
    add_bias_kv: bool = False
    add_zero_attn: bool = False
    kdim: int | None = None
    vdim: int | None = None
    batch_first: bool = False

    def __post_init__(self):
        U.ints(self, "embed_dim", "num_heads")
        U.real(self, "dropout", 0.0, 1.0)
        U.flags(self, "bias", "add_bias_kv", "add_zero_attn", "batch_first")
        for name in ("kdim", "vdim"):
            if getattr(self, name) is not None:
                U.ints(self, name)
        if self.embed_dim % self.num_heads:
            raise ValueError(f"MultiheadAttention: embed_dim ({self.embed_dim}) must be divisible by "
                             f"num_heads ({self.num_heads})")

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def _kdim(self) -> int:
        return self.embed_dim if self.kdim is None else self.kdim

    @property
    def _vdim(self) -> int:
        return self.embed_dim if self.vdim is None else self.vdim

    @property
    def packed(self) -> bool:
        """One ``in_proj_weight`` (torch's ``_qkv_same_embed_dim``)."""
        return self._kdim == self.embed_dim and self._vdim == self.embed_dim

    def init(self, key):
        """torch's ``_reset_parameters``: xavier-uniform input projections, zero biases,
        xavier-normal ``bias_k``/``bias_v``, and the output projection's weight as
        ``nn.Linear``'s."""
        e = self.embed_dim
        k_in, k_q, k_k, k_v, k_out, k_bk, k_bv = random.split(key, 7)
        p = {}
        if self.packed:
            p["in_proj_weight"] = I.xavier_uniform(k_in, (3 * e, e))
        else:
            p["q_proj_weight"] = I.xavier_uniform(k_q, (e, e))
            p["k_proj_weight"] = I.xavier_uniform(k_k, (e, self._kdim))
            p["v_proj_weight"] = I.xavier_uniform(k_v, (e, self._vdim))
        if self.bias:
            p["in_proj_bias"] = I.zeros(key, (3 * e,))
        if self.add_bias_kv:
            p["bias_k"] = I.xavier_normal(k_bk, (1, 1, e))
            p["bias_v"] = I.xavier_normal(k_bv, (1, 1, e))
        p["out_proj"] = {"weight": I.torch_default(k_out, (e, e))}
        if self.bias:
            p["out_proj"]["bias"] = I.zeros(key, (e,))
        return p

    # -- checks --------------------------------------------------------------------------------
    def _check_inputs(self, query, key, value, key_padding_mask, attn_mask, is_causal):
        e, kd, vd = self.embed_dim, self._kdim, self._vdim
        layout = "[N, L, E]" if self.batch_first else "[L, N, E]"
        ok = isinstance(query, torch.Tensor) and query.ndim in (2, 3) and query.shape[-1] == e \
            and query.is_floating_point()
        U.expect(self, ok, f"query {layout} or [L, E] (unbatched), floating point, with E={e}", query)
        batched = query.ndim == 3
        for name, x, d in (("key", key, kd), ("value", value, vd)):
            ok = isinstance(x, torch.Tensor) and x.ndim == query.ndim and x.shape[-1] == d
            if not ok:
                raise ValueError(f"{self!r}: expected {name} of rank {query.ndim} (as the query) with last "
                                 f"dim {d}, got {_describe(x)}")
            if x.dtype != query.dtype:
                raise TypeError(f"{self!r}: {name} must have the query's dtype {query.dtype}, got {x.dtype}")
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(f"{self!r}: key and value must have the same sequence and batch sizes, got "
                             f"key {list(key.shape)} and value {list(value.shape)}")
        b = 0 if self.batch_first else 1
        if batched and key.shape[b] != query.shape[b]:
            raise ValueError(f"{self!r}: query and key must have the same batch size (dim {b}), got query "
                             f"{list(query.shape)} and key {list(key.shape)}")
        seq = 1 if self.batch_first and batched else 0
        L, S = query.shape[seq], key.shape[seq]
        n = query.shape[b] if batched else 1
        if key_padding_mask is not None:
            want = (n, S) if batched else (S,)
            if not isinstance(key_padding_mask, torch.Tensor) or tuple(key_padding_mask.shape) != want:
                raise ValueError(f"{self!r}: key_padding_mask must have shape {list(want)} "
                                 f"({'[N, S]' if batched else '[S]'}), got {_describe(key_padding_mask)}")
        if attn_mask is not None:
            heads = n * self.num_heads
            if not isinstance(attn_mask, torch.Tensor) or tuple(attn_mask.shape) not in ((L, S), (heads, L, S)):
                raise ValueError(f"{self!r}: attn_mask must have shape [L, S] = {[L, S]} or "
                                 f"[N * num_heads, L, S] = {[heads, L, S]}, got {_describe(attn_mask)}")
        if is_causal and attn_mask is None:
            raise ValueError(f"{self!r}: is_causal is a hint that attn_mask is the causal mask: pass the "
                             f"mask too (Transformer.generate_square_subsequent_mask(L))")
        key_padding_mask = additive_mask(self, key_padding_mask, "key_padding_mask", query.dtype)
        attn_mask = additive_mask(self, attn_mask, "attn_mask", query.dtype)
        return batched, key_padding_mask, attn_mask

    # -- the computation -----------------------------------------------------------------------
    def _project(self, params, query, key, value):
        """q, k, v in the inputs' own layout (one matmul for self-attention, one for key and
        value when they are the same tensor, as torch's ``_in_projection_packed``)."""
        e = self.embed_dim
        b = params["in_proj_bias"] if self.bias else None
        bq, bk, bv = b.chunk(3) if b is not None else (None, None, None)
        if not self.packed:
            return (F.linear(query, params["q_proj_weight"], bq), F.linear(key, params["k_proj_weight"], bk),
                    F.linear(value, params["v_proj_weight"], bv))
        w = params["in_proj_weight"]
        if key is value and query is key:
            return F.linear(query, w, b).chunk(3, dim=-1)
        if key is value:
            w_q, w_kv = w.split([e, 2 * e])
            b_q, b_kv = b.split([e, 2 * e]) if b is not None else (None, None)
            k, v = F.linear(key, w_kv, b_kv).chunk(2, dim=-1)
            return F.linear(query, w_q, b_q), k, v
        w_q, w_k, w_v = w.chunk(3)
        return F.linear(query, w_q, bq), F.linear(key, w_k, bk), F.linear(value, w_v, bv)

    def apply(self, params, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
              average_attn_weights=True, is_causal=False, *, rng=None, train=False):
        """``(attn_output, attn_weights or None)`` as ``nn.MultiheadAttention.forward``; ``rng``:
        the PRNG key for dropout (``train=True`` and ``dropout > 0``).

        The projections run in the inputs' own layout (contiguous: one matmul each), the
        attention on ``[N, H, L, head_dim]`` views: torch's numbers to rounding, without its
        transposes to ``[L, N, E]``."""
        batched, key_padding_mask, attn_mask = self._check_inputs(
            query, key, value, key_padding_mask, attn_mask, is_causal)
        p_drop = self.dropout if train else 0.0
        if p_drop > 0.0:
            U.dropout_inputs(self, query, rng)
        e, h, hd = self.embed_dim, self.num_heads, self.head_dim
        seq_first = batched and not self.batch_first

        def heads(t):  # [L, N, E] / [N, L, E] / [L, E] -> [N, H, L, head_dim] (a view)
            t = t.unflatten(-1, (h, hd))
            if seq_first:
                return t.permute(1, 2, 0, 3)
            return (t if batched else t.unsqueeze(0)).transpose(1, 2)

        q, k, v = (heads(t) for t in self._project(params, query, key, value))
        n, _, L, _ = q.shape
        S = k.shape[2]

        # the causal hint replaces the mask only where torch's module lets it: SDPA, no padding mask
        sdpa = not need_weights and p_drop == 0.0
        sdpa_causal = bool(is_causal) and key_padding_mask is None and sdpa
        if sdpa_causal:
            attn_mask = None
        if attn_mask is not None:  # [L, S] or [N * H, L, S] -> broadcastable to [N, H, L, S]
            attn_mask = attn_mask.view(1, 1, L, S) if attn_mask.ndim == 2 else attn_mask.view(n, h, L, S)
        if key_padding_mask is not None:  # [N, S] -> [N, 1, 1, S]
            key_padding_mask = key_padding_mask.view(n, 1, 1, S)
        extra = []  # keys and values attended besides the inputs': bias_k/bias_v, then a zero one
        if self.add_bias_kv:
            extra.append((params["bias_k"].view(1, h, 1, hd).expand(n, h, 1, hd),
                          params["bias_v"].view(1, h, 1, hd).expand(n, h, 1, hd)))
        if self.add_zero_attn:
            zeros = torch.zeros((n, h, 1, hd), dtype=k.dtype, device=k.device)
            extra.append((zeros, zeros))
        if extra:
            k = torch.cat([k, *(bk for bk, _ in extra)], dim=2)
            v = torch.cat([v, *(bv for _, bv in extra)], dim=2)
            attn_mask = F.pad(attn_mask, (0, len(extra))) if attn_mask is not None else None
            key_padding_mask = F.pad(key_padding_mask, (0, len(extra))) if key_padding_mask is not None else None
        mask = attn_mask
        if key_padding_mask is not None:  # merged as torch merges them: added
            mask = key_padding_mask if mask is None else mask + key_padding_mask

        if sdpa:
            out = F.scaled_dot_product_attention(q, k, v, mask, 0.0, sdpa_causal)
            weights = None
        else:
            scores = torch.matmul(q * math.sqrt(1.0 / float(hd)), k.transpose(-2, -1))
            weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            if p_drop > 0.0:
                weights = _dropout(weights, p_drop, rng)
            out = torch.matmul(weights, v)
        # [N, H, L, head_dim] -> the query's layout, then the output projection
        out = out.permute(2, 0, 1, 3) if seq_first else out.transpose(1, 2)
        shape = out.shape[:2]
        b_out = params["out_proj"]["bias"] if self.bias else None
        out = F.linear(out.reshape(-1, e), params["out_proj"]["weight"], b_out)
        out = out.view(*shape, e) if batched else out.view(L, e)
        if not need_weights:
            return out, None
        if average_attn_weights:
            weights = weights.mean(dim=1)
        return out, weights if batched else weights.squeeze(0)
