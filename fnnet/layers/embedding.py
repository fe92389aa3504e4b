"""Embedding lookup tables, as ``nn.Embedding`` (also from pretrained vectors)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import init as I
from .._values import checked_values
from ..module import Module
from . import _util as U
from ._util import expect


_INDEX_DTYPES = (torch.int64, torch.int32)  # what F.embedding takes


@dataclass(frozen=True)
class Embedding(Module):
    """indices ``[...]`` (int) -> ``[..., embedding_dim]``. Params ``{"weight": [num, dim]}``,
    initialized N(0, 1) with the ``padding_idx`` row zero; that row gets no gradient.

    ``max_norm`` rescales the looked-up rows whose norm exceeds it; the gradient w.r.t. the
    table is the unscaled one, as torch's (which renorms the table outside autograd, then looks
    it up); unlike torch, the params are not
    modified in place (fnnet never mutates params), so the table itself is not renormed.
    ``freeze=True`` stops gradients to the table (``from_pretrained``'s default).
    """

    num_embeddings: int
    embedding_dim: int
    padding_idx: int | None = None
    max_norm: float | None = None
    norm_type: float = 2.0
    scale_grad_by_freq: bool = False
    freeze: bool = False

    def __post_init__(self):
        U.ints(self, "num_embeddings", "embedding_dim")
        if self.padding_idx is not None:
            U.ints(self, "padding_idx", minimum=None)
        U.real(self, "max_norm", 0.0, open_low=True, none=True)
        U.real(self, "norm_type", 0.0, open_low=True)
        U.flags(self, "scale_grad_by_freq", "freeze")
        if self.padding_idx is not None:
            if not -self.num_embeddings <= self.padding_idx < self.num_embeddings:
                raise ValueError(f"Embedding: padding_idx must be within num_embeddings "
                                 f"({self.num_embeddings}), got {self.padding_idx}")
            if self.padding_idx < 0:
                object.__setattr__(self, "padding_idx", self.padding_idx + self.num_embeddings)

    @classmethod
    def from_pretrained(cls, embeddings: torch.Tensor, freeze: bool = True, padding_idx: int | None = None,
                        max_norm: float | None = None, norm_type: float = 2.0,
                        scale_grad_by_freq: bool = False) -> tuple[Embedding, dict]:
        """``(module, params)`` from a ``[num, dim]`` tensor, as ``nn.Embedding.from_pretrained``.

        ``freeze=True`` (the default) stops gradients to the table; to keep it out of the
        optimizer too (weight decay, as torch.optim skips a param that does not require grad),
        build the optimizer with ``optim.freeze(opt, model)``, which freezes the paths
        ``optim.frozen_paths(model)`` reports (every layer whose ``freeze`` field is true)."""
        if embeddings.ndim != 2:
            raise ValueError(f"Embedding.from_pretrained: expected a [num, dim] tensor, got {list(embeddings.shape)}")
        m = cls(embeddings.shape[0], embeddings.shape[1], padding_idx, max_norm, norm_type,
                scale_grad_by_freq, freeze)
        return m, {"weight": embeddings}

    def init(self, key):
        w = I.normal(key, (self.num_embeddings, self.embedding_dim))
        if self.padding_idx is not None:
            w = w.index_fill(0, torch.tensor([self.padding_idx], device=w.device), 0.0)
        return {"weight": w}

    def apply(self, params, indices, *, key=None, train=False):
        expect(self, isinstance(indices, torch.Tensor) and indices.dtype in _INDEX_DTYPES,
               "integer indices (int64 or int32)", indices)
        indices = checked_values(indices, 0, self.num_embeddings - 1,
                                 f"Embedding: indices must be in [0, {self.num_embeddings}) (num_embeddings)",
                                 kernel_checks_on_accelerators=True)
        w = params["weight"]
        if self.freeze:
            w = w.detach()
        out = F.embedding(indices, w, self.padding_idx, None, self.norm_type, self.scale_grad_by_freq)
        if self.max_norm is not None:
            norms = torch.linalg.vector_norm(out.detach(), self.norm_type, dim=-1, keepdim=True)
            scale = torch.where(norms > self.max_norm, self.max_norm / (norms + 1e-7), torch.ones_like(norms))
            # torch renorms the table rows in place outside autograd and then looks them up, so
            # the gradient w.r.t. the table is the plain (unscaled) one: value scaled, grad straight.
            out = out.detach() * scale + (out - out.detach())
        return out
