"""How the judges read the attributes an intervention keeps, on the true counterfactuals.

    python benchmarks/judge_bias.py                      # embedded Morpho-MNIST, 1,000 test images
    python benchmarks/judge_bias.py --out benchmarks/results/judge-bias.md

An intervention leaves the attributes that are not its descendants as they were. On the dataset's
true counterfactuals (synthetic data only), a judge that reads those preserved attributes right
errs there as it errs on the factual images. A judge trained on observational data may instead
read an attribute partly through its correlates, and counterfactual fine-tuning against it then
pulls the model's counterfactuals towards that bias, away from the truth.

For the judge of each role (``metrics/judges.py``: ``finetune`` trains the ``_cf`` models,
``heldout`` scores effectiveness), for the fine-tuning judge's recipe trained on images where the
ground-truth attributes vary independently (``interventional``, rendered by the dataset's true
mechanism) and for morphometry (the model-free judge), each intervention
of the suite (``evaluate.py``'s draw, seed 0) and each preserved attribute: the mean signed error
(judged - true) or error rate, on the factual images and on the true counterfactuals, in bins of the
intervention's size (the change of the intervened attribute in its standard deviations).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT  # noqa: E402

from datamodules import DATAMODULES  # noqa: E402
from datamodules.base import evenly_spaced  # noqa: E402
from metrics.judges import load_or_train_predictor  # noqa: E402
from metrics.suite import draw_interventions  # noqa: E402

#: The row name of the fine-tuning judge trained on interventional images.
INTERVENTIONAL = "finetune, interventional"

#: Bins of an intervention's size, in the intervened attribute's standard deviations.
EDGES = (-1.0, -0.25, 0.25, 1.0)


def batch_sizes(data: str) -> dict[str, int]:
    """The loaders' batch sizes train.py and evaluate.py use: part of each judge's cache key."""
    with initialize_config_dir(str(ROOT / "configs"), version_base=None):
        train = compose("train", overrides=[f"data={data}"])
        evaluate = compose("evaluate", overrides=[f"data={data}"])
    return {"finetune": int(train.data.batch_size), "heldout": int(evaluate.data.batch_size)}


def size_bin(change: torch.Tensor) -> list[str]:
    labels = [f"< {EDGES[0]:g} sd"]
    labels += [f"[{a:g}, {b:g}) sd" for a, b in zip(EDGES, EDGES[1:])]
    labels += [f">= {EDGES[-1]:g} sd"]
    return [labels[i] for i in torch.bucketize(change, torch.tensor(EDGES), right=True)]


def measure(data: str, data_dir: str, images: int) -> list[dict]:
    modules = {
        role: DATAMODULES[data](data_dir=data_dir, batch_size=batch_size)
        for role, batch_size in batch_sizes(data).items()
    }
    datamodule = modules["heldout"]  # evaluate.py's loaders
    datamodule.setup()
    graph = datamodule.graph
    intervened = [n for n in graph.names if n in datamodule.ground_truth_variables]
    if not intervened:
        raise SystemExit(f"{data} has no true counterfactuals: choose a synthetic dataset")
    judges = {
        role: load_or_train_predictor(module, role=role, progress=False)[0]
        for role, module in modules.items()
    }
    # the fine-tuning judge's recipe on images whose attributes vary independently
    judges[INTERVENTIONAL] = load_or_train_predictor(
        modules["finetune"], role="finetune", progress=False, interventional=intervened
    )[0]
    batches = [b for b in datamodule.test_dataloader()]
    every = {k: torch.cat([b["pa"][k] for b in batches]) for k in graph.names}
    # evaluate.py's draw over the whole test split (its very interventions when every image is
    # read), then evenly spaced images: the embedded split is sorted by digit
    draws = draw_interventions(graph.names, every, 0)
    picked = evenly_spaced(len(draws[graph.names[0]]), images)
    x = torch.cat([b["x"] for b in batches])[picked]
    index = torch.cat([b["index"] for b in batches])[picked]
    pa = {k: v[picked] for k, v in every.items()}

    def read(images: torch.Tensor) -> dict[str, dict]:
        with torch.no_grad():
            out = {role: judge(images) for role, judge in judges.items()}
        if datamodule.has_measurement:
            out["morphometry"] = datamodule.measure_attributes(images)
        return out

    factual = read(x)
    rows = []
    for name in intervened:
        do = {name: every[name][draws[name][picked]]}
        truth, true_pa = datamodule.true_counterfactual(index, do)
        judged = read(truth)
        variable = graph[name]
        if variable.is_continuous:
            bins = size_bin((do[name] - pa[name]).float() / variable.scale)
        else:
            bins = ["changed" if changed else "unchanged" for changed in (do[name] != pa[name])]
        kept = [n for n in graph.names if n != name and n not in graph.descendants(name)]
        for judge, readings in judged.items():
            for attribute in kept:
                if attribute not in readings:
                    continue
                if graph[attribute].is_continuous:
                    before = factual[judge][attribute] - pa[attribute]
                    after = readings[attribute] - true_pa[attribute]
                else:  # the error rate
                    before = (factual[judge][attribute] != pa[attribute]).float()
                    after = (readings[attribute] != true_pa[attribute]).float()
                for label in sorted(set(bins), key=bins.index):
                    chosen = torch.tensor([b == label for b in bins])
                    rows.append(
                        {
                            "judge": judge,
                            "do": name,
                            "kept": attribute,
                            "size": label,
                            "n": int(chosen.sum()),
                            "rate": not graph[attribute].is_continuous,
                            "factual": float(before[chosen].mean()),
                            "counterfactual": float(after[chosen].mean()),
                        }
                    )
    return rows


def order(rows: list[dict]) -> list[dict]:
    labels = size_bin(torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0]))
    rank = {label: i for i, label in enumerate(labels)}
    return sorted(rows, key=lambda r: (r["judge"], r["do"], r["kept"], rank.get(r["size"], 99)))


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# The judges' reading of preserved attributes on the true counterfactuals",
        "",
        f"Command: `{command}`",
        "",
        "Mean signed error (judged - true) of each preserved continuous attribute, and the error "
        "rate of each categorical one, on the factual test images and on their true "
        "counterfactuals, by the intervention's size in the intervened attribute's standard "
        "deviations. A judge that reads the attribute itself shows the same error on both.",
        "",
        "| judge | intervention | preserved | size | n | error, factual | error, true "
        "counterfactual |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in order(rows):
        if r["rate"]:
            before, after = (
                f"{100 * r['factual']:.1f}% wrong",
                f"{100 * r['counterfactual']:.1f}% wrong",
            )
        else:
            before, after = f"{r['factual']:+.3f}", f"{r['counterfactual']:+.3f}"
        lines.append(
            f"| {r['judge']} | do({r['do']}) | {r['kept']} | {r['size']} | {r['n']} | "
            f"{before} | {after} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default="morphomnist", choices=sorted(DATAMODULES), help="a synthetic dataset"
    )
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument(
        "--images", type=int, default=1000, help="test images, evenly spaced over the split"
    )
    parser.add_argument("--out", default=None, help="write the table here too (markdown)")
    args = parser.parse_args(argv)
    command = "python benchmarks/judge_bias.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    text = markdown(measure(args.data, args.data_dir, args.images), command.strip())
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
