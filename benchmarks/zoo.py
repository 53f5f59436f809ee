"""The zoo leaderboard: every family trained under one wall-clock budget, scored by evaluate.py.

    python benchmarks/zoo.py                    # vae, vae_cf, hvae, hvae_cf, flow, flow_cf + oracle
    python benchmarks/zoo.py --families vae flow --minutes 10 --seeds 3
    python benchmarks/zoo.py --families vae_cf  # trains vae first when its row is missing
    python benchmarks/zoo.py --families diffae --eval-override options.steps=5   # slow on CPU
    python benchmarks/zoo.py --families hvae --steps 7825 --minutes 72   # steps, not wall time

For each family (and each training seed), `python train.py model=<family>` runs on embedded
Morpho-MNIST for the same wall-clock budget (Lightning's max_time), then the full `evaluate.py`
suite scores its last checkpoint. ``<family>_cf`` is a second stage, not a budgeted run: the
counterfactual fine-tuning of experiment=<family>_cf_morphomnist, started from the same seed's
``<family>`` checkpoint (trained first, and given its own row, when this commit has none) and run
for that experiment's epochs; its row states the stage's own wall minutes and the total.
``--steps N`` trains each model for N optimiser steps instead, ``--minutes`` then only capping
it: the same run on a faster or busier machine (``pretrained.py --check`` uses it). Every
seed trains and is scored on the same data (``data.seed=0``): the training seed varies the model,
never the split, so no test digit is a training digit of another seed. The oracle (the dataset's
true SCM) is scored as the floor.

Writes ``benchmarks/results/<machine>-<date>.md`` and ``.json``: one row per model with
effectiveness per attribute by the held-out judge and by morphometry, with both floors; the error
against the true counterfactual; composition with the pixel residual and with the decoder alone
(m = 1, 10); reversibility; FID; training images/s, counterfactuals/s, training minutes and peak
memory; the git commit and the config; with ``--seeds N``, mean +- std over N training seeds.
The held-out judge never trained a model of the table (evaluate.py refuses one that did). Also
``<...>-grid.png``: the same 8 test digits under do(thickness), do(intensity) and do(digit), one
row per model.

Resumable: a (family, seed) whose row exists in the .json for the same commit and config is not
re-run. ``--scaling`` adds how training time per epoch and counterfactual time per image grow with
image size (Pendulum at 32 and 64 px) and dataset size (1,000 against 5,000 digits), as ratios
against linear growth.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT, build_model, counterfactuals_per_second, run_train  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

import evaluate as evaluate_script  # noqa: E402
from datamodules import DATAMODULES, MorphoMNISTDataModule, PendulumDataModule  # noqa: E402
from datamodules.base import evenly_spaced  # noqa: E402
from metrics.figures import save_grid, visible_interventions  # noqa: E402
from metrics.judges import ROLES  # noqa: E402
from models import load_model  # noqa: E402

#: Families that train at the CPU default in minutes and whose full suite takes a few minutes
#: here. The diffusion autoencoders' suite takes several times longer (40 UNet calls per
#: counterfactual): add them with --families diffae diffae_cf causal_diffae.
DEFAULT_FAMILIES = ("vae", "vae_cf", "hvae", "hvae_cf", "flow", "flow_cf")
#: Second stages: name -> (the family whose checkpoint they start from, their train.py overrides),
#: launched with ``model.cf_finetune.init_ckpt=<that checkpoint>``.
STAGES = {
    f"{family}_cf": (family, [f"experiment={family}_cf_morphomnist"])
    for family in ("vae", "hvae", "flow", "diffae")
}
#: The training data of every row: the evaluation's (evaluate.py's data seed is its ``seed``, 0).
DATA_SEED = 0
ORACLE = "oracle"
#: Reference models scored beside the families, built from the data (no training): the oracle
#: (the floor) and the identity (a model that ignores every intervention).
REFERENCES = (ORACLE, "identity")
GRID_INTERVENTIONS = ("thickness", "intensity", "digit", "domain")
#: Datasets the leaderboard runs on: the synthetic ones, which render the true counterfactual.
DATASETS = ("morphomnist", "morphomnist_domains", "pendulum")
DATA_NAMES = {
    "morphomnist": "embedded Morpho-MNIST",
    "morphomnist_domains": "embedded multi-domain Morpho-MNIST (plain, rotated, textured)",
    "pendulum": "Pendulum (5,000 generated scenes, 32 px RGB: angle, light, shadow length and "
    "position)",
}


# -- provenance ------------------------------------------------------------------------------------
def git_commit() -> str:
    """HEAD's hash, with ``-dirty`` when tracked files differ from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def machine_name() -> str:
    if torch.cuda.is_available():
        return re.sub(r"\W+", "-", torch.cuda.get_device_name(0)).strip("-").lower()
    return f"cpu{os.cpu_count()}-{platform.machine()}"


