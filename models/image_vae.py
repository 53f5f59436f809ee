"""An unconditional VAE over a dataset's images: the latent space of the minimality metric.

The counterfactual latent divergence (CLD, ``metrics/minimality.py``) compares images by the KL
divergence between their posteriors ``q(z | x)`` under a VAE that sees no attribute, so that the
distance says how much of the image changed, not which attributes it was told it has. Its
networks are the conditional VAE's (:class:`~models.vae.VAEMechanism`) with no image parents.

    >>> vae = ImageVAE(datamodule.graph.to_dict(), datamodule.image_shape, dataset="morphomnist")
    >>> mean, log_sd = vae.posterior(images)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from datamodules.base import CausalGraph
from models.base import CHECKPOINT_CLASS_KEY, stamp_checkpoint
from models.vae import VAEMechanism

__all__ = ["ImageVAE"]


class ImageVAE(pl.LightningModule):
    """``q(z | x)`` and ``p(x | z)`` trained by the ELBO on real training images only.

    Args:
        graph: the datamodule's causal graph (kept for the record; the networks see no attribute).
        image_shape: ``(C, H, W)``.
        dataset: the datamodule's name.
        latent_dim, widths, hidden: the networks' sizes (see :class:`~models.vae.ConditionalVAE`).
        lr: AdamW learning rate.
    """

    def __init__(
        self,
        graph: Mapping[str, Any],
        image_shape: Sequence[int],
        dataset: str = "unknown",
        latent_dim: int = 16,
        widths: Sequence[int] = (32, 64, 128),
        hidden: int = 256,
        lr: float = 1e-3,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.graph = CausalGraph.from_dict(graph)
        self.dataset_name = dataset
        self.image_shape = tuple(int(s) for s in image_shape)
        unconditional = CausalGraph(self.graph.variables, image_parents=())
        self.net = VAEMechanism(unconditional, self.image_shape, latent_dim, widths, hidden)
        self.lr = lr

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-sd of ``q(z | x)``, each ``(B, latent_dim)``; images in [0, 1]."""
        no_attributes = {"_": torch.zeros(len(x), device=x.device)}  # the parent encoder's batch
        return self.net.encode(x.float(), no_attributes)

    def _step(self, batch: Mapping[str, Any], stage: str) -> Tensor:
        loss, logs = self.net.loss(batch["x"], batch["pa"])
        self.log_dict(
            {
                f"{stage}/loss": loss.detach(),
                **{f"{stage}/{k}": v.detach() for k, v in logs.items()},
            },
            prog_bar=stage != "train",
            on_epoch=True,
            on_step=False,
            batch_size=len(batch["x"]),
            sync_dist=True,
        )
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_CLASS_KEY] = type(self).__name__
        stamp_checkpoint(checkpoint)
