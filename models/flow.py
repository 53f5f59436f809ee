"""Conditional normalizing-flow image mechanism: a bijection, so abduction is exact.

The image is ``x = f^-1(u; pa)`` with ``u ~ N(0, I)`` of the image's size and ``f`` a conditional
multi-scale flow (RealNVP, Dinh, Sohl-Dickstein & Bengio, ICLR 2017; Glow, Kingma & Dhariwal,
NeurIPS 2018), as the flow mechanisms of DeepSCM (Pawlowski, Castro & Glocker, NeurIPS 2020):

- pixels: ``y = (255 x + d) / 256`` in (0, 1), then ``z = logit(alpha + (1 - 2 alpha) y)``
  (RealNVP section 4.1). In training ``d ~ U[0, 1)`` (uniform dequantisation of the 8-bit values);
  in abduction ``d = 1/2``, the bin centre, so abduction is deterministic. Past a logit of +-10,
  where no image's pixel goes, a logarithmic tail replaces the sigmoid so that far
  counterfactuals' unclipped pixels keep their logits (:meth:`PixelFlow.to_logit`);
- each scale: squeeze, then ``steps`` x (actnorm, invertible 1 x 1 convolution, affine coupling)
  whose coupling nets see the attributes, then half the channels are factored out as noise;
- the last scale's output is the rest of the noise. ``u`` is the concatenation, coarsest last.

The three steps (Pearl's abduction, action, prediction) are then: ``u = f(x; pa)``, change the
attributes to ``pa*``, and ``x* = f^-1(u; pa*)``. The null intervention gives back ``x`` up to
float error. Nasr-Esfahany, Alizadeh & Ravanbakhsh (ICML 2023) study when the counterfactuals of
such bijective mechanisms are identifiable from data (e.g. a scalar noise with a mechanism
monotone in it); for an image-sized ``u`` that needs further assumptions, so the counterfactuals
are the model's answer, not the ground truth.

Training maximises the exact log-likelihood; the logged ``bpd`` counts the logit's and the
dequantisation's Jacobians, so it is a true bound on the bits per dimension of the 8-bit images.

Library choice: zuko (already a dependency, for the attribute SCM) supplies the elementwise
bijections, the logit pre-processing and the coupling's soft-clipped affine map. It has no
convolutional flows, and FrEIA / normflows would be new dependencies for three small layers, so the
squeeze, actnorm, 1 x 1 convolution and the coupling nets are written in torch
(:mod:`models.nn.flows`).

Example:
    >>> flow = ConditionalFlow(graph=dm.graph.to_dict(), image_shape=(1, 32, 32), dataset="morphomnist")
    >>> cf = flow.counterfactual(x, pa, {"thickness": lambda t: t + 1})
    >>> flow.check_invertibility(x, pa)  # float64 round trip: ~1e-14
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from zuko.transforms import AffineTransform, ComposedTransform, SigmoidTransform

from models.base import CounterfactualModel, ImageMechanism
from models.nn.conditioning import ParentEncoder
from models.nn.flows import ActNorm, AffineCoupling, InvertibleConv1x1, Squeeze

__all__ = ["ConditionalFlow", "FlowImageMechanism", "FlowNoise", "MultiScaleFlow", "PixelFlow"]

_LEVELS = 256  # 8-bit pixels


class MultiScaleFlow(nn.Module):
    """The multi-scale architecture of RealNVP / Glow on ``(B, C, H, W)``, conditioned on a vector.

    Each of ``scales`` levels squeezes, runs ``steps`` flow steps and (but the last) factors out
    half its channels. The factored-out half has a plain standard-normal prior: the level's last
    coupling already makes it Gaussian given the kept half and the context, which is what Glow's
    learned split prior adds.

    Args:
        channels: image channels.
        scales: number of levels; ``H`` and ``W`` must be divisible by ``2 ** scales``.
        steps: flow steps per level.
        hidden: channels of the coupling nets.
        context_dim: size of the conditioning vector.
        max_log_scale: bound of the couplings' log-scales.
    """

    def __init__(
        self,
        channels: int,
        scales: int,
        steps: int,
        hidden: int,
        context_dim: int,
        max_log_scale: float = 2.0,
    ):
        super().__init__()
        if scales < 1 or steps < 1:
            raise ValueError(f"a flow needs scales >= 1 and steps >= 1, got {scales}, {steps}")
        self.levels = nn.ModuleList()
        for level in range(scales):
            channels *= 4
            layers: list[nn.Module] = [Squeeze()]
            for _ in range(steps):
                layers += [
                    ActNorm(channels),
                    InvertibleConv1x1(channels),
                    AffineCoupling(channels, hidden, context_dim, max_log_scale),
                ]
            self.levels.append(nn.ModuleList(layers))
            if level < scales - 1:
                channels //= 2  # the couplings' conditioning half stays; the other half leaves

    def forward(self, x: Tensor, context: Tensor) -> tuple[list[Tensor], Tensor]:
        """The latents of every level (finest first) and the log-determinant, ``(B,)``."""
        latents = []
        logdet = x.new_zeros(len(x))
        for number, level in enumerate(self.levels):
            for layer in level:
                x, layer_logdet = layer(x, context)
                logdet = logdet + layer_logdet
            if number < len(self.levels) - 1:
                kept = x.shape[1] // 2
                latents.append(x[:, kept:])
                x = x[:, :kept]
        latents.append(x)
        return latents, logdet

    def inverse(self, latents: Sequence[Tensor], context: Tensor) -> Tensor:
        x = latents[-1]
        for number in reversed(range(len(self.levels))):
            if number < len(self.levels) - 1:
                x = torch.cat([x, latents[number]], dim=1)
            for layer in reversed(self.levels[number]):
                x = layer.inverse(x, context)
        return x

    def latent_shapes(self, image_shape: Sequence[int]) -> list[tuple[int, int, int]]:
        """``(C, H, W)`` of each level's latent for images of ``image_shape``."""
        channels, height, width = image_shape
        shapes = []
        for number in range(len(self.levels)):
            channels, height, width = channels * 4, height // 2, width // 2
            if number < len(self.levels) - 1:
                shapes.append((channels - channels // 2, height, width))
                channels //= 2
        shapes.append((channels, height, width))
        return shapes


class PixelFlow(nn.Module):
    """``x`` in [0, 1] <-> ``u`` (flat, ``(B, C * H * W)``) given a context: pixels to logits, then a
    :class:`MultiScaleFlow`.

    Args:
        image_shape: ``(C, H, W)``.
        logit_alpha: the logit's margin: ``logit(alpha + (1 - 2 alpha) y)`` stays finite at 0 and 1.
        **flow: arguments of :class:`MultiScaleFlow` but ``channels``.
    """

    def __init__(self, image_shape: Sequence[int], logit_alpha: float = 0.05, **flow: Any):
        super().__init__()
        if not 0 < logit_alpha < 0.5:
            raise ValueError(f"logit_alpha must be in (0, 0.5), got {logit_alpha}")
        self.flow = MultiScaleFlow(image_shape[0], **flow)
        self.shapes = self.flow.latent_shapes(image_shape)
        self.logit_alpha = logit_alpha

    @property
    def logit(self) -> ComposedTransform:
        """``y -> logit(alpha + (1 - 2 alpha) y)``, elementwise (zuko gives its log-det per pixel).

        Built on demand: torch's inverse transforms hold weak references that can't be deep-copied.
        """
        alpha = self.logit_alpha
        return ComposedTransform(AffineTransform(alpha, 1 - 2 * alpha), SigmoidTransform().inv)

    def forward(
        self, x: Tensor, context: Tensor, offset: Tensor | float = 0.5
    ) -> tuple[Tensor, Tensor]:
        """``u`` and ``log |det du/dy|`` (``(B,)``) for ``y = (255 x + offset) / 256``.

        ``offset``: uniform noise in [0, 1) to dequantise, or 0.5 (the bin centre) to abduct.
        A float64 ``x`` (the unclipped output of :meth:`inverse`) keeps float64 through the logit.
        """
        y = (x * (_LEVELS - 1) + offset) / _LEVELS
        z, logit_ladj = self.to_logit(y)
        latents, logdet = self.flow(z.to(context.dtype), context)
        u = torch.cat([latent.flatten(1) for latent in latents], dim=1)
        return u, logdet + logit_ladj.flatten(1).sum(1)

    def inverse(self, u: Tensor, context: Tensor) -> Tensor:
        """The images (not clipped to [0, 1]) of noise ``u``: the inverse of the bin-centre map.

        The sigmoid and the pixel map run in float64 (but on MPS, which has none): near the ends
        of :attr:`pixel_range` a float32 pixel can't hold the logit it came from (below about -16
        its rounding error is larger than the sigmoid), and abduction from it would miss.
        """
        sizes = [math.prod(shape) for shape in self.shapes]
        latents = [
            part.reshape(len(u), *shape) for part, shape in zip(u.split(sizes, 1), self.shapes)
        ]
        z = self.flow.inverse(latents, context)
        y = self.from_logit(z if z.device.type == "mps" else z.double())
        return (y * _LEVELS - 0.5) / (_LEVELS - 1)

    # Beyond a logit of +-_TAIL the map to pixels leaves the sigmoid for a logarithmic tail with
    # the same slope there: p = sigma(T) + s log(1 + z - T), s = sigma'(T). Every pixel there is
    # clipped anyway (real images stay within +-2.95 at logit_alpha=0.05), and a float64 pixel on
    # a saturated sigmoid can't hold its logit beyond about +-35, so a far counterfactual's
    # unclipped output abducted another noise (benchmarks/results/domains-2026-12-02/notes.md).
    # The tail holds every finite logit to a relative 1e-11 and stays bounded (pixel_range).
    _TAIL = 10.0

    def _tail(self) -> tuple[float, float, float]:
        """``sigma(T)``, its slope ``s``, and the bin-centre pixel ``y`` where the tail starts."""
        top = 1.0 / (1.0 + math.exp(-self._TAIL))
        alpha = self.logit_alpha
        return top, top * (1.0 - top), (top - alpha) / (1.0 - 2.0 * alpha)

    def to_logit(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``z = logit(alpha + (1 - 2 alpha) y)`` and its log-derivative, elementwise, with the
        logarithmic tails beyond ``+-_TAIL`` (where no real image goes: bit for bit the plain
        logit there)."""
        _, slope, y_top = self._tail()
        z, ladj = self.logit.call_and_ladj(y.clamp(1.0 - y_top, y_top))
        scale = 1.0 - 2.0 * self.logit_alpha
        # how far past the tail's start, in units of the tail's own slope
        beyond = (scale * (y - y_top).clamp(min=0) - scale * (1.0 - y_top - y).clamp(min=0)) / slope
        sign = beyond.sign()
        outside = beyond != 0
        z = torch.where(outside, sign * (self._TAIL + torch.expm1(beyond.abs())), z)
        ladj = torch.where(outside, math.log(scale / slope) + beyond.abs(), ladj)
        return z, ladj

    def from_logit(self, z: Tensor) -> Tensor:
        """The inverse of :meth:`to_logit`: bin-centre pixels ``y``."""
        _, slope, y_top = self._tail()
        y = self.logit.inv(z.clamp(-self._TAIL, self._TAIL))
        past = (z.abs() - self._TAIL).clamp(min=0)
        tail = y_top + slope * torch.log1p(past) / (1.0 - 2.0 * self.logit_alpha)
        return torch.where(past > 0, torch.where(z > 0, tail, 1.0 - tail), y)

    @property
    def pixel_range(self) -> tuple[float, float]:
        """The open interval :meth:`inverse` maps onto, for every finite float64 logit: the
        logit's margin, its bounded tail and the bin centre's half level put it just outside
        [0, 1] (by 0.094 at ``logit_alpha=0.05``)."""
        _, slope, y_top = self._tail()
        largest = y_top + slope * math.log1p(torch.finfo(torch.float64).max) / (
            1.0 - 2.0 * self.logit_alpha
        )
        return (
            ((1.0 - largest) * _LEVELS - 0.5) / (_LEVELS - 1),
            (largest * _LEVELS - 0.5) / (_LEVELS - 1),
        )


def per_dimension(nll: Tensor, dims: int) -> tuple[Tensor, dict[str, Tensor]]:
    """A mean NLL in nats as the loss per dimension and its bits per dimension, for the logs.

    Per-dimension units keep the learning rate independent of the image size.
    """
    return nll / dims, {"bpd": nll / (dims * math.log(2))}


@dataclass
class FlowNoise:
    """The image's exogenous noise under the flow: ``u = f(x; pa)``, ``(B, C * H * W)``."""

    u: Tensor


class FlowImageMechanism(ImageMechanism):
    """``x = f^-1(u; pa)``: the conditional flow and its three steps, as a plain module.

    ``predict`` returns the inverse unclipped, in float64 (:meth:`PixelFlow.inverse`);
    :func:`~models.base.counterfactual` clips it for ``Counterfactual.image`` and keeps it as
    ``Counterfactual.unclipped``, whose abduction recovers the noise exactly.

    Args:
        graph: the causal graph (its image parents condition every coupling).
        image_shape: ``(C, H, W)``.
        logit_alpha: margin of the logit pre-processing.
        **flow: :class:`MultiScaleFlow` settings (``scales``, ``steps``, ``hidden``,
            ``max_log_scale``).
    """

    exact_inputs = True

    def __init__(
        self,
        graph,
        image_shape: Sequence[int],
        logit_alpha: float = 0.05,
        context: Sequence[str] | None = None,
        **flow: Any,
    ):
        super().__init__()
        self.parents = ParentEncoder(graph, graph.image_parents if context is None else context)
        self.flow = PixelFlow(image_shape, logit_alpha, context_dim=self.parents.dim, **flow)

    # The flow's latent is the noise itself; a latent SCM over it (ILD) overrides these two.
    def to_noise(self, z: Tensor, pa: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The exogenous noise of latent ``z = f(x)`` and ``log |det d noise / dz|``, ``(B,)``."""
        return z, z.new_zeros(len(z))

    def from_noise(self, u: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        """The latent ``z`` of noise ``u``: the inverse of :meth:`to_noise`."""
        return u

    def nll(self, x: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        """Negative log-likelihood of the 8-bit images in nats, ``(B,)``: with uniform
        dequantisation, an upper bound (in expectation) of ``-log P(x)``."""
        return self.nll_and_latent(x, pa)[0]

    def nll_and_latent(self, x: Tensor, pa: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        """:meth:`nll` and the dequantised image's latent ``z = f(x)``, ``(B, D)``."""
        z, logdet = self.flow(x, self.parents(pa), offset=torch.rand_like(x))
        u, noise_logdet = self.to_noise(z, pa)
        logdet = logdet + noise_logdet
        dims = u.shape[1]
        log_prior = -0.5 * (u**2).sum(1) - 0.5 * dims * math.log(2 * math.pi)
        # The density of y in [0, 1)^D becomes one of the 8-bit values by y = (k + d) / 256.
        return -(log_prior + logdet) + dims * math.log(_LEVELS), z

    def loss(self, x: Tensor, pa: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The exact negative log-likelihood per dimension."""
        return per_dimension(self.nll(x, pa).mean(), x[0].numel())

    def abduct(self, x: Tensor, pa: Mapping[str, Tensor]) -> FlowNoise:
        z, _ = self.flow(x, self.parents(pa))
        return FlowNoise(self.to_noise(z, pa)[0])

    def prior_noise(self, pa: Mapping[str, Tensor]) -> FlowNoise:
        """``u ~ N(0, I)``, the flow's base distribution."""
        reference = next(iter(pa.values()))
        size = sum(math.prod(shape) for shape in self.flow.shapes)
        return FlowNoise(torch.randn(len(reference), size, device=reference.device))

    def predict(
        self, noise: FlowNoise, pa: Mapping[str, Tensor], intervened: frozenset[str]
    ) -> Tensor:
        if not isinstance(noise, FlowNoise):
            raise ValueError(
                f"{type(self).__name__} needs a FlowNoise abducted by a flow, got "
                f"{type(noise).__name__}"
            )
        # Unclipped: counterfactual() clips what users see and keeps this for exact round trips.
        return self.flow.inverse(self.from_noise(noise.u, pa), self.parents(pa))

    @property
    def pixel_range(self) -> tuple[float, float]:
        return self.flow.pixel_range

    @torch.no_grad()
    def check_invertibility(
        self, x: Tensor, pa: Mapping[str, Tensor], dtype: torch.dtype = torch.float64
    ) -> float:
        """Max absolute error of ``f^-1(f(x))`` on [0, 1], run in a ``dtype`` copy of the flow.

        Counterfactuals run in float32 (error ~1e-6); in float64 the error is ~1e-14, which proves
        the inverse is exact and that float32 rounding is the only error.
        """
        mechanism = copy.deepcopy(self).to(dtype)
        context = mechanism.parents(pa).to(dtype)
        x = x.to(dtype)
        z, _ = mechanism.flow(x, context)
        u, _ = mechanism.to_noise(z, pa)
        back = mechanism.flow.inverse(mechanism.from_noise(u, pa), context)
        return (back - x).abs().max().item()


class ConditionalFlow(CounterfactualModel):
    """Conditional Glow-style flow behind the counterfactual interface.

    The image's noise is :class:`FlowNoise`, standard normal under the model, abducted without
    dequantisation noise (deterministic). No counterfactual-time options.

    Args:
        graph, image_shape, dataset, scm, scm_weight, lr, weight_decay, cf_finetune: see
            :class:`~models.base.CounterfactualModel`.
        scales: levels of the multi-scale flow (``H``, ``W`` divisible by ``2 ** scales``).
        steps: flow steps (actnorm, 1 x 1 convolution, coupling) per level.
        hidden: channels of the coupling nets.
        max_log_scale: bound of the couplings' log-scales.
        logit_alpha: margin of the logit pre-processing.
    """

    def __init__(
        self,
        graph: Mapping[str, Any],
        image_shape: Sequence[int],
        dataset: str = "unknown",
        scales: int = 3,
        steps: int = 8,
        hidden: int = 64,
        max_log_scale: float = 2.0,
        logit_alpha: float = 0.05,
        scm: Mapping[str, Any] | None = None,
        scm_weight: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        cf_finetune: Mapping[str, Any] | None = None,
    ):
        super().__init__(
            graph,
            image_shape,
            dataset,
            scm=scm,
            scm_weight=scm_weight,
            lr=lr,
            weight_decay=weight_decay,
            cf_finetune=cf_finetune,
        )
        self.save_hyperparameters()
        _, height, width = self.image_shape
        if height % 2**scales or width % 2**scales:
            raise ValueError(
                f"images of {height} x {width} can't be squeezed {scales} times: height and width "
                f"must be divisible by 2^{scales}; use fewer scales"
            )
        self.set_mechanism(
            self.mechanism_class(self.graph, self.image_shape, **self.mechanism_settings())
        )

    #: The image mechanism this module wraps (a variant of the family subclasses both).
    mechanism_class = FlowImageMechanism

    def mechanism_settings(self) -> dict[str, Any]:
        """The mechanism's settings, from the saved hyperparameters."""
        names = ("logit_alpha", "scales", "steps", "hidden", "max_log_scale")
        return {name: self.hparams[name] for name in names}

    def check_invertibility(
        self, x: Tensor, pa: Mapping[str, Tensor], dtype: torch.dtype = torch.float64
    ) -> float:
        """See :meth:`FlowImageMechanism.check_invertibility`."""
        x, pa = self.check_inputs(x, pa)
        return self.mechanism.check_invertibility(x, pa, dtype)
