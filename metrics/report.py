"""Writing the suite's report: report.json, report.md and its figures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from datamodules.cache import write_output  # noqa: E402


def _fmt(stat: dict[str, float] | None, digits: int = 2, percent: bool = False) -> str:
    if stat is None:
        return "n/a"
    scale = 100.0 if percent else 1.0
    suffix = "%" if percent else ""
    return f"{scale * stat['mean']:.{digits}f} ± {scale * stat['std']:.{digits}f}{suffix}"


def markdown(report: dict[str, Any]) -> str:
    """The report as markdown tables a researcher can paste into a paper."""
    graph_kinds = report["attribute_kinds"]
    floor = report["floor"]
    steps = len(report["composition"]["curve_mean"])
    lines = [
        f"# Counterfactual soundness: {report['model']} on {report['dataset']}",
        "",
        f"{report['num_test']} test images, seeds {report['seeds']} (mean ± std over seeds), "
        "pixel distances on the 0-255 scale. Realism features: "
        f"{report['realism_extractor']}. Checkpoint: `{report.get('checkpoint') or 'none'}`"
        + (
            f" (sha256 {report['checkpoint_sha256'][:12]})"
            if report.get("checkpoint_sha256")
            else ""
        )
        + ".",
        "",
        "## Composition (null intervention applied m times)",
        "",
        f"| counterfactual | m = 1 | m = {steps} |",
        "|---|---|---|",
    ]
    decoder = report.get("composition_decoder")  # models with a pixel residual
    label = "with the pixel residual" if decoder else "as evaluated"
    curves = {label + _options_label(report.get("options")): report["composition"]}
    if decoder:
        curves["decoder alone (residual=false)"] = decoder
    for label, curve in curves.items():
        lines.append(f"| {label} | {_fmt(curve['m1'], 3)} | {_fmt(curve['m' + str(steps)], 3)} |")
    if decoder:
        lines += [
            "",
            "With the residual the null intervention reproduces the input by construction; the "
            "decoder alone shows how far the mechanism itself drifts.",
        ]
    lines += ["", "## Per intervention", ""]
    judge = _judge_label(report)
    attributes = list(graph_kinds)
    header = [
        "intervention",
        "reversibility (1 cycle)",
        "reversibility (last cycle)",
        "truth L1",
        "truth RMSE",
        "FID",
        "KID x 1000",
    ]
    minimality = any(r and "minimality/cld" in r for r in report["interventions"].values())
    if minimality:
        header.append("CLD (minimality)")
    header += [
        f"{a} {'MAE' if graph_kinds[a] == 'continuous' else 'acc.'} ({judge})" for a in attributes
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, result in report["interventions"].items():
        if result is None:
            lines.append(
                f"| do({name}) | " + " | ".join(["not supported"] * (len(header) - 1)) + " |"
            )
            continue
        cycles = sorted(k for k in result if k.startswith("reversibility/"))
        row = [
            f"do({', '.join(result['variables'])})" if name == "all" else f"do({name})",
            _fmt(result.get(cycles[0]) if cycles else None, 3),
            _fmt(result.get(cycles[-1]) if cycles else None, 3),
            _fmt(result.get("truth/l1")),
            _fmt(result.get("truth/rmse")),
            _fmt(result.get("fid")),
            _fmt({k: 1000 * v for k, v in result["kid"].items() if k != "per_seed"}),
        ]
        if minimality:
            row.append(_fmt(result.get("minimality/cld"), 3))
        for a in attributes:
            stat = result.get(f"effectiveness/{a}")
            row.append(
                _fmt(
                    stat,
                    percent=graph_kinds[a] != "continuous",
                    digits=1 if graph_kinds[a] != "continuous" else 2,
                )
            )
        lines.append("| " + " | ".join(row) + " |")
    sampling = report.get("sampling")
    if sampling:
        lines += [
            "",
            f"## Samples ({report['num_test']} per seed, attributes drawn from the model's SCM)",
            "",
            "| | FID | KID x 1000 | "
            + " | ".join(f"{a} ({judge})" for a in attributes)
            + " | "
            + " | ".join(f"{a} marginal (judged / SCM)" for a in attributes)
            + " |",
            "|" + "---|" * (3 + 2 * len(attributes)),
            "| samples | "
            + _fmt(sampling.get("fid"))
            + " | "
            + _fmt({k: 1000 * v for k, v in sampling["kid"].items() if k != "per_seed"})
            + " | "
            + " | ".join(
                _fmt(sampling.get(f"effectiveness/{a}"), percent=graph_kinds[a] != "continuous")
                for a in attributes
            )
            + " | "
            + " | ".join(
                f"{_fmt(sampling.get(f'marginal/{a}'), 3)} / {_fmt(sampling.get(f'scm_marginal/{a}'), 3)}"
                for a in attributes
            )
            + " |",
            "",
            "The judge's error on each sample against the attributes it was drawn under (MAE or "
            "accuracy); marginal: the distance from the test attributes' distribution of the "
            "judge's reading of the samples, and of the SCM's draws (1-Wasserstein in natural "
            "units for continuous attributes, total variation for categorical ones).",
        ]
    lines += ["", "## Effectiveness floor and the model-free judge", ""]
    lines += [
        f"| attribute | {judge} on real test images | "
        + " | ".join(f"measured, do({n})" for n, r in report["interventions"].items() if r)
        + " |"
    ]
    lines += ["|" + "---|" * (2 + sum(1 for r in report["interventions"].values() if r))]
    for a in attributes:
        value = floor["predictor"].get(a)
        kind = graph_kinds[a]
        shown = (
            "n/a"
            if value is None
            else (f"{value:.2f}" if kind == "continuous" else f"{100 * value:.1f}%")
        )
        row = [a, shown]
        for result in report["interventions"].values():
            if result:
                row.append(
                    _fmt(result.get(f"measured/{a}")) if f"measured/{a}" in result else "n/a"
                )
        lines.append("| " + " | ".join(row) + " |")
    if floor["measured"]:
        measured = ", ".join(f"{a} {v:.2f}" for a, v in floor["measured"].items())
        lines += [
            "",
            f"Morphometric measurement of the real test images vs their attributes: {measured}.",
        ]
    lines += judges_markdown(report)
    lines += [
        "",
        "Effectiveness: MAE in natural units for continuous attributes, accuracy for categorical "
        "ones, of the anti-causal judge on the counterfactual against its intended attributes "
        "(descendants as the model's SCM recomputed them). The floor is that judge on real "
        "images. Reversibility: L1 after intervening and intervening back. Truth: against the "
        "true counterfactual (n/a where the data have none).",
        *(
            [
                "",
                "Minimality: the counterfactual latent divergence (CLD; Sanchez & Tsaftaris, "
                "2022) in an unconditional VAE's latent space, lower is better, on "
                "[log 2, log 2e] = [0.69, 1.69] with equal weights. A model that ignores the "
                "intervention scores log(1 + e) = 1.31.",
            ]
            if minimality
            else []
        ),
        "",
        f"Evaluation took {report['seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def _options_label(options: dict[str, Any] | None) -> str:
    return f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else ""


def _judge_label(report: dict[str, Any]) -> str:
    """The effectiveness judge's name in the tables: ``held-out judge``, or ``predictor``."""
    judge = (report.get("judges") or {}).get("effectiveness") or {}
    role = judge.get("role")
    return {"heldout": "held-out judge", "finetune": "fine-tune judge"}.get(role, "predictor")


