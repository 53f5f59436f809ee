"""Tiny instances of every model family, for the contract tests and the per-dataset tests."""

from __future__ import annotations

import itertools

from models.diffae import DiffusionAutoencoder
from models.flow import ConditionalFlow
from models.hvae import HierarchicalVAE
from models.vae import ConditionalVAE

#: Null-intervention bound of the tiny diffusion autoencoders, max absolute error on [0, 1]. DDIM
#: inversion is approximate, unlike the other families' abduction. After ``fit_briefly``, with 10
#: DDIM steps and 5 fixed-point refinements per inversion step, seeds 0-2 measured 0.07-0.24
#: (diffae) and 0.12-0.34 (causal_diffae); plain inversion (0 refinements) or 2 steps reach 1.0.
DIFFAE_NULL_BOUND = 0.5


def tiny_diffae(dm, **overrides) -> DiffusionAutoencoder:
    settings = dict(
        channels=(8, 16),
        norm_num_groups=4,
        encoder_widths=(8, 16),
        latent_dim=4,
        block_dim=2,
        block_hidden=8,
        steps=10,
        inversion_iters=5,
        semantic_kl=0.0,  # as DIFFAE_NULL_BOUND was measured; the samplers below turn it on
        scm={"hidden": 16, "transforms": 2},
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
            scm={"hidden": 16, "transforms": 2},
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
            scm={"hidden": 16, "transforms": 2},
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
            scm={"hidden": 16, "transforms": 2},
        ),
        1e-4,  # exact up to float32 rounding (~1e-6)
    ),
    "diffae": (
        lambda dm: tiny_diffae(dm, causal_latent=False),
        DIFFAE_NULL_BOUND,
    ),
    "causal_diffae": (
        lambda dm: tiny_diffae(dm, causal_latent=True),
        DIFFAE_NULL_BOUND,
    ),
}


def fit_briefly(model, datamodule, steps: int = 15) -> None:
    """A few optimiser steps, so the mechanisms are not at their initialisation."""
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
