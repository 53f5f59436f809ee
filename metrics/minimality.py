"""Minimality: the counterfactual latent divergence (CLD) of Sanchez & Tsaftaris (CLeaR 2022).

A counterfactual should change what the intervention asks for and nothing more. CLD compares
the distance ``div = d(x*, x)`` from a counterfactual ``x*`` to its factual ``x`` with the
distances from ``x`` to the real images that share the intervened attributes' values:

- ``S_target = {d(x', x) : pa'_I = pa*_I}``, the real images that already have the
  counterfactual's values; ``p_target = P(S_target <= div)`` is the share of them closer to
  ``x`` than the counterfactual is (small: ``x*`` got there by a smaller change than those);
- ``S_source = {d(x', x) : pa'_I = pa_I}``, the real images with the factual's values;
  ``p_source = P(S_source >= div)`` is the share of them farther from ``x`` than the
  counterfactual (small: ``x*`` moved away from what ``x`` was, so it did change);

``CLD = log(w_target exp(p_target) + w_source exp(p_source))``, lower is better. With the
paper's equal weights it lies in ``[log 2, log 2e] = [0.69, 1.69]``. A model that ignores the
intervention has ``div = 0``, hence ``p_target = 0`` and ``p_source = 1``:
``CLD = log(1 + e) = 1.31``.

``d`` is the KL divergence ``KL(q(z | x') || q(z | x))`` between diagonal Gaussian posteriors
of an unconditional VAE (:class:`~models.image_vae.ImageVAE`), trained on the real training
images once per dataset and cached under ``data_dir/minimality/``. ``I`` is the set of
intervened variables; continuous values are compared by their quantile bin over the real test
images (``bins`` equal-mass bins), categorical ones exactly. ``x`` itself is never in its own
sets. A counterfactual whose target or source set is empty is not scored (``minimality/scored``
says which share was).

The Melistas et al. (NeurIPS 2024) benchmark weights the two terms 0.8 / 0.2 and, in its code,
takes the VAE's mean as both the location and the log-scale of each posterior; here the weights
are the paper's equal ones unless set, and each posterior has its own scale.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics import CatMetric

from metrics.cached import cache_path, fit_quietly, load_or_train
from metrics.rng import seeded
from models.image_vae import ImageVAE

#: Bumped when the VAE's training recipe changes in a way the settings don't show.
VAE_VERSION = 1

#: The minimality VAE's settings (``evaluate.py``'s ``minimality.vae``).
VAE_SETTINGS: dict[str, Any] = {
    "latent_dim": 16,
    "widths": [32, 64, 128],
    "hidden": 256,
    "lr": 1e-3,
    "epochs": 10,
    "seed": 2,
}


def vae_settings(**overrides: Any) -> dict[str, Any]:
    """:data:`VAE_SETTINGS` with ``overrides`` applied (``None`` keeps the default).

    Raises:
        ValueError: an unknown setting.
    """
    unknown = sorted(set(overrides) - set(VAE_SETTINGS))
    if unknown:
        raise ValueError(
            f"unknown minimality VAE settings {unknown}; the settings are {', '.join(VAE_SETTINGS)}"
        )
    settings = {**VAE_SETTINGS, **{k: v for k, v in overrides.items() if v is not None}}
    settings["widths"] = [int(w) for w in settings["widths"]]
    return settings


def load_or_train_vae(datamodule, progress: bool = True, **overrides: Any) -> tuple[ImageVAE, str]:
    """The dataset's cached minimality VAE, else a new one trained on its training images.

    Returns:
        The VAE (eval mode) and its file. Torch's global random state is left as it was.
    """
    settings = vae_settings(**overrides)
    path = cache_path(datamodule, "minimality", {"version": VAE_VERSION, **settings})

    def train():
        with seeded(settings["seed"]):
            vae = ImageVAE(
                graph=datamodule.graph.to_dict(),
                image_shape=list(datamodule.image_shape),
                dataset=datamodule.name,
                **{k: v for k, v in settings.items() if k not in ("epochs", "seed")},
            )
            return vae, fit_quietly(vae, settings["epochs"], progress, datamodule=datamodule)

    vae = load_or_train(path, ImageVAE, train, f"minimality VAE for {datamodule.name}")
    return vae, str(path.resolve())


def gaussian_kl(mean_q: Tensor, log_sd_q: Tensor, mean_p: Tensor, log_sd_p: Tensor) -> Tensor:
    """``KL(N(mean_q, sd_q^2) || N(mean_p, sd_p^2))`` of diagonal Gaussians, summed over the
    last dimension (the arguments broadcast)."""
    ratio = (2 * (log_sd_q - log_sd_p)).exp()
    shift = (mean_q - mean_p) ** 2 / (2 * log_sd_p).exp()
    return 0.5 * (ratio + shift - 1).sum(-1) - (log_sd_q - log_sd_p).sum(-1)


def latent_divergence(
    div: Tensor,
    reference_kl: Tensor,
    target_members: Tensor,
    source_members: Tensor,
    weights: Sequence[float] = (1.0, 1.0),
) -> dict[str, Tensor]:
    """CLD per counterfactual from its divergence and the reference sets' divergences.

    Args:
        div: ``(B,)`` ``d(x*, x)`` of each counterfactual to its factual.
        reference_kl: ``(B, N)`` ``d(x', x)`` of each of ``N`` real images to each factual.
        target_members: ``(B, N)`` bool, whether a real image is in the factual's target set.
        source_members: ``(B, N)`` bool, whether it is in the factual's source set.
        weights: ``(w_target, w_source)``.

    Returns:
        ``cld``, ``p_target`` and ``p_source``, each ``(B,)``; NaN where a set is empty.
    """
    closer = ((reference_kl <= div[:, None]) & target_members).sum(1)
    farther = ((reference_kl >= div[:, None]) & source_members).sum(1)
    p_target = closer / target_members.sum(1)  # 0 / 0 is NaN: an empty set is not scored
    p_source = farther / source_members.sum(1)
    w_target, w_source = weights
    cld = torch.log(w_target * p_target.exp() + w_source * p_source.exp())
    return {"cld": cld, "p_target": p_target, "p_source": p_source}


class Minimality:
    """Streams the real test images in as the reference set, then scores counterfactuals.

    Under several processes each rank adds its share of the reference set and the sets are
    gathered (torchmetrics ``CatMetric``) before the first counterfactual is scored, so every
    rank scores against the whole test set.

    Args:
        vae: the unconditional VAE (:func:`load_or_train_vae`).
        graph: the data's causal graph (which variables are continuous).
        bins: equal-mass bins per continuous variable.
        weights: ``(w_target, w_source)`` of the two terms.
    """

    def __init__(self, vae: ImageVAE, graph, bins: int = 10, weights: Sequence[float] = (1, 1)):
        self.check(bins, weights)
        self.vae, self.graph, self.bins = vae.eval(), graph, bins
        self.weights = tuple(float(w) for w in weights)
        self._parts: dict[str, CatMetric] = {}
        self._reference: dict[str, Any] | None = None

    @staticmethod
    def check(bins: Any, weights: Any) -> None:
        """Refuse settings CLD can't use, naming them.

        Raises:
            ValueError: ``bins`` is not a whole number >= 1, or ``weights`` not two positive
                numbers.
        """
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"minimality.bins must be a whole number >= 1, got {bins!r}")
        if (
            not isinstance(weights, Sequence)
            or len(weights) != 2
            or not all(isinstance(w, int | float) and math.isfinite(w) and w > 0 for w in weights)
        ):
            raise ValueError(
                f"minimality.weights must be two positive numbers [w_target, w_source], "
                f"got {weights!r}"
            )

    @torch.inference_mode()
    def add_reference(self, x: Tensor, pa: Mapping[str, Tensor], ids: Tensor) -> None:
        mean, log_sd = self.vae.posterior(x.to(self.vae.device))
        device = mean.device
        for name, value in {"mean": mean, "log_sd": log_sd, "ids": ids, **pa}.items():
            if name not in self._parts:  # .to() resets a metric's dtype, so it is set after
                metric = CatMetric(nan_strategy="disable").to(device)
                self._parts[name] = metric.set_dtype(torch.float64)
            self._parts[name].update(torch.as_tensor(value).to(device).double())

    def _finish_reference(self) -> dict[str, Any]:
        if self._reference is None:
            parts = {name: metric.compute() for name, metric in self._parts.items()}
            reference = {
                "mean": parts["mean"].float().view(-1, self.vae.net.latent_dim),
                "log_sd": parts["log_sd"].float().view(-1, self.vae.net.latent_dim),
                "ids": parts["ids"].long(),
                "edges": {},
            }
            # each sample id's row, so that a factual's posterior is read, not encoded again
            ids = reference["ids"].cpu()
            reference["row"] = torch.full((int(ids.max()) + 1,), -1, dtype=torch.long)
            reference["row"][ids] = torch.arange(len(ids))
            for variable in self.graph.variables:
                if variable.is_continuous:
                    levels = torch.linspace(0, 1, self.bins + 1, dtype=torch.float64)[1:-1]
                    reference["edges"][variable.name] = torch.quantile(parts[variable.name], levels)
            self._reference = reference
            reference["values"] = {n: self._level(n, parts[n]) for n in self.graph.names}
        return self._reference

    def _level(self, name: str, values: Tensor) -> Tensor:
        """Bin of a continuous value (by the reference set's quantiles), or a class."""
        values = torch.as_tensor(values).double()
        edges = self._finish_reference()["edges"].get(name)
        if edges is None:
            return values.round().long()
        return torch.bucketize(values, edges.to(values.device), right=True)

    @torch.inference_mode()
    def score(
        self,
        pa: Mapping[str, Tensor],
        counterfactual: Tensor,
        parents: Mapping[str, Tensor],
        variables: Sequence[str],
        ids: Tensor,
    ) -> dict[str, Tensor]:
        """CLD, ``p_target`` and ``p_source`` of each counterfactual of a batch, ``(B,)`` each.

        ``ids`` are the factuals' sample ids, all in the reference set (their posteriors are
        read from it); ``pa`` are the factual attributes, ``parents`` the counterfactual's and
        ``variables`` the intervened ones.

        Raises:
            ValueError: a factual that is not in the reference set.
        """
        reference = self._finish_reference()
        ids = ids.cpu().long()
        rows = reference["row"][ids.clamp(max=len(reference["row"]) - 1)]
        if (ids >= len(reference["row"])).any() or (rows < 0).any():
            raise ValueError("every factual must be in the reference set (add_reference) first")
        mean_cf, log_sd_cf = self.vae.posterior(counterfactual.to(self.vae.device))
        device = mean_cf.device
        mean, log_sd = reference["mean"][rows].to(device), reference["log_sd"][rows].to(device)
        div = gaussian_kl(mean_cf, log_sd_cf, mean, log_sd)
        reference_kl = gaussian_kl(
            reference["mean"].to(device)[None],
            reference["log_sd"].to(device)[None],
            mean[:, None],
            log_sd[:, None],
        )
        others = reference["ids"].to(device)[None] != ids.to(device)[:, None]
        target, source = others.clone(), others.clone()
        for name in variables:
            levels = reference["values"][name].to(device)[None]
            target &= levels == self._level(name, parents[name]).to(device)[:, None]
            source &= levels == self._level(name, pa[name]).to(device)[:, None]
        return latent_divergence(div, reference_kl, target, source, self.weights)


def identity_cld(weights: Sequence[float] = (1.0, 1.0)) -> float:
    """The CLD of a model that ignores every intervention (``p_target = 0``, ``p_source = 1``)."""
    return math.log(weights[0] + weights[1] * math.e)
