"""How accurately a model's attribute SCM recomputes descendants, against refits made apart.

A counterfactual that intervenes on an attribute with descendants (Morpho-MNIST's thickness, whose
child is intensity; Pendulum's angle and light) recomputes them with the attribute SCM, and the
image mechanism draws what the SCM says. On data with true counterfactuals this script scores,
for each model:

- its own SCM (as trained with the model), and ``--seeds`` refits of a fresh SCM of the same
  settings by ``AttributeSCM.fit`` (its defaults: what ``scm.fit_steps > 0`` runs before a model
  trains) on the training split's attributes;
- per intervention with descendants: each recomputed descendant's MAE against the true
  counterfactual's, over the whole test split, the intervened values a fixed permutation of the
  test split's;
- the model's image counterfactual under the same intervention against the true one (truth L1,
  0-255) on ``--images`` evenly spaced test images, with each SCM in turn: the image mechanism is
  the same, only the recomputed descendants differ;
- the fit's wall time.

    python benchmarks/scm_fit.py --models hvae-morphomnist flow-morphomnist --data-dir data \\
        --out benchmarks/results/scm-fit.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import publish  # noqa: E402

from datamodules import datamodule_for  # noqa: E402
from datamodules.base import evenly_spaced  # noqa: E402
from metrics.soundness import l1  # noqa: E402
from models import load_model  # noqa: E402
from models.scm import AttributeSCM  # noqa: E402


def interventions_with_descendants(datamodule) -> dict[str, tuple[str, ...]]:
    """Attributes with a true counterfactual whose descendants the SCM recomputes."""
    graph = datamodule.graph
    return {
        name: graph.descendants(name)
        for name in datamodule.ground_truth_variables
        if graph.descendants(name)
    }


def score(model, scm, datamodule, batch, test, draw, image_draw) -> dict[str, float]:
    """Descendant MAE (whole test split, values ``draw``) and truth L1 (``batch``, values
    ``image_draw``) per intervention."""
    out = {}
    own = model.scm
    model.scm = scm
    try:
        for name, descendants in interventions_with_descendants(datamodule).items():
            do = {name: test[name][draw]}
            _, truth = datamodule.true_counterfactual(datamodule.test_set.indices, do)
            with torch.no_grad():
                ours = scm.act(test, do)
            for child in descendants:
                error = (ours[child].float() - truth[child].float()).abs().mean().item()
                out[f"do({name}): {child} MAE"] = error
            image_do = {name: batch["pa"][name][image_draw]}
            cf = model.counterfactual(batch["x"], batch["pa"], image_do)
            true_image, _ = datamodule.true_counterfactual(batch["index"], image_do)
            out[f"do({name}): truth L1"] = l1(cf.image, true_image).mean().item()
    finally:
        model.scm = own
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", required=True, help="pretrained names or paths")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seeds", type=int, default=3, help="refits per model")
    parser.add_argument("--images", type=int, default=500, help="test images for truth L1")
    parser.add_argument("--out", help="markdown file to write (and .json beside it)")
    args = parser.parse_args(argv)

    rows, records = [], []
    for name in args.models:
        model = load_model(name).eval()
        datamodule = datamodule_for(model, data_dir=args.data_dir)
        datamodule.setup("fit")
        if not interventions_with_descendants(datamodule):
            raise SystemExit(f"{name}: no intervention with descendants and a true counterfactual")
        test = datamodule.attributes(datamodule.test_set.indices)
        draw = torch.randperm(len(datamodule.test_set), generator=torch.Generator().manual_seed(0))
        positions = evenly_spaced(len(datamodule.test_set), args.images).tolist()
        batch = datamodule.test_set.batch(positions)
        image_draw = torch.randperm(len(positions), generator=torch.Generator().manual_seed(0))
        settings = dict(model.hparams.get("scm") or {})
        train = datamodule.train_attributes()
        own = score(model, model.scm, datamodule, batch, test, draw, image_draw)
        records.append({"model": name, "scm": "own", **own})
        refits = []
        for seed in range(args.seeds):
            torch.manual_seed(seed)
            scm = AttributeSCM(model.graph, **{**settings, "mechanism": "flow"})
            start = time.perf_counter()
            scm.fit(train, seed=seed)
            seconds = time.perf_counter() - start
            refit = {
                **score(model, scm, datamodule, batch, test, draw, image_draw),
                "fit seconds": seconds,
            }
            refits.append(refit)
            records.append({"model": name, "scm": f"refit seed {seed}", **refit})
            print(name, seed, refit, flush=True)
        keys = list(own)
        median = {k: statistics.median(r[k] for r in refits) for k in [*keys, "fit seconds"]}
        rows.append((name, own, median, refits))

    keys = sorted({k for _, own, _, _ in rows for k in own})
    lines = [
        "| model | metric | own SCM | refit apart, median | ratio | refits |",
        "|---|---|---|---|---|---|",
    ]
    for name, own, median, refits in rows:
        for k in keys:
            if k not in own:
                continue
            each = " / ".join(f"{r[k]:.3f}" for r in refits)
            ratio = median[k] / own[k] if own[k] else float("nan")
            lines.append(
                f"| {name} | {k} | {own[k]:.3f} | {median[k]:.3f} | {ratio:.2f} | {each} |"
            )
        lines.append(
            f"| {name} | fit seconds | | {median['fit seconds']:.1f} | | "
            + " / ".join(f"{r['fit seconds']:.1f}" for r in refits)
            + " |"
        )
    command = "python benchmarks/scm_fit.py " + " ".join(argv or sys.argv[1:])
    text = (
        f"Command: `{command}`\n\n"
        + "\n".join(lines)
        + f"\n\nMAE: natural units, whole test split. Truth L1: 0-255, {args.images} evenly "
        "spaced test images. Intervened values: a fixed permutation (seed 0) of the test split's "
        "(of the images' values for truth L1).\n"
    )
    publish(text, args.out)
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main()
