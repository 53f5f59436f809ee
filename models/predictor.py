"""Anti-causal attribute predictors: the judges of counterfactual effectiveness.

A convolutional trunk, trained on real images only, with a head per attribute: a regressor
(of the normalised value, L1 loss) for continuous attributes and a classifier for categorical
ones. Its penultimate layer also serves as the feature extractor of FID / KID when Inception
weights are not available (they can't be downloaded offline).

Two trunks, so that the judge a model is fine-tuned against and the judge that scores it can
differ in architecture, not only in their weights (see ``metrics/judges.py``):

- ``arch="conv"``: stride-2 convolutions and a flattened linear read-out (:class:`ConvEncoder`);
- ``arch="resnet"``: a ResNet (skip-connected CNN) with global average pooling (:class:`ResNetEncoder`).

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
from models.base import CHECKPOINT_CLASS_KEY, stamp_checkpoint
from models.nn.augment import AUGMENTATIONS, augment
from models.nn.convnets import ConvEncoder, _group_norm
from models.nn.likelihoods import to_signed

__all__ = ["ARCHITECTURES", "AUGMENTATIONS", "AttributePredictor", "ResNetEncoder"]

ARCHITECTURES = ("conv", "resnet")


class _ResNetBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            _group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _group_norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class ResNetEncoder(nn.Module):
    """``(B, C, H, W)`` -> ``(B, out_features)``: a small residual CNN (He et al., CVPR 2016).

    A 4x4 stride-2 stem, then per width a pre-activation residual block (each width after the
    first starts with a stride-2 3x3 convolution), then a linear read-out of the last feature map.
    Where :class:`ConvEncoder` stacks plain strided convolutions, this trunk sums residual paths
    and normalises before each convolution, so the two judges are wrong in different ways.

    Measured on embedded Morpho-MNIST (2 CPU cores, 30 epochs): the stem halves the resolution
    at once, because a 3x3 stage at the full 32 px made a step 4x slower; a global average pool
    instead of the linear read-out classified 59-86% of the test digits (by seed and learning
    rate) against 97% with it.

    Args:
        in_channels: image channels.
        widths: channels at each stage; the stem and each later stage halve the resolution.
        image_size: ``H`` (= ``W``), divisible by ``2 ** len(widths)``.
        out_features: size of the output vector.
    """

    def __init__(self, in_channels: int, widths: Sequence[int], image_size: int, out_features: int):
        super().__init__()
        if image_size % 2 ** len(widths):
            raise ValueError(f"image size {image_size} is not divisible by 2^{len(widths)}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 4, stride=2, padding=1)]
        previous = widths[0]
        for stage, width in enumerate(widths):
            if stage:
                layers.append(nn.Conv2d(previous, width, 3, stride=2, padding=1))
            layers.append(_ResNetBlock(width))
            previous = width
        side = image_size // 2 ** len(widths)
        layers += [
            _group_norm(previous),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(previous * side * side, out_features),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def _augmentation(augment: bool | str) -> str:
    # True / False: the checkpoints written before the augmentation had a name
    name = {True: "shift", False: "none"}.get(augment, augment)
    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation {augment!r}; choose one of {AUGMENTATIONS}")
    return name


class AttributePredictor(pl.LightningModule):
    """Predict every attribute of an image.

    Args:
        graph: the datamodule's causal graph (``CausalGraph.to_dict()``).
        image_shape: ``(C, H, W)``.
        dataset: the datamodule's name.
        widths: channels of the stride-2 stages of the trunk.
        features: size of the penultimate layer (the realism feature space).
        lr: AdamW learning rate.
        augment: what varies the training images, so the judge generalises to slightly misplaced
            strokes instead of memorising pixel positions; none of them changes an attribute.
            ``"shift"`` (or ``True``): the batch rolled by up to 2 pixels; ``"affine"``: each
            image rotated by up to 5 degrees and moved by up to 3 pixels; ``"none"`` (or
            ``False``).
        arch: the trunk, ``"conv"`` (:class:`ConvEncoder`) or ``"resnet"``
            (:class:`ResNetEncoder`).

    Example:
        >>> predictor = AttributePredictor(datamodule.graph.to_dict(), datamodule.image_shape)
        >>> predictor(images)["thickness"]         # natural units; class ids for categorical
    """

    def __init__(
        self,
        graph: Mapping[str, Any],
        image_shape: Sequence[int],
        dataset: str = "unknown",
        widths: Sequence[int] = (32, 64, 128),
        features: int = 128,
        lr: float = 1e-3,
        augment: bool | str = True,
        arch: str = "conv",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.graph = CausalGraph.from_dict(graph)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.dataset_name = dataset
        channels, size, _ = self.image_shape
        if arch == "conv":
            encoder: nn.Module = ConvEncoder(channels, widths, size, features)
        elif arch == "resnet":
            encoder = ResNetEncoder(channels, widths, size, features)
        else:
            raise ValueError(f"unknown predictor arch {arch!r}; choose one of {ARCHITECTURES}")
        self.trunk = nn.Sequential(encoder, nn.SiLU(), nn.Dropout(0.1))
        self.heads = nn.ModuleDict(
            {
                v.name: nn.Linear(features, 1 if v.is_continuous else v.num_classes)
                for v in self.graph.variables
            }
        )
        self.lr = lr
        self.arch = arch
        self.augment = _augmentation(augment)
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

    def augmentation(self, x: Tensor) -> Tensor:
        """A random training-time variation of the images ``x`` (see ``augment``)."""
        return augment(x, self.augment)

    def _step(self, batch: Mapping[str, Any], stage: str) -> Tensor:
        x = self.augmentation(batch["x"]) if stage == "train" else batch["x"]
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
            sync_dist=True,  # under DDP: every rank's batches, not one rank's
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
        stamp_checkpoint(checkpoint)
