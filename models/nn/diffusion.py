"""Deterministic DDIM sampling and inversion around diffusers' schedulers.

The three schedulers of a diffusion model are built from one plain configuration (a dict of
numbers and strings a checkpoint's hyperparameters carry), so a loaded model gets the same noise
levels back:

- ``DDPMScheduler``: the training noise, ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps``;
- ``DDIMScheduler``: sampling with ``eta = 0`` (deterministic);
- ``DDIMInverseScheduler``: DDIM inversion, the mirror image of the sampler's steps.

Exactness of the round trip. A sampling step maps ``x_b`` (noise level ``b``) to
``x_a = c_1 x_b + c_2 eps(x_b, b)``. Plain DDIM inversion (Song et al. 2021; Preechakul et al.
2022) can't evaluate ``eps`` at the unknown ``x_b`` and uses ``eps(x_a, a)`` instead, so
inverting then sampling is only approximately the identity (the error shrinks with more steps).
:func:`ddim_invert` can refine each step by fixed-point iteration,
``x_b <- inverse_step(eps(x_b, b), x_a)``, which converges to the exact inverse of the sampling
step when ``eps`` is smooth enough (the "fixed-point" inversions of Pan et al. 2023 and Garibi et
al. 2024); each refinement costs one more network evaluation per step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler, DDPMScheduler
from torch import Tensor

__all__ = ["SCHEDULER_DEFAULTS", "build_schedulers", "ddim_invert", "ddim_sample"]

#: Defaults of the noise schedule: the linear betas of DDPM (Ho et al. 2020) over 1000 levels.
SCHEDULER_DEFAULTS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}
# Needed for the sampler and its inverse to mirror each other exactly: no clipping of the
# predicted x_0 (clipping is not invertible), the clean end of both chains at alpha = 1.
_FIXED = {"clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0}

#: ``eps_fn(x_t, t)``: the network's output (in the scheduler's prediction type) at level ``t``.
ModelFn = Callable[[Tensor, int], Tensor]


def _accepted(cls: type, config: Mapping[str, Any]) -> dict[str, Any]:
    parameters = inspect.signature(cls.__init__).parameters
    return {key: value for key, value in config.items() if key in parameters}


def build_schedulers(
    config: Mapping[str, Any] | None = None,
) -> tuple[DDPMScheduler, DDIMScheduler, DDIMInverseScheduler]:
    """The training, sampling and inversion schedulers of one noise schedule.

    Args:
        config: overrides of :data:`SCHEDULER_DEFAULTS` (any argument the diffusers schedulers
            take, e.g. ``beta_schedule="squaredcos_cap_v2"``); ``clip_sample``,
            ``set_alpha_to_one`` and ``steps_offset`` are fixed for an exact mirror.

    Raises:
        ValueError: an unknown key, or a spacing the inverse scheduler doesn't support.
    """
    config = {**SCHEDULER_DEFAULTS, **dict(config or {})}
    known = set()
    for cls in (DDPMScheduler, DDIMScheduler, DDIMInverseScheduler):
        known |= set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown scheduler option(s) {unknown}; see diffusers' DDIMScheduler")
    fixed = {key: config[key] for key in _FIXED if key in config and config[key] != _FIXED[key]}
    if fixed:
        raise ValueError(f"scheduler options {fixed} would break exact DDIM inversion; drop them")
    if config["timestep_spacing"] not in ("leading", "trailing"):
        raise ValueError(
            f"timestep_spacing must be 'leading' or 'trailing' (DDIM inversion supports those), "
            f"got '{config['timestep_spacing']}'"
        )
    if config["prediction_type"] not in ("epsilon", "v_prediction"):
        raise ValueError(
            f"prediction_type must be 'epsilon' or 'v_prediction', got "
            f"'{config['prediction_type']}': DDIM inversion of an x_0-predicting model divides "
            "by zero at the clean end"
        )
    if config.get("rescale_betas_zero_snr") and config["prediction_type"] != "v_prediction":
        raise ValueError(
            "rescale_betas_zero_snr needs prediction_type='v_prediction': at zero terminal SNR "
            "an epsilon-predicting sampler divides by zero at its first step"
        )
    config.update(_FIXED)
    return (
        DDPMScheduler(**_accepted(DDPMScheduler, config)),
        DDIMScheduler(**_accepted(DDIMScheduler, config)),
        DDIMInverseScheduler(**_accepted(DDIMInverseScheduler, config)),
    )


def _check_steps(steps: int, total: int) -> int:
    if isinstance(steps, bool) or int(steps) != steps or not 1 <= steps <= total:
        raise ValueError(f"steps must be an integer in [1, {total}] (DDIM steps), got {steps!r}")
    return int(steps)


def ddim_sample(
    model_fn: ModelFn,
    x_T: Tensor,
    sampler: DDIMScheduler,
    steps: int,
    grad_steps: int | None = None,
) -> Tensor:
    """Run ``steps`` deterministic DDIM steps (``eta = 0``) from ``x_T`` to the clean end.

    Args:
        grad_steps: where gradients are on, only the last ``grad_steps`` steps carry them (the
            earlier ones run without): truncated backpropagation through the sampler, DRaFT-K
            of Clark, Vlastelica, Swersky & Fleet (ICLR 2024). ``None``: every step.
    """
    sampler.set_timesteps(_check_steps(steps, sampler.config.num_train_timesteps))
    timesteps = sampler.timesteps.tolist()
    first_with_grad = 0 if grad_steps is None else max(len(timesteps) - grad_steps, 0)
    grad = torch.is_grad_enabled()
    x = x_T
    for i, t in enumerate(timesteps):
        with torch.set_grad_enabled(grad and i >= first_with_grad):
            x = sampler.step(model_fn(x, t), t, x, eta=0.0).prev_sample
    return x


@torch.no_grad()
def ddim_invert(
    model_fn: ModelFn,
    x_0: Tensor,
    inverter: DDIMInverseScheduler,
    steps: int,
    fixed_point_iters: int = 0,
) -> Tensor:
    """DDIM inversion of ``x_0``: the ``x_T`` from which :func:`ddim_sample` gives ``x_0`` back.

    Args:
        model_fn: the network, as for :func:`ddim_sample` (use the same one for a round trip).
        x_0: clean samples.
        inverter: the inverse scheduler of the sampler's noise schedule.
        steps: DDIM steps (as many as the sampling will take).
        fixed_point_iters: refinements per step; 0 is plain DDIM inversion.
    """
    total = inverter.config.num_train_timesteps
    steps = _check_steps(steps, total)
    if fixed_point_iters < 0:
        raise ValueError(f"fixed_point_iters must be >= 0, got {fixed_point_iters}")
    inverter.set_timesteps(steps)
    stride = total // steps  # the inverse step at t starts from level t - stride
    x = x_0
    for t in inverter.timesteps.tolist():
        following = inverter.step(model_fn(x, max(t - stride, 0)), t, x).prev_sample
        for _ in range(fixed_point_iters):
            following = inverter.step(model_fn(following, t), t, x).prev_sample
        x = following
    return x
