"""Anti-causal attribute predictors: the judges of counterfactual effectiveness.

One convolutional trunk, trained on real images only, with a head per attribute: a regressor
(of the normalised value, L1 loss) for continuous attributes and a classifier for categorical
ones. Its penultimate layer also serves as the feature extractor of FID / KID when Inception
weights are not available (they can't be downloaded offline).

    python train.py model=predictor        # or let evaluate.py train and cache one
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.base import CausalGraph
from models.base import CHECKPOINT_CLASS_KEY
from models.nn.convnets import ConvEncoder
from models.nn.likelihoods import to_signed

__all__ = ["AttributePredictor"]


class AttributePredictor(pl.LightningModule):
    """Predict every attribute of an image.

    Args:
        graph: the datamodule's causal graph (``CausalGraph.to_dict()``).
        image_shape: ``(C, H, W)``.
        dataset: the datamodule's name.
        widths: channels of the stride-2 convolution stages.
        features: size of the penultimate layer (the realism feature space).
        lr: AdamW learning rate.
        augment: random shifts of up to 2 pixels during training, so the judge generalises to
            slightly misplaced strokes instead of memorising pixel positions.
    """

    def __init__(
        self,
        graph: Mapping[str, Any],
        image_shape: Sequence[int],
        dataset: str = "unknown",
        widths: Sequence[int] = (32, 64, 128),
        features: int = 128,
        lr: float = 1e-3,
        augment: bool = True,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.graph = CausalGraph.from_dict(graph)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.dataset_name = dataset
        channels, size, _ = self.image_shape
        self.trunk = nn.Sequential(
            ConvEncoder(channels, widths, size, features), nn.SiLU(), nn.Dropout(0.1)
        )
        self.heads = nn.ModuleDict(
            {
                v.name: nn.Linear(features, 1 if v.is_continuous else v.num_classes)
                for v in self.graph.variables
            }
        )
        self.lr = lr
        self.augment = augment
        self.num_features = features

    def features(self, x: Tensor) -> Tensor:
        """The penultimate layer, ``(B, features)``; images in [0, 1]."""
        return self.trunk(to_signed(x.float()))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Predicted attributes in natural units (class ids for categorical attributes)."""
        out = {}
        for name, raw in self._raw(x).items():
            variable = self.graph[name]
            out[name] = (
                variable.denormalise(raw.squeeze(-1)) if variable.is_continuous else raw.argmax(-1)
            )
        return out

    def _raw(self, x: Tensor) -> dict[str, Tensor]:
        h = self.features(x)
        return {name: head(h) for name, head in self.heads.items()}

    def _shift(self, x: Tensor) -> Tensor:
        dx, dy = torch.randint(-2, 3, (2,)).tolist()
        return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))

    def _step(self, batch: Mapping[str, Any], stage: str) -> Tensor:
        x = self._shift(batch["x"]) if stage == "train" and self.augment else batch["x"]
        raw = self._raw(x)
        losses, logs = [], {}
        for name, output in raw.items():
            variable, target = self.graph[name], batch["pa"][name]
            if variable.is_continuous:
                error = output.squeeze(-1) - variable.normalise(target.float())
                losses.append(error.abs().mean())
                logs[f"{name}_mae"] = (error.abs() * variable.scale).mean()
            else:
                losses.append(F.cross_entropy(output, target.long()))
                logs[f"{name}_acc"] = (output.argmax(-1) == target).float().mean()
        loss = torch.stack(losses).sum()
        logs["loss"] = loss
        self.log_dict(
            {f"{stage}/{k}": v.detach() for k, v in logs.items()},
            prog_bar=stage != "train",
            on_epoch=True,
            on_step=False,
            batch_size=len(x),
        )
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        return self._step(batch, "test")

    def configure_optimizers(self):
        optimiser = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=1e-4)
        epochs = max(1, self.trainer.max_epochs or 1) if self._trainer is not None else 1
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=epochs)
        return {"optimizer": optimiser, "lr_scheduler": schedule}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_CLASS_KEY] = type(self).__name__
