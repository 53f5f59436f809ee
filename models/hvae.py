"""Hierarchical VAE image mechanism (VDVAE ladder; Ribeiro, Xia, Monteiro, Pawlowski & Glocker,
"High Fidelity Image Counterfactuals with Probabilistic Causal Models", ICML 2023).

- a bottom-up encoder over several resolutions, with a width (channels) and a number of
  bottleneck residual blocks per resolution, as VDVAE and causal-gen spend few channels where the
  maps are large (``model=hvae_large`` is causal-gen's Morpho-MNIST architecture);
- a top-down decoder with stochastic latents ``z_l`` at several resolutions, the attributes
  injected at every level (into the posterior, into the merge of ``z_l`` and, with
  ``cond_prior=True``, into the prior: the "latent mediator" through which an intervention on the
  attributes reaches the latents);
- a discretised Gaussian likelihood over 256 levels (shared with the conditional VAE);
- optionally, the ladder works on ``patch x patch`` pixel blocks (space-to-depth in, depth-to-space
  out): the CPU default's 2 x 2 blocks halve the step time, and the likelihood stays per pixel;
- EMA weights used outside training, and skipping of updates whose gradient norm explodes.

Exogenous noise (abduction), per level: ``u_l = (z_l - mu_p,l) / sigma_p,l``, the posterior latent
``z_l = mu_q,l + temperature * sigma_q,l * eps`` standardised by the level's prior under the
factual attributes. Prediction re-runs the top-down pass under the new attributes with
``z_l = mu_p,l' + sigma_p,l' * u_l``: the null intervention gives back every ``z_l`` exactly. The
temperature enters abduction only; prediction reuses ``u`` unscaled, so one noise maps to one
image. With ``residual=True`` each pixel's residual about the decoder mean is kept too (as in
:mod:`models.vae`).

Counterfactual fine-tuning (``cf_finetune``; Ribeiro et al., Sec. 3.3) is the task every family
shares (:class:`~models.base.FineTuning`): ``experiment=hvae_cf_morphomnist``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import CounterfactualModel, ImageMechanism
from models.nn.blocks import Bottleneck
from models.nn.conditioning import ParentEncoder
from models.nn.gaussian import LOG_SD_RANGE
from models.nn.likelihoods import DiscretizedGaussian, to_signed

__all__ = ["HVAEMechanism", "HVAENoise", "HierarchicalVAE"]


def _parent_map(pa_vector: Tensor, like: Tensor) -> Tensor:
    """Broadcast ``(B, P)`` attributes over the spatial grid of ``like``."""
    return pa_vector[:, :, None, None].expand(-1, -1, *like.shape[-2:])


class LatentLevel(nn.Module):
    """One stochastic level of the top-down pass.

    Args:
        width: channels of the decoder state ``h``.
        z_channels: channels of the latent.
        parents: size of the attribute vector.
        cond_prior: let the prior see the attributes.
        middle: channels inside the bottleneck blocks.
        kernel: side of their inner convolutions (1 on maps of 2 x 2 or less).
    """

    def __init__(
        self,
        width: int,
        z_channels: int,
        parents: int,
        cond_prior: bool,
        middle: int,
        kernel: int = 3,
    ):
        super().__init__()
        self.cond_prior = cond_prior
        self.z_channels = z_channels
        prior_in = width + (parents if cond_prior else 0)
        # The prior also proposes an update of h; zero-initialised, it starts as N(0, 1) and no-op.
        self.prior = Bottleneck(
            prior_in, middle, 2 * z_channels + width, residual=False, zero_last=True, kernel=kernel
        )
        self.posterior = Bottleneck(
            2 * width + parents, middle, 2 * z_channels, residual=False, kernel=kernel
        )
        self.merge = nn.Conv2d(z_channels + parents, width, 1)
        self.block = Bottleneck(width, middle, width, zero_last=True, kernel=kernel)

    def prior_of(self, h: Tensor, pa_map: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.prior(torch.cat([h, pa_map], 1) if self.cond_prior else h)
        mean, log_sd, update = out.split(
            [self.z_channels, self.z_channels, out.shape[1] - 2 * self.z_channels], 1
        )
        return mean, log_sd.clamp(*LOG_SD_RANGE), update

    def posterior_of(self, h: Tensor, features: Tensor, pa_map: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_sd = self.posterior(torch.cat([h, features, pa_map], 1)).chunk(2, 1)
        return mean, log_sd.clamp(*LOG_SD_RANGE)

    def forward(
        self,
        h: Tensor,
        pa_vector: Tensor,
        features: Tensor | None,
        mode: str,
        noise: Tensor | None = None,
        temperature: float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """Advance ``h`` by one level. Returns the new ``h`` and, by mode, the level's KL
        (``"train"``), its noise ``u`` (``"abduct"``) or its latent (``"predict"``)."""
        pa_map = _parent_map(pa_vector, h)
        p_mean, p_log_sd, update = self.prior_of(h, pa_map)
        if mode == "predict":
            z = p_mean + p_log_sd.exp() * noise
            out = z
        else:
            q_mean, q_log_sd = self.posterior_of(h, features, pa_map)
            scale = 1.0 if mode == "train" else temperature
            z = q_mean + scale * q_log_sd.exp() * torch.randn_like(q_mean) if scale else q_mean
            if mode == "train":
                out = (
                    (
                        p_log_sd
                        - q_log_sd
                        + ((2 * q_log_sd).exp() + (q_mean - p_mean) ** 2)
                        / (2 * (2 * p_log_sd).exp())
                        - 0.5
                    )
                    .flatten(1)
                    .sum(1)
                )
            else:
                out = (z - p_mean) / p_log_sd.exp()
        h = h + update + self.merge(torch.cat([z, pa_map], 1))
        return self.block(h), out


@dataclass
class HVAENoise:
    """The image's exogenous noise under the hierarchical VAE.

    Attributes:
        levels: per stochastic level, coarse to fine, ``u_l = (z_l - mu_p,l) / sigma_p,l``.
        residual: the pixel residual about the decoder mean, or ``None``.
    """

    levels: list[Tensor]
    residual: dict[str, Tensor] | None = None


def _per_resolution(value, resolutions: Sequence[int], name: str) -> dict[int, int]:
    """One integer per resolution, from an integer (the same everywhere) or ``[resolution, n]``
    pairs that name every resolution."""
    if isinstance(value, int):
        return {r: int(value) for r in resolutions}
    table = {int(r): int(n) for r, n in value}
    if sorted(table, reverse=True) != list(resolutions):
        raise ValueError(
            f"{name} names resolutions {sorted(table, reverse=True)}, but the ladder has "
            f"{list(resolutions)}: give one [resolution, n] pair for each, or one integer"
        )
    return table


def _kernel(resolution: int) -> int:
    """3 x 3 kernels, but 1 x 1 on maps of 2 x 2 or less, where a 3 x 3 sees mostly padding."""
    return 3 if resolution > 2 else 1


class HVAEMechanism(ImageMechanism):
    """Encoder, top-down decoder and output head (the networks the EMA averages), and the three
    steps, as a plain module.

    Args:
        graph: the causal graph (its image parents condition every level).
        image_shape: ``(C, H, W)``.
        widths, levels, z_channels, cond_prior, encoder_blocks, patch, bottleneck, beta,
            temperature, residual: see :class:`HierarchicalVAE`.
    """

    def __init__(
        self,
        graph,
        image_shape: Sequence[int],
        widths: int | Sequence[Sequence[int]],
        levels: Sequence[Sequence[int]],
        z_channels: int,
        cond_prior: bool,
        encoder_blocks: int | Sequence[Sequence[int]],
        patch: int = 1,
        bottleneck: int = 4,
        beta: float = 1.0,
        temperature: float = 0.0,
        residual: bool = True,
    ):
        super().__init__(temperature=temperature, residual=residual)
        channels, image_size, _ = image_shape
        self.image_shape = tuple(int(v) for v in image_shape)
        self.parents = ParentEncoder(graph, graph.image_parents)
        parents = self.parents.dim
        self.beta = beta
        self.levels = [(int(r), int(n)) for r, n in levels]
        top = image_size // patch
        if patch < 1 or patch & (patch - 1) or top * patch != image_size:
            raise ValueError(f"patch {patch} must be a power of 2 dividing {image_size} px")
        self.resolutions = self._ladder(widths, top, {r for r, _ in self.levels}, image_size, patch)
        self.widths = _per_resolution(widths, self.resolutions, "widths")
        blocks = _per_resolution(encoder_blocks, self.resolutions, "encoder_blocks")

        def middle(r: int) -> int:
            return max(1, self.widths[r] // bottleneck)

        def projection(r: int, to: int) -> nn.Module | None:
            return nn.Conv2d(self.widths[r], self.widths[to], 1) if r != to else None

        # patch > 1: the ladder runs on patch x patch pixel blocks (space-to-depth), and the head
        # puts them back. Convolutions at full resolution with few channels dominated the step
        # time on CPU; the likelihood stays per pixel.
        self.patch = patch
        self.stem = nn.Conv2d(channels * patch**2, self.widths[top], 3, padding=1)
        self.encoder = nn.ModuleDict(
            {
                str(r): nn.Sequential(
                    *[
                        Bottleneck(self.widths[r], middle(r), self.widths[r], kernel=_kernel(r))
                        for _ in range(blocks[r])
                    ]
                )
                for r in self.resolutions
            }
        )
        # Where the width changes between resolutions, a 1 x 1 projection (at the coarser side:
        # after pooling on the way up, before upsampling on the way down).
        pairs = list(zip(self.resolutions[:-1], self.resolutions[1:]))
        self.encoder_proj = nn.ModuleDict(
            {
                str(r): nn.Conv2d(self.widths[r], self.widths[c], 1)
                for r, c in pairs
                if self.widths[r] != self.widths[c]
            }
        )
        self.decoder_proj = nn.ModuleDict(
            {
                str(c): nn.Conv2d(self.widths[c], self.widths[r], 1)
                for r, c in pairs
                if self.widths[r] != self.widths[c]
            }
        )
        lowest = self.resolutions[-1]
        self.start = nn.Parameter(torch.zeros(1, self.widths[lowest], lowest, lowest))
        counts = dict(self.levels)
        self.decoder = nn.ModuleDict(
            {
                str(r): nn.ModuleList(
                    [
                        LatentLevel(
                            self.widths[r], z_channels, parents, cond_prior, middle(r), _kernel(r)
                        )
                        for _ in range(counts.get(r, 0))
                    ]
                )
                for r in self.resolutions
            }
        )
        # Resolutions without latents still get a block to refine h on the way up.
        self.refine = nn.ModuleDict(
            {
                str(r): Bottleneck(
                    self.widths[r], middle(r), self.widths[r], zero_last=True, kernel=_kernel(r)
                )
                for r in self.resolutions
                if counts.get(r, 0) == 0
            }
        )
        self.head = nn.Conv2d(self.widths[top], 2 * channels * patch**2, 3, padding=1)

    @staticmethod
    def _ladder(widths, top: int, latent_res: set[int], image_size: int, patch: int) -> list[int]:
        """The ladder's resolutions, fine to coarse: those ``widths`` names, or ``top / 2^k``
        down to the coarsest latent."""
        if isinstance(widths, int):
            bad = [r for r in latent_res if r > top or top % r or (top // r) & (top // r - 1)]
            if bad:
                raise ValueError(
                    f"latent resolutions {bad} must be ({image_size} px / patch {patch}) / 2^k"
                )
            steps = int(math.log2(top // min(latent_res)))
            return [top // 2**k for k in range(steps + 1)]
        resolutions = sorted({int(r) for r, _ in widths}, reverse=True)
        ratios = [a // b for a, b in zip(resolutions, resolutions[1:])]
        if (
            resolutions[0] != top
            or any(a % b for a, b in zip(resolutions, resolutions[1:]))
            or any(q & (q - 1) for q in ratios)
        ):
            raise ValueError(
                f"widths must name resolutions from {top} ({image_size} px / patch {patch}) "
                f"down, each a power-of-2 fraction of the one before; got {resolutions}"
            )
        missing = sorted(latent_res - set(resolutions))
        if missing:
            raise ValueError(f"latent resolutions {missing} are not among widths' {resolutions}")
        return resolutions

    def encode(self, y: Tensor) -> dict[int, Tensor]:
        encoded, h = {}, self.stem(F.pixel_unshuffle(y, self.patch))
        for r, coarser in zip(self.resolutions, self.resolutions[1:] + [None]):
            h = self.encoder[str(r)](h)
            encoded[r] = h
            if coarser is not None:
                h = F.avg_pool2d(h, r // coarser)
                if str(r) in self.encoder_proj:
                    h = self.encoder_proj[str(r)](h)
        return encoded

    def top_down(
        self,
        pa_vector: Tensor,
        mode: str,
        encoded: dict[int, Tensor] | None = None,
        noise: Sequence[Tensor] | None = None,
        temperature: float = 1.0,
    ) -> tuple[DiscretizedGaussian, list[Tensor]]:
        h = self.start.expand(len(pa_vector), -1, -1, -1)
        outputs: list[Tensor] = []
        for r in reversed(self.resolutions):
            for level in self.decoder[str(r)]:
                given = noise[len(outputs)] if noise is not None else None
                features = encoded[r] if encoded is not None else None
                h, out = level(h, pa_vector, features, mode, given, temperature)
                outputs.append(out)
            if str(r) in self.refine:
                h = self.refine[str(r)](h)
            if r != self.resolutions[0]:
                if str(r) in self.decoder_proj:
                    h = self.decoder_proj[str(r)](h)
                finer = self.resolutions[self.resolutions.index(r) - 1]
                h = F.interpolate(h, scale_factor=finer // r, mode="nearest")
        mean, log_scale = F.pixel_shuffle(self.head(h), self.patch).chunk(2, 1)
        return DiscretizedGaussian(mean, log_scale), outputs

    def loss(self, x: Tensor, pa: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Negative ELBO in nats per dimension, and its parts."""
        y = to_signed(x)
        likelihood, kls = self.top_down(self.parents(pa), "train", encoded=self.encode(y))
        nll = -likelihood.log_prob(y).flatten(1).sum(1)
        kl = torch.stack(kls).sum(0)
        dims = x[0].numel()
        loss = (nll + self.beta * kl).mean() / dims
        return loss, {"bpd": (nll + kl).mean() / (dims * math.log(2)), "kl": kl.mean()}

    def abduct(
        self, x: Tensor, pa: Mapping[str, Tensor], temperature: float, residual: bool
    ) -> HVAENoise:
        y = to_signed(x)
        context = self.parents(pa)
        _, levels = self.top_down(
            context, "abduct", encoded=self.encode(y), temperature=temperature
        )
        if not residual:
            return HVAENoise(levels)
        # the residual about the image the abducted noise decodes to under the same attributes
        decoded, _ = self.top_down(context, "predict", noise=levels)
        return HVAENoise(levels, decoded.noise(y))

    def prior_noise(
        self, pa: Mapping[str, Tensor], temperature: float, residual: bool
    ) -> HVAENoise:
        """``u_l ~ N(0, I)`` at every level (``z_l`` from its prior), no pixel residual."""
        reference = next(iter(pa.values()))
        # one abduction of blank images gives each level's shape
        blank = torch.zeros(len(reference), *self.image_shape, device=reference.device)
        levels = self.abduct(blank, pa, temperature=0.0, residual=False).levels
        return HVAENoise([torch.randn_like(level) for level in levels])

    def predict(
        self,
        noise: HVAENoise,
        pa: Mapping[str, Tensor],
        intervened: frozenset[str],
        temperature: float,
        residual: bool,
    ) -> Tensor:
        likelihood, _ = self.top_down(self.parents(pa), "predict", noise=noise.levels)
        return likelihood.image(noise.residual or {}, residual)


