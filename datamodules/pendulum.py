"""Pendulum: a rendered scene of a pendulum, a point light and its shadow, with exact counterfactuals.

The scene of CausalVAE (Yang et al., CVPR 2021), drawn by cfzoo's own vectorised renderer. In scene
units (a 20 x 20 square, y up), a pendulum hangs from a pivot at ``(10, 11)``; a point light sits at
height 19; the shadow falls on the ground line ``y = 2``. The structural equations::

    angle            a = u_a,                         u_a ~ Uniform(-40, 40)   degrees from vertical
    light            l = u_l,                         u_l ~ Uniform(4, 16)     the light's x position
    shadow_length    s = |P(tip) - P(pivot)| * exp(u_s),       u_s ~ N(0, 0.1^2)
    shadow_position  p = (P(tip) + P(pivot)) / 2 + u_p,        u_p ~ N(0, 0.3^2)
    image            x = Render(a, l, s, p)

where ``P(q) = l + (q_x - l) (19 - 2) / (19 - q_y)`` projects a point of the pendulum from the light
onto the ground: the shadow is the pendulum's projection, perturbed by noise (a soft penumbra the
equations don't model). Every sample keeps its noise, so :meth:`PendulumDataModule.true_counterfactual`
recomputes the shadow under any intervention and re-renders the exact counterfactual image.

Example:
    >>> dm = PendulumDataModule(data_dir="data")
    >>> dm.setup()
    >>> batch = next(iter(dm.test_dataloader()))
    >>> images, attrs = dm.true_counterfactual(batch["index"], {"light": 6.0})  # the shadow moves
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor

from datamodules.base import (
    CONTINUOUS,
    AnalyticMechanism,
    CachedArrayDataModule,
    CausalGraph,
    Intervention,
    Variable,
)

__all__ = ["PendulumDataModule", "render_scene", "shadow_geometry"]

log = logging.getLogger(__name__)

#: Bump when the generator's output changes, so old caches are rebuilt.
GENERATOR_VERSION = 1

SCENE = 20.0
PIVOT = (10.0, 11.0)
ROD = 6.0  # pivot to the ball's centre
BALL_RADIUS = 1.5
LIGHT_HEIGHT = 19.0
LIGHT_RADIUS = 0.9
GROUND = 2.0  # the ground line the shadow falls on; below it, the ground strip
SHADOW_BAND = (0.6, GROUND)  # where the shadow is drawn on the ground strip (y range)
ANGLE_RANGE = (-40.0, 40.0)
LIGHT_RANGE = (4.0, 16.0)
LENGTH_NOISE_SD = 0.1  # log-normal: a shadow's length stays positive
POSITION_NOISE_SD = 0.3

COLOURS = {  # RGB in [0, 1]
    "sky": (0.92, 0.94, 0.98),
    "ground": (0.62, 0.52, 0.40),
    "shadow": (0.22, 0.18, 0.14),
    "light": (1.00, 0.76, 0.10),
    "rod": (0.25, 0.25, 0.25),
    "ball": (0.15, 0.35, 0.80),
}

GRAPH = CausalGraph(
    variables=(
        Variable("angle", CONTINUOUS, support=ANGLE_RANGE),
        Variable("light", CONTINUOUS, support=LIGHT_RANGE),
        # Over the angle and light ranges the noiseless shadow spans lengths 0-12 (0 when light, pivot and ball align) and
        # positions 2.9-17.1; the supports leave room for the noise.
        Variable("shadow_length", CONTINUOUS, parents=("angle", "light"), support=(0.0, 20.0)),
        Variable("shadow_position", CONTINUOUS, parents=("angle", "light"), support=(-2.0, 22.0)),
    ),
    image_parents=("angle", "light", "shadow_length", "shadow_position"),
)


def _project(light: Tensor, qx: Tensor, qy: Tensor) -> Tensor:
    """Where the ray from the light at ``(light, LIGHT_HEIGHT)`` through ``q`` meets the ground."""
    return light + (qx - light) * (LIGHT_HEIGHT - GROUND) / (LIGHT_HEIGHT - qy)


def shadow_geometry(angle: Tensor, light: Tensor) -> tuple[Tensor, Tensor]:
    """The noiseless shadow ``(length, centre)`` of the pendulum (rod and ball) on the ground."""
    theta = torch.deg2rad(angle)
    reach = ROD + BALL_RADIUS
    tip_x = PIVOT[0] + reach * torch.sin(theta)
    tip_y = PIVOT[1] - reach * torch.cos(theta)
    tip = _project(light, tip_x, tip_y)
    pivot = _project(light, torch.full_like(light, PIVOT[0]), torch.full_like(light, PIVOT[1]))
    return (tip - pivot).abs(), (tip + pivot) / 2


def _pixel_grid(size: int) -> tuple[float, Tensor, Tensor]:
    """Pixel side and the scene coordinates of pixel centres: ``x (1, 1, S)``, ``y (1, S, 1)``."""
    pixel = SCENE / size
    centres = (torch.arange(size, dtype=torch.float32) + 0.5) * pixel
    return pixel, centres.view(1, 1, size), (SCENE - centres).view(1, size, 1)  # row 0: the top


def _coverage(distance: Tensor, pixel: float) -> Tensor:
    """Anti-aliased coverage of a shape from its signed distance (negative inside), in pixels.

    Edges cover pixels fractionally, so a small change of an attribute changes the image smoothly:
    models and measurements both see sub-pixel movements.
    """
    return (0.5 - distance / pixel).clamp(0.0, 1.0)


def render_scene(
    angle: Tensor,
    light: Tensor,
    shadow_length: Tensor,
    shadow_position: Tensor,
    size: int = 32,
    chunk: int = 1024,
) -> Tensor:
    """Render scenes as ``(B, 3, size, size)`` uint8 images; deterministic and vectorised."""
    pixel, x, y = _pixel_grid(size)
    colour = {k: torch.tensor(v).view(1, 3, 1, 1) for k, v in COLOURS.items()}
    out = []
    for start in range(0, len(angle), chunk):
        part = slice(start, start + chunk)
        a = angle[part].float().view(-1, 1, 1)
        lx = light[part].float().view(-1, 1, 1)
        length = shadow_length[part].float().view(-1, 1, 1)
        position = shadow_position[part].float().view(-1, 1, 1)
        theta = torch.deg2rad(a)
        ball_x = PIVOT[0] + ROD * torch.sin(theta)
        ball_y = PIVOT[1] - ROD * torch.cos(theta)

        # signed distances (scene units) of each shape, (B, size, size)
        ground = (y - GROUND).expand(len(a), size, size)
        band_x = (x - position).abs() - length / 2
        band_y = (y - (SHADOW_BAND[0] + SHADOW_BAND[1]) / 2).abs() - (
            SHADOW_BAND[1] - SHADOW_BAND[0]
        ) / 2
        shadow = torch.maximum(band_x, band_y)
        sun = torch.sqrt((x - lx) ** 2 + (y - LIGHT_HEIGHT) ** 2) - LIGHT_RADIUS
        # the rod: a capsule from the pivot to the ball's centre
        dx, dy = ball_x - PIVOT[0], ball_y - PIVOT[1]
        along = (((x - PIVOT[0]) * dx + (y - PIVOT[1]) * dy) / (ROD**2)).clamp(0.0, 1.0)
        rod = torch.sqrt((x - PIVOT[0] - along * dx) ** 2 + (y - PIVOT[1] - along * dy) ** 2) - 0.25
        ball = torch.sqrt((x - ball_x) ** 2 + (y - ball_y) ** 2) - BALL_RADIUS

        image = colour["sky"].expand(len(a), 3, size, size).clone()
        for name, distance in (
            ("ground", ground),
            ("shadow", shadow),
            ("light", sun),
            ("rod", rod),
            ("ball", ball),
        ):  # painter's order: later shapes cover earlier ones
            alpha = _coverage(distance, pixel).unsqueeze(1)
            image = image * (1 - alpha) + colour[name] * alpha
        out.append((image * 255.0).round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out) if out else torch.zeros(0, 3, size, size, dtype=torch.uint8)


class _UniformLaw(AnalyticMechanism):
    """A root attribute drawn uniformly from its range; its noise is the value itself."""

    low: float
    high: float

    def abduct(self, value, pa):
        return value

    def predict(self, noise, pa):
        return noise

    def log_prob(self, value, pa):
        inside = (value >= self.low) & (value <= self.high)
        density = torch.full_like(value, -math.log(self.high - self.low))
        return torch.where(inside, density, torch.full_like(value, -math.inf))

    def sample_noise(self, n, device=None):
        return torch.empty(n, device=device).uniform_(self.low, self.high)


class AngleLaw(_UniformLaw):
    low, high = ANGLE_RANGE


class LightLaw(_UniformLaw):
    low, high = LIGHT_RANGE


class ShadowLengthLaw(AnalyticMechanism):
    """``s = length(a, l) * exp(u)``, ``u ~ N(0, 0.1^2)``."""

    def abduct(self, value, pa):
        length, _ = shadow_geometry(pa["angle"], pa["light"])
        return torch.log(value.clamp(min=1e-6)) - torch.log(length.clamp(min=1e-6))

    def predict(self, noise, pa):
        length, _ = shadow_geometry(pa["angle"], pa["light"])
        return length * torch.exp(noise)

    def log_prob(self, value, pa):
        # change of variables: du/ds = 1 / s
        noise = self.abduct(value, pa)
        normal = torch.distributions.Normal(0.0, LENGTH_NOISE_SD)
        return normal.log_prob(noise) - torch.log(value.clamp(min=1e-6))

    def sample_noise(self, n, device=None):
        return LENGTH_NOISE_SD * torch.randn(n, device=device)


class ShadowPositionLaw(AnalyticMechanism):
    """``p = centre(a, l) + u``, ``u ~ N(0, 0.3^2)``."""

    def abduct(self, value, pa):
        _, centre = shadow_geometry(pa["angle"], pa["light"])
        return value - centre

    def predict(self, noise, pa):
        _, centre = shadow_geometry(pa["angle"], pa["light"])
        return centre + noise

    def log_prob(self, value, pa):
        return torch.distributions.Normal(0.0, POSITION_NOISE_SD).log_prob(self.abduct(value, pa))

    def sample_noise(self, n, device=None):
        return POSITION_NOISE_SD * torch.randn(n, device=device)


def shadow_law(angle: Tensor, light: Tensor, noise: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The shadow's structural equations: ``{shadow_length, shadow_position}`` from their noise."""
    pa = {"angle": angle, "light": light}
    return {
        "shadow_length": ShadowLengthLaw().predict(noise["shadow_length"], pa),
        "shadow_position": ShadowPositionLaw().predict(noise["shadow_position"], pa),
    }


