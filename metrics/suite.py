"""The counterfactual soundness suite: every metric, per intervention, over several seeds.

Protocol (Monteiro et al., ICLR 2023, plus cfzoo's ground truth):

- interventions: ``do(v)`` for each attribute ``v`` in turn, its value drawn from ``v``'s marginal
  (another test sample's value, by a seeded permutation), and ``do(all)``: every attribute the
  model can intervene on set to another random test sample's values (a draw from the joint);
- descendants are recomputed by the model's own attribute SCM;
- per intervention: effectiveness (predictors, and the datamodule's measurement when it has one),
  reversibility, ground-truth error (where the datamodule renders the truth), FID and KID;
- composition, once per seed (it involves no intervention); for a model with a pixel residual
  also with the residual off, the decoder alone (with it on, the null intervention is exact by
  construction, so only the decoder-alone curve says how much the mechanism drifts);
- each seed redraws the intervention values (and the sampling of stochastic models); results are
  reported as mean and standard deviation over seeds.

The model is touched only through ``model.counterfactual``, which gets every batch's sample ids
(``sample_ids=batch["index"]``: the oracle renders from them, the learned models ignore them).
Batches stream through; only running sums are kept. Each seed runs under its own seeded
generators and gives the caller's random state back.

Under several processes (``shard``), each rank scores a contiguous block of the test split and
every accumulated number is a torchmetrics metric, synced over the ranks when it is computed, so
the report is the same whatever the number of processes. Every rank must call :func:`run_suite`
with the same settings: the syncs are collective.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset
from torchmetrics import CatMetric, MeanMetric
from tqdm.auto import tqdm

from metrics.effectiveness import attribute_errors, predictor_errors
from metrics.minimality import Minimality
from metrics.realism import Realism
from metrics.rng import kept_rng, seeded
from metrics.soundness import composition, l1, reversibility, rmse

ALL = "all"


@dataclass
class SuiteSettings:
    """What the suite runs.

    Attributes:
        interventions: attribute names and/or ``"all"``; empty: every attribute of the graph in
            turn, then ``"all"``.
        seeds: one run per seed; the report gives mean and std over them.
        composition_steps: ``M`` of the composition curve ``m = 1..M``.
        reversibility_cycles: round trips of the reversibility test.
        options: counterfactual options passed to the model (e.g. ``{"residual": False}``).
        sampling: also score the model's observational samples (:func:`sampling_metrics`), as
            many as there are test images, when the model can sample.
    """

    interventions: Sequence[str] = ()
    seeds: Sequence[int] = (0, 1, 2)
    composition_steps: int = 10
    reversibility_cycles: int = 3
    options: Mapping[str, Any] = field(default_factory=dict)
    sampling: bool = True


@dataclass(frozen=True)
class Shard:
    """This process's part of the test split: block ``rank`` of ``count`` contiguous blocks."""

    rank: int = 0
    count: int = 1

    def positions(self, n: int) -> Tensor:
        """The test-split positions this rank scores."""
        if n < self.count:
            raise ValueError(
                f"{n} test images can't be shared by {self.count} processes: use fewer "
                "trainer.devices or more test_images"
            )
        return torch.tensor_split(torch.arange(n), self.count)[self.rank]


class _Means:
    """Running per-sample means keyed by metric name, synced over ranks when computed.

    Every rank must add the same names in the same order (their syncs are collective).
    """

    def __init__(self):
        self.metrics: dict[str, MeanMetric] = {}

    def add(self, name: str, values: Tensor) -> None:
        values = values.detach().double().flatten()
        if name not in self.metrics:
            # .to() resets a metric's dtype to float32, so the dtype is set after it
            metric = MeanMetric(nan_strategy="disable").to(values.device)
            self.metrics[name] = metric.set_dtype(torch.float64)
        self.metrics[name].update(values)

    def means(self) -> dict[str, float]:
        return {k: float(m.compute()) for k, m in self.metrics.items()}


class _Lists:
    """Per-sample values gathered over ranks in test-split order, keyed by name."""

    def __init__(self):
        self.metrics: dict[str, CatMetric] = {}

    def add(self, name: str, positions: Tensor, values: Tensor) -> None:
        for key, part in ((f"{name}#position", positions), (name, values)):
            if key not in self.metrics:
                metric = CatMetric(nan_strategy="disable").to(values.device)
                self.metrics[key] = metric.set_dtype(torch.float64)
            self.metrics[key].update(part.detach().double().to(values.device))

    def lists(self) -> dict[str, list[float]]:
        out = {}
        for key, metric in self.metrics.items():
            if not key.endswith("#position"):
                order = self.metrics[f"{key}#position"].compute().argsort()
                out[key] = metric.compute()[order].tolist()
        return out