class HierarchicalVAE(CounterfactualModel):
    """Hierarchical VAE behind the counterfactual interface.

    Args:
        graph, image_shape, dataset, scm, scm_weight, lr, weight_decay, ema_decay,
            skip_grad_norm: see :class:`~models.base.CounterfactualModel`.
        width: channels of the ladder: one integer for every resolution, or ``[resolution,
            channels]`` pairs, fine to coarse, which also set the ladder's resolutions (e.g.
            ``[[32, 16], [16, 32], [8, 64], [4, 128], [1, 256]]``, as VDVAE and causal-gen
            spend few channels where the maps are large).
        levels: ``[resolution, number of latents]`` pairs, e.g. ``[[4, 2], [8, 2]]``.
        z_channels: channels of each latent.
        encoder_blocks: residual blocks per resolution in the encoder: one integer, or
            ``[resolution, blocks]`` pairs for every resolution.
        bottleneck: a block's inner channels are its width divided by this (VDVAE's 4).
        patch: side of the pixel blocks the ladder works on (1: every pixel; 2: a 32 px image
            becomes 16 x 16 blocks of 2 x 2, about twice the steps per second on CPU).
        cond_prior: condition the priors on the attributes (the latent mediator). Off by default:
            such a prior lets the latents hold the attributes at little KL cost, and abduction
            then carries the factual values into the counterfactual (see ``configs/model/hvae.yaml``).
        beta: weight of the KL term.
        temperature: default posterior temperature in abduction (0: the posterior mean).
        residual: default for keeping the pixel residual as noise.
        cf_finetune: counterfactual fine-tuning settings (:class:`~models.base.FineTuning`), or
            ``None`` for the ELBO.
    """

    def __init__(
        self,
        graph: Mapping[str, Any],
        image_shape: Sequence[int],
        dataset: str = "unknown",
        width: int | Sequence[Sequence[int]] = 64,
        levels: Sequence[Sequence[int]] = ((4, 2), (8, 2)),
        z_channels: int = 2,
        encoder_blocks: int | Sequence[Sequence[int]] = 1,
        patch: int = 2,
        bottleneck: int = 4,
        cond_prior: bool = False,
        beta: float = 1.0,
        temperature: float = 0.0,
        residual: bool = True,
        cf_finetune: Mapping[str, Any] | None = None,
        scm: Mapping[str, Any] | None = None,
        scm_weight: float = 1.0,
        lr: float = 2e-3,
        weight_decay: float = 0.01,
        ema_decay: float = 0.999,
        skip_grad_norm: float | None = 1000.0,
    ):
        super().__init__(
            graph,
            image_shape,
            dataset,
            scm=scm,
            scm_weight=scm_weight,
            lr=lr,
            weight_decay=weight_decay,
            ema_decay=ema_decay,
            skip_grad_norm=skip_grad_norm,
            cf_finetune=cf_finetune,
        )
        self.save_hyperparameters()
        self.set_mechanism(
            HVAEMechanism(
                self.graph,
                self.image_shape,
                width,
                levels,
                z_channels,
                cond_prior,
                encoder_blocks,
                patch,
                bottleneck,
                beta,
                temperature,
                residual,
            )
        )
