"""Counterfactual images from the command line.

    python -m models ckpt_path=PATH [do.NAME=VALUE ...] [shift.NAME=DELTA ...] [options]
    python -m models pretrained=NAME [do.NAME=VALUE ...] ...    # a shipped model, no training
    python -m models --list                                     # the shipped models

The model (one of):
    ckpt_path=PATH        a checkpoint of train.py, any family
    pretrained=NAME       a pretrained model shipped with cfzoo (python -m models --list), e.g.
                          pretrained=hvae_cf-morphomnist; or the .json of save_pretrained

Inputs (one of):
    split=test            images of the checkpoint's dataset (train, val or test; the default)
    folder=DIR csv=FILE   PNGs in DIR listed in FILE (columns: file, then one per attribute)

Interventions, in natural units (e.g. Morpho-MNIST: thickness in pixels, intensity 0-255, digit
a class id):
    do.thickness=4.0      set a value for every image (a hard intervention)
    shift.intensity=-40   add to each factual value (a soft intervention)

Options:
    num=16                images to use from the split
    out_dir=DIR           where to write (default: outputs/counterfactuals/<date-time>)
    data_dir=data         where the dataset cache lives (split inputs)
    data.KEY=VALUE        datamodule options if the model was trained on non-defaults (data.seed=1)
    batch_size=256
    options.NAME=VALUE    counterfactual options of the model family, e.g. options.residual=false
                          (the same spelling as evaluate.py's)

Writes one PNG per counterfactual, counterfactuals.csv (factual and counterfactual attributes)
and grid.png (factual row above counterfactual row).

Samples (the first two rungs of the ladder) instead of counterfactuals:

    python -m models sample ckpt_path=PATH|pretrained=NAME [num=16] [do.NAME=VALUE ...] [options.NAME=VALUE ...]

draws num images with attributes from the model's SCM (under do, when given; shift.NAME=DELTA
shifts each drawn value) and writes sample-00000.png ..., samples.csv and grid.png.

The explorer, a local web page to intervene on one image with sliders and see every loaded
model's counterfactual beside the true one (python -m models explore --help):

    python -m models explore ckpt_path=PATH [ckpt_path=PATH ...] [report=REPORT.json ...]
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torchvision.utils import save_image

from datamodules import datamodule_for
from datamodules.base import evenly_spaced
from datamodules.folder import load_image_folder
from metrics.figures import save_grid
from models.loading import load_model
from models.pretrained import available, load_pretrained


def _inputs(cfg, model) -> tuple[torch.Tensor, dict[str, torch.Tensor], list[str]]:
    if cfg.get("folder"):
        if not cfg.get("csv"):
            raise ValueError("folder=DIR needs csv=FILE with a 'file' column and the attributes")
        return load_image_folder(cfg.folder, cfg.csv, model.graph, model.image_shape)
    overrides = OmegaConf.to_container(cfg.get("data") or OmegaConf.create({}))
    datamodule = datamodule_for(model, cfg.get("data_dir", "data"), overrides)
    split = cfg.get("split", "test")
    dataset = {
        "train": datamodule.train_set,
        "val": datamodule.val_set,
        "test": datamodule.test_set,
    }
    if split not in dataset:
        raise ValueError(f"split must be train, val or test, got '{split}'")
    subset = dataset[split]
    batch = subset.batch(evenly_spaced(len(subset), int(cfg.get("num", 16))).tolist())
    return batch["x"], batch["pa"], [f"{split}-{i}" for i in batch["index"].tolist()]


def _interventions(cfg, required: bool = True) -> dict:
    do = {name: float(value) for name, value in (cfg.get("do") or {}).items()}
    for name, delta in (cfg.get("shift") or {}).items():
        if name in do:
            raise ValueError(f"'{name}' is both set (do.{name}) and shifted (shift.{name})")
        do[name] = lambda value, delta=float(delta): value + delta
    if required and not do:
        raise ValueError("no intervention given: add do.NAME=VALUE or shift.NAME=DELTA")
    return do


#: The settings this command reads; a mistyped one is refused, not ignored.
KEYS = {
    "ckpt_path", "pretrained", "split", "folder", "csv", "do", "shift", "num", "out_dir", "data_dir", "data",
    "batch_size", "options",
}  # fmt: skip


def _settings(argv: list[str]):
    flags = [a for a in argv if a.startswith("-")]
    if flags:
        raise ValueError(
            f"{flags[0]} is not a setting: this command takes KEY=VALUE (e.g. num=4, not "
            "--num 4); see python -m models --help"
        )
    bare = [a for a in argv if "=" not in a]
    if bare:
        raise ValueError(f"'{bare[0]}' has no value: write KEY=VALUE (python -m models --help)")
    cfg = OmegaConf.from_dotlist(argv)
    if "opt" in cfg:
        raise ValueError("opt.NAME=VALUE is now options.NAME=VALUE, as evaluate.py spells it")
    unknown = sorted(set(cfg) - KEYS)
    if unknown:
        raise ValueError(
            f"unknown setting '{unknown[0]}': the settings are {', '.join(sorted(KEYS))} "
            "(python -m models --help)"
        )
    num = cfg.get("num", 16)
    if not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a whole number of images, at least 1; got {num!r}")
    return cfg


def _model(cfg):
    """The model of ``ckpt_path=PATH`` or ``pretrained=NAME`` (exactly one of them)."""
    if cfg.get("ckpt_path") and cfg.get("pretrained"):
        raise ValueError("pass either ckpt_path=PATH or pretrained=NAME, not both")
    if cfg.get("pretrained"):
        return load_pretrained(str(cfg.pretrained))
    if not cfg.get("ckpt_path"):
        raise SystemExit(
            "a model is required: ckpt_path=PATH (a checkpoint of train.py) or pretrained=NAME "
            "(python -m models --list; see python -m models --help)"
        )
    return load_model(cfg.ckpt_path)


def list_pretrained() -> int:
    """``python -m models --list``: every shipped model, what it is and its headline figures."""
    shipped = available()
    if not shipped:
        print("no pretrained models in this installation")
        return 0
    for name, manifest in shipped.items():
        provenance = manifest.get("provenance", {})
        print(f"{name}  ({manifest['class']}, {manifest.get('dataset')})")
        if manifest.get("summary"):
            print(f"    {manifest['summary']}")
        print(
            f"    {manifest['weights']['parameters']:,} parameters, "
            f"{manifest['weights']['bytes'] / 2**20:.1f} MB; trained "
            f"{provenance.get('training minutes', float('nan')):.1f} min on "
            f"{provenance.get('machine', 'an unstated machine')} at commit "
            f"{str(provenance.get('commit', '?'))[:12]}"
        )
        for figure, value in (manifest.get("headline") or {}).items():
            accuracy = figure.startswith("effectiveness do(") and "digit" in figure
            print(f"    {figure}: {f'{100 * value:.1f}%' if accuracy else f'{value:.3g}'}")
    print(
        "\nLoad one: from models import load_model; load_model(NAME). The cards: "
        "models/pretrained/NAME.md"
    )
    return 0


def _output_names(names: list[str]) -> list[str]:
    """One output file per input, whatever the names: ``a/x.png`` and ``b/x.png`` become
    ``a/x_cf.png`` and ``b/x_cf.png``; a name that would leave the output folder, or repeats,
    gets its row number."""
    taken: set[str] = set()
    targets = []
    for row, name in enumerate(names):
        path = Path(name)
        inside = not path.is_absolute() and ".." not in path.parts
        target = (path.parent / f"{path.stem}_cf.png").as_posix() if inside else ""
        if not inside or target in taken:
            target = f"{row:05d}_{path.stem}_cf.png"
        taken.add(target)
        targets.append(target)
    return targets


def sample_main(argv: list[str]) -> int:
    """``python -m models sample ...``: observational or interventional samples of a model."""
    cfg = _settings(argv)
    model = _model(cfg)
    do = _interventions(cfg, required=False)
    out_dir = Path(cfg.get("out_dir") or f"outputs/samples/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn = model.sample(int(cfg.get("num", 16)), do=do, **dict(cfg.get("options") or {}))
    images, parents = drawn.image.cpu(), {k: v.cpu() for k, v in drawn.parents.items()}
    with (out_dir / "samples.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(["file", *parents])
        for i in range(len(images)):
            save_image(images[i], out_dir / f"sample-{i:05d}.png")
            writer.writerow([f"sample-{i:05d}.png", *(parents[n][i].item() for n in parents)])
    label = ", ".join(f"{k}={v}" for k, v in (cfg.get("do") or {}).items())
    shown = slice(0, min(len(images), 12))
    save_grid(
        [
            (
                f"samples do({label})" if label else "samples",
                images[shown],
                {k: v[shown] for k, v in parents.items()},
            )
        ],
        out_dir / "grid.png",
    )
    print(f"wrote {len(images)} samples, samples.csv and grid.png to {out_dir}")
    return 0


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv[0] == "--list":
        return list_pretrained()
    if argv[0] == "sample":
        return sample_main(argv[1:])
    if argv[0] == "explore":
        from models.explore import main as explore_main

        return explore_main(argv[1:])
    cfg = _settings(argv)
    model = _model(cfg)
    x, pa, names = _inputs(cfg, model)
    do = _interventions(cfg)
    options = dict(cfg.get("options") or {})
    out_dir = Path(
        cfg.get("out_dir") or f"outputs/counterfactuals/{time.strftime('%Y-%m-%d_%H-%M-%S')}"
    )
    out_dir.mkdir(parents=True, exist_ok=True)

    batch_size = int(cfg.get("batch_size", 256))
    images, parents = [], {name: [] for name in model.graph.names}
    for start in range(0, len(x), batch_size):
        chunk = slice(start, start + batch_size)
        cf = model.counterfactual(x[chunk], {k: v[chunk] for k, v in pa.items()}, do, **options)
        images.append(cf.image.cpu())
        for name in parents:
            parents[name].append(cf.parents[name].cpu())
    images = torch.cat(images)
    parents = {name: torch.cat(values) for name, values in parents.items()}

    with (out_dir / "counterfactuals.csv").open("w", newline="") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            ["file", "counterfactual_file"]
            + [f"factual_{n}" for n in parents]
            + [f"cf_{n}" for n in parents]
        )
        for i, (name, target) in enumerate(zip(names, _output_names(names))):
            (out_dir / target).parent.mkdir(parents=True, exist_ok=True)
            save_image(images[i], out_dir / target)
            writer.writerow(
                [name, target]
                + [pa[n][i].item() for n in parents]
                + [parents[n][i].item() for n in parents]
            )
    shown = slice(0, min(len(x), 12))
    label = ", ".join(
        [f"{k}={v}" for k, v in (cfg.get("do") or {}).items()]
        + [f"{k}{float(v):+g}" for k, v in (cfg.get("shift") or {}).items()]
    )
    save_grid(
        [
            ("factual", x[shown], {k: v[shown] for k, v in pa.items()}),
            (f"do({label})", images[shown], {k: v[shown] for k, v in parents.items()}),
        ],
        out_dir / "grid.png",
    )
    print(f"wrote {len(names)} counterfactuals, counterfactuals.csv and grid.png to {out_dir}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (ValueError, FileNotFoundError, NotImplementedError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