def intervention_variables(name: str, model, datamodule) -> list[str] | None:
    """The variables ``do(name)`` sets for this model, or ``None`` when the model can't."""
    allowed = model.intervenable or model.graph.names
    if name == ALL:
        return [v for v in model.graph.names if v in allowed]
    if name not in model.graph:
        raise ValueError(
            f"unknown intervention '{name}'; choose from {', '.join(model.graph.names)} or all"
        )
    return [name] if name in allowed else None


def draw_interventions(
    names: Sequence[str], test_attributes: Mapping[str, Tensor], seed: int
) -> dict[str, Tensor]:
    """For each intervention, which other test sample lends its values to each test sample."""
    generator = torch.Generator().manual_seed(seed)
    n = len(next(iter(test_attributes.values())))
    return {name: torch.randperm(n, generator=generator) for name in names}


def _batches(datamodule, shard: Shard):
    """``(test-split positions, batch)`` of this rank's block, in order."""
    positions = shard.positions(len(datamodule.test_set))
    loader = datamodule.test_dataloader()
    if shard.count > 1:
        loader = DataLoader(
            Subset(datamodule.test_set, positions.tolist()),
            batch_size=loader.batch_size,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
        )
    start = 0
    for batch in loader:
        size = len(batch["x"])
        yield positions[start : start + size], batch
        start += size


@torch.inference_mode()
def floor(predictor, datamodule, shard: Shard = Shard()) -> dict[str, dict[str, float]]:
    """The judges' own error on real test images: the best any model can score."""
    sums, morph = _Means(), _Means()
    for _, batch in _batches(datamodule, shard):
        for name, error in predictor_errors(predictor, batch["x"], batch["pa"]).items():
            sums.add(name, error)
        measured = datamodule.measure_attributes(batch["x"])
        for name, error in attribute_errors(measured, batch["pa"], predictor.graph).items():
            morph.add(name, error)
    return {"predictor": sums.means(), "measured": morph.means()}


def decoder_options(model, settings: SuiteSettings) -> dict[str, Any] | None:
    """The options of the decoder alone (the pixel residual off), for a model that has one."""
    if "residual" not in model.options:
        return None
    return {**settings.options, "residual": False}


def _composition_curve(model, datamodule, settings, options, shard, bar=None) -> list[float]:
    steps = _Means()
    for _, batch in _batches(datamodule, shard):
        curve = composition(
            model,
            batch["x"],
            batch["pa"],
            settings.composition_steps,
            sample_ids=batch["index"],
            **options,
        )
        for m, values in enumerate(curve, start=1):
            steps.add(f"m{m}", values)
        if bar is not None:
            bar.update(len(batch["x"]))
    means = steps.means()
    return [means[f"m{m}"] for m in range(1, settings.composition_steps + 1)]


#: Samples are drawn in blocks of this many, each under its own seed, so that the same samples
#: are drawn whatever the number of processes (each process draws whole blocks).
SAMPLE_BLOCK = 16


def marginal_distance(drawn: Tensor, data: Tensor, continuous: bool) -> float:
    """How far one attribute's distribution in ``drawn`` is from ``data``'s: the 1-Wasserstein
    distance (natural units) of continuous values, the total variation distance of classes."""
    drawn, data = drawn.double().flatten(), data.double().flatten()
    if continuous:
        levels = torch.linspace(0, 1, 201, dtype=torch.float64)
        return float((torch.quantile(drawn, levels) - torch.quantile(data, levels)).abs().mean())
    classes = int(max(drawn.max(), data.max())) + 1
    frequency = [torch.bincount(v.long(), minlength=classes) / len(v) for v in (drawn, data)]
    return float(0.5 * (frequency[0] - frequency[1]).abs().sum())


