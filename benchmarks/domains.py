"""Domain counterfactuals on multi-domain Morpho-MNIST, by domain pair, and ILD's intervention set.

    python benchmarks/domains.py --zoo benchmarks/results/domains-2026-12-02/cpu2-x86_64-2026-12-02.json
    python benchmarks/domains.py --sweep 1 16 256 1024 --minutes 3
    python benchmarks/domains.py --sweep 4 --ild-model ild_vae --families vae hvae --minutes 12
    python benchmarks/domains.py --checkpoint ild_vae=outputs/domains/ild_vae_k4/checkpoints/last.ckpt

For every model and every (source, target) pair of domains, each test image of the source domain
is sent to the target by do(domain=target) and compared with the true domain counterfactual that
the datamodule renders: truth L1 (0-255), the held-out judge's domain accuracy on the
counterfactual (it never trained a model here), and the reversibility of the round trip
(do(domain=target), then back to the source, from ``Counterfactual.unclipped``). The summary
splits the pairs where ILD's sparse-shift assumption holds (plain <-> rotated: one latent factor)
from those where it fails (any pair with textured: every pixel's mechanism changes).

``--zoo`` scores each family's seed-0 checkpoint of a ``benchmarks/zoo.py --data
morphomnist_domains`` results file. ``--sweep K ...`` trains ILD with ``intervention_dims=K`` for
``--minutes`` each (train.py, one after the other, in ``--work-dir``) and scores each: how the
error changes with the size of the intervention set, from 1 latent dimension to all 1,024.
``--families NAME ...`` trains those model configs for the same ``--minutes`` and scores them beside
the sweep. ``--checkpoint NAME=PATH`` scores a trained checkpoint as row NAME: the way to score
runs from several calls (seeds, commits) again at one commit, into one file.
Writes ``<out-dir>/<machine>-<date>-domains.json`` and ``.md``; a second call with the same file
adds its models to it (the sweep's rows are named ``ild_k<K>``, or ``ild_vae_k<K>`` with
``--ild-model ild_vae``, ILD with the paper's pseudo-invertible map). And ``-domains-grid.png``: 4
plain and 4 rotated test digits, each turned to the other domain, the truth, and this call's
models (their seed-0 runs).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import ROOT  # noqa: E402
from zoo import git_commit, machine_name, train_with_budget  # noqa: E402

from datamodules import DomainMNISTDataModule  # noqa: E402
from datamodules.base import evenly_spaced  # noqa: E402
from datamodules.domains import DOMAINS, SPARSE_DOMAINS  # noqa: E402
from metrics.figures import save_grid  # noqa: E402
from metrics.judges import load_or_train_predictor  # noqa: E402
from metrics.soundness import l1  # noqa: E402
from models import load_model  # noqa: E402
from models.base import check_same_data, data_spec  # noqa: E402
from models.baselines import IdentityModel, OracleModel  # noqa: E402

DATA_SEED = 0


def pair_name(source: int, target: int) -> str:
    return f"{DOMAINS[source]} -> {DOMAINS[target]}"


def is_sparse(source: int, target: int) -> bool:
    return DOMAINS[source] in SPARSE_DOMAINS and DOMAINS[target] in SPARSE_DOMAINS


@torch.inference_mode()
def score_domains(
    model, datamodule, judge, batch_size: int = 250, options: dict | None = None
) -> dict:
    """Per (source, target) pair: median and mean truth L1, domain accuracy, reversibility
    (``options``: the model's counterfactual options, there and back)."""
    options = options or {}
    test = datamodule.test_set
    per_pair: dict[str, dict[str, list[float]]] = {}
    for start in range(0, len(test), batch_size):
        batch = test.batch(range(start, min(start + batch_size, len(test))))
        x, pa, index = batch["x"], batch["pa"], batch["index"]
        for target in range(len(DOMAINS)):
            moved = pa["domain"] != target
            if not moved.any():
                continue
            rows = moved.nonzero().flatten()
            xs, pas, ids = x[rows], {k: v[rows] for k, v in pa.items()}, index[rows]
            do = {"domain": torch.full_like(pas["domain"], target)}
            cf = model.counterfactual(xs, pas, do, sample_ids=ids, **options)
            truth, _ = datamodule.true_counterfactual(ids, do)
            error = l1(cf.image, truth)
            judged = judge(cf.image.to(judge.device))["domain"].cpu() == target
            back = model.counterfactual(
                cf.unclipped, cf.parents, {"domain": pas["domain"]}, sample_ids=ids, **options
            )
            reversal = l1(back.image, xs)
            for n, source in enumerate(pas["domain"].tolist()):
                entry = per_pair.setdefault(
                    pair_name(source, target), {"l1": [], "accuracy": [], "reversibility": []}
                )
                entry["l1"].append(float(error[n]))
                entry["accuracy"].append(float(judged[n]))
                entry["reversibility"].append(float(reversal[n]))
    out = {}
    for name, values in per_pair.items():
        out[name] = {
            "n": len(values["l1"]),
            "truth L1 median": statistics.median(values["l1"]),
            "truth L1 mean": statistics.fmean(values["l1"]),
            "domain accuracy": statistics.fmean(values["accuracy"]),
            "reversibility mean": statistics.fmean(values["reversibility"]),
        }
    for label, keep in (("sparse pairs", True), ("dense pairs", False)):
        names = [
            pair_name(s, t)
            for s in range(len(DOMAINS))
            for t in range(len(DOMAINS))
            if s != t and is_sparse(s, t) == keep
        ]
        total = sum(out[n]["n"] for n in names)
        out[label] = {
            key: sum(out[n][key] * out[n]["n"] for n in names) / total
            for key in ("truth L1 mean", "domain accuracy", "reversibility mean")
        }
        out[label]["n"] = total
    return out


def grid_batch(datamodule, per_domain: int = 4) -> tuple[dict, dict]:
    """``per_domain`` test images of each sparse domain, evenly spaced over its images (the split
    is sorted by digit), each sent to the other domain."""
    test = datamodule.test_set
    domain = test.attributes["domain"][test.indices]  # the column alone, not the images
    plain, rotated = (DOMAINS.index(name) for name in SPARSE_DOMAINS)
    positions = []
    for d in (plain, rotated):
        inside = (domain == d).nonzero().flatten()
        positions += inside[evenly_spaced(len(inside), per_domain)].tolist()
    batch = test.batch(positions)
    target = torch.where(batch["pa"]["domain"] == plain, rotated, plain)
    return batch, {"domain": target.to(batch["pa"]["domain"].dtype)}


def markdown(results: dict) -> str:
    settings = results["settings"]
    lines = [
        f"# Domain counterfactuals by domain pair: {settings['machine']}, {settings['date']}",
        "",
        f"Commands: {'; '.join(f'`{c}`' for c in settings['commands'])}",
        "",
        "Truth L1 (0-255, mean over the source domain's test images) of do(domain = target) "
        "against the true domain counterfactual; the held-out judge's domain accuracy on it; "
        "reversibility (there and back, from the unclipped counterfactual). Sparse pairs: "
        "plain <-> rotated, where ILD's sparse-shift assumption holds; dense pairs: every pair "
        "with textured, where it fails.",
        "",
    ]
    models = results["models"]
    names = list(models)
    pairs = [pair_name(s, t) for s in range(len(DOMAINS)) for t in range(len(DOMAINS)) if s != t]
    header = "| metric | " + " | ".join(names) + " |"
    lines += [header, "|---" * (len(names) + 1) + "|"]
    for group in ("sparse pairs", "dense pairs"):
        for key, fmt in (
            ("truth L1 mean", "{:.2f}"),
            ("domain accuracy", "{:.1%}"),
            ("reversibility mean", "{:.2g}"),
        ):
            cells = [fmt.format(models[n]["scores"][group][key]) for n in names]
            lines.append(f"| {key}, {group} | " + " | ".join(cells) + " |")
    for pair in pairs:
        cells = [f"{models[n]['scores'][pair]['truth L1 mean']:.2f}" for n in names]
        lines.append(f"| truth L1, {pair} | " + " | ".join(cells) + " |")
    for pair in pairs:
        cells = [f"{models[n]['scores'][pair]['domain accuracy']:.1%}" for n in names]
        lines.append(f"| domain accuracy, {pair} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| model | scored at | checkpoint | intervention_dims | training minutes | options |",
    ]
    lines.append("|---|---|---|---|---|---|")
    for name in names:
        entry = models[name]
        options = ", ".join(f"{k}={v}" for k, v in entry.get("options", {}).items())
        lines.append(
            f"| {name} | {entry['commit']} | `{entry['checkpoint']}` | "
            f"{entry.get('intervention_dims', 'n/a')} | {entry.get('minutes', 'n/a')} | "
            f"{options or 'defaults'} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/domains.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--zoo", help="a zoo.py results file of --data morphomnist_domains")
    parser.add_argument("--sweep", type=int, nargs="+", default=[], help="ILD intervention_dims")
    parser.add_argument(
        "--families",
        nargs="+",
        default=[],
        help="model configs to train for --minutes each on the same data and score beside the "
        "sweep (e.g. vae hvae flow): the same budget for every row",
    )
    parser.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="score this checkpoint as row NAME (repeatable)",
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a counterfactual option for every model this call scores, e.g. residual=false "
        "(stored in each row)",
    )
    parser.add_argument(
        "--ild-model",
        default="ild",
        choices=["ild", "ild_vae"],
        help="the sweep's ILD: ild (the flow g, 1,024 latents) or ild_vae (the pseudo-invertible "
        "g, model.latent_dim latents); its rows are named ild_k<K> or ild_vae_k<K>",
    )
    parser.add_argument(
        "--minutes", type=float, default=3.0, help="training budget per trained model"
    )
    parser.add_argument(
        "--ild-override",
        action="append",
        default=[],
        help="a train.py override of the sweep's ILD runs (named in their rows), e.g. "
        "model.domain_weight=1000",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="training seed of the trained runs (named when not 0)"
    )
    parser.add_argument("--data-dir", default=str(ROOT / "data"))
    parser.add_argument("--work-dir", default=str(ROOT / "outputs" / "domains"))
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--machine", default=machine_name())
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    args = parser.parse_args(argv)
    if not (args.zoo or args.sweep or args.families or args.checkpoint):
        parser.error(
            "give --zoo FILE, --sweep K [K ...], --families NAME [NAME ...] and/or "
            "--checkpoint NAME=PATH"
        )
    options = {}
    for given in args.option:
        name, sep, value = given.partition("=")
        if not sep or not name:
            parser.error(f"--option takes NAME=VALUE, got {given!r}")
        options[name] = yaml.safe_load(value)
    checkpoints = []
    for given in args.checkpoint:
        name, sep, path = given.partition("=")
        if not sep or not name or not path:
            parser.error(f"--checkpoint takes NAME=PATH, got {given!r}")
        if not Path(path).is_file():
            parser.error(f"--checkpoint {name}: no file at {path}")
        checkpoints.append((name, path, {}))
    if any(k < 1 or k > 1024 for k in args.sweep):
        parser.error(f"--sweep takes intervention_dims from 1 to 1024, got {args.sweep}")
    # (ild_vae's upper bound, its latent_dim, is checked by the model when it is built)

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{args.machine}-{args.date}-domains"
    json_path = stem.with_suffix(".json")
    results = json.loads(json_path.read_text()) if json_path.exists() else {"models": {}}
    command = "python benchmarks/domains.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results["settings"] = {
        "machine": args.machine,
        "date": args.date,
        "commands": [*results.get("settings", {}).get("commands", []), command],
    }
    commit = git_commit()
    datamodule = DomainMNISTDataModule(data_dir=args.data_dir, seed=DATA_SEED)
    datamodule.setup()
    judge, source = load_or_train_predictor(datamodule, role="heldout", progress=False)
    results["judge"] = source

    todo: list[tuple[str, str, dict]] = []
    if args.zoo:
        zoo = json.loads(Path(args.zoo).read_text())
        for name, entry in zoo["models"].items():
            row = next((r for r in entry["rows"] if r["seed"] == 0 and "checkpoint" in r), None)
            if row is not None:
                minutes = row["metrics"].get("training minutes")
                todo.append((name, row["checkpoint"], {"minutes": minutes}))
    todo += checkpoints
    workdir = Path(args.work_dir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # every trained row sees the data the judge and the scores use
    data = ["data=morphomnist_domains", f"data.data_dir={args.data_dir}", f"data.seed={DATA_SEED}"]
    for k in args.sweep:
        # a run directory's name can't hold "=" (Hydra's override grammar)
        name = "_".join(
            [
                f"{args.ild_model}_k{k}",
                *(o.split(".")[-1].replace("=", "") for o in args.ild_override),
                *([f"seed{args.seed}"] if args.seed else []),
            ]
        )
        print(f"training {name} for {args.minutes} minutes", flush=True)
        trained = train_with_budget(
            workdir,
            args.ild_model,
            args.seed,
            args.minutes,
            [*data, f"model.intervention_dims={k}", *args.ild_override],
            run=name,
        )
        extra = {"minutes": args.minutes, "intervention_dims": k}
        todo.append((name, trained["checkpoint"], extra))
    for family in args.families:
        name = family + (f"_seed{args.seed}" if args.seed else "")
        print(f"training {name} for {args.minutes} minutes", flush=True)
        trained = train_with_budget(
            workdir,
            family,
            args.seed,
            args.minutes,
            data,
            run=name,
        )
        todo.append((name, trained["checkpoint"], {"minutes": args.minutes}))

    if args.zoo:  # the references: the floor (0 by construction) and a model that ignores do
        todo += [("oracle", "", {}), ("identity", "", {})]
    shown, do = grid_batch(datamodule)
    truth, truth_parents = datamodule.true_counterfactual(shown["index"], do)
    grid = [("factual", shown["x"], shown["pa"]), ("truth", truth, truth_parents)]
    for name, checkpoint, extra in todo:
        print(f"scoring {name}", flush=True)
        references = {"oracle": OracleModel, "identity": IdentityModel}
        if name in references:
            model = references[name](datamodule).eval()
        else:
            model = load_model(checkpoint).eval()
            check_same_data(checkpoint, model.trained_on, data_spec(datamodule), "evaluate")
        if "intervention_dims" not in extra and "intervention_dims" in getattr(
            model, "hparams", {}
        ):
            extra["intervention_dims"] = model.hparams.intervention_dims
        results["models"][name] = {
            "checkpoint": checkpoint,
            "commit": commit,
            **extra,
            **({"options": options} if options else {}),
            "scores": score_domains(model, datamodule, judge, options=options),
        }
        json_path.write_text(json.dumps(results, indent=2))
        stem.with_suffix(".md").write_text(markdown(results))
        if "_seed" not in name:  # one row per model in the picture: its seed-0 run
            with torch.inference_mode():
                cf = model.counterfactual(
                    shown["x"], shown["pa"], do, sample_ids=shown["index"], **options
                )
            grid.append((name, cf.image, cf.parents))
    save_grid(
        grid,
        f"{stem}-grid.png",
        "do(domain) between plain and rotated (the sparse shift): this call's models, seed 0",
    )
    print(stem.with_suffix(".md").read_text())
    return stem.with_suffix(".md")


if __name__ == "__main__":
    main()
