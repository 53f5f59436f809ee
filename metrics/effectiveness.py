"""Effectiveness: does the counterfactual show the attributes it was asked to have?

Monteiro et al. (ICLR 2023) judge it with anti-causal predictors trained on real images: each
counterfactual attribute is predicted from the counterfactual image and compared with the intended
value (absolute error for continuous attributes, correctness for categorical ones). The same
predictors on real test images give the floor no model can beat.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from datamodules.base import CausalGraph


@torch.inference_mode()
def attribute_errors(
    predicted: Mapping[str, Tensor], intended: Mapping[str, Tensor], graph: CausalGraph
) -> dict[str, Tensor]:
    """Per-sample error of each attribute: ``|predicted - intended|`` (continuous, natural units)
    or ``1.0`` for a correct class and ``0.0`` otherwise (categorical: its mean is the accuracy)."""
    out = {}
    for name, value in predicted.items():
        target = intended[name].to(value.device)
        if graph[name].is_continuous:
            out[name] = (value.float() - target.float()).abs()
        else:
            out[name] = (value == target).float()
    return out


@torch.inference_mode()
def predictor_errors(
    predictor, images: Tensor, intended: Mapping[str, Tensor]
) -> dict[str, Tensor]:
    """:func:`attribute_errors` of an :class:`~models.predictor.AttributePredictor` on images."""
    predicted = predictor(images.to(predictor.device))
    return attribute_errors(predicted, intended, predictor.graph)
