"""Diagonal Gaussian latents: the KL of a posterior to the standard normal prior."""

from __future__ import annotations

from torch import Tensor

#: Clamp of predicted log standard deviations (sd in [9e-4, 7.4]), shared by the HVAE's latent
#: levels and the diffusion autoencoder's semantic bottleneck.
LOG_SD_RANGE = (-7.0, 2.0)


def standard_normal_kl(mean: Tensor, log_sd: Tensor) -> Tensor:
    """``KL(N(mean, exp(log_sd)^2) || N(0, I))`` per sample, summed over dimension 1."""
    return 0.5 * (mean**2 + (2 * log_sd).exp() - 1 - 2 * log_sd).sum(1)