#: The true equations of every Pendulum attribute (``scm.mechanism=analytic``).
ANALYTIC_MECHANISMS = {
    "angle": AngleLaw,
    "light": LightLaw,
    "shadow_length": ShadowLengthLaw,
    "shadow_position": ShadowPositionLaw,
}

SHADOWS = ("shadow_length", "shadow_position")


class PendulumDataModule(CachedArrayDataModule):
    """The Pendulum scene with a ground-truth counterfactual oracle.

    Args:
        data_dir: where the generated dataset is cached.
        image_size: side of the square RGB images in pixels (32 or 64 are the usual choices).
        num_samples: scenes to generate (split into train, validation and test).
        seed: seeds the exogenous noise and the splits.
        val_fraction: share of the training scenes held out for validation.
        test_fraction: share of all scenes held out for testing.
        batch_size, num_workers, pin_memory: of the loaders.
    """

    name = "pendulum"
    ground_truth_variables = GRAPH.names

    def __init__(
        self,
        data_dir: str = "data",
        image_size: int = 32,
        num_samples: int = 5000,
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        num_workers: int = 0,
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
        if image_size < 8:
            raise ValueError(f"image_size must be at least 8 pixels, got {image_size}")
        if num_samples < 20:
            raise ValueError(f"num_samples must be at least 20, got {num_samples}")
        self.image_size = int(image_size)
        self.image_shape = (3, self.image_size, self.image_size)
        self.num_samples = int(num_samples)
        self.graph = GRAPH

    @property
    def spec(self) -> dict:
        return {
            "dataset": self.name,
            "image_size": self.image_size,
            "num_samples": self.num_samples,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "version": GENERATOR_VERSION,
        }

    @property
    def cache_prefix(self) -> str:
        return f"{self.name}-{self.image_size}px"

    def build(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(self.seed)
        n = self.num_samples
        # float32 is what batches carry: generating from float32 values makes a re-render from a
        # batch's attributes bit-identical to the stored image.
        angle = torch.from_numpy(rng.uniform(*ANGLE_RANGE, n).astype(np.float32))
        light = torch.from_numpy(rng.uniform(*LIGHT_RANGE, n).astype(np.float32))
        noise = {
            "shadow_length": torch.from_numpy(
                (LENGTH_NOISE_SD * rng.standard_normal(n)).astype(np.float32)
            ),
            "shadow_position": torch.from_numpy(
                (POSITION_NOISE_SD * rng.standard_normal(n)).astype(np.float32)
            ),
        }
        shadow = shadow_law(angle, light, noise)
        log.info("Rendering %d Pendulum scenes at %d px", n, self.image_size)
        images = render_scene(angle, light, **shadow, size=self.image_size)
        return {
            "images": images.numpy(),
            "angle": angle.numpy(),
            "light": light.numpy(),
            **{k: v.numpy() for k, v in shadow.items()},
            **{f"{k}_noise": v.numpy() for k, v in noise.items()},
            "split": self.draw_split(n, rng),
        }

    # -- ground truth ---------------------------------------------------------------------------
    def true_counterfactual(
        self, index: Tensor, do: Mapping[str, Intervention]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Exact counterfactual images and attributes of samples ``index`` under ``do``.

        Args:
            index: ``(B,)`` sample ids (``batch["index"]``).
            do: any of the four attributes -> value per sample, scalar, or function of the factual
                value, in natural units (degrees; scene units for the light and the shadow).

        Returns:
            Images ``(B, 3, S, S)`` in [0, 1] like ``batch["x"]``, and the attributes. A shadow
            not intervened on is recomputed from the sample's own noise where its parents changed.
        """
        arrays = self.load()
        factual = self.attributes(index)
        resolved = self.graph.resolve(factual, do)
        rows = torch.as_tensor(index, dtype=torch.long).cpu().numpy()
        counterfactual = {k: resolved.get(k, factual[k]).float() for k in ("angle", "light")}
        noise = {k: torch.from_numpy(arrays[f"{k}_noise"][rows]) for k in SHADOWS}
        recomputed = shadow_law(counterfactual["angle"].cpu(), counterfactual["light"].cpu(), noise)
        parents_changed = (counterfactual["angle"] != factual["angle"]) | (
            counterfactual["light"] != factual["light"]
        )
        for name in SHADOWS:
            if name in resolved:
                counterfactual[name] = resolved[name].float()
            else:  # unchanged parents keep the stored value exactly (no float round trip)
                value = recomputed[name].to(factual[name].device)
                counterfactual[name] = torch.where(parents_changed, value, factual[name])
        return self.render(index, counterfactual), counterfactual

    def render(self, index: Tensor, attributes: Mapping[str, Tensor]) -> Tensor:
        """The true image mechanism: ``Render(angle, light, shadow_length, shadow_position)``.

        Args:
            index: ``(B,)`` sample ids; a sample whose attributes equal its stored ones gets its
                stored image (the scene has no image-level noise, so this is also what it renders).
            attributes: the four attributes per sample, natural units.

        Returns:
            ``(B, 3, S, S)`` images in [0, 1] on the device of ``attributes``.
        """
        arrays = self.load()
        rows = torch.as_tensor(index, dtype=torch.long).cpu().numpy()
        device = attributes["angle"].device
        values = {k: attributes[k].float().cpu() for k in self.graph.names}
        images = torch.from_numpy(arrays["images"][rows].copy())
        changed = torch.zeros(len(rows), dtype=torch.bool)
        for name, value in values.items():
            changed |= value != torch.from_numpy(arrays[name][rows])
        if changed.any():
            images[changed] = render_scene(
                **{k: v[changed] for k, v in values.items()}, size=self.image_size
            )
        return images.float().div_(255.0).to(device)

    def measure_attributes(self, images: Tensor) -> dict[str, Tensor]:
        """Model-free judge: the attributes read off the pixels by the scene's geometry.

        - ``angle``: from the centroid of ball-coloured pixels, seen from the pivot;
        - ``light``: the centroid of light-coloured pixels near the top;
        - ``shadow_length`` / ``shadow_position``: the darkness of the shadow band, summed (length)
          and averaged (centre) along x; anti-aliasing makes both sub-pixel accurate.
        """
        return measure_scene(images.detach().float().cpu())


def _colour_weight(images: Tensor, name: str, tolerance: float = 0.25) -> Tensor:
    """How much each pixel looks like the named colour: 1 at the colour, 0 beyond ``tolerance``."""
    target = torch.tensor(COLOURS[name]).view(1, 3, 1, 1)
    distance = (images - target).norm(dim=1)
    return (1.0 - distance / tolerance).clamp(0.0, 1.0)


def measure_scene(images: Tensor) -> dict[str, Tensor]:
    """Measure the four attributes of ``(B, 3, S, S)`` Pendulum images in [0, 1]."""
    size = images.shape[-1]
    pixel, x, y = _pixel_grid(size)
    eps = 1e-6

    ball = _colour_weight(images, "ball")
    mass = ball.sum((1, 2)) + eps
    ball_x = (ball * x).sum((1, 2)) / mass
    ball_y = (ball * y).sum((1, 2)) / mass
    angle = torch.rad2deg(torch.atan2(ball_x - PIVOT[0], PIVOT[1] - ball_y))

    sun = _colour_weight(images, "light") * (y > LIGHT_HEIGHT - 2 * LIGHT_RADIUS)
    light = (sun * x).sum((1, 2)) / (sun.sum((1, 2)) + eps)

    # Rows fully inside the shadow band: darkness 0 on bare ground, 1 in the shadow.
    band = (y - pixel / 2 >= SHADOW_BAND[0] - eps) & (y + pixel / 2 <= SHADOW_BAND[1] + eps)
    if not band.any():  # pixels larger than the band: the row nearest its centre
        band = (y - sum(SHADOW_BAND) / 2).abs() == (y - sum(SHADOW_BAND) / 2).abs().min()
    ground, shadow = torch.tensor(COLOURS["ground"]), torch.tensor(COLOURS["shadow"])
    span = (ground - shadow).view(1, 3, 1, 1)
    darkness = ((ground.view(1, 3, 1, 1) - images) / span).mean(1).clamp(0.0, 1.0)
    darkness = (darkness * band).sum(1) / band.sum()  # (B, S): mean over the band's rows
    length = darkness.sum(1) * pixel
    position = (darkness * x.view(1, size)).sum(1) / (darkness.sum(1) + eps)
    return {
        "angle": angle,
        "light": light,
        "shadow_length": length,
        "shadow_position": position,
    }
