"""The counterfactual explorer: ask "what if?" of loaded models on one image, beside the truth.

    python -m models explore ckpt_path=A.ckpt [ckpt_path=B.ckpt ...] [report=REPORT.json ...]

:class:`Explorer` holds the models, their dataset, the judges and the model cards, and answers
one query at a time: it is plain Python, so its callbacks are tested without a browser.
:func:`build_app` puts a Gradio page on it (the optional ``[explore]`` extra); :func:`main` is the
command line. The page runs offline: Gradio's analytics are off and its fonts are its own.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from datamodules.base import CausalGraph, Variable
from metrics.soundness import composition, l1, reversibility
from models.base import Counterfactual, CounterfactualModel
from models.loading import load_model, source_sha256

log = logging.getLogger(__name__)

#: Images are shown at least this many pixels wide (nearest-neighbour upscaling, integer factor).
VIEW_PIXELS = 160
#: Steps of a continuous attribute's slider over its support.
SLIDER_STEPS = 200
#: Null interventions applied in a row for the query's composition (Monteiro et al.'s m).
COMPOSITION_STEPS = 10
#: What a slider's value must differ from the factual one by to count as an intervention, in
#: slider steps: the page may round a factual value that lies between two steps.
INTERVENTION_TOLERANCE = 0.5


# -- the query and its answer -----------------------------------------------------------------------
@dataclass
class Query:
    """One factual image and its attributes.

    Attributes:
        x: ``(1, C, H, W)`` image in [0, 1].
        pa: the attributes, ``(1,)`` tensors in natural units.
        index: the dataset id of a test image (its true counterfactuals can be rendered), or
            ``None`` for an uploaded one.
        label: where it came from, for captions and exports.
        measured: what the judges read off ``x`` (filled by the first answer).
    """

    x: Tensor
    pa: dict[str, Tensor]
    index: Tensor | None
    label: str
    measured: dict[str, dict[str, float]] | None = None


@dataclass
class ModelAnswer:
    """One model's counterfactual of a query, with what the judges read off it."""

    name: str
    counterfactual: Counterfactual
    measured: dict[str, dict[str, float]]  # judge -> attribute -> value
    truth_l1: float | None
    seconds: float


@dataclass
class Answer:
    """Every loaded model's counterfactual of one query under one intervention."""

    query: Query
    do: dict[str, float]
    answers: list[ModelAnswer]
    truth: Tensor | None  # (1, C, H, W), the dataset's true counterfactual
    truth_parents: dict[str, float] | None
    truth_note: str  # why there is no truth, when there is none
    factual_measured: dict[str, dict[str, float]] = field(default_factory=dict)
    truth_measured: dict[str, dict[str, float]] = field(default_factory=dict)


def _scalar(value: Tensor) -> float:
    return float(torch.as_tensor(value).reshape(-1)[0].item())


def slider_step(variable: Variable) -> float:
    """A round step near ``support / SLIDER_STEPS`` (1, 2 or 5 times a power of ten)."""
    low, high = variable.support
    raw = (high - low) / SLIDER_STEPS
    power = 10.0 ** math.floor(math.log10(raw))
    return min((m * power for m in (1, 2, 5, 10) if m * power >= raw), default=raw)


def how_changed(graph: CausalGraph, do: Mapping[str, Any]) -> dict[str, str]:
    """``"do"`` for an intervened attribute, ``"recomputed"`` for a descendant the SCM recomputes
    from its abducted noise, ``"kept"`` for the rest."""
    recomputed = {d for name in do for d in graph.descendants(name)} - set(do)
    return {
        name: "do" if name in do else "recomputed" if name in recomputed else "kept"
        for name in graph.names
    }


