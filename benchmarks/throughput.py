"""Training and counterfactual throughput of every family, at its CPU default and its _large config.

For each model config (--models) and batch size (--batch-sizes), on causal Morpho-MNIST:
  - training images/s: ``trainer.fit`` through Lightning as train.py runs it (optimiser, EMA,
    gradient-norm checks and the attribute SCM included), timed over --steps steps after
    --warmup steps (fewer once --budget seconds have passed);
  - counterfactuals/s: ``model.counterfactual`` for do(thickness + 1) at its default options on
    a test batch of that size, median of --repeats calls after one warm-up call (one call, no
    warm-up, when a call takes longer than --budget seconds);
  - parameters of the image mechanism.

Run it with no other job on the machine; the README's zoo table cites its results file.

    python benchmarks/throughput.py [--models vae hvae hvae_large ...] [--batch-sizes 32 256]
        [--steps 20] [--warmup 5] [--budget 60] [--out benchmarks/results/throughput.md]

benchmarks/results/throughput.md was made with --steps 15 --warmup 3 --budget 45.

--causal-gen DIR adds causal-gen's HVAE (Ribeiro et al. 2023) at its Morpho-MNIST hyperparameters
(``--hps morphomnist``, the architecture ``model=hvae_large`` expresses) from a checkout of
https://github.com/biomedia-mira/causal-gen, measured in the same run: stepped as its own trainer
steps (forward, backward, gradient clipping, the skip check, AdamW, EMA) on a fixed batch of real
digits, with no data loading, so its figure is, if anything, favourable to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, build_model, publish  # noqa: E402

MODELS = ["vae", "hvae", "hvae_large", "flow", "flow_large", "diffae", "diffae_large"]


class StepTimer(pl.Callback):
    """Wall time of the training steps after the warm-up ones; stops after ``budget`` seconds."""

    def __init__(self, warmup: int, budget: float):
        self.warmup = warmup
        self.budget = budget
        self.start: float | None = None
        self.end: float | None = None
        self.steps = 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.start is None:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.start is not None:
            self.steps += 1
            self.end = time.perf_counter()
            if self.end - self.start > self.budget:
                trainer.should_stop = True


def build(model_name: str, batch_size: int):
    """The default datamodule at ``batch_size``, and the model config built for it."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "train", overrides=[f"data.batch_size={batch_size}", f"paths.root_dir={ROOT}"]
        )
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    return build_model(model_name, datamodule), datamodule


def measure(
    model_name: str, batch_size: int, warmup: int, steps: int, repeats: int, budget: float
) -> dict:
    torch.manual_seed(0)
    model, datamodule = build(model_name, batch_size)
    timer = StepTimer(warmup, budget)
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=datamodule)
    train_rate = timer.steps * batch_size / (timer.end - timer.start)

    model.eval()
    datamodule.setup("test")
    test = datamodule.test_set
    batch = test.batch(range(min(batch_size, len(test))))
    do = {"thickness": lambda t: t + 1}
    times = []
    for call in range(repeats + 1):
        start = time.perf_counter()
        model.counterfactual(batch["x"], batch["pa"], do)
        elapsed = time.perf_counter() - start
        # The first call is a warm-up, unless it is so slow that warming up costs nothing.
        if call or elapsed > budget:
            times.append(elapsed)
        if elapsed > budget:
            break
    return {
        "model": model_name,
        "batch_size": batch_size,
        "parameters": sum(p.numel() for p in model.net.parameters()),
        "train_images_per_s": train_rate,
        "counterfactuals_per_s": len(batch["x"]) / statistics.median(times),
        "timed_steps": timer.steps,
        "cf_calls": len(times),
    }


