"""A compact convolutional autoencoder: the first stage of latent diffusion.

As in latent diffusion (Rombach, Blattmann, Lorenz, Esser & Ommer, CVPR 2022), the diffusion
model runs over a small spatial latent instead of the pixels, so each network evaluation costs a
fraction of a pixel-space one. The latent is ``tanh``-bounded, on the same [-1, 1] scale as the
pixels a diffusion schedule is made for, and the decoder is trained on it with Gaussian noise
of sd ``noise`` added, so that it decodes the slightly-off latents of an inexact sampler
smoothly (a fixed-variance posterior, in VAE terms). The decoder's likelihood is the
discretised Gaussian of the VAEs, so its pixel residual is abducted and faded the same way.

    >>> ae = LatentAutoencoder(image_channels=1, widths=(32, 64), channels=4)
    >>> h = ae.encode(y)                  # (B, 4, 8, 8) for 32 x 32 images y on [-1, 1]
    >>> ae.decode(h).expected             # the reconstruction
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from models.nn.convnets import _group_norm
from models.nn.likelihoods import DiscretizedGaussian

__all__ = ["LatentAutoencoder"]


def _stage(channels: int) -> list[nn.Module]:
    return [_group_norm(channels), nn.SiLU()]


class LatentAutoencoder(nn.Module):
    """``(B, C, H, W)`` on [-1, 1] <-> ``(B, channels, H / 2^k, W / 2^k)`` in (-1, 1).

    Args:
        image_channels: ``C``.
        widths: channels of the ``k`` stride-2 stages (the decoder mirrors them).
        channels: channels of the latent.
        noise: sd of the Gaussian noise added to the latent before decoding, in training.
    """

    def __init__(
        self, image_channels: int, widths: Sequence[int], channels: int, noise: float = 0.1
    ):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or channels < 1 or noise < 0:
            raise ValueError(
                "the autoencoder needs at least one stage width, at least one latent channel "
                f"and a noise sd >= 0; got widths={widths}, channels={channels}, noise={noise}"
            )
        # No convolution at full resolution but the first and the last stride-2 ones: those
        # layers cost most of a small autoencoder's time and add little to a 4-channel latent.
        encoder: list[nn.Module] = []
        previous = image_channels
        for width in widths:
            encoder += [nn.Conv2d(previous, width, 4, 2, 1), *_stage(width)]
            encoder += [nn.Conv2d(width, width, 3, padding=1), *_stage(width)]
            previous = width
        encoder += [nn.Conv2d(previous, channels, 3, padding=1), nn.Tanh()]
        self.encoder = nn.Sequential(*encoder)
        decoder: list[nn.Module] = [nn.Conv2d(channels, previous, 3, padding=1), *_stage(previous)]
        for width, following in zip(reversed(widths), [*reversed(widths[:-1]), 0]):
            decoder += [nn.Conv2d(width, width, 3, padding=1), *_stage(width)]
            if following:
                decoder += [nn.ConvTranspose2d(width, following, 4, 2, 1), *_stage(following)]
            else:  # the last upsampling gives the likelihood's mean and log-scale
                decoder += [nn.ConvTranspose2d(width, 2 * image_channels, 4, 2, 1)]
        self.decoder = nn.Sequential(*decoder)
        self.factor = 2 ** len(widths)
        self.channels = channels
        self.noise = noise

    def latent_shape(self, image_shape: Sequence[int]) -> tuple[int, int, int]:
        """The latent's ``(channels, h, w)`` for images of ``(C, H, W)``."""
        _, height, width = image_shape
        if height % self.factor or width % self.factor:
            raise ValueError(
                f"images of {height} x {width} px don't divide into the autoencoder's "
                f"{self.factor} x {self.factor} px cells: use fewer autoencoder widths"
            )
        return self.channels, height // self.factor, width // self.factor

    def encode(self, y: Tensor) -> Tensor:
        return self.encoder(y)

    def decode(self, h: Tensor) -> DiscretizedGaussian:
        mean, log_scale = self.decoder(h).chunk(2, 1)
        return DiscretizedGaussian(mean, log_scale)

    def loss(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """The latent, and the reconstruction's negative log-likelihood per image and pixel."""
        h = self.encode(y)
        noisy = h + self.noise * torch.randn_like(h) if self.training and self.noise else h
        nll = -self.decode(noisy).log_prob(y).flatten(1).mean(1)
        return h, nll