def iso_date(text: str) -> str:
    """``YYYY-MM-DD``, checked (argparse reports a ValueError as an invalid value)."""
    return datetime.date.fromisoformat(text).isoformat()


def config_key(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]


# -- one model -------------------------------------------------------------------------------------
def train_with_budget(
    workdir: Path,
    family: str,
    seed: int,
    minutes: float,
    overrides: list[str],
    run: str | None = None,
) -> dict:
    """Run train.py for ``minutes`` of wall time; return the checkpoint, steps, img/s, peak RSS.

    ``run`` names its directory (default ``<family>-seed<seed>``)."""
    seconds = max(1, int(round(minutes * 60)))
    budget = f"00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    trained = run_train(
        workdir,
        [
            f"model={family}",
            f"seed={seed}",
            f"trainer.max_time={budget}",
            "trainer.max_epochs=100000",
            *overrides,
        ],
        run=run or f"{family}-seed{seed}",
    )
    # over the budget, or the run's own wall time when a step limit ended it first
    seconds = min(seconds, trained["wall_seconds"])
    trained["train_images_per_second"] = trained["steps"] * trained["batch_size"] / seconds
    return trained


def train_stage(
    workdir: Path, name: str, seed: int, base_checkpoint: str, overrides: list[str]
) -> dict:
    """Run a second stage (``STAGES[name]``) from ``base_checkpoint`` for its configured epochs."""
    _, stage_overrides = STAGES[name]
    trained = run_train(
        workdir,
        [
            *stage_overrides,
            f"seed={seed}",
            f"model.cf_finetune.init_ckpt={base_checkpoint}",
            *overrides,
        ],
        run=f"{name}-seed{seed}",
    )
    # the stage's own steps over its whole wall time (start-up included)
    trained["train_images_per_second"] = (
        trained["steps"] * trained["batch_size"] / trained["wall_seconds"]
    )
    return trained


def score(workdir: Path, name: str, seed: int, overrides: list[str], model_args: list[str]) -> dict:
    """The full evaluate.py suite (one evaluation seed per training seed)."""
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "evaluate",
            overrides=[
                *model_args,
                f"paths.root_dir={ROOT}",
                f"paths.output_dir={workdir}/eval-{name}-seed{seed}",
                f"seeds=[{seed}]",
                "progress=false",
                *overrides,
            ],
        )
    return evaluate_script.evaluate(cfg)


HELDOUT, MORPHOMETRY = "held-out judge", "morphometry"


def metrics_of(report: dict) -> dict[str, float]:
    """The leaderboard's numbers from an evaluate.py report (NaN where a model has none)."""
    nan = float("nan")
    interventions = report["interventions"]
    names = list(report["attribute_kinds"])
    floor = report["floor"]

    def stat(intervention: str, key: str) -> float:
        result = interventions.get(intervention)
        return result[key]["mean"] if result and key in result else nan

    out = {}
    for name in names:
        out[f"effectiveness do({name}), {HELDOUT}"] = stat(name, f"effectiveness/{name}")
    for name in names:
        out[f"floor {name}, {HELDOUT}"] = floor["predictor"].get(name, nan)
    # the model-free measurement's keys (``morphometry`` in reports from before the rename)
    model_free = floor.get("measured", floor.get("morphometry", {}))
    key = "measured" if "measured" in floor else "morphometry"
    measured = [name for name in names if name in model_free]
    for name in measured:
        out[f"effectiveness do({name}), {MORPHOMETRY}"] = stat(name, f"{key}/{name}")
    for name in measured:
        out[f"floor {name}, {MORPHOMETRY}"] = model_free[name]
    for name in names:
        truth = stat(name, "truth/l1")
        if not math.isnan(truth):  # the data have the truth of this intervention
            out[f"truth L1 do({name})"] = truth
    steps = len(report["composition"]["curve_mean"])
    decoder = report.get("composition_decoder")  # only models with a pixel residual have one
    for m in (1, steps):
        out[f"composition m={m}"] = report["composition"][f"m{m}"]["mean"]
    for m in (1, steps):
        out[f"composition m={m}, decoder alone"] = decoder[f"m{m}"]["mean"] if decoder else nan
    for name in names:
        out[f"reversibility do({name})"] = stat(name, "reversibility/cycle1")
    for name in names:
        out[f"FID do({name})"] = stat(name, "fid")
    for name in names:
        out[f"CLD do({name})"] = stat(name, "minimality/cld")
    sampling = report.get("sampling") or {}
    out["sample FID"] = sampling["fid"]["mean"] if "fid" in sampling else nan
    for name in names:
        key = f"marginal/{name}"
        out[f"sample marginal {name}"] = sampling[key]["mean"] if key in sampling else nan
    return out


