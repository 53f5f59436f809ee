"""Tiny instances of every model family, for the contract tests and the per-dataset tests."""

from __future__ import annotations

import itertools

from models.diffae import DiffusionAutoencoder
from models.flow import ConditionalFlow
from models.hvae import HierarchicalVAE
from models.ild import InvertibleLatentDomain, LatentDomainVAE
from models.vae import ConditionalVAE

#: Null-intervention bound of the tiny diffusion autoencoders, max absolute error on [0, 1]. DDIM
#: inversion is approximate, unlike the other families' abduction. After ``fit_briefly``'s
#: DIFFAE_FIT_STEPS, with 10 DDIM steps and 5 fixed-point refinements per inversion step, the
#: latent design with its residual measured 0.07-0.18 (diffae, seeds 0-2; the pixel design:
#: 0.07-0.24 after 15 steps); plain inversion (0 refinements) reaches 0.65-0.77.
DIFFAE_NULL_BOUND = 0.5
#: Optimiser steps of a tiny diffusion autoencoder in ``fit_briefly``: its first stage and its
#: denoiser both need to leave their initialisation for the inversion to be near exact (after 15
#: steps the latent design's null intervention was off by up to 0.69).
DIFFAE_FIT_STEPS = 40
#: The tiny attribute SCM: 20 steps of fitting apart when a Trainer starts (500 take about 8 s).
TINY_SCM = {"hidden": 16, "transforms": 2, "fit_steps": 20}


def domain_of(graph) -> str:
    """ILD's domain on a dataset: its ``domain`` variable, else its first categorical image parent
    (Morpho-MNIST's digit: "this image, had it been another digit's domain")."""
    if "domain" in graph:
        return "domain"
    categorical = [n for n in graph.image_parents if not graph[n].is_continuous]
    if not categorical:
        raise ValueError("ILD needs a categorical image parent as its domain")
    return categorical[0]


def tiny_ild(dm, **overrides) -> InvertibleLatentDomain:
    settings = dict(
        domain=domain_of(dm.graph),
        intervention_dims=8,
        domain_hidden=16,
        scales=2,
        steps=2,
        hidden=8,
        scm=TINY_SCM,
    )
    return InvertibleLatentDomain(
        graph=dm.graph.to_dict(),
        image_shape=dm.image_shape,
        dataset=dm.name,
        **{**settings, **overrides},
    )


def tiny_ild_vae(dm, **overrides) -> LatentDomainVAE:
    settings = dict(
        domain=domain_of(dm.graph),
        intervention_dims=2,
        domain_hidden=16,
        latent_dim=6,
        widths=(8, 16),
        hidden=32,
        scm=TINY_SCM,
    )
    return LatentDomainVAE(
        graph=dm.graph.to_dict(),
        image_shape=dm.image_shape,
        dataset=dm.name,
        **{**settings, **overrides},
    )


def tiny_diffae(dm, **overrides) -> DiffusionAutoencoder:
    settings = dict(
        autoencoder={"widths": (8,), "channels": 2},  # a 2 x 16 x 16 latent of 32 px digits
        channels=(8, 16),
        norm_num_groups=4,
        encoder_widths=(8, 16),
        latent_dim=4,
        block_dim=2,
        block_hidden=8,
        steps=10,
        inversion_iters=5,
        semantic_kl=0.0,  # as DIFFAE_NULL_BOUND was measured; the samplers below turn it on
        scm=TINY_SCM,
        ema_decay=0.9,
    )
    return DiffusionAutoencoder(
        graph=dm.graph.to_dict(),
        image_shape=dm.image_shape,
        dataset=dm.name,
        **{**settings, **overrides},
    )


#: Family name -> constructor of a tiny instance, and the null intervention's error bound (max
#: absolute error on [0, 1]). Later families join here and run the whole contract.
FAMILIES = {
    "vae": (
        lambda dm: ConditionalVAE(
            graph=dm.graph.to_dict(),
            image_shape=dm.image_shape,
            dataset=dm.name,
            latent_dim=4,
            widths=(8, 16),
            hidden=32,
            scm=TINY_SCM,
        ),
        1e-4,
    ),
    "hvae": (
        lambda dm: HierarchicalVAE(
            graph=dm.graph.to_dict(),
            image_shape=dm.image_shape,
            dataset=dm.name,
            width=8,
            levels=[[4, 1], [8, 1]],
            z_channels=2,
            scm=TINY_SCM,
            ema_decay=0.9,
        ),
        1e-4,
    ),
    "flow": (
        lambda dm: ConditionalFlow(
            graph=dm.graph.to_dict(),
            image_shape=dm.image_shape,
            dataset=dm.name,
            scales=2,
            steps=2,
            hidden=8,
            scm=TINY_SCM,
        ),
        1e-4,  # exact up to float32 rounding (~1e-6)
    ),
    "ild": (tiny_ild, 1e-4),  # a flow too
    "ild_vae": (tiny_ild_vae, 1e-4),  # exact through the pixel residual, as the VAE
    "diffae": (
        lambda dm: tiny_diffae(dm, causal_latent=False),
        DIFFAE_NULL_BOUND,
    ),
    "causal_diffae": (
        lambda dm: tiny_diffae(dm, causal_latent=True),
        DIFFAE_NULL_BOUND,
    ),
}


def fit_briefly(model, datamodule, steps: int | None = None) -> None:
    """The attribute SCM fitted apart, then a few optimiser steps (default: 15, DIFFAE_FIT_STEPS for
    a diffusion autoencoder), so the mechanisms are not at their initialisation."""
    if steps is None:
        steps = DIFFAE_FIT_STEPS if isinstance(model, DiffusionAutoencoder) else 15
    model.scm.fit(datamodule.train_attributes())  # as a Trainer's start does (scm.fit_steps)
    optimiser = model.configure_optimizers()
    model.train()
    loader = itertools.cycle(datamodule.train_dataloader())
    for _ in range(steps):
        loss = model._step(next(loader), "train")
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        model.on_train_batch_end(None, None, 0)  # the EMA update
    model.eval()


def sampler_of(name: str, model, dm):
    """``model``, or, for a tiny diffusion autoencoder without the semantic bottleneck (which has
    no prior to sample from), an untrained one with it, to check sampling on."""
    if model.mechanism.can_sample:
        return model
    return tiny_diffae(dm, semantic_kl=0.01, causal_latent=name == "causal_diffae").eval()