def sampling_metrics(
    model, datamodule, predictor, realism: Realism, settings: SuiteSettings, seed: int, shard, bar
) -> dict[str, float]:
    """The first rung: as many observational samples as test images, scored against the data.

    - ``fid``, ``kid``: realism of the samples against the real test images;
    - ``effectiveness/<attr>``, ``measured/<attr>``: the judges' error on each sample against
      the attributes it was drawn under (the mechanism's fidelity to them);
    - ``marginal/<attr>``: how far the judge's reading of the samples is from the test
      attributes' distribution (1-Wasserstein for continuous attributes, total variation for
      categorical ones): the SCM and the mechanism together;
    - ``scm_marginal/<attr>``: the same for the attributes the SCM drew: the SCM alone.
    """
    n = len(datamodule.test_set)
    count = math.ceil(n / SAMPLE_BLOCK)
    if count < shard.count:
        raise ValueError(
            f"{n} samples make {count} blocks of {SAMPLE_BLOCK}, fewer than the {shard.count} "
            "processes: score more test_images, use fewer processes, or pass sampling=false"
        )
    blocks = torch.tensor_split(torch.arange(count), shard.count)[shard.rank]
    means, lists = _Means(), _Lists()
    realism.reset_fake()
    for block in blocks.tolist():
        start = block * SAMPLE_BLOCK
        size = min(SAMPLE_BLOCK, n - start)
        with seeded(seed * 1_000_003 + block):
            drawn = model.sample(size, **settings.options)
        positions = torch.arange(start, start + size)
        judged = predictor(drawn.image.to(predictor.device))
        for attr, error in attribute_errors(judged, drawn.parents, predictor.graph).items():
            means.add(f"effectiveness/{attr}", error)
        measured = datamodule.measure_attributes(drawn.image)
        for attr, error in attribute_errors(measured, drawn.parents, model.graph).items():
            means.add(f"measured/{attr}", error)
        for attr in model.graph.names:
            lists.add(f"judged/{attr}", positions, judged[attr].cpu())
            lists.add(f"drawn/{attr}", positions, drawn.parents[attr].cpu())
        realism.update(drawn.image, real=False)
        if bar is not None:
            bar.update(size)
    out = means.means()
    out.update(realism.compute())
    values = lists.lists()
    data = datamodule.attributes(datamodule.test_set.indices)
    for variable in model.graph.variables:
        name, continuous = variable.name, variable.is_continuous
        for key, prefix in (("judged", "marginal"), ("drawn", "scm_marginal")):
            drawn = torch.tensor(values[f"{key}/{name}"])
            out[f"{prefix}/{name}"] = marginal_distance(drawn, data[name], continuous)
    return out


def run_seed(
    model,
    datamodule,
    predictor,
    realism: Realism,
    settings: SuiteSettings,
    seed: int,
    bar=None,
    minimality: Minimality | None = None,
    shard: Shard = Shard(),
) -> dict[str, Any]:
    """All metrics for one seed, under generators seeded with ``seed`` (the caller's state is
    restored afterwards)."""
    with seeded(seed), torch.inference_mode():
        return _run_seed(
            model, datamodule, predictor, realism, settings, seed, bar, minimality, shard
        )


def _run_seed(
    model, datamodule, predictor, realism, settings, seed, bar, minimality, shard
) -> dict[str, Any]:
    test_attributes = datamodule.attributes(datamodule.test_set.indices)
    draws = draw_interventions(settings.interventions, test_attributes, seed)
    result: dict[str, Any] = {"interventions": {}, "effect_size": {}}

    options = dict(settings.options)
    result["composition"] = _composition_curve(model, datamodule, settings, options, shard, bar)
    decoder = decoder_options(model, settings)
    if decoder is not None:
        result["composition_decoder"] = (
            result["composition"]  # the residual is off already
            if decoder == options
            else _composition_curve(model, datamodule, settings, decoder, shard, bar)
        )

    if settings.sampling and model.mechanism.can_sample:
        result["sampling"] = sampling_metrics(
            model, datamodule, predictor, realism, settings, seed, shard, bar
        )

    for name in settings.interventions:
        variables = intervention_variables(name, model, datamodule)
        if variables is None:
            result["interventions"][name] = None  # the model can't intervene on it (the oracle)
            if bar is not None:
                bar.update(len(shard.positions(len(datamodule.test_set))))
            continue
        has_truth = datamodule.has_ground_truth and set(variables) <= set(
            datamodule.ground_truth_variables
        )
        sums, effect = _Means(), _Lists()
        realism.reset_fake()
        for positions, batch in _batches(datamodule, shard):
            source = draws[name][positions]
            do = {v: test_attributes[v][source] for v in variables}
            ids = batch["index"]
            cf = model.counterfactual(batch["x"], batch["pa"], do, sample_ids=ids, **options)
            image, parents = cf.image, cf.parents
            for attr, error in predictor_errors(predictor, image, parents).items():
                sums.add(f"effectiveness/{attr}", error)
            measured = datamodule.measure_attributes(image)
            for attr, error in attribute_errors(measured, parents, model.graph).items():
                sums.add(f"measured/{attr}", error)
            if has_truth:
                truth, _ = datamodule.true_counterfactual(batch["index"], do)
                truth = truth.to(image.device)
                sums.add("truth/l1", l1(image, truth))
                sums.add("truth/rmse", rmse(image, truth))
            cycles = reversibility(
                model,
                batch["x"],
                batch["pa"],
                do,
                settings.reversibility_cycles,
                sample_ids=ids,
                **options,
            )
            for c, values in enumerate(cycles, start=1):
                sums.add(f"reversibility/cycle{c}", values)
            if minimality is not None:
                scores = minimality.score(batch["pa"], image, parents, variables, batch["index"])
                scored = ~scores["cld"].isnan()
                sums.add("minimality/scored", scored.float())
                for key, values in scores.items():
                    sums.add(f"minimality/{key}", values[scored])
            realism.update(image, real=False)
            if len(variables) == 1 and model.graph[variables[0]].is_continuous:
                v = variables[0]
                effect.add("size", positions, (do[v].cpu() - batch["pa"][v].cpu()).abs())
                effect.add("error", positions, predictor_errors(predictor, image, parents)[v].cpu())
            if bar is not None:
                bar.update(len(batch["x"]))
        means = sums.means()
        means.update(realism.compute())
        result["interventions"][name] = {"variables": variables, **means}
        lists = effect.lists()
        if lists:
            result["effect_size"][name] = lists
    return result


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    std = float(tensor.std()) if len(values) > 1 else 0.0
    return {"mean": float(tensor.mean()), "std": std, "per_seed": list(values)}


