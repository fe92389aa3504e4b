"""The VAE's KL term between a diagonal Gaussian posterior and the standard normal prior."""

from __future__ import annotations

import torch

from ._util import check_reduction, float_input, reduce, same_shape, value_target


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor | None = None, *, sigma: torch.Tensor | None = None,
                reduction: str = "sum") -> torch.Tensor:
    """``KL(N(mu, sigma^2) || N(0, 1)) = -0.5 (1 + log sigma^2 - mu^2 - sigma^2)`` per element.

    mu: ``[N, Z]``; give either ``logvar`` (``log sigma^2``, the usual encoder output) or
    ``sigma`` (the course's parameterisation). ``reduction``: ``"sum"`` (the course's VAE
    loss, summed over batch and latent dims), ``"batchmean"`` (sum / N), ``"mean"``
    (per element) or ``"none"``.
    """
    check_reduction("gaussian_kl", reduction, ("sum", "batchmean", "mean", "none"))
    if (logvar is None) == (sigma is None):
        raise ValueError("losses.gaussian_kl: give exactly one of logvar= or sigma=")
    float_input("gaussian_kl", mu, "mu")
    if reduction == "batchmean" and mu.ndim == 0:
        raise ValueError("losses.gaussian_kl: reduction='batchmean' needs a batch dim, got a scalar mu")
    value_target("gaussian_kl", mu, sigma if logvar is None else logvar, "sigma" if logvar is None else "logvar",
                 ints=False)
    if sigma is not None:
        same_shape("gaussian_kl", mu, sigma, "sigma")
        var = sigma * sigma
        logvar = torch.log(var)
    else:
        same_shape("gaussian_kl", mu, logvar, "logvar")
        var = torch.exp(logvar)
    kl = -0.5 * (1.0 + logvar - mu * mu - var)
    if reduction == "batchmean":
        return kl.sum() / mu.shape[0]
    return reduce(kl, reduction)
