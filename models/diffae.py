"""Causal diffusion autoencoder image mechanism, with deterministic DDIM abduction.

After diffusion autoencoders (Preechakul, Chatthee, Wizadwongsa & Suwajanakorn, CVPR 2022: a
semantic encoder plus the DDIM-inverted "stochastic code"), Diff-SCM (Sanchez & Tsaftaris, CLeaR
2022: counterfactuals by inverting a diffusion model under the factual attributes and sampling
under the counterfactual ones, with guidance) and CausalDiffAE (Komanduri, Zhao, Chen & Wu,
ICASSP 2024: a causally structured semantic latent).

Latent design (the default; ``autoencoder=None`` keeps the diffusion over the pixels). As in
latent diffusion (Rombach et al., CVPR 2022), a compact autoencoder
(:class:`~models.nn.autoencoder.LatentAutoencoder`) maps a 32 x 32 image to an 8 x 8 x 4 latent
``h``, and everything below runs over ``h`` instead of the pixels: the semantic encoder, the
UNet, the inversion and the sampling, each network call 16 times fewer positions. The first
stage trains with the diffusion (its reconstruction likelihood is part of the loss; the diffusion
sees ``h`` detached). The pixel residual about its decoder is part of the image's noise, faded as
the VAEs fade theirs (option ``residual``; off: the decoder alone).

Networks (``self.net``, averaged by the EMA):

- ``autoencoder`` (latent design): ``x -> h`` and ``h -> p(x | h)``;
- ``encoder``: a :class:`~models.nn.convnets.ConvEncoder`, ``h -> z`` (the semantic latent);
- ``context``: a small MLP of ``[semantic latent, attribute part, drop flag]`` into the UNet's
  time-embedding space. It reaches every residual block of a diffusers ``UNet2DModel``
  (``class_embed_type="identity"``: added to the time embedding, then ``scale_shift``: an adaptive
  group norm, as the diffusion autoencoder's AdaGN);
- ``unet``: the denoiser ``eps(x_t, t, context)``.

Exogenous noise of an image (abduction, deterministic):

- ``latent``: ``z = encoder(h)``;
- ``x_T``: the DDIM inversion of ``h`` (pixel design: of ``x`` on [-1, 1]) under ``z`` and the
  factual attributes;
- ``residual`` (latent design, ``residual=True``): ``x`` minus the decoder's mean of ``h``;
- causal mode only: ``block_rest``, each attribute block's sample-specific rest
  ``z_k - g_k(factual value)`` (see below).

Prediction runs DDIM (``eta = 0``) from ``x_T`` under ``z`` and the counterfactual attributes,
then decodes (and adds the faded residual). The null intervention gives the input back up to
the inversion's error (with ``residual=False``, also the first stage's): it shrinks with
``steps`` and, much faster, with ``inversion_iters`` fixed-point refinements per inversion step
(see :mod:`models.nn.diffusion`).

Counterfactual-time options (defaults are the hyperparameters of the same names):

- ``steps``: DDIM steps of the inversion and of the sampling (cost: about ``2 + inversion_iters``
  network evaluations per step, doubled with guidance);
- ``guidance_scale``: classifier-free guidance on the attributes, ``eps_u + s (eps_c - eps_u)``,
  used in the inversion and in the sampling alike (1: off). Training drops the attributes with
  probability ``p_uncond`` (zeros plus a flag); in a dropped sample the encoder gets no gradient,
  so the dropout gives the semantic latent no reason to learn the attributes;
- ``inversion_iters``: fixed-point refinements per inversion step (0: plain DDIM inversion);
- ``residual`` (latent design): keep the pixel residual about the first stage's decoder.

CausalDiffAE mode (``causal_latent=True``, ``model=causal_diffae``). The latent is split into one
block of ``block_dim`` per image parent plus a free "style" block of ``latent_dim``:

- each block is supervised by its attribute through a small head (regression of the normalised
  value, or classification), weighted by ``block_weight``;
- the blocks form an SCM that follows the causal graph: a root's block is its own noise, a child's
  block is ``f_k(parents' blocks) + u_k`` with an MLP ``f_k`` (regressed on the detached blocks),
  so abduction gives ``u_k = z_k - f_k(z_pa(k))``;
- blocks are squashed by ``tanh``; an embedding ``g_k(value)`` of each attribute is regressed on
  its (detached) block: the typical block of that value;
- the UNet sees the blocks and the style only, not the attribute values (as in CausalDiffAE);
  guidance drops the blocks and keeps the style.

Prediction under counterfactual attributes is told which attributes ``do`` set (the counterfactual
function passes them; nothing is guessed from the values). An intervened block becomes
``g_k(new value) + rest_k``, its abducted rest kept; every block downstream of an intervened one
is recomputed as ``f_k(new parents' blocks) + u_k``; the others stay as abducted. The attribute values that
``counterfactual`` returns come from the attribute SCM, so for a recomputed descendant the image
follows the block mechanism, which agrees with the SCM only as far as both were learned well.

Semantic bottleneck (``semantic_kl > 0``, both modes). A deterministic encoder sees the whole
image, so its latent also encodes the attributes, and what it encodes of them resists an
intervention. With the bottleneck the semantic part is a Gaussian posterior with a KL penalty to
``N(0, I)`` (as in a VAE): the UNet gets the attributes for free, so holding them in the latent
only costs KL. Abduction takes the posterior mean, so it stays deterministic. Measure
effectiveness (and try ``guidance_scale > 1``) rather than assume it.

Example:
    >>> model = DiffusionAutoencoder(graph=dm.graph.to_dict(), image_shape=(1, 32, 32))
    >>> cf = model.counterfactual(x, pa, {"thickness": lambda t: t + 1}, steps=10)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import Tensor

from models.base import CounterfactualModel, ImageMechanism
from models.nn.autoencoder import LatentAutoencoder
from models.nn.conditioning import ParentEncoder
from models.nn.convnets import ConvEncoder
from models.nn.diffusion import build_schedulers, ddim_invert, ddim_sample
from models.nn.gaussian import LOG_SD_RANGE, standard_normal_kl
from models.nn.latent_scm import LatentSCM, mlp
from models.nn.likelihoods import from_signed, to_signed

__all__ = [
    "AUTOENCODER_DEFAULTS",
    "DiffAEMechanism",
    "DiffAENoise",
    "DiffusionAutoencoder",
    "LatentSCM",
]

#: The first stage of the latent design: two stride-2 stages to a 4-channel latent (8 x 8 for
#: Morpho-MNIST's 32 x 32 px), decoded under latent noise of sd 0.1.
AUTOENCODER_DEFAULTS: dict[str, Any] = {"widths": [16, 32], "channels": 4, "noise": 0.1}


@dataclass
class DiffAENoise:
    """The image's exogenous noise under the diffusion autoencoder.

    Attributes:
        latent: the semantic latent (the posterior mean with the bottleneck).
        x_T: the DDIM inversion of the first stage's latent (pixel design: of the image).
        block_rest: causal mode: each attribute block's rest ``z_k - g_k(factual value)``.
        residual: latent design with ``residual=True``: the pixel residual about the first
            stage's decoder (:meth:`~models.nn.likelihoods.DiscretizedGaussian.noise`).
    """

    latent: Tensor
    x_T: Tensor
    block_rest: dict[str, Tensor] | None = None
    residual: dict[str, Tensor] | None = None


class DiffAEMechanism(ImageMechanism):
    """Semantic encoder, context MLP, denoising UNet, (causal mode) the latent SCM and the DDIM
    schedulers, with the three steps and the denoising objective, as a plain module.

    The schedulers are plain objects, not submodules: they are rebuilt from the settings.

    Args:
        graph: the causal graph (its image parents condition the UNet).
        image_shape: ``(C, H, W)``.
        encoder_widths, latent_dim, causal_latent, block_dim, block_hidden, block_weight,
            scheduler, p_uncond, semantic_kl, steps, guidance_scale, inversion_iters, compile,
            residual, grad_steps: see :class:`DiffusionAutoencoder`.
        unet: ``UNet2DModel`` settings.
        autoencoder: the first stage's settings (all of them,
            :class:`~models.nn.autoencoder.LatentAutoencoder`'s arguments but the image
            channels), or ``None``: diffusion over the pixels.
    """

    def __init__(
        self,
        graph,
        image_shape: Sequence[int],
        unet: Mapping[str, Any],
        encoder_widths: Sequence[int] = (32, 64),
        latent_dim: int = 32,
        causal_latent: bool = False,
        block_dim: int = 4,
        block_hidden: int = 32,
        block_weight: float = 1.0,
        scheduler: Mapping[str, Any] | None = None,
        p_uncond: float = 0.1,
        semantic_kl: float = 0.01,
        steps: int = 10,
        guidance_scale: float = 1.0,
        inversion_iters: int = 2,
        compile: bool = False,
        autoencoder: Mapping[str, Any] | None = None,
        residual: bool = True,
        grad_steps: int | None = 3,
    ):
        options = dict(steps=steps, guidance_scale=guidance_scale, inversion_iters=inversion_iters)
        if autoencoder is not None:
            options["residual"] = residual  # the first stage's pixel residual (latent design)
        super().__init__(**options)
        if grad_steps is not None and grad_steps < 0:
            raise ValueError(f"grad_steps must be >= 0 or null (every step), got {grad_steps}")
        self.grad_steps = grad_steps
        self.autoencoder = None
        if autoencoder is not None:
            self.autoencoder = LatentAutoencoder(image_shape[0], **autoencoder)
            image_shape = self.autoencoder.latent_shape(image_shape)
        #: ``(C, H, W)`` of what the diffusion runs over: the first stage's latent, or the image
        self.diffusion_shape = tuple(int(s) for s in image_shape)
        channels, size, _ = image_shape
        self.causal_latent = causal_latent
        if causal_latent:
            self.latent_scm = LatentSCM(graph, graph.image_parents, block_dim, block_hidden)
            attribute_dim = self.latent_scm.dim
        else:
            self.latent_scm = None
            self.parents = ParentEncoder(graph, graph.image_parents)
            attribute_dim = self.parents.dim
        extra = self.latent_scm.dim if causal_latent else 0
        variational = semantic_kl > 0
        # variational: the encoder also gives the semantic part's log-sd (its last outputs)
        self.latent_size = latent_dim + extra
        self.encoder = ConvEncoder(
            channels, encoder_widths, size, self.latent_size + (latent_dim if variational else 0)
        )
        self.unet = UNet2DModel(
            sample_size=size,
            in_channels=channels,
            out_channels=channels,
            class_embed_type="identity",
            resnet_time_scale_shift="scale_shift",
            **unet,
        )
        width = self.unet.config.block_out_channels[0] * 4  # the UNet's time-embedding size
        self.semantic_dim = latent_dim
        self.context = mlp(latent_dim + attribute_dim + 1, width, width)
        self.semantic_kl = semantic_kl
        self.train_scheduler, self.sampler, self.inverter = build_schedulers(scheduler)
        self.p_uncond = p_uncond
        self.block_weight = block_weight
        self.compile = compile
        self._compiled: Callable | None = None

    # -- networks ------------------------------------------------------------------------------
    def conditioning(self, semantic: Tensor, attributes: Tensor, keep: Tensor) -> Tensor:
        """The UNet's ``class_labels``; ``keep`` ``(B, 1)`` is 0 where the attributes are dropped."""
        return self.context(torch.cat([semantic, attributes * keep, 1.0 - keep], 1))

    def denoiser(self) -> Callable:
        """The UNet, compiled when asked for and on CUDA."""
        if not (self.compile and self.unet.device.type == "cuda"):
            return self.unet
        if self._compiled is None:
            self._compiled = torch.compile(self.unet)
        return self._compiled

    def model_fn(
        self, semantic: Tensor, attributes: Tensor, guidance_scale: float
    ) -> Callable[[Tensor, int], Tensor]:
        """``(x_t, t) -> `` the (guided) network output under this context."""
        unet = self.denoiser()
        ones = semantic.new_ones(len(semantic), 1)
        if guidance_scale != 1.0 and self.p_uncond == 0:
            raise ValueError(
                "guidance_scale != 1 needs a model trained with attribute dropout (p_uncond > 0); "
                "this one has p_uncond=0"
            )
        if guidance_scale == 1.0:
            context = self.conditioning(semantic, attributes, ones)
        elif guidance_scale == 0.0:
            context = self.conditioning(semantic, attributes, ones * 0)
        else:
            context = torch.cat(
                [
                    self.conditioning(semantic, attributes, ones),
                    self.conditioning(semantic, attributes, ones * 0),
                ]
            )

        def model_fn(x: Tensor, t: int) -> Tensor:
            timestep = torch.full((len(context),), t, device=x.device, dtype=torch.long)
            if len(context) == len(x):
                return unet(x, timestep, class_labels=context).sample
            conditional, unconditional = unet(
                torch.cat([x, x]), timestep, class_labels=context
            ).sample.chunk(2)
            return unconditional + guidance_scale * (conditional - unconditional)

        return model_fn

    def encode(self, y: Tensor, sample: bool) -> tuple[Tensor, Tensor]:
        """The latent, and (bottleneck on) the KL of its semantic part to ``N(0, I)`` per image.

        The semantic part is the latent's last ``latent_dim`` entries in both modes; ``sample``
        draws it from the posterior (training), otherwise it is the posterior mean (abduction).
        """
        out = self.encoder(y)
        if not self.semantic_kl:
            return out, out.new_zeros(len(out))
        z, log_sd = out[:, : self.latent_size], out[:, self.latent_size :].clamp(*LOG_SD_RANGE)
        mean = z[:, self.latent_size - self.semantic_dim :]
        kl = standard_normal_kl(mean, log_sd)
        if sample:
            drawn = mean + log_sd.exp() * torch.randn_like(mean)
            z = torch.cat([z[:, : self.latent_size - self.semantic_dim], drawn], 1)
        return z, kl

    def context_parts(self, z: Tensor, pa: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """(semantic part, attribute part) of the UNet's context under the factual attributes."""
        if not self.causal_latent:
            return z, self.parents(pa)
        blocks, style = self.latent_scm.split(z)
        return style, torch.cat(list(blocks.values()), 1)

    # -- training ------------------------------------------------------------------------------
    def loss(self, x: Tensor, pa: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The denoising loss (plus the first stage's reconstruction NLL per pixel, the
        bottleneck's KL and, causal mode, the blocks' fits).

        The first stage and the diffusion train together; the diffusion sees the latent detached,
        so its loss can't shrink or bend the latent to make denoising easier.
        """
        y = to_signed(x)
        logs: dict[str, Tensor] = {}
        if self.autoencoder is not None:
            latent, reconstruction = self.autoencoder.loss(y)
            y = latent.detach()
            logs["reconstruction"] = reconstruction.mean()
        z, kl = self.encode(y, sample=self.training)
        if self.causal_latent:
            blocks, semantic = self.latent_scm.split(z)
            attributes = torch.cat(list(blocks.values()), 1)
            block_losses = self.latent_scm.losses(blocks, pa)
            logs.update(block_losses)
        else:
            semantic, attributes = z, self.parents(pa)
        keep = (torch.rand(len(x), 1, device=x.device) >= self.p_uncond).float()
        if self.training and self.p_uncond > 0:
            # A dropped sample trains the denoiser's unconditional branch, not the encoder.
            semantic = torch.where(keep.bool(), semantic, semantic.detach())
        else:
            keep = torch.ones_like(keep)
        noise = torch.randn_like(y)
        t = torch.randint(
            0, self.train_scheduler.config.num_train_timesteps, (len(x),), device=x.device
        )
        noisy = self.train_scheduler.add_noise(y, noise, t)
        kind = self.train_scheduler.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.train_scheduler.get_velocity(y, noise, t)
        else:
            target = y
        output = self.denoiser()(
            noisy, t, class_labels=self.conditioning(semantic, attributes, keep)
        ).sample
        mse = F.mse_loss(output.float(), target)
        logs["mse"] = mse
        loss = mse
        if self.autoencoder is not None:
            loss = loss + logs["reconstruction"]
        if self.semantic_kl:
            logs["semantic_kl"] = kl.mean()
            loss = loss + self.semantic_kl * kl.mean()
        if self.causal_latent:
            heads = sum(v for k, v in block_losses.items() if k.startswith("head_"))
            fits = sum(v for k, v in block_losses.items() if not k.startswith("head_"))
            loss = loss + self.block_weight * heads + fits
        return loss, logs

    # -- the three steps -----------------------------------------------------------------------
    def abduct(
        self,
        x: Tensor,
        pa: Mapping[str, Tensor],
        steps: int,
        guidance_scale: float,
        inversion_iters: int,
        residual: bool = False,
    ) -> DiffAENoise:
        y = pixels = to_signed(x)
        residual_noise = None
        if self.autoencoder is not None:
            y = self.autoencoder.encode(pixels)
            if residual:
                residual_noise = self.autoencoder.decode(y).noise(pixels)
        z, _ = self.encode(y, sample=False)
        model_fn = self.model_fn(*self.context_parts(z, pa), guidance_scale)
        x_T = ddim_invert(model_fn, y, self.inverter, steps, inversion_iters)
        rest = None
        if self.causal_latent:
            rest = self.latent_scm.rest(self.latent_scm.split(z)[0], pa)
        return DiffAENoise(z, x_T, rest, residual_noise)

    @property
    def can_sample(self) -> bool:
        return self.semantic_kl > 0  # without the bottleneck the semantic latent has no prior

    def prior_noise(
        self,
        pa: Mapping[str, Tensor],
        steps: int,
        guidance_scale: float,
        inversion_iters: int,
        residual: bool = False,
    ) -> DiffAENoise:
        """``x_T ~ N(0, I)`` and the semantic latent from the bottleneck's ``N(0, I)`` prior; in
        causal mode each attribute block is its value's embedding (a rest of 0).

        Raises:
            NotImplementedError: trained without the semantic bottleneck (``semantic_kl=0``), the
                semantic latent has no prior to draw from.
        """
        if not self.semantic_kl:
            raise NotImplementedError(
                "this diffusion autoencoder was trained without the semantic bottleneck "
                "(semantic_kl=0), so its semantic latent has no prior to sample from; train with "
                "model.semantic_kl > 0 (the default) to sample"
            )
        reference = next(iter(pa.values()))
        n, device = len(reference), reference.device
        x_T = torch.randn(n, *self.diffusion_shape, device=device)
        semantic = torch.randn(n, self.semantic_dim, device=device)
        if not self.causal_latent:
            return DiffAENoise(semantic, x_T)
        scm = self.latent_scm
        blocks = torch.zeros(n, scm.dim, device=device)
        rest = {v.name: torch.zeros(n, scm.block_dim, device=device) for v in scm.variables}
        return DiffAENoise(torch.cat([blocks, semantic], 1), x_T, rest)

    def predict(
        self,
        noise: DiffAENoise,
        pa: Mapping[str, Tensor],
        intervened: frozenset[str],
        steps: int,
        guidance_scale: float,
        inversion_iters: int,
        residual: bool = False,
    ) -> Tensor:
        if not isinstance(noise, DiffAENoise):
            raise ValueError(
                f"{type(self).__name__} needs a DiffAENoise abducted by a diffusion autoencoder, "
                f"got {type(noise).__name__}"
            )
        if self.causal_latent:
            if noise.block_rest is None:
                raise ValueError("the causal latent needs noise abducted in causal mode")
            blocks, style = self.latent_scm.split(noise.latent)
            blocks = self.latent_scm.act(blocks, noise.block_rest, pa, intervened)
            semantic, attributes = style, torch.cat(list(blocks.values()), 1)
        else:
            semantic, attributes = noise.latent, self.parents(pa)
        model_fn = self.model_fn(semantic, attributes, guidance_scale)
        y = ddim_sample(model_fn, noise.x_T, self.sampler, steps, self.grad_steps)
        if self.autoencoder is None:
            return from_signed(y).clamp(0.0, 1.0)
        return self.autoencoder.decode(y).image(noise.residual or {}, residual)


class DiffusionAutoencoder(CounterfactualModel):
    """Diffusion autoencoder (optionally CausalDiffAE) behind the counterfactual interface.

    Args:
        graph, image_shape, dataset, scm, scm_weight, lr, weight_decay, ema_decay,
            skip_grad_norm, cf_finetune: see :class:`~models.base.CounterfactualModel`. The EMA's decay
            warms up as ``min(ema_decay, (1 + n) / (10 + n))`` after ``n`` updates, so short runs
            are not stuck near the initial weights.
        autoencoder: the first stage of the latent design: ``True`` for
            :data:`AUTOENCODER_DEFAULTS`, or a mapping of overrides of them (``widths``,
            ``channels``, ``noise``; see :class:`~models.nn.autoencoder.LatentAutoencoder`);
            ``None``: diffusion over the pixels, as checkpoints from before the option were
            trained and are loaded.
        residual: default for keeping the first stage's pixel residual as noise (latent design).
        channels: the UNet's ``block_out_channels`` (one resolution per entry, from the latent's).
        layers_per_block: residual blocks per UNet resolution.
        attention: self-attention at each resolution (``None``: nowhere).
        mid_attention: self-attention in the UNet's middle block.
        norm_num_groups: group-norm groups (must divide every channel count).
        dropout: dropout in the UNet's residual blocks.
        encoder_widths: channels of the semantic encoder's stride-2 stages (over the latent).
        latent_dim: size of the semantic latent (causal mode: of the free style block; may be 0).
        causal_latent: the CausalDiffAE mode (see the module docstring).
        block_dim: size of each attribute's block (causal mode).
        block_hidden: width of the blocks' heads, embeddings and mechanisms (causal mode).
        block_weight: weight of the blocks' attribute supervision (causal mode).
        scheduler: noise-schedule options (see :func:`models.nn.diffusion.build_schedulers`);
            default 1000 linear levels.
        p_uncond: probability of dropping the attributes in training (classifier-free guidance).
        semantic_kl: weight of the semantic bottleneck (0: off, a deterministic encoder, as
            checkpoints from before the option were trained and are loaded). When positive, the semantic part (causal mode: the style block) is a Gaussian posterior
            that training samples and pays ``semantic_kl * KL(q(z | x) || N(0, I))`` for (nats
            per image, added to the per-pixel noise MSE); abduction takes its mean.
        steps: default DDIM steps at counterfactual time.
        guidance_scale: default guidance scale (1: no guidance).
        inversion_iters: default fixed-point refinements per inversion step.
        compile: wrap the UNet with ``torch.compile`` when it runs on CUDA (ignored on CPU).
        grad_steps: the last DDIM steps of a differentiable counterfactual's sampling that carry
            gradients, as counterfactual fine-tuning needs (truncated backpropagation, DRaFT-K of
            Clark et al., ICLR 2024); ``None``: every step. Abduction never carries any.
    """

    def __init__(
        self,
        graph: Mapping[str, Any],
        image_shape: Sequence[int],
        dataset: str = "unknown",
        autoencoder: Mapping[str, Any] | bool | None = True,
        residual: bool = True,
        channels: Sequence[int] = (32, 64),
        layers_per_block: int = 1,
        attention: Sequence[bool] | None = None,
        mid_attention: bool = False,
        norm_num_groups: int = 8,
        dropout: float = 0.0,
        encoder_widths: Sequence[int] = (32, 64),
        latent_dim: int = 32,
        causal_latent: bool = False,
        block_dim: int = 4,
        block_hidden: int = 32,
        block_weight: float = 1.0,
        scheduler: Mapping[str, Any] | None = None,
        p_uncond: float = 0.1,
        semantic_kl: float = 0.01,
        steps: int = 10,
        guidance_scale: float = 1.0,
        inversion_iters: int = 2,
        compile: bool = False,
        grad_steps: int | None = 3,
        scm: Mapping[str, Any] | None = None,
        scm_weight: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        ema_decay: float = 0.999,
        skip_grad_norm: float | None = None,
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
            ema_decay=ema_decay,
            skip_grad_norm=skip_grad_norm,
            cf_finetune=cf_finetune,
        )
        self.save_hyperparameters()
        if autoencoder is True:
            autoencoder = AUTOENCODER_DEFAULTS
        if autoencoder:
            unknown = sorted(set(autoencoder) - set(AUTOENCODER_DEFAULTS))
            if unknown:
                raise ValueError(
                    f"autoencoder has no setting(s) {unknown}; it takes "
                    f"{sorted(AUTOENCODER_DEFAULTS)} (or null: diffusion over the pixels)"
                )
        autoencoder = {**AUTOENCODER_DEFAULTS, **autoencoder} if autoencoder else None
        # the checkpoint keeps the settings themselves, so a later change of defaults can't
        # rebuild a saved model differently
        self.hparams["autoencoder"] = autoencoder
        if not 0.0 <= p_uncond < 1.0:
            raise ValueError(f"p_uncond must be in [0, 1), got {p_uncond}")
        if semantic_kl < 0:
            raise ValueError(
                f"semantic_kl must be >= 0 (0: a deterministic encoder), got {semantic_kl}"
            )
        channels = tuple(int(c) for c in channels)
        attention = tuple(bool(a) for a in attention) if attention else (False,) * len(channels)
        if len(attention) != len(channels):
            raise ValueError(
                f"attention needs one flag per UNet resolution ({len(channels)}), got {attention}"
            )
        bad = [c for c in channels if c % norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={norm_num_groups} must divide every channel count")
        unet = dict(
            block_out_channels=channels,
            layers_per_block=layers_per_block,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
            up_block_types=tuple(
                "AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)
            ),
            add_attention=mid_attention,
            norm_num_groups=norm_num_groups,
            dropout=dropout,
        )
        self.set_mechanism(
            DiffAEMechanism(
                self.graph,
                self.image_shape,
                unet,
                encoder_widths=encoder_widths,
                latent_dim=latent_dim,
                causal_latent=causal_latent,
                block_dim=block_dim,
                block_hidden=block_hidden,
                block_weight=block_weight,
                scheduler=scheduler,
                p_uncond=p_uncond,
                semantic_kl=semantic_kl,
                steps=steps,
                guidance_scale=guidance_scale,
                inversion_iters=inversion_iters,
                compile=compile,
                autoencoder=autoencoder,
                residual=residual,
                grad_steps=grad_steps,
            )
        )

    @property
    def causal_latent(self) -> bool:
        return self.net.causal_latent
