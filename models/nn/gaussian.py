"""Diagonal Gaussian latents: the KL of a posterior to the standard normal prior, and how far a
set of samples is from that prior (MMD)."""

from __future__ import annotations

import torch
from torch import Tensor

#: Clamp of predicted log standard deviations (sd in [9e-4, 7.4]), shared by the HVAE's latent
#: levels and the diffusion autoencoder's semantic bottleneck.
LOG_SD_RANGE = (-7.0, 2.0)


def standard_normal_kl(mean: Tensor, log_sd: Tensor) -> Tensor:
    """``KL(N(mean, exp(log_sd)^2) || N(0, I))`` per sample, summed over dimension 1."""
    return 0.5 * (mean**2 + (2 * log_sd).exp() - 1 - 2 * log_sd).sum(1)


#: Scales of the inverse multiquadric kernel, relative to ``2 * dims`` (the expected squared
#: distance between two standard normal draws): a sum over scales, as in Wasserstein
#: auto-encoders (Tolstikhin et al., ICLR 2018), so no single bandwidth has to be right.
_IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def mmd(a: Tensor, b: Tensor) -> Tensor:
    """Unbiased squared maximum mean discrepancy between samples ``a`` ``(N, D)`` and ``b``
    ``(M, D)`` (N, M >= 2) under a sum of inverse multiquadric kernels ``C / (C + |a - b|^2)``,
    ``C`` a multiple of ``2 D``. Near 0 when both come from one distribution; differentiable."""
    dims = a.shape[1]

    def kernel(x: Tensor, y: Tensor) -> Tensor:
        distance = torch.cdist(x, y).pow(2)
        return sum(2.0 * dims * s / (2.0 * dims * s + distance) for s in _IMQ_SCALES)

    def within(x: Tensor) -> Tensor:
        n, gram = len(x), kernel(x, x)
        return (gram.sum() - gram.diagonal().sum()) / (n * (n - 1))

    return within(a) + within(b) - 2.0 * kernel(a, b).mean()
