"""Small convolutional encoders and decoders for images of a few tens of pixels."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ConvEncoder(nn.Module):
    """``(B, C, H, W)`` -> ``(B, out_features)`` by stride-2 convolutions, one per width.

    Args:
        in_channels: image channels.
        widths: channels at each stage; each stage halves the resolution.
        image_size: ``H`` (= ``W``), divisible by ``2 ** len(widths)``.
        out_features: size of the output vector.
    """

    def __init__(self, in_channels: int, widths: Sequence[int], image_size: int, out_features: int):
        super().__init__()
        if image_size % 2 ** len(widths):
            raise ValueError(f"image size {image_size} is not divisible by 2^{len(widths)}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, padding=1), nn.SiLU()]
        previous = widths[0]
        for width in widths:
            layers += [nn.Conv2d(previous, width, 4, 2, 1), _group_norm(width), nn.SiLU()]
            previous = width
        side = image_size // 2 ** len(widths)
        layers += [nn.Flatten(), nn.Linear(previous * side * side, out_features)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """``(B, in_features)`` -> ``(B, out_channels, H, W)``, the mirror of :class:`ConvEncoder`."""

    def __init__(self, in_features: int, widths: Sequence[int], image_size: int, out_channels: int):
        super().__init__()
        widths = list(reversed(widths))
        self.side = image_size // 2 ** len(widths)
        self.first = widths[0]
        self.project = nn.Sequential(nn.Linear(in_features, widths[0] * self.side**2), nn.SiLU())
        layers: list[nn.Module] = []
        for width, following in zip(widths, widths[1:] + [widths[-1]]):
            layers += [
                nn.ConvTranspose2d(width, following, 4, 2, 1),
                _group_norm(following),
                nn.SiLU(),
            ]
        layers += [nn.Conv2d(widths[-1], out_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(self.project(h).view(len(h), self.first, self.side, self.side))
