"""Realism: FID and KID of counterfactuals against real test images (torchmetrics).

Inception weights can't be downloaded offline, so the default feature space is the penultimate
layer of the project's own attribute predictor, trained on real images of the dataset. Inception
is used only when its weights file is given (``realism.inception_weights=PATH``) and
torch-fidelity is installed. The report names the extractor, because FIDs in different feature
spaces are not comparable.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics import SumMetric
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from metrics.rng import kept_rng


class PredictorFeatures(nn.Module):
    """An attribute predictor's penultimate layer as a torchmetrics feature extractor."""

    def __init__(self, predictor):
        super().__init__()
        self.predictor = predictor

    def forward(self, x: Tensor) -> Tensor:
        return self.predictor.features(x).double()


class Realism:
    """Streams real and counterfactual images into FID and KID.

    Args:
        predictor: the attribute predictor whose features are used (unless Inception is).
        image_shape: ``(C, H, W)`` of the images.
        kid_subset_size: images per KID subset (at most the number of images scored).
        inception_weights: path of Inception-v3 FID weights; ``None`` uses the predictor.
    """

    def __init__(
        self,
        predictor,
        image_shape,
        kid_subset_size: int = 1000,
        inception_weights: str | None = None,
    ):
        if inception_weights and Path(inception_weights).is_file():
            self.extractor = "inception-v3 (pool3, 2048)"
            feature: int | nn.Module = 2048
            extra = {"feature_extractor_weights_path": inception_weights}
            self._prepare = _to_rgb_uint8
        else:
            arch = getattr(predictor, "arch", None)
            self.extractor = (
                f"{type(predictor).__name__}{f' ({arch})' if arch else ''} penultimate layer "
                f"({predictor.num_features})"
            )
            feature = PredictorFeatures(predictor).eval()
            extra = {}
            self._prepare = lambda x: x
        with kept_rng():  # torchmetrics probes the extractor with a random image
            self.fid = FrechetInceptionDistance(
                feature=feature,
                reset_real_features=False,
                input_img_size=tuple(image_shape),
                **extra,
            ).to(predictor.device)
            self.kid = KernelInceptionDistance(
                feature=feature, reset_real_features=False, subset_size=kid_subset_size, subsets=20
            ).to(predictor.device)
        self.kid_subset_size = kid_subset_size
        # a metric, so that under several processes KID's subset size knows every rank's fakes
        self.count_fake = SumMetric().to(predictor.device)

    @torch.inference_mode()
    def update(self, images: Tensor, real: bool) -> None:
        images = self._prepare(images.to(self.fid.device))
        self.fid.update(images, real=real)
        self.kid.update(images, real=real)
        if not real:
            self.count_fake.update(len(images))

    def compute(self) -> dict[str, float]:
        """FID and KID (mean) of the fakes seen since the last :meth:`reset_fake`."""
        fid = float(self.fid.compute())
        subset = min(self.kid_subset_size, int(self.count_fake.compute()))
        self.kid.subset_size = subset
        kid_mean, _ = self.kid.compute()
        return {"fid": fid, "kid": float(kid_mean)}

    def reset_fake(self) -> None:
        # reset() keeps the real features (reset_real_features=False).
        self.fid.reset()
        self.kid.reset()
        self.count_fake.reset()


def _to_rgb_uint8(x: Tensor) -> Tensor:
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
