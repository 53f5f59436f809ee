"""Invertible layers for image normalizing flows, with exact inverses and log-determinants.

Each layer maps ``(B, C, H, W)`` to ``(B, C', H', W')`` with ``forward(x, context) -> (y, logdet)``
(``logdet``: ``(B,)``, the log-absolute-determinant of the Jacobian ``dy / dx``) and
``inverse(y, context) -> x``. ``context`` is a ``(B, P)`` conditioning vector (the image's causal
parents); layers that don't use it ignore it.

- :class:`Squeeze`: 2 x 2 space-to-depth, a permutation (RealNVP; Dinh, Sohl-Dickstein & Bengio,
  ICLR 2017, section 3.6);
- :class:`ActNorm`: per-channel affine map (Glow; Kingma & Dhariwal, NeurIPS 2018, section 3.1);
- :class:`InvertibleConv1x1`: a learned channel mixing in Glow's LU parameterisation (section 3.2);
- :class:`AffineCoupling`: half the channels scaled and shifted by a conditional convolutional net
  of the other half and the context (RealNVP section 3.3, Glow section 3.3).

zuko has no convolutional layers, so the convolutions and the channel bookkeeping are written here;
the coupling's elementwise bijection is zuko's :class:`~zuko.transforms.MonotonicAffineTransform`,
whose soft clip bounds the log-scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from zuko.transforms import MonotonicAffineTransform

__all__ = ["ActNorm", "AffineCoupling", "InvertibleConv1x1", "InvertibleLayer", "Squeeze"]


class InvertibleLayer(nn.Module):
    """A bijection on images: ``forward(x, context) -> (y, logdet)``, ``inverse(y, context) -> x``."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class Squeeze(InvertibleLayer):
    """``(C, H, W) -> (4C, H/2, W/2)``: each 2 x 2 patch becomes 4 channels, so later 1 x 1 mixing and
    channel couplings reach across pixels. A permutation: log-determinant 0."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return F.pixel_unshuffle(x, 2), x.new_zeros(len(x))

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        return F.pixel_shuffle(y, 2)


class ActNorm(InvertibleLayer):
    """``y = (x + bias) * exp(log_scale)`` per channel, initialised to the identity.

    Glow initialises it from the first batch's statistics; the identity start is kept here (the
    logit pre-processing already gives inputs of unit scale) so the layer has no hidden one-off
    state to lose between training and a reloaded checkpoint.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = self.log_scale.sum() * x.shape[2] * x.shape[3]
        return (x + self.bias) * self.log_scale.exp(), logdet.expand(len(x))

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        return y * torch.exp(-self.log_scale) - self.bias


class InvertibleConv1x1(InvertibleLayer):
    """A learned invertible channel mixing ``W = P L (U + diag(sign * exp(log_s)))`` (Glow's LU form).

    ``P`` (a permutation) and ``sign`` are fixed at initialisation (buffers, saved in checkpoints);
    ``L`` is unit lower-triangular, ``U`` strictly upper-triangular. The log-determinant is
    ``H * W * sum(log_s)`` in O(C), and ``W`` can never become singular. Starts as a random
    rotation, so the first coupling already mixes all channels.
    """

    def __init__(self, channels: int):
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(channels, channels))[0]
        permutation, lower, upper = torch.linalg.lu(rotation)
        diagonal = torch.diagonal(upper)
        self.register_buffer("permutation", permutation)
        self.register_buffer("sign", torch.sign(diagonal))
        self.register_buffer("lower_mask", torch.tril(torch.ones(channels, channels), -1))
        self.lower = nn.Parameter(lower * self.lower_mask)
        self.upper = nn.Parameter(torch.triu(upper, 1))
        self.log_s = nn.Parameter(diagonal.abs().log())

    def weight(self) -> Tensor:
        """The ``(C, C)`` mixing matrix."""
        eye = torch.eye(len(self.log_s), dtype=self.log_s.dtype, device=self.log_s.device)
        lower = self.lower * self.lower_mask + eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign * self.log_s.exp())
        return self.permutation @ lower @ upper

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        weight = self.weight()
        logdet = self.log_s.sum() * x.shape[2] * x.shape[3]
        return F.conv2d(x, weight[..., None, None]), logdet.expand(len(x))

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        inverse = torch.linalg.inv(self.weight())
        return F.conv2d(y, inverse[..., None, None])


class AffineCoupling(InvertibleLayer):
    """``y_b = x_b * exp(s) + t`` with ``(s, t) = net(x_a, context)``; ``x_a`` passes unchanged.

    The net is conv3x3 -> conv1x1 -> conv3x3 (as in Glow); the context enters as a learned bias of
    the first hidden layer (the same as concatenating it as constant channels, without the extra
    input channels). The last convolution starts at zero, so the coupling starts as the identity.
    The log-scale is soft-clipped to ``(-max_log_scale, max_log_scale)`` (zuko's
    :class:`~zuko.transforms.MonotonicAffineTransform`): an unbounded ``exp(s)`` can blow up early
    in training and makes the inverse ill-conditioned.

    Args:
        channels: channels of ``x``; the first ``channels // 2`` condition the rest.
        hidden: channels of the net's hidden layers.
        context_dim: size of the context vector (0: unconditional).
        max_log_scale: bound of ``|s|``.
    """

    def __init__(
        self, channels: int, hidden: int, context_dim: int = 0, max_log_scale: float = 2.0
    ):
        super().__init__()
        if channels < 2:
            raise ValueError(f"a coupling needs at least 2 channels, got {channels}")
        self.split = channels // 2
        transformed = channels - self.split
        self.first = nn.Conv2d(self.split, hidden, 3, padding=1)
        self.embed = nn.Linear(context_dim, hidden) if context_dim else None
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 1), nn.ReLU())
        self.last = nn.Conv2d(hidden, 2 * transformed, 3, padding=1)
        nn.init.zeros_(self.last.weight)
        nn.init.zeros_(self.last.bias)
        self.slope = math.exp(-max_log_scale)  # zuko's bound: |log-scale| < -log(slope)

    def _transform(self, x_a: Tensor, context: Tensor | None) -> MonotonicAffineTransform:
        h = self.first(x_a)
        if self.embed is not None:
            if context is None:
                raise ValueError("this coupling is conditional: pass a context")
            h = h + self.embed(context)[..., None, None]
        shift, raw_scale = self.last(self.body(h)).chunk(2, dim=1)
        return MonotonicAffineTransform(shift, raw_scale, slope=self.slope)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x_a, x_b = x[:, : self.split], x[:, self.split :]
        y_b, ladj = self._transform(x_a, context).call_and_ladj(x_b)
        return torch.cat([x_a, y_b], dim=1), ladj.flatten(1).sum(1)

    def inverse(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        y_a, y_b = y[:, : self.split], y[:, self.split :]
        return torch.cat([y_a, self._transform(y_a, context).inv(y_b)], dim=1)
