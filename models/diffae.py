"""Causal diffusion autoencoder image mechanism, with deterministic DDIM abduction.

After diffusion autoencoders (Preechakul, Chatthee, Wizadwongsa & Suwajanakorn, CVPR 2022: a
semantic encoder plus the DDIM-inverted "stochastic code"), Diff-SCM (Sanchez & Tsaftaris, CLeaR
2022: counterfactuals by inverting a diffusion model under the factual attributes and sampling
under the counterfactual ones, with guidance) and CausalDiffAE (Komanduri, Zhao, Chen & Wu,
ICASSP 2024: a causally structured semantic latent).

Networks (``self.net``, averaged by the EMA):

- ``encoder``: a :class:`~models.nn.convnets.ConvEncoder`, ``x -> z`` (the semantic latent);
- ``context``: a small MLP of ``[semantic latent, attribute part, drop flag]`` into the UNet's
  time-embedding space. It reaches every residual block of a diffusers ``UNet2DModel``
  (``class_embed_type="identity"``: added to the time embedding, then ``scale_shift``: an adaptive
  group norm, as the diffusion autoencoder's AdaGN);
- ``unet``: the denoiser ``eps(x_t, t, context)``.

Exogenous noise of an image (abduction, deterministic):

- ``latent``: ``z = encoder(x)``;
- ``x_T``: the DDIM inversion of ``x`` (on [-1, 1]) under ``z`` and the factual attributes.
- causal mode only: ``factual_<name>``, the factual attributes (not noise: they let prediction
  tell intervened attributes from recomputed ones).

Prediction runs DDIM (``eta = 0``) from ``x_T`` under ``z`` and the counterfactual attributes.
The null intervention gives the input back up to the inversion's error: it shrinks with
``steps`` and, much faster, with ``inversion_iters`` fixed-point refinements per inversion step
(see :mod:`models.nn.diffusion`).

Counterfactual-time options (defaults are the hyperparameters of the same names):

- ``steps``: DDIM steps of the inversion and of the sampling (cost: about ``2 + inversion_iters``
  network evaluations per step, doubled with guidance);
- ``guidance_scale``: classifier-free guidance on the attributes, ``eps_u + s (eps_c - eps_u)``,
  used in the inversion and in the sampling alike (1: off). Training drops the attributes with
  probability ``p_uncond`` (zeros plus a flag); in a dropped sample the encoder gets no gradient,
  so the dropout gives the semantic latent no reason to learn the attributes;
- ``inversion_iters``: fixed-point refinements per inversion step (0: plain DDIM inversion).

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

Prediction under counterfactual attributes: an attribute is *intervened* where its value differs
from the factual one (abduction keeps those as ``factual_<name>`` in the image noise) and breaks
its own mechanism in the attribute SCM under the abducted attribute noise (descendants that the SCM
recomputed satisfy it; the null intervention changes nothing). An intervened block is shifted by
``g_k(new value) - g_k(factual value)`` (its sample-specific rest stays); every block downstream of an intervened one is recomputed as
``f_k(new parents' blocks) + u_k``; the others stay as abducted. The attribute values that
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
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DModel
from torch import Tensor, nn

from models.base import CounterfactualModel, Exogenous
from models.nn.conditioning import ParentEncoder
from models.nn.convnets import ConvEncoder
from models.nn.diffusion import build_schedulers, ddim_invert, ddim_sample
from models.nn.gaussian import LOG_SD_RANGE, standard_normal_kl
from models.nn.latent_scm import LatentSCM, mlp
from models.nn.likelihoods import from_signed, to_signed

__all__ = ["DiffusionAutoencoder", "LatentSCM"]

#: Normalised distance above which an attribute breaks its mechanism (an intervention); the
#: attribute flows invert to ~1e-5.
_INTERVENED_ATOL = 1e-3


class DiffAENetworks(nn.Module):
    """Semantic encoder, context MLP, denoising UNet and (causal mode) the latent SCM."""

    def __init__(
        self,
        image_shape: Sequence[int],
        encoder_widths: Sequence[int],
        latent_dim: int,
        attribute_dim: int,
        latent_scm: LatentSCM | None,
        unet: Mapping[str, Any],
        variational: bool = False,
    ):
        super().__init__()
        channels, size, _ = image_shape
        self.latent_scm = latent_scm
        extra = latent_scm.dim if latent_scm is not None else 0
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

    def conditioning(self, semantic: Tensor, attributes: Tensor, keep: Tensor) -> Tensor:
        """The UNet's ``class_labels``; ``keep`` ``(B, 1)`` is 0 where the attributes are dropped."""
        return self.context(torch.cat([semantic, attributes * keep, 1.0 - keep], 1))