def measure_causal_gen(
    checkout: Path, batch_size: int, warmup: int, steps: int, budget: float
) -> dict:
    """Training images/s of causal-gen's Morpho-MNIST HVAE, stepped as its trainer steps."""
    sys.path.insert(0, str(checkout / "src"))
    try:
        from hps import add_arguments, setup_hparams
        from utils import EMA
        from vae import HVAE
    except ImportError as error:
        raise SystemExit(
            f"--causal-gen {checkout}: no causal-gen checkout there ({error}); clone "
            "https://github.com/biomedia-mira/causal-gen and pass its folder"
        ) from error
    argv, sys.argv = sys.argv, [sys.argv[0], "--hps", "morphomnist", "--bs", str(batch_size)]
    try:
        hps = setup_hparams(add_arguments(argparse.ArgumentParser()))
    finally:
        sys.argv = argv
    torch.manual_seed(0)
    model = HVAE(hps)
    ema = EMA(model, beta=hps.ema_rate)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=hps.lr, weight_decay=hps.wd, betas=hps.betas
    )
    _, datamodule = build("hvae", batch_size)
    batch = next(iter(datamodule.train_dataloader()))
    x = batch["x"] * 2 - 1  # its preprocessing: [-1, 1]
    # its 12 parents (thickness, intensity, one-hot digit), repeated over the image as it does
    pa = torch.rand(len(x), hps.context_dim)[..., None, None].repeat(1, 1, 32, 32)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        out = model(x, pa, beta=hps.beta)
        out["elbo"].backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), hps.grad_clip)
        if norm < hps.grad_skip:
            optimizer.step()
            ema.update()
        model.zero_grad(set_to_none=True)
        if step >= warmup:
            times.append(time.perf_counter() - start)
            if sum(times) > budget:
                break
    peer = os.popen(f"git -C {checkout} rev-parse --short HEAD").read().strip() or "?"
    return {
        "model": f"causal-gen hvae (hps morphomnist, `{peer}`)",
        "batch_size": batch_size,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_images_per_s": len(times) * batch_size / sum(times),
        "counterfactuals_per_s": None,
        "timed_steps": len(times),
        "cf_calls": 0,
    }


def render(rows: list[dict], out: str) -> str:
    lines = [
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}. Training images/s over the timed steps (after the warm-up "
        "ones); counterfactuals/s for do(thickness + 1) at the default options, the median of "
        f"the timed calls. Rows: `{Path(out).with_suffix('.jsonl').name}`.",
        "",
        "| model | parameters | batch | training images/s | timed steps "
        "| counterfactuals/s | timed calls | commit |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['parameters'] / 1e6:.2f} M | {r['batch_size']} "
            f"| {r['train_images_per_s']:.1f} | {r['timed_steps']} "
            f"| {_figure(r['counterfactuals_per_s'])} | {r['cf_calls']} | `{r['commit']}` |"
        )
    return "\n".join(lines)


def record(rows: list[dict], row: dict, rows_path: Path) -> list[dict]:
    """``rows`` with ``row`` in place of any of the same model and batch size, written to
    ``rows_path`` at once (a killed run keeps every row measured so far)."""
    same = (row["model"], row["batch_size"])
    rows = [r for r in rows if (r["model"], r["batch_size"]) != same] + [row]
    rows_path.parent.mkdir(parents=True, exist_ok=True)
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(json.dumps(row), flush=True)
    return rows


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=MODELS, help="model configs")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--warmup", type=int, default=5, help="untimed training steps")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--repeats", type=int, default=3, help="timed counterfactual calls")
    parser.add_argument(
        "--budget", type=float, default=60.0, help="seconds after which a timing stops repeating"
    )
    parser.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "throughput.md"),
        help="the markdown table; its rows go to the .jsonl beside it, one per line as each is "
        "measured; a row measured at this commit is kept (a killed run resumes), an older "
        "commit's is measured again",
    )
    parser.add_argument(
        "--render-only", action="store_true", help="measure nothing: rewrite the table"
    )
    parser.add_argument(
        "--causal-gen",
        type=Path,
        metavar="DIR",
        help="a causal-gen checkout: add its Morpho-MNIST HVAE, measured in this run",
    )
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    rows_path = Path(args.out).with_suffix(".jsonl")
    rows = (
        [json.loads(line) for line in rows_path.read_text().splitlines()]
        if rows_path.exists()
        else []
    )
    commit = os.popen(f"git -C {ROOT} rev-parse --short HEAD").read().strip()
    # a row measured at this commit is kept (a killed run resumes); one of an older commit is
    # measured again and replaced, so a redesigned model's row is never a stale one
    done = {(r["model"], r["batch_size"]) for r in rows if r["commit"] == commit}
    for name in args.models:
        for batch_size in args.batch_sizes:
            if (name, batch_size) in done or args.render_only:
                continue
            row = measure(name, batch_size, args.warmup, args.steps, args.repeats, args.budget)
            rows = record(rows, {**row, "commit": commit}, rows_path)
    if args.causal_gen and not args.render_only:
        for batch_size in args.batch_sizes:
            row = measure_causal_gen(
                args.causal_gen, batch_size, args.warmup, args.steps, args.budget
            )
            rows = record(rows, {**row, "commit": commit}, rows_path)
    order = {name: i for i, name in enumerate(MODELS)}
    rows.sort(key=lambda r: (order.get(r["model"], len(order)), r["batch_size"]))
    publish(render(rows, args.out), args.out)


if __name__ == "__main__":
    main()
