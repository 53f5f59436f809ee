"""Skip-connected convolution blocks of the VDVAE kind (Child, ICLR 2021)."""

from __future__ import annotations

from torch import Tensor, nn


class Bottleneck(nn.Module):
    """``1x1 -> 3x3 -> 3x3 -> 1x1`` convolutions with GELUs, optionally added to the input.

    Args:
        in_channels: input channels.
        middle: channels inside the bottleneck.
        out_channels: output channels.
        residual: add the input (needs ``in_channels == out_channels``).
        zero_last: start the last convolution at zero, so a residual block begins as the
            identity; keeps deep ladders stable at initialisation.
        kernel: side of the two inner convolutions: 3, or 1 where the map is so small (2 x 2 or
            1 x 1) that a 3 x 3 kernel would see mostly padding.
    """

    def __init__(
        self,
        in_channels: int,
        middle: int,
        out_channels: int,
        residual: bool = True,
        zero_last: bool = False,
        kernel: int = 3,
    ):
        super().__init__()
        if residual and in_channels != out_channels:
            raise ValueError("a residual block needs as many output channels as input channels")
        last = nn.Conv2d(middle, out_channels, 1)
        if zero_last:
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
        self.net = nn.Sequential(
            nn.GELU(),
            nn.Conv2d(in_channels, middle, 1),
            nn.GELU(),
            nn.Conv2d(middle, middle, kernel, padding=kernel // 2),
            nn.GELU(),
            nn.Conv2d(middle, middle, kernel, padding=kernel // 2),
            nn.GELU(),
            last,
        )
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.net(x)
        return x + out if self.residual else out
