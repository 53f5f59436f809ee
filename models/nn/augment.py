"""Random variations of image batches: the judges' training augmentation, and what counterfactual
fine-tuning may apply to a counterfactual before its judge reads it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["AUGMENTATIONS", "augment", "random_affine"]

AUGMENTATIONS = ("none", "shift", "affine")
#: ``"shift"``: the whole batch rolled by up to this many pixels in x and y.
MAX_SHIFT = 2
#: ``"affine"``: each image rotated by up to this many degrees and translated by up to
#: ``MAX_TRANSLATION`` pixels, resampled with the nearest pixel so that no stroke is blurred
#: (blurring would lower the measured intensity and widen the measured thickness).
MAX_ROTATION = 5.0
MAX_TRANSLATION = 3


def augment(x: Tensor, name: str) -> Tensor:
    """A random variation of the images ``x``: ``name`` is one of :data:`AUGMENTATIONS`.
    Differentiable in ``x``."""
    if name == "shift":
        dx, dy = torch.randint(-MAX_SHIFT, MAX_SHIFT + 1, (2,)).tolist()
        return torch.roll(x, shifts=(dy, dx), dims=(-2, -1))
    if name == "affine":
        return random_affine(x, MAX_ROTATION, MAX_TRANSLATION)
    if name == "none":
        return x
    raise ValueError(f"unknown augmentation {name!r}; choose one of {AUGMENTATIONS}")


def random_affine(x: Tensor, degrees: float, pixels: int) -> Tensor:
    """Each image of ``x`` rotated by up to ``degrees`` (uniform) and moved by up to ``pixels``
    whole pixels in x and y (uniform integers).

    Nearest-pixel resampling: every output pixel is an input pixel, so stroke intensities stay.
    Measured on 500 Morpho-MNIST test digits at 5 degrees and 3 pixels: the measured thickness
    moves by 0.04 px on average (the measurement's own error is 0.07 px), the intensity by 0.02;
    bilinear resampling would move the intensity by 10 (its sd is 48). Whole-pixel moves change
    nothing; fractional ones would add 0.02 px of thickness change on top of the rotation's.
    """
    n, _, height, width = x.shape
    angle = (torch.rand(n, device=x.device) * 2 - 1) * torch.pi * degrees / 180
    move = torch.randint(-int(pixels), int(pixels) + 1, (n, 2), device=x.device).float()
    # affine_grid's translations are in units of half the image
    move = move * 2 / torch.tensor([width, height], device=x.device)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [torch.stack([cos, -sin, move[:, 0]], -1), torch.stack([sin, cos, move[:, 1]], -1)], 1
    )
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
