"""GAN losses for the discriminator (critic) and the generator.

``kind``: ``"minimax"`` (the original game: the generator minimizes ``log(1 - D(G(z)))``,
which saturates), ``"non_saturating"`` (the generator maximizes ``log D(G(z))``; the
discriminator loss is the same BCE as minimax), ``"wasserstein"`` (a critic's raw scores),
``"hinge"``. Scores are logits by default; ``from_logits=False`` takes the probabilities of
a discriminator that ends in a sigmoid (the course's GAN), with logs clamped at -100 as
``F.binary_cross_entropy`` does, so probabilities of exactly 0 or 1 stay finite.

real, fake: discriminator outputs ``[N]`` or ``[N, 1]``; the result is a scalar (a mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._util import check_range, eager_values, flag, float_input

KINDS = ("minimax", "non_saturating", "wasserstein", "hinge")


def _log_d(x: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """``log D`` per sample: ``-softplus(-l)`` for logits (stable at +-1e4); for probabilities,
    torch's BCE, whose clamped log and backward stay finite at 0 and 1."""
    if from_logits:
        return -F.softplus(-x)
    return -F.binary_cross_entropy(x, torch.ones_like(x), reduction="none")


def _log_1m_d(x: torch.Tensor, from_logits: bool) -> torch.Tensor:
    """``log(1 - D)`` per sample."""
    if from_logits:
        return -F.softplus(x)
    return -F.binary_cross_entropy(x, torch.zeros_like(x), reduction="none")


def _check(kind: str, from_logits: bool, **scores: torch.Tensor) -> None:
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"losses: GAN kind must be one of {KINDS}, got {kind!r}")
    if not from_logits and kind in ("wasserstein", "hinge"):
        raise ValueError(f"losses: {kind} losses take raw critic scores, not probabilities "
                         "(from_logits=False makes no sense for them)")
    flag(f"{kind} GAN loss", from_logits, "from_logits")
    for what, x in scores.items():
        float_input(f"{kind} GAN loss", x, what)
        if not from_logits and eager_values():
            check_range(x.detach(), 0.0, 1.0, f"losses: {kind} GAN loss with from_logits=False: {what} must hold "
                        "probabilities in [0, 1]")


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str = "minimax", *,
                       from_logits: bool = True) -> torch.Tensor:
    """What the discriminator minimizes, given its outputs on real and on generated samples."""
    _check(kind, from_logits, real=real, fake=fake)
    if kind in ("minimax", "non_saturating"):
        return -_log_d(real, from_logits).mean() - _log_1m_d(fake, from_logits).mean()
    if kind == "wasserstein":
        return fake.mean() - real.mean()
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def generator_loss(fake: torch.Tensor, kind: str = "non_saturating", *,
                   from_logits: bool = True) -> torch.Tensor:
    """What the generator minimizes, given the discriminator's outputs on its samples."""
    _check(kind, from_logits, fake=fake)
    if kind == "minimax":
        return _log_1m_d(fake, from_logits).mean()
    if kind == "non_saturating":
        return -_log_d(fake, from_logits).mean()
    return -fake.mean()
