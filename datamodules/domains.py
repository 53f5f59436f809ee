"""Multi-domain Morpho-MNIST: causal Morpho-MNIST seen through one of three domains, with exact
domain counterfactuals.

The world adds a categorical root ``domain`` to causal Morpho-MNIST (:mod:`datamodules.morphomnist`)::

    domain    d ~ Uniform{plain, rotated, textured}
    image     x = T_d(SetIntensity(SetThickness(d_n, t), i))

with ``t``, ``i`` and the source digit ``d_n`` as in Morpho-MNIST, and ``T_d`` a deterministic
transformation of the rendered digit, one per domain (a scanner, a camera setup):

- ``plain``: the digit as rendered;
- ``rotated``: turned 90 degrees counter-clockwise (exact on the pixel grid);
- ``textured``: a fixed background texture ``P`` (seeded once for the world, up to 64 of 255),
  ``x = max(digit, P)`` pixel by pixel.

Every sample keeps its noise, so :meth:`DomainMNISTDataModule.true_counterfactual` renders the
exact counterfactual of do(domain), do(thickness), do(intensity) and their combinations.

**Where the sparse-shift assumption holds.** Zhou, Kulinski & Inouye (ICLR 2024) identify domain
counterfactuals when an invertible map ``x = g(z)`` is shared by all domains and the domains differ
only in the mechanisms of a small set of latent variables. In this world:

- ``plain`` <-> ``rotated`` differ in one latent factor, the orientation, a sparse shift;
- ``textured`` changes the mechanism of every one of the 1,024 pixels (each gets its own floor
  ``P_ij``): a dense shift, which no small intervention set of a shared smooth ``g`` captures.

Example:
    >>> dm = DomainMNISTDataModule(data_dir="data")
    >>> dm.setup()
    >>> batch = next(iter(dm.test_dataloader()))
    >>> rotated, attrs = dm.true_counterfactual(batch["index"], {"domain": 1})
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from torch import Tensor

from datamodules.base import CATEGORICAL, CausalGraph, Intervention, Variable
from datamodules.morphomnist import GRAPH as MORPHOMNIST_GRAPH
from datamodules.morphomnist import IMAGE_SIZE, MorphoMNISTDataModule

__all__ = ["DOMAINS", "DomainMNISTDataModule", "apply_domains", "texture"]

#: The domains, in the order of their class ids.
DOMAINS = ("plain", "rotated", "textured")
#: The domains whose difference from ``plain`` is a sparse mechanism shift (one latent factor).
SPARSE_DOMAINS = ("plain", "rotated")
#: Bump when a domain's transformation changes, so old caches are rebuilt.
DOMAIN_VERSION = 1
#: The texture's brightest value (of 255): below the stroke's (64-255 before anti-aliasing), so the
#: digit stays the brightest thing in the image.
TEXTURE_PEAK = 64
_TEXTURE_SEED = 23  # one texture for the world, whatever the dataset's seed

GRAPH = CausalGraph(
    variables=(
        *MORPHOMNIST_GRAPH.variables,
        Variable("domain", CATEGORICAL, num_classes=len(DOMAINS)),
    ),
    image_parents=(*MORPHOMNIST_GRAPH.image_parents, "domain"),
)


def texture() -> np.ndarray:
    """The ``textured`` domain's background, ``(32, 32)`` uint8: smooth blobs up to
    :data:`TEXTURE_PEAK`, the same for every dataset built."""
    rng = np.random.default_rng(_TEXTURE_SEED)
    coarse = rng.random((IMAGE_SIZE // 4, IMAGE_SIZE // 4))
    smooth = np.kron(coarse, np.ones((4, 4)))  # 4 x 4 blocks ...
    smooth = 0.5 * smooth + 0.5 * rng.random((IMAGE_SIZE, IMAGE_SIZE))  # ... with pixel detail
    return np.rint(smooth * TEXTURE_PEAK).astype(np.uint8)


def apply_domains(images: np.ndarray, domains: np.ndarray) -> np.ndarray:
    """``T_d`` of each ``(N, 32, 32)`` uint8 image under its domain id; a new array."""
    images = np.asarray(images)
    domains = np.asarray(domains)
    out = images.copy()
    rotated = domains == DOMAINS.index("rotated")
    out[rotated] = np.rot90(images[rotated], k=1, axes=(1, 2))
    textured = domains == DOMAINS.index("textured")
    out[textured] = np.maximum(images[textured], texture())
    return out


class DomainMNISTDataModule(MorphoMNISTDataModule):
    """Causal Morpho-MNIST under three domains, with exact domain counterfactuals.

    Args: those of :class:`~datamodules.MorphoMNISTDataModule`; ``seed`` also draws each sample's
    domain.
    """

    name = "morphomnist_domains"
    ground_truth_variables = ("thickness", "intensity", "domain")
    #: The array of each sample's rendering before its domain's transformation.
    rendered_key = "plain_images"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.graph = GRAPH

    @property
    def spec(self) -> dict:
        return {
            **super().spec,
            "dataset": self.name,
            "domains": DOMAINS,
            "domain_version": DOMAIN_VERSION,
        }

    def build(self) -> dict[str, np.ndarray]:
        arrays = super().build()
        rng = np.random.default_rng([self.seed, _TEXTURE_SEED])
        domain = rng.integers(0, len(DOMAINS), size=len(arrays["digit"])).astype(np.int64)
        arrays["plain_images"] = arrays["images"]
        arrays["images"] = apply_domains(arrays["images"], domain)
        arrays["domain"] = domain
        return arrays

    def counterfactual_attributes(
        self, index: Tensor, do: Mapping[str, Intervention]
    ) -> dict[str, Tensor]:
        """Morpho-MNIST's true counterfactual attributes, and the domain (set, or the factual
        one): ``do`` may name ``domain`` (class ids, see :data:`DOMAINS`), ``thickness`` and
        ``intensity``."""
        attributes = super().counterfactual_attributes(
            index, {k: v for k, v in do.items() if k != "domain"}
        )
        factual = self.attributes(index)
        resolved = self.graph.resolve(factual, {k: v for k, v in do.items() if k == "domain"})
        attributes["domain"] = resolved.get("domain", factual["domain"]).long()
        return attributes

    def render_array(self, index: Tensor, attributes: Mapping[str, Tensor]) -> np.ndarray:
        """Sample ``index``'s source digit at the given attributes, seen in ``attributes["domain"]``
        (default: each sample's own), as ``(B, 32, 32)`` uint8; bit for bit the stored image when
        nothing changed."""
        domain = attributes.get("domain")
        if domain is None:
            domain = self.attributes(index)["domain"]
        return apply_domains(super().render_array(index, attributes), domain.cpu().numpy())