class DiffusionAutoencoder(CounterfactualModel):
    """Diffusion autoencoder (optionally CausalDiffAE) behind the counterfactual interface.

    Args:
        graph, image_shape, dataset, scm, scm_weight, lr, weight_decay, ema_decay,
            skip_grad_norm: see :class:`~models.base.CounterfactualModel`. The EMA's decay
            warms up as ``min(ema_decay, (1 + n) / (10 + n))`` after ``n`` updates, so short runs
            are not stuck near the initial weights.
        channels: the UNet's ``block_out_channels`` (one resolution per entry).
        layers_per_block: residual blocks per UNet resolution.
        attention: self-attention at each resolution (``None``: nowhere).
        mid_attention: self-attention in the UNet's middle block.
        norm_num_groups: group-norm groups (must divide every channel count).
        dropout: dropout in the UNet's residual blocks.
        encoder_widths: channels of the semantic encoder's stride-2 stages.
        latent_dim: size of the semantic latent (causal mode: of the free style block; may be 0).
        causal_latent: the CausalDiffAE mode (see the module docstring).
        block_dim: size of each attribute's block (causal mode).
        block_hidden: width of the blocks' heads, embeddings and mechanisms (causal mode).
        block_weight: weight of the blocks' attribute supervision (causal mode).
        scheduler: noise-schedule options (see :func:`models.nn.diffusion.build_schedulers`);
            default 1000 linear levels.
        p_uncond: probability of dropping the attributes in training (classifier-free guidance).
        semantic_kl: weight of the semantic bottleneck (0: off, a deterministic encoder; the
            default here, so checkpoints from before the option load as they were trained, while
            ``configs/model/diffae.yaml`` turns it on). When
            positive, the semantic part (causal mode: the style block) is a Gaussian posterior
            that training samples and pays ``semantic_kl * KL(q(z | x) || N(0, I))`` for (nats
            per image, added to the per-pixel noise MSE); abduction takes its mean.
        steps: default DDIM steps at counterfactual time.
        guidance_scale: default guidance scale (1: no guidance).
        inversion_iters: default fixed-point refinements per inversion step.
        compile: wrap the UNet with ``torch.compile`` when it runs on CUDA (ignored on CPU).
    """

    options = ("steps", "guidance_scale", "inversion_iters")

    def __init__(
        self,
        graph: Mapping[str, Any],
        image_shape: Sequence[int],
        dataset: str = "unknown",
        channels: Sequence[int] = (32, 64, 64),
        layers_per_block: int = 1,
        attention: Sequence[bool] | None = None,
        mid_attention: bool = False,
        norm_num_groups: int = 8,
        dropout: float = 0.0,
        encoder_widths: Sequence[int] = (32, 64, 128),
        latent_dim: int = 32,
        causal_latent: bool = False,
        block_dim: int = 4,
        block_hidden: int = 32,
        block_weight: float = 1.0,
        scheduler: Mapping[str, Any] | None = None,
        p_uncond: float = 0.1,
        semantic_kl: float = 0.0,
        steps: int = 20,
        guidance_scale: float = 1.0,
        inversion_iters: int = 2,
        compile: bool = False,
        scm: Mapping[str, Any] | None = None,
        scm_weight: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        ema_decay: float = 0.999,
        skip_grad_norm: float | None = None,
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
        )
        self.save_hyperparameters()
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
        self.causal_latent = causal_latent
        if causal_latent:
            latent_scm = LatentSCM(self.graph, self.graph.image_parents, block_dim, block_hidden)
            attribute_dim = latent_scm.dim
        else:
            latent_scm = None
            self.parents = ParentEncoder(self.graph, self.graph.image_parents)
            attribute_dim = self.parents.dim
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
        self.net = DiffAENetworks(
            self.image_shape,
            encoder_widths,
            latent_dim,
            attribute_dim,
            latent_scm,
            unet,
            variational=semantic_kl > 0,
        )
        self.semantic_kl = semantic_kl
        # Plain objects, not submodules: rebuilt from the hyperparameters on load.
        self.train_scheduler, self.sampler, self.inverter = build_schedulers(scheduler)
        self.p_uncond = p_uncond
        self.block_weight = block_weight
        self._compiled: dict[int, Callable] = {}
        self.setup_ema()

    # -- networks ------------------------------------------------------------------------------
    def _denoiser(self, net: DiffAENetworks) -> Callable:
        """The UNet, compiled when asked for and on CUDA."""
        if not (self.hparams.compile and net.unet.device.type == "cuda"):
            return net.unet
        if id(net) not in self._compiled:
            self._compiled[id(net)] = torch.compile(net.unet)
        return self._compiled[id(net)]

    def _model_fn(
        self, net: DiffAENetworks, semantic: Tensor, attributes: Tensor, guidance_scale: float
    ) -> Callable[[Tensor, int], Tensor]:
        """``(x_t, t) -> `` the (guided) network output under this context."""
        unet = self._denoiser(net)
        ones = semantic.new_ones(len(semantic), 1)
        if guidance_scale != 1.0 and self.p_uncond == 0:
            raise ValueError(
                "guidance_scale != 1 needs a model trained with attribute dropout (p_uncond > 0); "
                "this one has p_uncond=0"
            )
        if guidance_scale == 1.0:
            context = net.conditioning(semantic, attributes, ones)
        elif guidance_scale == 0.0:
            context = net.conditioning(semantic, attributes, ones * 0)
        else:
            context = torch.cat(
                [
                    net.conditioning(semantic, attributes, ones),
                    net.conditioning(semantic, attributes, ones * 0),
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

    # -- training ------------------------------------------------------------------------------
    def _encode(self, net: DiffAENetworks, y: Tensor, sample: bool) -> tuple[Tensor, Tensor]:
        """The latent, and (bottleneck on) the KL of its semantic part to ``N(0, I)`` per image.

        The semantic part is the latent's last ``latent_dim`` entries in both modes; ``sample``
        draws it from the posterior (training), otherwise it is the posterior mean (abduction).
        """
        out = net.encoder(y)
        if not self.semantic_kl:
            return out, out.new_zeros(len(out))
        z, log_sd = out[:, : net.latent_size], out[:, net.latent_size :].clamp(*LOG_SD_RANGE)
        mean = z[:, net.latent_size - net.semantic_dim :]
        kl = standard_normal_kl(mean, log_sd)
        if sample:
            drawn = mean + log_sd.exp() * torch.randn_like(mean)
            z = torch.cat([z[:, : net.latent_size - net.semantic_dim], drawn], 1)
        return z, kl

    def image_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        net = self.mechanism
        x, pa = batch["x"], batch["pa"]
        y = to_signed(x)
        z, kl = self._encode(net, y, sample=self.training)
        logs: dict[str, Tensor] = {}
        if self.causal_latent:
            blocks, semantic = net.latent_scm.split(z)
            attributes = torch.cat(list(blocks.values()), 1)
            block_losses = net.latent_scm.losses(blocks, pa)
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
        output = self._denoiser(net)(
            noisy, t, class_labels=net.conditioning(semantic, attributes, keep)
        ).sample
        mse = F.mse_loss(output.float(), target)
        logs["mse"] = mse
        loss = mse
        if self.semantic_kl:
            logs["semantic_kl"] = kl.mean()
            loss = loss + self.semantic_kl * kl.mean()
        if self.causal_latent:
            heads = sum(v for k, v in block_losses.items() if k.startswith("head_"))
            fits = sum(v for k, v in block_losses.items() if not k.startswith("head_"))
            loss = loss + self.block_weight * heads + fits
        return loss, logs

    # -- the three steps -----------------------------------------------------------------------
    def _context_parts(
        self, net: DiffAENetworks, z: Tensor, pa: Mapping[str, Tensor]
    ) -> tuple[Tensor, Tensor]:
        """(semantic part, attribute part) of the UNet's context under the factual attributes."""
        if not self.causal_latent:
            return z, self.parents(pa)
        blocks, style = net.latent_scm.split(z)
        return style, torch.cat(list(blocks.values()), 1)

    def abduct_image(
        self,
        x: Tensor,
        pa: Mapping[str, Tensor],
        steps: int,
        guidance_scale: float,
        inversion_iters: int,
    ) -> dict[str, Tensor]:
        net = self.mechanism
        y = to_signed(x)
        z, _ = self._encode(net, y, sample=False)
        model_fn = self._model_fn(net, *self._context_parts(net, z, pa), guidance_scale)
        x_T = ddim_invert(model_fn, y, self.inverter, steps, inversion_iters)
        noise = {"latent": z, "x_T": x_T}
        if self.causal_latent:  # to tell intervened attributes in predict
            noise.update({f"factual_{name}": pa[name] for name in self.graph.names})
        return noise

    def intervened(self, noise: Exogenous, pa: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per attribute, ``(B,)`` bool: where ``pa`` was intervened on, not merely recomputed.

        An attribute is intervened where it differs from its factual value (kept in the image
        noise by abduction) and does not satisfy its own mechanism under its abducted noise: a
        descendant the attribute SCM recomputed satisfies it. ``counterfactual`` abducts only the
        recomputed attributes' noise; an attribute without noise was not recomputed, so a change
        of it is an intervention.
        """
        missing = [n for n in self.graph.names if f"factual_{n}" not in noise.image]
        if missing:
            raise ValueError(
                f"the causal latent needs the factual attributes {missing} in the image noise; "
                "abduct it with this model (model.abduct(x, pa))"
            )
        out = {}
        for variable in self.graph.variables:
            name = variable.name
            changed = pa[name] != noise.image[f"factual_{name}"]
            if name in noise.attributes:
                expected = self.scm.mechanisms[name].predict(noise.attributes[name], pa)
                if variable.is_continuous:
                    expected = expected.clamp(*variable.support)
                    distance = (variable.normalise(pa[name]) - variable.normalise(expected)).abs()
                    changed &= distance > _INTERVENED_ATOL
                else:
                    changed &= pa[name] != expected
            out[name] = changed
        return out

    def predict(
        self,
        noise: Exogenous,
        pa: Mapping[str, Tensor],
        steps: int,
        guidance_scale: float,
        inversion_iters: int,
    ) -> Tensor:
        missing = {"latent", "x_T"} - set(noise.image)
        if missing:
            raise ValueError(
                f"{type(self).__name__} needs the noise {sorted(missing)} abducted by a diffusion "
                f"autoencoder, got {sorted(noise.image)}"
            )
        net = self.mechanism
        z = noise.image["latent"]
        if self.causal_latent:
            blocks, style = net.latent_scm.split(z)
            factual = {name: noise.image[f"factual_{name}"] for name in self.graph.names}
            blocks = net.latent_scm.act(blocks, pa, self.intervened(noise, pa), factual)
            semantic, attributes = style, torch.cat(list(blocks.values()), 1)
        else:
            semantic, attributes = z, self.parents(pa)
        model_fn = self._model_fn(net, semantic, attributes, guidance_scale)
        y = ddim_sample(model_fn, noise.image["x_T"], self.sampler, steps)
        return from_signed(y).clamp(0.0, 1.0)
