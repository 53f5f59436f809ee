"""The cost of the diffusion autoencoder's parts, and the first stage's quality per wall second.

The evidence behind the latent design's CPU sizes (benchmarks/results/diffae-latent.md):
  - the UNet: forward time at batch 256 (a counterfactual costs about 40 of those at the
    defaults) and training images/s at batch 64, per size, over the pixels and over the latent;
  - the first stage: training images/s at batch 64 per width, and its reconstruction L1 (0-255)
    on 512 training digits after --seconds of training alone, at equal wall time.

    python benchmarks/diffae_design.py [--seconds 45] [--out benchmarks/results/diffae-design.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from diffusers import UNet2DModel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, publish  # noqa: E402

from datamodules import MorphoMNISTDataModule  # noqa: E402
from models.nn.autoencoder import LatentAutoencoder  # noqa: E402

#: (what it runs over, channels, side, block_out_channels)
UNETS = [
    ("pixels (the former CPU default)", 1, 32, (32, 64, 64)),
    ("latent", 4, 8, (32, 64)),
    ("latent", 4, 8, (48, 96)),
    ("latent", 4, 8, (64, 128)),
]
FIRST_STAGES = [(16, 32), (24, 48), (32, 64)]


def seconds_per_call(fn, repeats: int = 3) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def unet_row(channels: int, side: int, widths: tuple[int, ...]) -> tuple[float, float, int]:
    unet = UNet2DModel(
        sample_size=side,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=widths,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) * len(widths),
        up_block_types=("UpBlock2D",) * len(widths),
        add_attention=False,
        norm_num_groups=8,
        class_embed_type="identity",
        resnet_time_scale_shift="scale_shift",
    )
    context = torch.randn(256, widths[0] * 4)
    x, t = torch.randn(256, channels, side, side), torch.full((256,), 500)
    with torch.inference_mode():
        forward = seconds_per_call(lambda: unet(x, t, class_labels=context))
    optimiser = torch.optim.Adam(unet.parameters())

    def step():
        loss = unet(x[:64], t[:64], class_labels=context[:64]).sample.pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    return forward, 64 / seconds_per_call(step), sum(p.numel() for p in unet.parameters())


def first_stage_row(widths, images: torch.Tensor, held: torch.Tensor, seconds: float):
    torch.manual_seed(0)
    autoencoder = LatentAutoencoder(1, widths, 4)
    optimiser = torch.optim.AdamW(autoencoder.parameters(), 1e-3)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = images[torch.randint(0, len(images), (64,))] * 2 - 1
        _, nll = autoencoder.loss(batch)
        optimiser.zero_grad()
        nll.mean().backward()
        optimiser.step()
        steps += 1
    rate = steps * 64 / (time.perf_counter() - start)
    autoencoder.eval()
    with torch.no_grad():
        y = held * 2 - 1
        reconstruction = autoencoder.decode(autoencoder.encode(y)).expected
    return rate, float((reconstruction - y).abs().mean() * 127.5), steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--seconds", type=float, default=45.0, help="first-stage training time")
    parser.add_argument("--out", help="also write the markdown to this file")
    args = parser.parse_args()
    lines = [
        f"{torch.get_num_threads()} threads, torch {torch.__version__}.",
        "",
        "| UNet over | block_out_channels | parameters | forward at batch 256 (s) "
        "| training images/s at batch 64 |",
        "|---|---|---|---|---|",
    ]
    for where, channels, side, widths in UNETS:
        forward, rate, parameters = unet_row(channels, side, widths)
        lines.append(
            f"| {where}, {channels} x {side} x {side} | {list(widths)} | {parameters / 1e6:.2f} M "
            f"| {forward:.3f} | {rate:.0f} |"
        )
        print(lines[-1], file=sys.stderr, flush=True)
    datamodule = MorphoMNISTDataModule(data_dir=args.data_dir)
    datamodule.setup("fit")
    train = datamodule.train_set
    images = train.batch(range(len(train) - 512))["x"]
    held = train.batch(range(len(train) - 512, len(train)))["x"]
    lines += [
        "",
        f"First stage alone, {args.seconds:g} s of training each (AdamW 1e-3, batch 64), "
        "reconstruction L1 (0-255) of its decoder's mean on 512 held-back training digits.",
        "",
        "| widths | training images/s | steps | reconstruction L1 |",
        "|---|---|---|---|",
    ]
    for widths in FIRST_STAGES:
        rate, error, steps = first_stage_row(widths, images, held, args.seconds)
        lines.append(f"| {list(widths)} | {rate:.0f} | {steps} | {error:.2f} |")
        print(lines[-1], file=sys.stderr, flush=True)
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
