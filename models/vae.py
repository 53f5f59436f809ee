"""Conditional VAE image mechanism (the DeepSCM kind; Pawlowski, Castro & Glocker, NeurIPS 2020).

Encoder ``q(z | x, pa)``, decoder ``p(x | z, pa)`` with a per-pixel discretised Gaussian
likelihood on 256 levels. The image's exogenous noise is:

- ``z``: the posterior latent, ``mu_q + temperature * sigma_q * eps`` (``temperature=0``: the
  posterior mean, deterministic);
- ``residual`` (option ``residual=True``, the default): each pixel's residual about the decoder's
  (clipped) mean, ``eps_x = x - mu_x(z, pa)``, with that mean and the decoder's scale
  ``sigma_x``. Prediction decodes ``z`` under the new attributes and adds ``eps_x`` faded by
  ``min(1, sigma_x' / sigma_x)`` and by how far the mean moved (see
  :class:`~models.nn.likelihoods.DiscretizedGaussian`), so the null intervention reproduces the
  input up to float error, the counterfactual keeps the details the latent can't hold, and a
  residual fades where the intervention redraws the pixel (a stroke edge that moved). With
  ``residual=False`` prediction returns the decoder mean.

Both options apply the same way in abduction and prediction: ``z`` and ``eps_x`` are abducted once
and reused unchanged.

Example:
    >>> vae = ConditionalVAE(graph=dm.graph.to_dict(), image_shape=(1, 32, 32), dataset="morphomnist")
    >>> cf = vae.counterfactual(x, pa, {"intensity": 200.0}, temperature=0.0, residual=False)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from models.base import CounterfactualModel, ImageMechanism
from models.nn.conditioning import ParentEncoder
from models.nn.convnets import ConvDecoder, ConvEncoder
from models.nn.gaussian import standard_normal_kl
from models.nn.likelihoods import DiscretizedGaussian, to_signed

__all__ = ["ConditionalVAE", "VAEMechanism", "VAENoise"]


@dataclass
class VAENoise:
    """The image's exogenous noise under the conditional VAE.

    Attributes:
        z: ``(B, latent_dim)`` posterior latent.
        residual: the pixel residual about the decoder mean with that mean and scale
            (:meth:`~models.nn.likelihoods.DiscretizedGaussian.noise`), or ``None``.
    """

    z: Tensor
    residual: dict[str, Tensor] | None = None


class VAEMechanism(ImageMechanism):
    """Encoder ``q(z | x, pa)`` and decoder ``p(x | z, pa)``: the conditional VAE's networks and
    its three steps, as a plain module.

    Args:
        graph: the causal graph (its image parents condition both networks).
        image_shape: ``(C, H, W)``.
        latent_dim, widths, hidden, beta, temperature, residual: see :class:`ConditionalVAE`.
    """

    def __init__(
        self,
        graph,
        image_shape: Sequence[int],
        latent_dim: int = 16,
        widths: Sequence[int] = (32, 64, 128),
        hidden: int = 256,
        beta: float = 1.0,
        temperature: float = 0.0,
        residual: bool = True,
    ):
        super().__init__(temperature=temperature, residual=residual)
        channels, size, _ = image_shape
        self.parents = ParentEncoder(graph, graph.image_parents)
        self.encoder = ConvEncoder(channels, widths, size, hidden)
        self.posterior = nn.Sequential(
            nn.SiLU(),
            nn.Linear(hidden + self.parents.dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2 * latent_dim),
        )
        self.decoder = ConvDecoder(latent_dim + self.parents.dim, widths, size, 2 * channels)
        self.latent_dim = latent_dim
        self.beta = beta

    def encode(self, x: Tensor, pa: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-sd of ``z``."""
        h = torch.cat([self.encoder(to_signed(x)), self.parents(pa)], -1)
        mean, log_sd = self.posterior(h).chunk(2, -1)
        return mean, log_sd.clamp(-8.0, 4.0)

    def decode(self, z: Tensor, pa: Mapping[str, Tensor]) -> DiscretizedGaussian:
        mean, log_scale = self.decoder(torch.cat([z, self.parents(pa)], -1)).chunk(2, 1)
        return DiscretizedGaussian(mean, log_scale)

    def kl(self, mean: Tensor, log_sd: Tensor, z: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        """``KL(q(z | x, pa) || p(z))`` per sample, ``z`` the sample the ELBO decodes; the prior
        here is ``N(0, I)`` (a variant with another prior overrides this)."""
        return standard_normal_kl(mean, log_sd)

    def elbo(
        self, x: Tensor, pa: Mapping[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor, Tensor]:
        """The negative ELBO per dimension (``beta``-weighted KL) and its logs, with the posterior
        mean and the sampled ``z`` it decoded (for a variant's extra terms)."""
        mean, log_sd = self.encode(x, pa)
        z = mean + log_sd.exp() * torch.randn_like(mean)
        nll = -self.decode(z, pa).log_prob(to_signed(x)).flatten(1).sum(1)
        kl = self.kl(mean, log_sd, z, pa)
        dims = x[0].numel()
        # Per-dimension units keep the learning rate independent of the image size.
        loss = (nll + self.beta * kl).mean() / dims
        bits_per_dim = (nll + kl).mean() / (dims * math.log(2))
        return loss, {"bpd": bits_per_dim, "kl": kl.mean()}, mean, z

    def loss(self, x: Tensor, pa: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The negative ELBO per dimension (``beta``-weighted KL)."""
        return self.elbo(x, pa)[:2]

    def abduct(
        self, x: Tensor, pa: Mapping[str, Tensor], temperature: float, residual: bool
    ) -> VAENoise:
        mean, log_sd = self.encode(x, pa)
        z = mean + temperature * log_sd.exp() * torch.randn_like(mean) if temperature else mean
        return VAENoise(z, self.decode(z, pa).noise(to_signed(x)) if residual else None)

    def prior_noise(self, pa: Mapping[str, Tensor], temperature: float, residual: bool) -> VAENoise:
        """``z ~ N(0, I)``, no pixel residual: a sample is the decoder mean under ``pa``."""
        reference = next(iter(pa.values()))
        return VAENoise(torch.randn(len(reference), self.latent_dim, device=reference.device))

    def predict(
        self,
        noise: VAENoise,
        pa: Mapping[str, Tensor],
        intervened: frozenset[str],
        temperature: float,
        residual: bool,
    ) -> Tensor:
        return self.decode(noise.z, pa).image(noise.residual or {}, residual)


class ConditionalVAE(CounterfactualModel):
    """The conditional VAE's mechanism (:class:`VAEMechanism`) behind the counterfactual interface.

    Args:
        graph, image_shape, dataset, scm, scm_weight, lr, weight_decay, cf_finetune: see
            :class:`~models.base.CounterfactualModel`.
        latent_dim: size of ``z``.
        widths: channels of the encoder's stride-2 stages (mirrored by the decoder).
        hidden: width of the encoder's output features.
        beta: weight of the KL term (1 is the ELBO).
        temperature: default scale of the posterior's sd when abducting ``z`` (0: its mean).
        residual: default for keeping the pixel residual as noise.
    """

    def __init__(
        self,
        graph: Mapping[str, Any],
        image_shape: Sequence[int],
        dataset: str = "unknown",
        latent_dim: int = 16,
        widths: Sequence[int] = (32, 64, 128),
        hidden: int = 256,
        beta: float = 1.0,
        temperature: float = 0.0,
        residual: bool = True,
        scm: Mapping[str, Any] | None = None,
        scm_weight: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        cf_finetune: Mapping[str, Any] | None = None,
    ):
        super().__init__(
            graph,
            image_shape,
            dataset,
            scm=scm,
            scm_weight=scm_weight,
            lr=lr,
            weight_decay=weight_decay,
            cf_finetune=cf_finetune,
        )
        self.save_hyperparameters()
        self.set_mechanism(
            self.mechanism_class(self.graph, self.image_shape, **self.mechanism_settings())
        )

    #: The image mechanism this module wraps (a variant of the family subclasses both).
    mechanism_class = VAEMechanism

    def mechanism_settings(self) -> dict[str, Any]:
        """The mechanism's settings, from the saved hyperparameters."""
        names = ("latent_dim", "widths", "hidden", "beta", "temperature", "residual")
        return {name: self.hparams[name] for name in names}