# -- images on the page -----------------------------------------------------------------------------
def to_view(image: Tensor) -> np.ndarray:
    """``(1, C, H, W)`` or ``(C, H, W)`` in [0, 1] -> ``(h, w, 3)`` uint8, upscaled for the page."""
    image = image.detach().float().cpu().reshape(-1, *image.shape[-2:]).clamp(0, 1)
    factor = max(1, VIEW_PIXELS // image.shape[-1])
    image = image.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    array = (image * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return np.repeat(array, 3, axis=2) if array.shape[2] == 1 else array


def difference_view(counterfactual: Tensor, factual: Tensor) -> np.ndarray:
    """The signed change per pixel (mean over channels) on a diverging map: red where the
    counterfactual is brighter, blue where darker, white where unchanged; full colour at +-1."""
    from matplotlib import colormaps

    change = (counterfactual.detach().float().cpu() - factual.detach().float().cpu()).reshape(
        -1, *factual.shape[-2:]
    )
    change = change.mean(0).clamp(-1, 1)
    rgb = colormaps["RdBu_r"](((change + 1) / 2).numpy())[..., :3]
    return to_view(torch.from_numpy(rgb).permute(2, 0, 1).float())


def read_image(path: str | Path, image_shape: Sequence[int]) -> Tensor:
    """An image file as a ``(1, C, H, W)`` tensor in [0, 1] for a model of ``image_shape``.

    Raises:
        ValueError: the file is not an image, or not of the model's size.
    """
    from PIL import Image, UnidentifiedImageError

    channels, height, width = (int(v) for v in image_shape)
    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened.convert("L" if channels == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(
            f"{Path(path).name} is not an image this page can read ({error}); upload a PNG or JPEG"
        ) from error
    if image.size != (width, height):
        raise ValueError(
            f"{Path(path).name} is {image.size[0]}x{image.size[1]} pixels; the models take "
            f"{width}x{height} images. Resize it to {width}x{height}, or pick a test image"
        )
    array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    return (array[None] if channels == 1 else array.permute(2, 0, 1))[None]


# -- model cards ------------------------------------------------------------------------------------
def card_markdown(name: str, model: CounterfactualModel, report: Mapping[str, Any] | None) -> str:
    """A model's card: what it is, and the figures of its ``evaluate.py`` report when given."""
    options = ", ".join(f"{k}={v}" for k, v in model.option_defaults().items()) or "none"
    lines = [
        f"**{name}**: {type(model).__name__} on {model.dataset_name}, images "
        f"{'x'.join(map(str, model.image_shape))}; counterfactual options {options}.",
    ]
    if report is None:
        lines.append(
            "No evaluate report given: score the checkpoint with `python evaluate.py "
            "ckpt_path=...` and start the page with `report=<its report.json>`."
        )
        return "\n\n".join(lines)

    def cell(stat: Any, percent: bool = False) -> str:
        if not isinstance(stat, Mapping) or stat.get("mean") is None:
            return "-"
        value = float(stat["mean"])
        return f"{100 * value:.1f}%" if percent else f"{value:.3g}"

    composition_stats = report.get("composition", {})
    lines.append(
        f"Report of {report.get('num_test', '?')} test images, {len(report.get('seeds', []))} "
        f"seed(s): composition m=1 {cell(composition_stats.get('m1'))}, m=10 "
        f"{cell(composition_stats.get('m10'))} (L1, 0-255)."
    )
    rows = [
        "| do | effectiveness | truth L1 | reversibility | minimality (CLD) |",
        "|---|---|---|---|---|",
    ]
    kinds = report.get("attribute_kinds", {})
    for target, stats in report.get("interventions", {}).items():
        effects = [
            f"{v}: {cell(stats.get(f'effectiveness/{v}'), kinds.get(v) == 'categorical')}"
            for v in stats.get("variables", [])
            if f"effectiveness/{v}" in stats
        ]
        rows.append(
            f"| {target} | {'; '.join(effects) or '-'} | {cell(stats.get('truth/l1'))} | "
            f"{cell(stats.get('reversibility/cycle1'))} | {cell(stats.get('minimality/cld'))} |"
        )
    lines.append("\n".join(rows))
    return "\n\n".join(lines)


def report_figures(report_path: str | Path) -> list[Path]:
    """The figures ``evaluate.py`` wrote beside a report."""
    folder = Path(report_path).parent
    return [p for p in (folder / "composition.png", folder / "effectiveness.png") if p.exists()]


# -- the explorer -----------------------------------------------------------------------------------
class Explorer:
    """Counterfactuals of one image by several models, beside the truth, with their judges.

    Args:
        models: name -> model; all of one dataset (the same attributes and image shape).
        datamodule: that dataset, set up (its test split is browsed, its truth rendered).
        judges: name -> an anti-causal predictor that reads attributes off images (e.g. the
            held-out judge of ``evaluate.py``); the dataset's model-free measurement, if it has
            one, is added as ``"measured"``.
        reports: name -> the model's ``evaluate.py`` report (its card's figures).
        report_paths: name -> where that report lies (its figures are beside it).
        problems: messages about checkpoints or reports that could not be loaded, for the page.
    """

    def __init__(
        self,
        models: Mapping[str, CounterfactualModel],
        datamodule,
        judges: Mapping[str, torch.nn.Module] | None = None,
        reports: Mapping[str, Mapping[str, Any]] | None = None,
        report_paths: Mapping[str, str | Path] | None = None,
        problems: Sequence[str] = (),
    ):
        if not models:
            raise ValueError("the explorer needs at least one model (ckpt_path=PATH)")
        self.models = dict(models)
        self.datamodule = datamodule
        for name, model in self.models.items():
            if not datamodule.fits(model):
                raise ValueError(
                    f"model '{name}' models {model.graph.names} on {tuple(model.image_shape)} "
                    f"images, but the data have {datamodule.graph.names} on "
                    f"{tuple(datamodule.image_shape)}: load models of one dataset together"
                )
        self.judges = dict(judges or {})
        self.reports = dict(reports or {})
        self.report_paths = {k: Path(v) for k, v in (report_paths or {}).items()}
        self.problems = list(problems)
        self.measures = datamodule.has_measurement

    @property
    def graph(self) -> CausalGraph:
        return self.datamodule.graph

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.datamodule.image_shape)

    @property
    def test_size(self) -> int:
        return len(self.datamodule.test_set)

    @property
    def judge_names(self) -> list[str]:
        return [*self.judges, *(["measured"] if self.measures else [])]

    # -- queries --------------------------------------------------------------------------------
    def test_query(self, position: int) -> Query:
        """The test split's image at ``position`` (0 .. test_size - 1)."""
        if not 0 <= int(position) < self.test_size:
            raise ValueError(
                f"test image {position} does not exist: pick 0 .. {self.test_size - 1}"
            )
        batch = self.datamodule.test_set.batch([int(position)])
        return Query(
            x=batch["x"],
            pa=dict(batch["pa"]),
            index=batch["index"],
            label=f"test image {int(position)} (id {int(batch['index'][0])})",
        )

    def upload_query(self, path: str | Path, attributes: Mapping[str, Any]) -> Query:
        """An uploaded image with its attributes (natural units), checked against the supports.

        Raises:
            ValueError: not an image, the wrong size, a missing or out-of-support attribute.
        """
        x = read_image(path, self.image_shape)
        pa = {}
        for variable in self.graph.variables:
            value = attributes.get(variable.name)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                raise ValueError(
                    f"the uploaded image needs its '{variable.name}' "
                    f"({variable.describe_support()}): enter it"
                    + (" or press Measure" if self.measures else "")
                )
            pa[variable.name] = variable.check(torch.tensor([value]), what="the uploaded image's")
        return Query(x=x, pa=pa, index=None, label=f"upload {Path(path).name}")

    def measure(self, x: Tensor) -> dict[str, float]:
        """The dataset's model-free measurement of one image's attributes (e.g. Morpho-MNIST's
        morphometry of thickness and intensity); empty when the dataset has none."""
        measured = self.datamodule.measure_attributes(x.float().cpu())
        return {k: _scalar(v) for k, v in measured.items()}

    def measure_upload(self, path: str | Path) -> dict[str, float]:
        """:meth:`measure` of an image file (raises ``ValueError`` as :func:`read_image`)."""
        return self.measure(read_image(path, self.image_shape))

    def interventions(self, query: Query, values: Mapping[str, Any]) -> dict[str, float]:
        """The controls' values that differ from the query's factual ones: the ``do``.

        Raises:
            ValueError: an unknown attribute or a value outside its support.
        """
        do = {}
        for name, value in values.items():
            if name not in self.graph:
                raise ValueError(
                    f"unknown attribute '{name}'; the attributes are {self.graph.names}"
                )
            if value is None:
                continue
            variable = self.graph[name]
            checked = _scalar(variable.check(torch.tensor([float(value)]), what="do"))
            factual = _scalar(query.pa[name])
            if variable.is_continuous:
                if abs(checked - factual) > INTERVENTION_TOLERANCE * slider_step(variable):
                    do[name] = checked
            elif int(checked) != int(factual):
                do[name] = int(checked)
        return do

    # -- answers --------------------------------------------------------------------------------
    def _options(self, model: CounterfactualModel, residual: bool) -> dict[str, Any]:
        return {"residual": residual} if "residual" in model.options else {}

    def _read(self, images: Tensor) -> list[dict[str, dict[str, float]]]:
        """What each judge reads off each of ``images`` (one dict per image)."""
        out: list[dict[str, dict[str, float]]] = [{} for _ in range(len(images))]
        with torch.inference_mode():
            for name, judge in self.judges.items():
                device = next(judge.parameters()).device
                predicted = judge(images.to(device))
                for i in range(len(images)):
                    out[i][name] = {k: float(v[i].item()) for k, v in predicted.items()}
        if self.measures:
            measured = self.datamodule.measure_attributes(images.float().cpu())
            for i in range(len(images)):
                out[i]["measured"] = {k: float(v[i].item()) for k, v in measured.items()}
        return out

    def truth(self, query: Query, do: Mapping[str, Any]) -> tuple[Tensor | None, dict | None, str]:
        """The true counterfactual and its attributes, or why there is none."""
        if query.index is None:
            return None, None, "an uploaded image has no stored noise, so no true counterfactual"
        if not self.datamodule.has_ground_truth:
            return (
                None,
                None,
                f"{self.datamodule.name} is not synthetic: it has no true counterfactuals",
            )
        if not do:
            return query.x, {k: _scalar(v) for k, v in query.pa.items()}, ""
        try:
            image, parents = self.datamodule.true_counterfactual(query.index, do)
        except ValueError as error:  # e.g. do(digit) in Morpho-MNIST
            return None, None, str(error)
        return image, {k: _scalar(v) for k, v in parents.items()}, ""

    def answer(self, query: Query, values: Mapping[str, Any], residual: bool = True) -> Answer:
        """Every model's counterfactual of ``query`` with the controls at ``values``."""
        do = self.interventions(query, values)
        truth, truth_parents, note = self.truth(query, do)
        answers = []
        for name, model in self.models.items():
            start = time.perf_counter()
            cf = model.counterfactual(
                query.x, query.pa, do, sample_ids=query.index, **self._options(model, residual)
            )
            answers.append(
                ModelAnswer(
                    name=name,
                    counterfactual=cf,
                    measured={},
                    truth_l1=None if truth is None else float(l1(cf.image.cpu(), truth.cpu())),
                    seconds=time.perf_counter() - start,
                )
            )
        if query.measured is None:  # the factual's readings: once per query
            query.measured = self._read(query.x.cpu())[0]
        images = [a.counterfactual.image.cpu() for a in answers]
        if truth is not None:
            images.append(truth.cpu())
        read = self._read(torch.cat(images))
        for answer, measured in zip(answers, read):
            answer.measured = measured
        return Answer(
            query=query,
            do=do,
            answers=answers,
            truth=truth,
            truth_parents=truth_parents,
            truth_note=note,
            factual_measured=query.measured,
            truth_measured=read[-1] if truth is not None else {},
        )

    def attribute_rows(self, answer: Answer) -> tuple[list[str], list[list[Any]]]:
        """The attribute table: one row per attribute; the factual value, how the intervention
        changed it, the true counterfactual's, then per model the value it intended (its SCM)
        and what each judge reads off its counterfactual."""
        header = ["attribute", "how", "factual", "truth"]
        for a in answer.answers:
            header += [f"{a.name}: intended"] + [f"{a.name}: {j}" for j in self.judge_names]
        how = how_changed(self.graph, answer.do)
        rows = []
        for variable in self.graph.variables:
            name = variable.name
            truth = answer.truth_parents.get(name) if answer.truth_parents else None
            row = [name, how[name], _scalar(answer.query.pa[name]), truth]
            for a in answer.answers:
                row.append(_scalar(a.counterfactual.parents[name]))
                row += [a.measured.get(j, {}).get(name) for j in self.judge_names]
            rows.append([_rounded(v, variable) for v in row])
        return header, rows

    # -- soundness of this query ------------------------------------------------------------------
    def soundness(
        self, query: Query, values: Mapping[str, Any], residual: bool = True
    ) -> list[dict]:
        """Composition (m = 1 and 10) and reversibility of this one query, per model; for a
        model with a pixel residual, also with the decoder alone (residual off)."""
        do = self.interventions(query, values)
        rows = []
        for name, model in self.models.items():
            settings = [residual] + ([False] if residual and "residual" in model.options else [])
            for setting in settings:
                options = self._options(model, setting)
                curve = composition(
                    model, query.x, query.pa, COMPOSITION_STEPS, sample_ids=query.index, **options
                )[:, 0]
                back = (
                    float(
                        reversibility(
                            model, query.x, query.pa, do, 1, sample_ids=query.index, **options
                        )[0, 0]
                    )
                    if do
                    else None
                )
                rows.append(
                    {
                        "model": name,
                        "residual": setting if "residual" in model.options else "n/a",
                        "composition m=1": float(curve[0]),
                        f"composition m={COMPOSITION_STEPS}": float(curve[-1]),
                        "reversibility": back,
                    }
                )
        return rows

    # -- exports --------------------------------------------------------------------------------
    def numbers_csv(self, answer: Answer) -> str:
        """The query's numbers as CSV: the attribute table, then each model's L1 distances."""
        header, rows = self.attribute_rows(answer)
        stream = io.StringIO()
        writer = csv.writer(stream)
        writer.writerow(["query", answer.query.label])
        writer.writerow(["do", _do_label(answer.do)])
        writer.writerow(header)
        writer.writerows(rows)
        writer.writerow([])
        writer.writerow(["model", "L1 to factual (0-255)", "L1 to truth (0-255)", "seconds"])
        for a in answer.answers:
            change = float(l1(a.counterfactual.image.cpu(), answer.query.x.cpu()))
            writer.writerow([a.name, _rounded(change), _rounded(a.truth_l1), _rounded(a.seconds)])
        return stream.getvalue()

    def panel_png(self, answer: Answer, path: str | Path) -> Path:
        """The panel as a figure: the factual and the truth, then per model its counterfactual
        and the difference map, each captioned with its attributes."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from datamodules.cache import write_output

        columns = [("factual", to_view(answer.query.x), _caption(answer.query.pa))]
        if answer.truth is not None:
            columns.append(("truth", to_view(answer.truth), _caption(answer.truth_parents)))
        for a in answer.answers:
            cf = a.counterfactual
            columns.append((f"{a.name}", to_view(cf.image), _caption(cf.parents)))
            columns.append((f"{a.name}: change", difference_view(cf.image, cf.factual_image), ""))
        fig, axes = plt.subplots(1, len(columns), figsize=(1.7 * len(columns), 2.3), squeeze=False)
        for ax, (title, image, caption) in zip(axes[0], columns):
            ax.imshow(image, interpolation="nearest")
            ax.set_title(title, fontsize=7)
            ax.set_xlabel(caption, fontsize=6)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"{answer.query.label}: {_do_label(answer.do)}", fontsize=8)
        fig.tight_layout()
        write_output(path, lambda temporary: fig.savefig(temporary, dpi=150, format="png"))
        plt.close(fig)
        return Path(path)

    # -- construction from checkpoints ----------------------------------------------------------------
    @classmethod
    def from_checkpoints(
        cls,
        paths: Sequence[str | Path],
        data_dir: str = "data",
        data_overrides: Mapping[str, Any] | None = None,
        reports: Sequence[str | Path] = (),
        judge: str = "cached",
        judge_ckpt: str | None = None,
    ) -> Explorer:
        """Load checkpoints (those that fail are reported on the page), their dataset, the
        held-out judge (``judge``: ``cached`` uses it when ``evaluate.py`` has trained it,
        ``train`` trains it if missing, ``none`` skips it) and the reports of ``evaluate.py``
        that scored them (matched by the checkpoint's SHA-256).

        Raises:
            ValueError: no checkpoint loads, they are of different datasets, a bad setting.
        """
        from datamodules import datamodule_for
        from metrics.judges import judge_source, load_or_train_predictor

        if judge not in ("cached", "train", "none"):
            raise ValueError(f"judge must be cached, train or none, got '{judge}'")
        models, digests, problems = {}, {}, []
        for path in paths:
            name = _model_name(Path(path), models)
            try:
                models[name] = load_model(path)
                if reports:  # reports name the checkpoint they scored by its SHA-256
                    digests[source_sha256(path)] = name
            except (ValueError, FileNotFoundError) as error:
                problems.append(f"could not load {path}: {error}")
        if not models:
            raise ValueError("no checkpoint loaded:\n" + "\n".join(problems))
        first = next(iter(models.values()))
        # the batch size evaluate.py loads with, so that its cached held-out judge is found
        overrides = {"batch_size": evaluate_batch_size(), **(data_overrides or {})}
        datamodule = datamodule_for(first, data_dir, overrides)
        judges = {}
        if judge_ckpt or judge != "none":
            source = judge_source(datamodule, "heldout", judge_ckpt)
            if judge_ckpt or judge == "train" or Path(source).exists():
                judges["judge"], _ = load_or_train_predictor(
                    datamodule, "heldout", ckpt_path=judge_ckpt
                )
            else:
                problems.append(
                    "no held-out judge is cached for this dataset: the attributes are measured "
                    "model-free only. `python evaluate.py` trains and caches it (or start the "
                    "page with judge=train)"
                )
        loaded_reports, report_paths = {}, {}
        for path in reports:
            try:
                report = json.loads(Path(path).read_text())
            except (OSError, ValueError) as error:
                problems.append(f"could not read report {path}: {error}")
                continue
            owner = digests.get(report.get("checkpoint_sha256"))
            if owner is None:
                problems.append(
                    f"report {path} scored checkpoint {report.get('checkpoint')}, which is not "
                    "loaded (its SHA-256 matches none of the checkpoints)"
                )
                continue
            loaded_reports[owner], report_paths[owner] = report, path
        return cls(models, datamodule, judges, loaded_reports, report_paths, problems)


def _model_name(path: Path, taken: Mapping[str, Any]) -> str:
    """``<run folder>/<file stem>`` for ``outputs/train/<run>/checkpoints/last.ckpt``-style paths,
    else the file stem; made unique."""
    parts = path.parts
    base = (
        f"{parts[-3]}/{path.stem}" if len(parts) >= 3 and parts[-2] == "checkpoints" else path.stem
    )
    name, n = base, 2
    while name in taken:
        name, n = f"{base} ({n})", n + 1
    return name


def _rounded(value: Any, variable: Variable | None = None) -> Any:
    if isinstance(value, float) and variable is not None and not variable.is_continuous:
        return int(value)
    return round(value, 3) if isinstance(value, float) else value


def evaluate_batch_size() -> int:
    """``evaluate.py``'s data batch size, part of the key of the judge it caches."""
    from omegaconf import OmegaConf

    config = Path(__file__).resolve().parents[1] / "configs" / "evaluate.yaml"
    return int(OmegaConf.load(config).data.batch_size) if config.is_file() else 64


def _caption(parents: Mapping[str, Any] | None) -> str:
    if not parents:
        return ""
    return "\n".join(f"{k} {_scalar(torch.as_tensor(v)):.3g}" for k, v in parents.items())


def _do_label(do: Mapping[str, Any]) -> str:
    if not do:
        return "null intervention (do nothing)"
    return "do(" + ", ".join(f"{k}={v:g}" for k, v in do.items()) + ")"


# -- the command line -------------------------------------------------------------------------------
USAGE = """The counterfactual explorer: a local web page to ask "what if?" of models, beside the truth.

    python -m models explore ckpt_path=A.ckpt [ckpt_path=B.ckpt ...] [settings]
    python -m models explore pretrained=vae_cf-morphomnist pretrained=hvae_cf-morphomnist

Settings (KEY=VALUE; ckpt_path, pretrained and report may repeat):
    ckpt_path=PATH      a checkpoint of train.py, any family; several are shown side by side
                        (all of one dataset)
    pretrained=NAME     a pretrained model shipped with cfzoo (python -m models --list)
    report=PATH         an evaluate.py report.json of one of them: its figures join the model's
                        card (matched to the checkpoint by SHA-256)
    data_dir=data       where the dataset cache lives
    data.KEY=VALUE      datamodule options the models were trained with (data.seed=1)
    judge=cached        the held-out judge of evaluate.py reads the attributes off every image
                        when it is cached (evaluate.py trains it once); train: train it now if
                        missing (minutes); none: the model-free measurement only
    judge_ckpt=PATH     another predictor checkpoint as the judge
    host=127.0.0.1      the address to serve on (the page is for this machine by default)
    port=7860           the port (0: any free one)

The page runs offline: no CDN, no analytics, no telemetry. Needs the [explore] extra
(pip install -e ".[explore]", part of ".[dev]").
"""

#: Settings that may be given more than once.
REPEATABLE = ("ckpt_path", "pretrained", "report")
#: The other settings this command reads; a mistyped one is refused, not ignored.
SINGLE = ("data_dir", "judge", "judge_ckpt", "host", "port")


def parse_settings(argv: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` arguments -> settings (lists for :data:`REPEATABLE`, ``data`` a dict).

    Raises:
        ValueError: a flag, a bare word, an unknown or repeated setting, a bad port.
    """
    settings: dict[str, Any] = {key: [] for key in REPEATABLE}
    settings["data"] = {}
    for argument in argv:
        key, equals, value = argument.partition("=")
        if argument.startswith("-") or not equals:
            raise ValueError(
                f"'{argument}' is not a setting: write KEY=VALUE, e.g. ckpt_path=last.ckpt "
                "(python -m models explore --help)"
            )
        if key in REPEATABLE:
            settings[key].append(value)
        elif key.startswith("data."):
            from omegaconf import OmegaConf

            settings["data"].update(
                OmegaConf.to_container(OmegaConf.from_dotlist([argument]))["data"]
            )
        elif key in SINGLE:
            if key in settings:
                raise ValueError(f"{key} is given twice")
            settings[key] = value
        else:
            raise ValueError(
                f"unknown setting '{key}': the settings are "
                f"{', '.join((*REPEATABLE, *SINGLE, 'data.KEY'))} (python -m models explore --help)"
            )
    if not settings["ckpt_path"] and not settings["pretrained"]:
        raise ValueError(
            "a model is required: ckpt_path=PATH or pretrained=NAME (python -m models explore "
            "--help)"
        )
    port = settings.get("port", "7860")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"port must be a number 0-65535 (0: any free port), got '{port}'")
    settings["port"] = int(port)
    return settings


def free_port() -> int:
    """A TCP port no one listens on now."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(argv: Sequence[str]) -> int:
    """``python -m models explore ...``."""
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    settings = parse_settings(argv)
    from models.explore_page import _gradio, launch

    try:
        _gradio()  # a missing extra is said before the models load
    except ImportError as error:
        raise SystemExit(f"error: {error}") from error
    explorer = Explorer.from_checkpoints(
        [*settings["ckpt_path"], *settings["pretrained"]],
        data_dir=settings.get("data_dir", "data"),
        data_overrides=settings["data"],
        reports=settings["report"],
        judge=settings.get("judge", "cached"),
        judge_ckpt=settings.get("judge_ckpt"),
    )
    for problem in explorer.problems:
        print(f"warning: {problem}", file=sys.stderr)
    launch(explorer, host=settings.get("host", "127.0.0.1"), port=settings["port"] or free_port())
    return 0
