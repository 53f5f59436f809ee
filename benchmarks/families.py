"""Model families at equal wall time on embedded Morpho-MNIST, scored by the full evaluate suite.

For each family, `python train.py model=<family>` runs for the same wall-clock budget (Lightning's
max_time), then `evaluate.py` scores its last checkpoint (3 seeds). With --cf-epochs, the HVAE is
also fine-tuned by counterfactual training (experiment=hvae_cf_morphomnist) and scored again.

    python benchmarks/families.py --minutes 3 --families vae hvae --cf-epochs 2 \
        --out benchmarks/results/families.md

Resumable: models already in the .json beside --out are kept, not re-run (delete it to start over).
Writes a markdown table (and the .json) with: composition (m = 1, 10), reversibility
(1 cycle, do(thickness)), error against the true counterfactual, effectiveness per intervention
with the predictors' floor, FID, training images/s and counterfactuals/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, counterfactuals_per_second, publish, run_train  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

import evaluate as evaluate_script  # noqa: E402
from datamodules import MorphoMNISTDataModule  # noqa: E402
from models import load_model  # noqa: E402


def train(workdir: Path, data_dir: str, overrides: list[str]) -> tuple[Path, float, int]:
    """Run train.py; return the last checkpoint, the wall time and the optimiser steps."""
    last, elapsed = run_train(workdir, [f"data.data_dir={data_dir}", *overrides])
    steps = torch.load(last, map_location="cpu", weights_only=True)["global_step"]
    return last, elapsed, int(steps)


def cf_throughput(ckpt: Path, data_dir: str) -> float:
    datamodule = MorphoMNISTDataModule(data_dir=data_dir)
    datamodule.setup()
    return counterfactuals_per_second(load_model(ckpt), datamodule)


def score(ckpt: Path, data_dir: str, out_dir: Path, seeds: list[int]) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "evaluate",
            overrides=[
                f"ckpt_path={ckpt}",
                f"data.data_dir={data_dir}",
                f"paths.root_dir={ROOT}",
                f"paths.output_dir={out_dir}",
                f"seeds={seeds}",
                "progress=false",
            ],
        )
    return evaluate_script.evaluate(cfg)


def row(name: str, report: dict, train_ips: float, cf_ips: float) -> dict:
    i = report["interventions"]
    stat = lambda d, k: d[k]["mean"] if d and k in d else float("nan")  # noqa: E731
    return {
        "model": name,
        "composition m=1": report["composition"]["m1"]["mean"],
        "composition m=10": report["composition"]["m10"]["mean"],
        "reversibility do(t)": stat(i["thickness"], "reversibility/cycle1"),
        "truth L1 do(t)": stat(i["thickness"], "truth/l1"),
        "truth L1 do(i)": stat(i["intensity"], "truth/l1"),
        "thickness MAE do(t)": stat(i["thickness"], "effectiveness/thickness"),
        "intensity MAE do(i)": stat(i["intensity"], "effectiveness/intensity"),
        "digit acc. do(d)": stat(i["digit"], "effectiveness/digit"),
        "FID do(t)": stat(i["thickness"], "fid"),
        "FID do(d)": stat(i["digit"], "fid"),
        "train img/s": train_ips,
        "cf/s": cf_ips,
        "floor": report["floor"]["predictor"],
        "report": report["files"]["md"],
    }


def markdown(rows: list[dict], minutes: float) -> str:
    keys = [k for k in rows[0] if k not in ("floor", "report")]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [r["model"]] + [
            f"{100 * r[k]:.1f}%" if "acc" in k else f"{r[k]:.3g}" for k in keys[1:]
        ]
        lines.append("| " + " | ".join(cells) + " |")
    floor = rows[0]["floor"]
    lines += [
        "",
        f"Each model trained for {minutes:g} min of wall time on this machine (2 CPU cores), then "
        "scored on the 1,000 test images over 3 seeds (means shown; stds in the reports). Pixel "
        "errors on the 0-255 scale. Predictors' floor on real test images: thickness MAE "
        f"{floor['thickness']:.3f}, intensity MAE {floor['intensity']:.2f}, digit accuracy "
        f"{100 * floor['digit']:.1f}%.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=3.0, help="wall-time budget per model")
    parser.add_argument("--families", nargs="+", default=["vae", "hvae"])
    parser.add_argument(
        "--cf-epochs", type=int, default=2, help="HVAE counterfactual-training epochs (0: skip)"
    )
    parser.add_argument("--seeds", default="[0,1,2]")
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "families.md"))
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="cfzoo-families-"))
    seeds = json.loads(args.seeds)
    results = Path(args.out).with_suffix(".json")
    # Resumable: rows already in the results file are kept and their models not re-run.
    rows = json.loads(results.read_text()) if results.exists() else []
    done = {r["model"] for r in rows}
    seconds = int(args.minutes * 60)
    budget = (
        f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"  # DD:HH:MM:SS
    )
    for family in args.families:
        if family in done:
            print(f"{family}: already in {results}, skipped", flush=True)
            continue
        print(f"training {family} for {args.minutes:g} min", flush=True)
        ckpt, wall, steps = train(
            workdir,
            args.data_dir,
            [
                f"model={family}",
                f"+trainer.max_time={budget}",
                "trainer.max_epochs=100000",
            ],
        )
        batch = MorphoMNISTDataModule().batch_size
        report = score(ckpt, args.data_dir, workdir / f"eval-{family}", seeds)
        rows.append(
            row(
                family,
                report,
                steps * batch / (args.minutes * 60),
                cf_throughput(ckpt, args.data_dir),
            )
        )
        print(rows[-1], flush=True)
        if family == "hvae" and args.cf_epochs:
            print("counterfactual training of the HVAE", flush=True)
            cf_ckpt, cf_wall, _ = train(
                workdir,
                args.data_dir,
                [
                    "experiment=hvae_cf_morphomnist",
                    f"model.cf_finetune.init_ckpt={ckpt}",
                    f"trainer.max_epochs={args.cf_epochs}",
                ],
            )
            report = score(cf_ckpt, args.data_dir, workdir / "eval-hvae-cf", seeds)
            rows.append(
                row(
                    f"hvae + cf training ({cf_wall:.0f} s more)",
                    report,
                    float("nan"),
                    cf_throughput(cf_ckpt, args.data_dir),
                )
            )
            print(rows[-1], flush=True)
    text = markdown(rows, args.minutes)
    publish(text, args.out)
    results.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
