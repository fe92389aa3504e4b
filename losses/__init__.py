"""Losses at parity with ``torch.nn.functional`` (same ``reduction=`` semantics, no silent
broadcasting), GAN losses, WGAN-GP / R1 gradient penalties through ``torch.func``, metrics."""

from fnnet._cache_key import tag_with_source

from .classification import binary_cross_entropy, binary_cross_entropy_with_logits, cross_entropy, kl_div, nll
from .ctc import ctc
from .gan import discriminator_loss, generator_loss
from .likelihood import gaussian_nll, poisson_nll
from .linear_cross_entropy import linear_cross_entropy
from .margin import (cosine_embedding, hinge_embedding, margin_ranking, multi_margin, multilabel_margin,
                     multilabel_soft_margin, soft_margin)
from .metrics import accuracy, binary_accuracy
from .penalty import gradient_penalty, interpolate, r1_penalty, safe_norm
from .regression import huber, l1, mse, smooth_l1
from .vae import gaussian_kl

tag_with_source(__file__)  # compiled graphs cached on disk are keyed by this source

__all__ = [
    "accuracy", "binary_accuracy", "binary_cross_entropy", "binary_cross_entropy_with_logits",
    "cosine_embedding", "cross_entropy", "ctc", "discriminator_loss", "gaussian_kl", "gaussian_nll",
    "generator_loss", "gradient_penalty", "hinge_embedding", "huber", "interpolate", "kl_div", "l1",
    "linear_cross_entropy", "margin_ranking", "mse", "multi_margin", "multilabel_margin", "multilabel_soft_margin",
    "nll", "poisson_nll", "r1_penalty", "safe_norm", "smooth_l1", "soft_margin",
]