def _curve(curves: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Mean and std over seeds of a composition curve, and its first and last steps."""
    curve = torch.tensor(curves, dtype=torch.float64)
    out: dict[str, Any] = {
        "curve_mean": curve.mean(0).tolist(),
        "curve_std": (curve.std(0) if len(curves) > 1 else torch.zeros_like(curve[0])).tolist(),
    }
    out["m1"] = _mean_std(curve[:, 0].tolist())
    out[f"m{curve.shape[1]}"] = _mean_std(curve[:, -1].tolist())
    return out


def aggregate(per_seed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and std over seeds of every number in :func:`run_seed`'s results."""
    out: dict[str, Any] = {
        "composition": _curve([r["composition"] for r in per_seed]),
        "interventions": {},
    }
    if "composition_decoder" in per_seed[0]:
        out["composition_decoder"] = _curve([r["composition_decoder"] for r in per_seed])
    for name, first in per_seed[0]["interventions"].items():
        if first is None:
            out["interventions"][name] = None
            continue
        metrics = {
            k: _mean_std([r["interventions"][name][k] for r in per_seed])
            for k in first
            if k != "variables"
        }
        out["interventions"][name] = {"variables": first["variables"], **metrics}
    if "sampling" in per_seed[0]:
        out["sampling"] = {
            k: _mean_std([r["sampling"][k] for r in per_seed]) for k in per_seed[0]["sampling"]
        }
    out["effect_size"] = per_seed[0]["effect_size"]
    return out


def run_suite(
    model,
    datamodule,
    predictor,
    realism: Realism,
    settings: SuiteSettings,
    progress: bool = True,
    minimality: Minimality | None = None,
    shard: Shard = Shard(),
) -> dict[str, Any]:
    """Run every metric over the test split for each seed; return the aggregated report.

    Args:
        minimality: scores CLD per intervention when given.
        shard: this process's part of the test split (every rank calls with its own).

    Torch's global random state is as the caller left it afterwards (even a DataLoader's
    iterator draws a seed from it).
    """
    with kept_rng():
        return _run_suite(
            model, datamodule, predictor, realism, settings, progress, minimality, shard
        )


def _run_suite(
    model, datamodule, predictor, realism, settings, progress, minimality, shard
) -> dict[str, Any]:
    start = time.perf_counter()
    if not settings.interventions:
        settings = replace(settings, interventions=[*model.graph.names, ALL])
    model.eval()
    for _, batch in _batches(datamodule, shard):  # the real images, once for all seeds
        realism.update(batch["x"], real=True)
        if minimality is not None:
            minimality.add_reference(batch["x"], batch["pa"], batch["index"])
    n = len(shard.positions(len(datamodule.test_set)))
    compositions = 1 + (decoder_options(model, settings) not in (None, dict(settings.options)))
    passes = compositions + len(settings.interventions)
    total = n * len(settings.seeds) * passes
    if settings.sampling and model.mechanism.can_sample:  # the samples' blocks, not this shard's
        total += len(datamodule.test_set) // shard.count * len(settings.seeds)
    with tqdm(total=total, desc="evaluating", unit="img", disable=not progress) as bar:
        per_seed = [
            run_seed(model, datamodule, predictor, realism, settings, seed, bar, minimality, shard)
            for seed in settings.seeds
        ]
    report = aggregate(per_seed)
    report["floor"] = floor(predictor, datamodule, shard)
    report["num_test"] = len(datamodule.test_set)
    report["processes"] = shard.count
    report["seeds"] = list(settings.seeds)
    report["options"] = dict(settings.options)
    report["realism_extractor"] = realism.extractor
    report["seconds"] = time.perf_counter() - start
    return report