def summarise(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Mean and std over a model's seeds of every number."""
    keys = [k for k in rows[0]["metrics"]]
    out = {}
    for key in keys:
        values = [r["metrics"][key] for r in rows]
        finite = [v for v in values if v == v]
        out[key] = {
            "mean": statistics.fmean(finite) if finite else float("nan"),
            "std": statistics.stdev(finite) if len(finite) > 1 else 0.0,
            "n": len(finite),
        }
    return out


# -- outputs ---------------------------------------------------------------------------------------
def _cell(stat: dict[str, float], key: str) -> str:
    if stat["n"] == 0:
        return "n/a"
    percent = "digit" in key and ("effectiveness" in key or "floor" in key)  # an accuracy
    scale, suffix = (100.0, "%") if percent else (1.0, "")
    return (
        _number(scale * stat["mean"])
        + suffix
        + (f" ± {_number(scale * stat['std'])}" if stat["n"] > 1 else "")
    )


def _number(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if 0 < abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.3g}"


def metric_rows(models: dict, keys) -> list[str]:
    """A markdown table with a row per metric in ``keys`` and a column per model (the
    references last, however late a run added a family)."""
    names = sorted(models, key=lambda n: n in REFERENCES)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        cells = [
            _cell(models[n]["summary"][key], key) if key in models[n]["summary"] else "n/a"
            for n in names
        ]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return lines


def markdown(results: dict, settings: dict) -> str:
    models = results["models"]
    names = list(models)
    keys = list(dict.fromkeys(k for n in names for k in models[n]["summary"]))
    lines = [
        f"# cfzoo zoo leaderboard: {settings['machine']}, {settings['date']}",
        "",
        f"Command: `{settings['command']}`",
        "",
        *metric_rows(models, keys),
    ]
    lines += ["", notes(results, settings, models), ""]
    lines += [
        "| model | seeds | commit | config |",
        "|---|---|---|---|",
    ]
    for name in names:
        rows = models[name]["rows"]
        # rows may span commits (a table extended later from a worktree of the same commit or not)
        commits = dict.fromkeys(
            r["commit"][:12] + ("-dirty" if r["commit"].endswith("-dirty") else "") for r in rows
        )
        lines.append(
            f"| {name} | {len(rows)} | {', '.join(f'`{c}`' for c in commits)} "
            f"| `{' '.join(rows[0]['config']['train'])}` |"
        )
    if results.get("scaling"):
        lines += ["", scaling_markdown(results["scaling"])]
    return "\n".join(lines) + "\n"


#: The rows of the README's zoo table: what a reader compares families by (the results file has
#: every row; speed has its own benchmark, benchmarks/throughput.py, measured alone).
README_ROWS = (
    "effectiveness do(digit), held-out judge",
    "effectiveness do(thickness), held-out judge",
    "truth L1 do(thickness)",
    "truth L1 do(intensity)",
    "composition m=10, decoder alone",
    "reversibility do(thickness)",
    "FID do(digit)",
    "CLD do(digit)",
    "sample FID",
)
README_START = "<!-- zoo-table: generated by benchmarks/zoo.py --readme; do not edit -->"
README_END = "<!-- zoo-table end -->"


def readme_table(results: dict, source: Path) -> str:
    """The README's zoo table: :data:`README_ROWS` of one results file, naming it and its
    commits."""
    models = results["models"]
    settings = results["settings"]
    commits = sorted({r["commit"][:12] for entry in models.values() for r in entry["rows"]})
    seeds = sorted({len(entry["rows"]) for n, entry in models.items() if n not in REFERENCES})
    lines = [
        *metric_rows(models, README_ROWS),
        "",
        f"From `{source.as_posix()}` (every row at commit {', '.join(f'`{c}`' for c in commits)}; "
        f"{settings['minutes']:g} min of training per model on this 2-core CPU, "
        f"{'/'.join(map(str, seeds))} training seed(s), mean ± std; pixel errors on 0-255). "
        "Its notes say how it was measured and how to read every row.",
    ]
    return "\n".join(lines)


def write_readme_table(
    readme: Path, table: str, start: str = README_START, end: str = README_END
) -> None:
    """Replace the block between the markers ``start`` and ``end`` in ``readme``."""
    text = readme.read_text()
    if start not in text or end not in text:
        raise SystemExit(f"{readme} has no table markers ({start} ... {end})")
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    readme.write_text(f"{before}{start}\n{table}\n{end}{after}")


def _settings_text(settings: dict | None) -> str:
    return ", ".join(f"{k} {v}" for k, v in (settings or {}).items())


def notes(results: dict, settings: dict, models: dict) -> str:
    """The paragraph under the table: protocol, judges, floors, stages."""
    judges = results.get("judges") or {}
    heldout = judges.get("effectiveness") or {}
    if not heldout:  # a table measured before the judges had roles (re-rendered)
        return (
            f"Each model trained for {settings['minutes']:g} min of wall time per seed on "
            "embedded Morpho-MNIST, then scored by evaluate.py at the commits listed below, by "
            "the one anti-causal predictor of those commits (no held-out judge yet)."
        )
    data = DATA_NAMES[settings.get("data", DATASETS[0])]
    return (
        f"Each model trained for {settings['minutes']:g} min of wall time per seed on {data} "
        "(mean ± std over the training seeds listed below, when more than one; every "
        "seed on the same data, data.seed=0), then scored by evaluate.py on the test split. Pixel "
        "errors are on the 0-255 scale. Effectiveness is the MAE (continuous) or accuracy (categorical) "
        "of a judge on the counterfactual against its intended attributes, by two judges: the "
        f"held-out judge (role `{heldout.get('role', 'heldout')}`: "
        f"{_settings_text(heldout.get('settings')) or 'see metrics/judges.py'}), which no model "
        "here was fine-tuned against (the `_cf` stages train against the fine-tune judge: "
        f"{_settings_text(ROLES['finetune'])}, at train.py's batch size), and morphometry, the "
        "model-free measurement of thickness and intensity. A floor is that judge's own error on "
        "the real test images. Composition: the null intervention applied m times, as the model "
        "answers counterfactuals (the VAE and HVAE with their pixel residual, which makes it "
        "exact by construction), and by the decoder alone (residual=false; n/a for a model "
        "without a residual, such as the flow, whose composition is its mechanism's own). "
        "FID in the held-out judge's feature space. CLD: minimality, the counterfactual "
        "latent divergence (Sanchez & Tsaftaris, 2022) in an unconditional VAE's latent space, "
        "lower is better, on [0.69, 1.69]. The oracle renders the true counterfactual: the floor "
        "of every metric but CLD; the identity ignores every intervention (its CLD is "
        "log(1 + e) = 1.31)."
        + "".join(
            f" {stage} fine-tunes the {base} checkpoint of the same seed ({' '.join(extra)});"
            f" its training minutes are {base}'s budget plus its stage minutes (the stage's own"
            " wall time, start-up included)."
            for stage, (base, extra) in STAGES.items()
            if stage in models
        )
    )


def comparison_grid(checkpoints: dict[str, str], datamodule, path: Path) -> Path:
    """The same 8 test digits under do(thickness), do(intensity), do(digit): a row per model."""
    test = datamodule.test_set
    batch = test.batch(evenly_spaced(len(test), 8).tolist())
    models = {name: load_model(ckpt).eval() for name, ckpt in checkpoints.items()}
    targets = visible_interventions(batch["pa"], datamodule.graph)
    rows = [("factual", batch["x"], batch["pa"])]
    shown = [v for v in GRID_INTERVENTIONS if v in datamodule.graph] or datamodule.graph.names
    for intervention in shown:
        # cut to 5 letters where that stays unique (thick, inten, digit, domai); Pendulum's
        # shadow_length and shadow_position would both be "shado"
        label = intervention[:5] if intervention in GRID_INTERVENTIONS else intervention
        do = targets[intervention]
        if intervention in datamodule.ground_truth_variables:
            truth, attrs = datamodule.true_counterfactual(batch["index"], do)
            rows.append((f"truth do({label})", truth, attrs))
        for name, model in models.items():
            cf = model.counterfactual(batch["x"], batch["pa"], do, sample_ids=batch["index"])
            rows.append((f"{name} do({label})", cf.image, cf.parents))
    return save_grid(rows, path, "The zoo's counterfactuals of the same test images")


# -- scaling ---------------------------------------------------------------------------------------
def epoch_seconds(family: str, datamodule, steps: int = 8) -> tuple[float, Any]:
    """Median seconds per training step, times the steps of one epoch (data in memory)."""
    model = build_model(family, datamodule)
    model.log_dict = lambda *args, **kwargs: None
    optimiser = model.configure_optimizers()
    optimiser = optimiser["optimizer"] if isinstance(optimiser, dict) else optimiser
    loader = iter(datamodule.train_dataloader())
    times = []
    model.train()
    for n in range(steps + 2):
        batch = next(loader)
        start = time.perf_counter()
        loss = model._step(batch, "train")
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if n >= 2:  # the first steps warm up allocators and kernels
            times.append(time.perf_counter() - start)
    batches = len(datamodule.train_dataloader())
    return statistics.median(times) * batches, model.eval()


def seconds_per_counterfactual(model, datamodule) -> float:
    variable = datamodule.graph.variables[0].name
    test = datamodule.test_set
    batch = test.batch(range(min(64, len(test))))
    do = {variable: batch["pa"][variable].flip(0)}
    model.counterfactual(batch["x"], batch["pa"], do)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model.counterfactual(batch["x"], batch["pa"], do)
        times.append(time.perf_counter() - start)
    return statistics.median(times) / len(batch["x"])


def scaling(families: list[str], data_dir: str) -> dict:
    """Epoch time and counterfactual time against image size and dataset size."""
    out = {"image_size": {}, "dataset_size": {}}
    for family in families:
        sizes = {}
        for size in (32, 64):
            dm = PendulumDataModule(data_dir=data_dir, image_size=size, num_samples=1000)
            dm.setup()
            epoch, model = epoch_seconds(family, dm)
            sizes[str(size)] = {
                "epoch_s": epoch,
                "cf_ms": 1000 * seconds_per_counterfactual(model, dm),
            }
        out["image_size"][family] = sizes
        counts = {}
        for limit in (1000, 5000):
            dm = MorphoMNISTDataModule(data_dir=data_dir, limit=limit)
            dm.setup()
            epoch, _ = epoch_seconds(family, dm)
            counts[str(limit)] = {"epoch_s": epoch, "train_images": len(dm.train_set)}
        out["dataset_size"][family] = counts
    return out


def scaling_markdown(results: dict) -> str:
    lines = [
        "## Scaling",
        "",
        "Image size (Pendulum, RGB, 1,000 scenes): 64 px has 4x the pixels of 32 px; a ratio to "
        "linear of 1 means time grows in proportion to pixels.",
        "",
        "| family | epoch s, 32 px | epoch s, 64 px | ratio to linear | cf ms/img, 32 px | "
        "cf ms/img, 64 px | ratio to linear |",
        "|---|---|---|---|---|---|---|",
    ]
    for family, sizes in results["image_size"].items():
        small, large = sizes["32"], sizes["64"]
        lines.append(
            f"| {family} | {small['epoch_s']:.2f} | {large['epoch_s']:.2f} | "
            f"{large['epoch_s'] / small['epoch_s'] / 4:.2f} | {small['cf_ms']:.2f} | "
            f"{large['cf_ms']:.2f} | {large['cf_ms'] / small['cf_ms'] / 4:.2f} |"
        )
    lines += [
        "",
        "Dataset size (Morpho-MNIST, 1,000 against 5,000 source digits; data held in memory):",
        "",
        "| family | epoch s, 1k digits | epoch s, 5k digits | ratio to linear |",
        "|---|---|---|---|",
    ]
    for family, counts in results["dataset_size"].items():
        small, large = counts["1000"], counts["5000"]
        growth = large["train_images"] / small["train_images"]
        lines.append(
            f"| {family} | {small['epoch_s']:.2f} | {large['epoch_s']:.2f} | "
            f"{large['epoch_s'] / small['epoch_s'] / growth:.2f} |"
        )
    lines += [
        "",
        "Epoch time = median time per training step x steps per epoch (8 timed steps after 2 "
        "warm-up steps); counterfactual time = median of 3 batches of 64 test images.",
    ]
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/zoo.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--families", nargs="+", default=list(DEFAULT_FAMILIES))
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget per model")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="train each model (not a fine-tuning stage) for this many optimiser steps, with "
        "--minutes as a cap: a run that does not depend on the machine's speed",
    )
    parser.add_argument("--seeds", type=int, default=1, help="training seeds per model")
    parser.add_argument(
        "--data",
        choices=DATASETS,
        default=DATASETS[0],
        help="the dataset (morphomnist_domains: the multi-domain world, with do(domain))",
    )
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument(
        "--data-limit", type=int, default=None, help="use this many digits (smoke runs, tests)"
    )
    parser.add_argument(
        "--work-dir",
        default=str(ROOT / "outputs" / "zoo"),
        help="where the runs, checkpoints and reports go (kept for resuming)",
    )
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--machine", default=machine_name(), help="names the results file")
    parser.add_argument(
        "--date",
        default=datetime.date.today().isoformat(),
        type=iso_date,
        help="names the results file too (default: today): extend or re-render an earlier day's",
    )
    parser.add_argument(
        "--train-override", action="append", default=[], help="extra train.py override"
    )
    parser.add_argument(
        "--stage-override",
        action="append",
        default=[],
        help="extra train.py override of the fine-tuning stages (the _cf rows) only, e.g. "
        "model.cf_finetune.augment=none",
    )
    parser.add_argument(
        "--eval-override", action="append", default=[], help="extra evaluate.py override"
    )
    parser.add_argument(
        "--test-images",
        type=int,
        default=None,
        help="score on N test images (evenly spaced), and time counterfactuals on at most N "
        "(a quick look at a slow model: the diffusion autoencoders' full suite on all 1,000 "
        "takes about 16 minutes each on a 2-core CPU)",
    )
    parser.add_argument(
        "--no-oracle", action="store_true", help="skip the reference rows (oracle and identity)"
    )
    parser.add_argument("--scaling", action="store_true", help="add the scaling tables")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: rewrite the .md (and the grid) from the .json",
    )
    parser.add_argument(
        "--readme",
        default=None,
        help="also write the zoo table into this README (between its zoo-table markers)",
    )
    args = parser.parse_args(argv)

    date = args.date
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{args.machine}-{date}"
    json_path = stem.with_suffix(".json")
    results = json.loads(json_path.read_text()) if json_path.exists() else {"models": {}}
    commit = git_commit()
    workdir = Path(args.work_dir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    data = [f"data={args.data}", f"data.data_dir={args.data_dir}", f"data.seed={DATA_SEED}"]
    if args.data_limit:
        data.append(f"data.limit={args.data_limit}")
    if args.test_images is not None and args.test_images < 1:
        parser.error(f"--test-images must be a positive number, got {args.test_images}")
    test_images = [f"test_images={args.test_images}"] if args.test_images else []
    limit = {"limit": args.data_limit} if args.data_limit else {}
    datamodule = DATAMODULES[args.data](data_dir=args.data_dir, seed=DATA_SEED, **limit)
    datamodule.setup()
    command = "python benchmarks/zoo.py " + " ".join(argv if argv is not None else sys.argv[1:])

    measured = False

    def save() -> None:  # after every model: a killed run keeps what it measured
        if measured or "settings" not in results:  # a run that only re-renders keeps the command
            results["settings"] = {
                "machine": args.machine,
                "date": date,
                "minutes": args.minutes,
                "seeds": args.seeds,
                "data": args.data,
                "command": command,
            }
        settings = results["settings"]
        settings.setdefault("data", args.data)  # files written before --data are Morpho-MNIST's
        for entry in results["models"].values():
            entry["summary"] = summarise(entry["rows"])
        json_path.write_text(json.dumps(results, indent=2))
        stem.with_suffix(".md").write_text(markdown(results, settings))

    def row_of(name: str, seed: int) -> dict | None:
        """The row of (name, seed) measured at this commit and config, if any."""
        key = config_key(config_of(name))
        rows = results["models"].get(name, {}).get("rows", [])
        return next(
            (
                r
                for r in rows
                if r["seed"] == seed and r["commit"] == commit and r["config_key"] == key
            ),
            None,
        )

    def train_overrides(name: str) -> list[str]:
        """The train.py overrides of ``name`` beyond its launch: what runs is what is keyed."""
        stage = args.stage_override if name in STAGES else []
        steps = [f"trainer.max_steps={args.steps}"] if args.steps and name not in STAGES else []
        return [*data, *args.train_override, *stage, *steps]

    def config_of(name: str) -> dict:
        launch = (
            [*STAGES[name][1], f"(from the {STAGES[name][0]} checkpoint)"]
            if name in STAGES
            else [f"model={name}"]
        )
        return {
            "train": [*launch, *train_overrides(name)],
            "evaluate": [*data, *test_images, *args.eval_override],
            "minutes": args.minutes if name not in REFERENCES else 0,
        }

    def measure(name: str, seed: int, checkpoint_needed: bool = False) -> dict:
        """Train (or not: the oracle) and score (name, seed) unless this commit has its row."""
        nonlocal measured
        row = row_of(name, seed)
        if row is not None and (not checkpoint_needed or Path(row["checkpoint"]).is_file()):
            print(f"{name} seed {seed}: already measured at this commit and config", flush=True)
            return row
        base_row = None
        if name in STAGES:  # its base model first: trained now when this commit has no row of it
            base_row = measure(STAGES[name][0], seed, checkpoint_needed=True)
        config = config_of(name)
        entry = results["models"].setdefault(name, {"rows": []})
        entry["rows"] = [r for r in entry["rows"] if r["seed"] != seed]
        print(f"{name} seed {seed}: {'scoring' if name in REFERENCES else 'training'}", flush=True)
        row = {"seed": seed, "commit": commit, "config": config, "config_key": config_key(config)}
        if name in REFERENCES:
            report = score(workdir, name, seed, config["evaluate"], [f"model={name}"])
            row["metrics"] = metrics_of(report)
        else:
            overrides = train_overrides(name)
            if base_row is not None:
                trained = train_stage(workdir, name, seed, base_row["checkpoint"], overrides)
            else:
                trained = train_with_budget(workdir, name, seed, args.minutes, overrides)
            report = score(
                workdir, name, seed, config["evaluate"], [f"ckpt_path={trained['checkpoint']}"]
            )
            cf_rate = counterfactuals_per_second(
                load_model(trained["checkpoint"]),
                datamodule,
                batch_size=min(256, args.test_images or 256),
            )
            row.update(trained)
            # a step limit may end the run before the budget: its own wall time then
            timing = {"training minutes": min(args.minutes, trained["wall_seconds"] / 60)}
            if base_row is not None:  # a stage's minutes come on top of its base model's
                stage_minutes = trained["wall_seconds"] / 60
                timing = {
                    "training minutes": base_row["metrics"]["training minutes"] + stage_minutes,
                    "stage minutes": stage_minutes,
                }
                row["base"] = {"checkpoint": base_row["checkpoint"], "commit": base_row["commit"]}
            row["metrics"] = {
                **metrics_of(report),
                **timing,
                "train img/s": trained["train_images_per_second"],
                "counterfactuals/s": cf_rate,
                "peak train RSS (MB)": trained["peak_train_rss_mb"],
            }
        row["report"] = report["files"]["json"]
        results["floor"] = report["floor"]
        results["judges"] = report.get("judges")
        entry["rows"].append(row)
        measured = True
        save()
        return row

    references = [] if args.no_oracle else list(REFERENCES)
    for name in [] if args.render_only else [*args.families, *references]:
        for seed in range(args.seeds):
            measure(name, seed)

    checkpoints = {
        name: entry["rows"][0]["checkpoint"]
        for name, entry in results["models"].items()
        if name in args.families and Path(entry["rows"][0].get("checkpoint", "")).is_file()
    }
    if checkpoints:
        grid = comparison_grid(checkpoints, datamodule, Path(f"{stem}-grid.png"))
        print(f"grid: {grid}")
    if args.scaling and not args.render_only:
        print("measuring scaling", flush=True)
        results["scaling"] = scaling(args.families, args.data_dir)
        measured = True
    save()
    print(stem.with_suffix(".md").read_text())
    if args.readme:
        source = stem.with_suffix(".md").resolve()
        shown = source.relative_to(ROOT) if source.is_relative_to(ROOT) else source
        write_readme_table(Path(args.readme), readme_table(results, shown))
        print(f"wrote the zoo table into {args.readme}")
    return stem.with_suffix(".md")


if __name__ == "__main__":
    main()
