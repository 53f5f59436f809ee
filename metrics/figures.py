"""Figures: counterfactual grids a researcher can put in a paper."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from datamodules.base import evenly_spaced  # noqa: E402
from datamodules.cache import write_output  # noqa: E402


def _abbreviate(name: str) -> str:
    """``thickness`` -> ``thick``, ``shadow_length`` -> ``shad_leng``: short, still distinct."""
    words = name.split("_")
    return "_".join(w[:4] for w in words) if len(words) > 1 else name[:5]


def _describe(pa: Mapping[str, Tensor], n: int) -> str:
    parts = []
    for name, values in pa.items():
        value = values[n].item()
        label = _abbreviate(name)
        parts.append(f"{label} {value:.3g}" if isinstance(value, float) else f"{label} {value}")
    return "\n".join(parts)


def save_grid(
    rows: Sequence[tuple[str, Tensor, Mapping[str, Tensor]]],
    path: str | Path,
    title: str | None = None,
) -> Path:
    """Save a grid of images: one row per ``(label, images (B, C, H, W) in [0, 1], attributes)``.

    Each cell is captioned with its attributes, so an intervention's effect on the descendants
    (e.g. intensity following thickness) can be read off the figure.
    """
    path = Path(path)
    n_rows, n_cols = len(rows), len(rows[0][1])
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(1.25 * n_cols + 1.4, 1.55 * n_rows), squeeze=False
    )
    for r, (label, images, attributes) in enumerate(rows):
        images = images.detach().float().cpu().clamp(0, 1)
        attributes = {k: v.detach().cpu() for k, v in attributes.items()}
        for c in range(n_cols):
            ax = axes[r, c]
            image = images[c].permute(1, 2, 0).squeeze(-1)
            ax.imshow(image.numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(_describe(attributes, c), fontsize=6, labelpad=1)
        axes[r, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    write_output(path, lambda temporary: fig.savefig(temporary, dpi=130, format="png"))
    plt.close(fig)
    return path


def visible_interventions(pa: Mapping[str, Tensor], graph) -> dict[str, dict[str, Tensor]]:
    """One clearly visible intervention per attribute, for figures.

    Continuous attributes jump to the other end of their training range (thin <-> thick, dim <->
    bright): ``loc +- 1.5 sd`` on the side away from the factual value. Categorical attributes move
    to the next class.
    """
    out = {}
    for variable in graph.variables:
        value = pa[variable.name]
        if variable.is_continuous:
            low = max(variable.support[0], variable.loc - 1.5 * variable.scale)
            high = min(variable.support[1], variable.loc + 1.5 * variable.scale)
            target = torch.where(value < variable.loc, torch.full_like(value, high), low)
        else:
            target = (value + 1) % variable.num_classes
        out[variable.name] = {variable.name: target}
    return out


def counterfactual_grid(model, datamodule, path: str | Path, n: int = 8) -> Path:
    """Save ``n`` test images (spread over the split) and one counterfactual row per attribute
    the model can intervene on (see :func:`visible_interventions`)."""
    test = datamodule.test_set
    batch = test.batch(evenly_spaced(len(test), n).tolist())
    model.eval()
    rows = [("factual", batch["x"], batch["pa"])]
    allowed = model.intervenable or model.graph.names
    for name, do in visible_interventions(batch["pa"], model.graph).items():
        if name in allowed:
            cf = model.counterfactual(batch["x"], batch["pa"], do, sample_ids=batch["index"])
            rows.append((f"do({name})", cf.image, cf.parents))
    title = f"{type(model).__name__} on {datamodule.name}: factual and counterfactuals"
    return save_grid(rows, path, title)
