"""Counterfactual soundness axioms, measured through ``model.counterfactual`` alone.

Definitions follow Monteiro et al., "Measuring Axiomatic Soundness of Counterfactual Image Models"
(ICLR 2023), with the L1 distance on the 0-255 pixel scale:

- composition: applying the null intervention ``m`` times must leave the image unchanged,
  ``L1(x, f^m(x))`` for ``m = 1..M``;
- reversibility: intervening and then intervening back to the factual attributes must give the
  image back, ``L1(x, f(f(x, do(pa')), do(pa)))``, over one or more cycles;
- ground truth (cfzoo's addition for synthetic data): ``L1`` and ``RMSE`` between the model's
  counterfactual and the true one rendered by the datamodule's oracle.

Each function returns one value per sample (or per step and sample), so callers average, stream
and aggregate as they need. All run under ``torch.inference_mode()``. ``sample_ids`` (the batch's
dataset ids) reach every ``model.counterfactual`` call: the oracle renders from them, the learned
models ignore them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from datamodules.base import Intervention

__all__ = ["composition", "ground_truth_error", "l1", "reversibility", "rmse"]

PIXEL_SCALE = 255.0


def l1(a: Tensor, b: Tensor) -> Tensor:
    """Mean absolute difference per sample, on the 0-255 scale (images in [0, 1])."""
    return (a - b).abs().flatten(1).mean(1) * PIXEL_SCALE


def rmse(a: Tensor, b: Tensor) -> Tensor:
    """Root mean squared difference per sample, on the 0-255 scale."""
    return (a - b).pow(2).flatten(1).mean(1).sqrt() * PIXEL_SCALE


@torch.inference_mode()
def composition(
    model,
    x: Tensor,
    pa: Mapping[str, Tensor],
    steps: int = 10,
    /,
    *,
    sample_ids: Tensor | None = None,
    **options: Any,
) -> Tensor:
    """``(steps, B)``: L1 between ``x`` and the null intervention applied ``m = 1..steps`` times.

    The arguments before ``options`` are positional-only, so a model option may be called
    ``steps`` too (the diffusion autoencoder's DDIM steps).
    """
    x = x.to(model.device)
    current = x
    out = []
    for _ in range(steps):
        cf = model.counterfactual(current, pa, {}, sample_ids=sample_ids, **options)
        current = cf.unclipped  # what the model gave, unclipped, as in reversibility
        out.append(l1(cf.image, x))
    return torch.stack(out)


@torch.inference_mode()
def reversibility(
    model,
    x: Tensor,
    pa: Mapping[str, Tensor],
    do: Mapping[str, Intervention],
    cycles: int = 1,
    *,
    sample_ids: Tensor | None = None,
    **options: Any,
) -> Tensor:
    """``(cycles, B)``: L1 between ``x`` and the image after ``c`` round trips to ``do`` and back.

    The way back intervenes on every variable the way out changed (the intervened ones and their
    descendants), setting them to their factual values. Both legs pass the same ``sample_ids``:
    a counterfactual shares its factual's exogenous noise, so it is the same sample.

    Each leg starts from the model's unclipped output (``Counterfactual.unclipped``); the
    distance is measured on the clipped images. For most families the two are the same; a
    bijection's inverse can stray just outside [0, 1], and abducting from a clipped image would
    measure the clipping instead of the model.
    """
    x = x.to(model.device)
    current = x
    out = []
    for _ in range(cycles):
        forward = model.counterfactual(current, pa, do, sample_ids=sample_ids, **options)
        back_do = {k: pa[k] for k in forward.parents if not torch.equal(forward.parents[k], pa[k])}
        back = model.counterfactual(
            forward.unclipped, forward.parents, back_do, sample_ids=sample_ids, **options
        )
        current = back.unclipped
        out.append(l1(back.image, x))
    return torch.stack(out)


@torch.inference_mode()
def ground_truth_error(
    model,
    datamodule,
    batch: Mapping[str, Any],
    do: Mapping[str, Intervention],
    **options: Any,
) -> dict[str, Tensor]:
    """Per-sample ``l1`` and ``rmse`` of the model's counterfactual against the true one.

    The true counterfactual recomputes descendants with the true equations; the model uses its own
    attribute SCM, so the error includes both mechanisms' errors (use ``scm.mechanism=analytic``
    to isolate the image mechanism's).
    """
    cf = model.counterfactual(batch["x"], batch["pa"], do, sample_ids=batch["index"], **options)
    truth, _ = datamodule.true_counterfactual(batch["index"], do)
    truth = truth.to(cf.image.device)
    return {"l1": l1(cf.image, truth), "rmse": rmse(cf.image, truth)}