def judges_markdown(report: dict[str, Any]) -> list[str]:
    """Which judge scored what (``report["judges"]``, written by evaluate.py)."""
    judges = report.get("judges")
    if not judges:
        return []
    effectiveness = judges["effectiveness"]
    settings = ", ".join(f"{k} {v}" for k, v in (effectiveness.get("settings") or {}).items())
    lines = [
        "",
        "## Judges",
        "",
        f"- Effectiveness and its floor: the {_judge_label(report)} (role "
        f"`{effectiveness['role']}`; {settings}), `{effectiveness['source']}`. It is also the "
        "feature space of FID and KID unless Inception weights were given.",
        f"- Measured columns: {judges['measured']}.",
    ]
    if judges.get("minimality"):
        vae = judges["minimality"]
        lines.append(
            f"- Minimality (CLD): the unconditional VAE `{vae['source']}`, {vae['bins']} bins per "
            f"continuous attribute, weights {vae['weights']}."
        )
    against = judges.get("finetuned_against")
    lines.append(
        f"- The model was fine-tuned against `{against}`, which scores nothing here."
        if against
        else "- The model was not fine-tuned against a judge."
    )
    return lines


def composition_figure(report: dict[str, Any], path: Path) -> Path:
    curves = {"as evaluated": report["composition"]}
    if "composition_decoder" in report:
        curves = {"with the residual": curves["as evaluated"]}
        curves["decoder alone"] = report["composition_decoder"]
    fig, ax = plt.subplots(figsize=(4.2, 3))
    for label, curve in curves.items():
        mean, std = np.array(curve["curve_mean"]), np.array(curve["curve_std"])
        steps = np.arange(1, len(mean) + 1)
        ax.plot(steps, mean, marker="o", label=label)
        ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
    if len(curves) > 1:
        ax.legend(fontsize=7)
    ax.set_xlabel("null interventions applied (m)")
    ax.set_ylabel("L1 to the input (0-255)")
    ax.set_title(f"Composition: {report['model']}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    write_output(path, lambda temporary: fig.savefig(temporary, dpi=130, format="png"))
    plt.close(fig)
    return path


def effectiveness_figure(report: dict[str, Any], path: Path, bins: int = 6) -> Path | None:
    panels = report.get("effect_size") or {}
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3), squeeze=False)
    for ax, (name, data) in zip(axes[0], panels.items()):
        size, error = np.array(data["size"]), np.array(data["error"])
        edges = np.unique(np.quantile(size, np.linspace(0, 1, bins + 1)))
        which = np.clip(np.digitize(size, edges[1:-1]), 0, len(edges) - 2)
        centres = [size[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()]
        means = [error[which == b].mean() for b in range(len(edges) - 1) if (which == b).any()]
        ax.plot(centres, means, marker="o", label="counterfactuals")
        floor = report["floor"]["predictor"].get(name)
        if floor is not None:
            ax.axhline(floor, color="gray", linestyle="--", label="floor (real images)")
        ax.set_xlabel(f"|intervened {name} - factual|")
        ax.set_ylabel(f"{_judge_label(report)} MAE of {name}")
        ax.set_title(f"do({name})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    write_output(path, lambda temporary: fig.savefig(temporary, dpi=130, format="png"))
    plt.close(fig)
    return path


def write_report(report: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Write report.json, report.md, composition.png and effectiveness.png into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "report.json", "md": out_dir / "report.md"}
    text = json.dumps(report, indent=2, default=str)
    write_output(paths["json"], lambda temporary: Path(temporary).write_text(text))
    write_output(paths["md"], lambda temporary: Path(temporary).write_text(markdown(report)))
    paths["composition"] = composition_figure(report, out_dir / "composition.png")
    figure = effectiveness_figure(report, out_dir / "effectiveness.png")
    if figure:
        paths["effectiveness"] = figure
    return paths
