"""Muon (momentum orthogonalized by Newton–Schulz), as ``torch.optim.Muon``."""

from __future__ import annotations

import math

import torch

from . import _check as C
from .. import tree as T
from .base import GradientTransformation, optimizer

# torch.optim._muon's defaults: the quintic's coefficients, its number of steps, the norm's floor
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
EPS = 1e-7
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")


def newton_schulz(g: torch.Tensor, coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                  steps: int = NS_STEPS, eps: float = EPS) -> torch.Tensor:
    """An approximately orthogonal matrix with ``g``'s singular vectors (``U S' V^T``, the
    ``S'`` near 1), by ``steps`` iterations of the quintic ``X <- a X + (b A + c A^2) X``,
    ``A = X X^T``, on ``X = g / max(||g||_F, eps)`` in bfloat16 (torch's
    ``_zeropower_via_newtonschulz``, op for op; a tall matrix is iterated transposed)."""
    a, b, c = coefficients
    x = g.bfloat16()
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def _lr_ratio(adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch's ``_adjust_lr``: ``sqrt(max(1, A / B))`` ("original", Keller Jordan's) or
    ``0.2 sqrt(max(A, B))`` ("match_rms_adamw", Moonshot's: the update's RMS of AdamW's)."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1, rows / cols))
    return 0.2 * math.sqrt(max(rows, cols))


def muon(lr=1e-3, weight_decay: float = 0.1, momentum: float = 0.95, nesterov: bool = True,
         ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = EPS,
         ns_steps: int = NS_STEPS, adjust_lr_fn: str | None = None) -> GradientTransformation:
    """Muon (Jordan et al., 2024), as ``torch.optim.Muon``: for matrices only.

    ``b = lerp(b, g, 1 - momentum)``; the direction ``u = lerp(g, b, momentum)`` (Nesterov) or
    ``b``, orthogonalized, ``O = newton_schulz(u)``; ``p -= lr wd p`` (decoupled decay), then
    ``p -= lr ratio O`` with ``ratio`` from the matrix's shape ``[A, B]`` (``adjust_lr_fn``:
    ``None``/``"original"`` ``sqrt(max(1, A / B))``, ``"match_rms_adamw"`` ``0.2 sqrt(max(A, B))``).
    Every param must be 2-D, as torch requires (use ``multi_transform`` to give biases and
    embeddings another optimizer); ``init`` names any other. State: ``momentum_buffer``.
    ``ns_coefficients``, ``ns_steps``, ``eps``, ``nesterov`` and ``adjust_lr_fn`` are fixed at
    construction; ``lr``, ``momentum`` and ``weight_decay`` are held hyperparameters.
    """
    C.lr("muon", lr)
    C.nonneg("muon", "weight_decay", weight_decay)
    C.nonneg("muon", "momentum", momentum)
    C.flag("muon", "nesterov", nesterov)
    if not isinstance(ns_coefficients, (tuple, list)) or len(ns_coefficients) != 3:
        raise ValueError(f"muon: ns_coefficients must be three numbers (a, b, c), got {ns_coefficients!r}")
    for i, x in enumerate(ns_coefficients):
        C.number("muon", f"ns_coefficients[{i}]", x)
    C.nonneg("muon", "eps", eps)
    C.integer("muon", "ns_steps", ns_steps, lo=0)
    if ns_steps >= 100:
        raise ValueError(f"muon: ns_steps must be < 100 (as torch), got {ns_steps}")
    C.choice("muon", "adjust_lr_fn", adjust_lr_fn, ADJUST_LR_FNS)
    coefficients = tuple(float(x) for x in ns_coefficients)
    hp = {"lr": lr, "momentum": momentum}
    if weight_decay != 0:
        hp["weight_decay"] = weight_decay

    def slots(params):
        return {"momentum_buffer": [torch.zeros_like(p) for p in params]}

    def step(ops, g, p, s, h, count):
        lr, mom, wd = h["lr"], h["momentum"], h.get("weight_decay")
        if wd is not None and g and p[0] is None:
            raise ValueError("muon: weight_decay needs params: call update(grads, state, params)")
        buf = ops.lerp(s["momentum_buffer"], g, 1 - mom)
        direction = ops.lerp(g, buf, mom) if nesterov else buf
        ortho = [newton_schulz(x, coefficients, ns_steps, eps).to(x.dtype) for x in direction]
        updates = ops.scale_each(ortho, [-(lr * _lr_ratio(adjust_lr_fn, x.shape)) for x in g])
        if wd is not None:
            updates = ops.add(updates, p, alpha=-lr * wd)       # p.mul_(1 - lr * wd), first
        return updates, {"momentum_buffer": buf}

    core = optimizer(hp, slots, step, "muon")

    def init(params):
        for path, leaf in T.flatten_with_paths(params):
            if leaf.dim() != 2:
                raise ValueError(f"muon: only 2-D params (matrices), as torch.optim.Muon; {path!r} has shape "
                                 f"{list(leaf.shape)}: give it another optimizer (multi_transform)")
        return core.init(params)

    return GradientTransformation(init, core.update)
