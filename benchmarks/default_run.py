"""Figures of the default run: `python train.py` on embedded Morpho-MNIST, on this machine.

Runs the default training end to end in a fresh directory (dataset generation included), then
measures on the resulting checkpoint:
  - wall time of `python train.py` (fresh data dir, so the dataset is generated too);
  - training throughput (images/s): median of 3 timed runs of 30 optimiser steps at the default
    batch size, after warm-up;
  - counterfactuals per second at batch 256 (median of 5);
  - on the 1,000 test images: the null intervention's L1, and the L1 / RMSE against the true
    counterfactual for do(thickness = t + 1) and do(intensity = i - 40) (the latter on the test
    images with i >= 104, so the value stays in the support [64, 255]), with the pixel residual
    on and off. All on the 0-255 scale.

    python benchmarks/default_run.py [--ckpt PATH] [--out benchmarks/results/default_run.md]

--ckpt skips training and measures an existing checkpoint (the wall time is then not measured).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, counterfactuals_per_second, publish, run_train  # noqa: E402

from datamodules import datamodule_for  # noqa: E402
from metrics.soundness import composition, ground_truth_error  # noqa: E402
from models import load_model  # noqa: E402


def training_throughput(model, datamodule, steps: int = 30, repeats: int = 3) -> float:
    model.train()
    optimiser = model.configure_optimizers()
    model.log_dict = lambda *a, **k: None
    batches = [b for _, b in zip(range(steps), datamodule.train_dataloader())]

    def run():
        for batch in batches:
            loss = model._step(batch, "train")
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()

    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    model.eval()
    return sum(len(b["x"]) for b in batches) / statistics.median(times)


def test_split_errors(model, datamodule, residual: bool) -> dict[str, float]:
    sums = {"null": [], "t+1 l1": [], "t+1 rmse": [], "i-40 l1": [], "i-40 rmse": []}
    for batch in datamodule.test_dataloader():
        sums["null"].append(composition(model, batch["x"], batch["pa"], 1, residual=residual)[0])
        t = ground_truth_error(
            model, datamodule, batch, {"thickness": lambda v: v + 1}, residual=residual
        )
        sums["t+1 l1"].append(t["l1"])
        sums["t+1 rmse"].append(t["rmse"])
        keep = batch["pa"]["intensity"] >= 104.0
        if keep.any():
            sub = {
                "x": batch["x"][keep],
                "index": batch["index"][keep],
                "pa": {k: v[keep] for k, v in batch["pa"].items()},
            }
            i = ground_truth_error(
                model, datamodule, sub, {"intensity": lambda v: v - 40}, residual=residual
            )
            sums["i-40 l1"].append(i["l1"])
            sums["i-40 rmse"].append(i["rmse"])
    return {k: torch.cat(v).mean().item() for k, v in sums.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--ckpt", help="measure this checkpoint instead of training one")
    parser.add_argument("--data-dir", default=str(ROOT / "data"), help="dataset cache for scoring")
    parser.add_argument("--out", help="also write the markdown to this file")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    wall = None
    if args.ckpt:
        ckpt = Path(args.ckpt)
    else:
        workdir = Path(tempfile.mkdtemp(prefix="cfzoo-default-run-"))
        trained = run_train(workdir, [])
        ckpt, wall = Path(trained["checkpoint"]), trained["wall_seconds"]
    model = load_model(ckpt)
    datamodule = datamodule_for(model, args.data_dir)  # the split it was trained on
    train_ips = training_throughput(load_model(ckpt), datamodule)
    cf_ips = counterfactuals_per_second(model, datamodule)
    with_residual = test_split_errors(model, datamodule, residual=True)
    without = test_split_errors(model, datamodule, residual=False)

    lines = [
        f"Checkpoint: `{ckpt}`",
        "",
        "| figure | value |",
        "|---|---|",
        "| wall time of `python train.py` (fresh data dir) | "
        + (f"{wall:.0f} s |" if wall else "not measured (--ckpt) |"),
        f"| training throughput (batch {datamodule.batch_size}) | {train_ips:.0f} images/s |",
        f"| counterfactuals per second (batch 256, do(thickness)) | {cf_ips:.0f} |",
        "",
        "Test split (1,000 images), 0-255 scale:",
        "",
        "| pixel residual | null intervention L1 | L1 / RMSE vs truth, do(t + 1) | "
        "L1 / RMSE vs truth, do(i - 40) |",
        "|---|---|---|---|",
    ]
    for name, r in (("on (default)", with_residual), ("off", without)):
        lines.append(
            f"| {name} | {r['null']:.3f} | {r['t+1 l1']:.2f} / {r['t+1 rmse']:.2f} | "
            f"{r['i-40 l1']:.2f} / {r['i-40 rmse']:.2f} |"
        )
    publish("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
