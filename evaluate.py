"""Score a counterfactual model with the soundness suite (Hydra entry point).

    python evaluate.py ckpt_path=outputs/train/<date>/checkpoints/last.ckpt
    python evaluate.py pretrained=hvae_cf-morphomnist   # a shipped model (python -m models --list)
    python evaluate.py model=oracle            # the dataset's true SCM: the floor of every metric
    python evaluate.py --help

Writes report.json (every number, the config and the checkpoint's hash), report.md (tables per
intervention), grid.png, composition.png and effectiveness.png into the run directory.

Effectiveness is scored by the held-out judge (``predictor.role=heldout``, metrics/judges.py),
never by the judge a model was fine-tuned against; morphometry is the model-free judge.

Several processes (``trainer=ddp_cpu``, ``trainer=ddp``, or torchrun/SLURM) each score a block of
the test split through Lightning Fabric, and every metric is synced over them, so the report is
the one a single process writes. The preparation (data caches, the judge, the minimality VAE)
runs before the processes start, so only the first one trains what is not cached yet.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from lightning_fabric import Fabric
from omegaconf import DictConfig, OmegaConf

from datamodules.cache import ensure_writable
from metrics.figures import counterfactual_grid
from metrics.judges import judge_settings, judge_source, load_or_train_predictor, same_judge
from metrics.minimality import Minimality, load_or_train_vae, vae_settings
from metrics.realism import Realism
from metrics.report import write_report
from metrics.rng import seeded
from metrics.suite import Shard, SuiteSettings, intervention_variables, run_suite
from models.base import CounterfactualModel, check_same_data, data_spec
from models.config_types import check_override_types
from models.loading import load_model, source_sha256
from models.pretrained import load_pretrained

log = logging.getLogger("cfzoo.evaluate")


def model_source(cfg: DictConfig) -> str | None:
    """What the evaluated model loads from: ``ckpt_path`` or ``pretrained`` (not both)."""
    if cfg.get("ckpt_path") and cfg.get("pretrained"):
        raise ValueError("pass either ckpt_path=PATH or pretrained=NAME, not both")
    return cfg.get("ckpt_path") or cfg.get("pretrained")


def build_model(cfg: DictConfig, datamodule) -> CounterfactualModel:
    """The checkpoint's or pretrained model, or a reference model (oracle, identity) built from
    the data."""
    source = model_source(cfg)
    if cfg.get("model"):
        if source:
            raise ValueError(
                "pass either ckpt_path=... (or pretrained=...) or model=oracle|identity, not both"
            )
        return instantiate(cfg.model, datamodule=datamodule)
    if not source:
        raise ValueError(
            "nothing to evaluate: pass ckpt_path=PATH (a checkpoint from train.py), "
            "pretrained=NAME (python -m models --list) or model=oracle / model=identity"
        )
    model = load_pretrained(source) if cfg.get("pretrained") else load_model(source)
    if model.dataset_name != datamodule.name:
        raise ValueError(
            f"{source} was trained on '{model.dataset_name}' but this evaluation uses "
            f"'{datamodule.name}': pass data={model.dataset_name}"
        )
    if model.graph.names != datamodule.graph.names:
        raise ValueError(
            f"{source} models attributes {model.graph.names}, the data have "
            f"{datamodule.graph.names}"
        )
    check_same_data(source, model.trained_on, data_spec(datamodule), "evaluate")
    return model


def check_judge(model, source: str, role: str) -> None:
    """Refuse to score a model with the judge it was fine-tuned against.

    Raises:
        ValueError: ``source`` is the judge of ``model.trained_against``.
    """
    against = getattr(model, "trained_against", None)
    if against and role == "finetune":
        # the same recipe trained at another batch size is a sibling of the pupil's own judge
        raise ValueError(
            f"{type(model).__name__} was fine-tuned against a 'finetune' judge ({against}): "
            "score it with predictor.role=heldout, or with another predictor.ckpt_path"
        )
    if same_judge(source, against):
        raise ValueError(
            f"the {role} judge {source} is the one {type(model).__name__} was fine-tuned against: "
            "a judge that trains a model never scores it. Use predictor.role=heldout with its "
            "default settings, or another predictor.ckpt_path"
        )


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run the suite; return the report (also written to the run directory by the first process).

    With several processes (``cfg.trainer``), every process returns the same report; only the
    first one writes it and has ``report["files"]``.
    """
    output_dir = Path(cfg.paths.output_dir)
    ensure_writable(output_dir, "the evaluation report", "paths.log_dir (or hydra.run.dir)")
    fabric = build_fabric(cfg.trainer)
    # Before the processes start: a Trainer that fits a judge inside a distributed process waits
    # for the other ranks forever. Under `trainer=ddp` the other processes start at launch and
    # find what this one cached; under torchrun or srun each process prepares (see the README).
    with seeded(cfg.seed):  # the reference models' construction, reproducibly
        parts = _prepare(cfg)
    return fabric.launch(_score, cfg, output_dir, parts)


def build_fabric(trainer: DictConfig) -> Fabric:
    """The processes and device of the evaluation, from the ``trainer`` group's settings.

    Only ``accelerator``, ``devices``, ``strategy`` and ``num_nodes`` apply: scoring runs at
    full precision and never trains.
    """
    strategy = trainer.get("strategy") or "auto"
    if isinstance(strategy, DictConfig):
        strategy = instantiate(strategy)
    return Fabric(
        accelerator=trainer.get("accelerator") or "auto",
        devices=trainer.get("devices") or 1,
        strategy=strategy,
        num_nodes=trainer.get("num_nodes") or 1,
        precision="32-true",
    )


def _prepare(cfg: DictConfig) -> dict[str, Any]:
    """Data, model, judge and minimality VAE, each loaded, or trained and cached."""
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup()
    test_images = cfg.get("test_images")
    if test_images is not None and (not isinstance(test_images, int) or test_images < 1):
        raise ValueError(
            f"test_images must be a positive number of test images (or null for all), "
            f"got {test_images!r}"
        )
    model = build_model(cfg, datamodule)
    settings = SuiteSettings(
        interventions=list(cfg.interventions),
        seeds=list(cfg.seeds),
        composition_steps=cfg.composition_steps,
        reversibility_cycles=cfg.reversibility_cycles,
        # the options set: null leaves an option at the model's default
        options={k: v for k, v in OmegaConf.to_container(cfg.options).items() if v is not None},
        sampling=cfg.sampling,
    )
    for name in settings.interventions:  # unknown names fail now, not after predictor training
        intervention_variables(name, model, datamodule)
    model.resolve_options(settings.options)
    minimality = OmegaConf.to_container(cfg.minimality)
    vae_overrides = minimality.pop("vae") or {}
    if minimality["enabled"]:
        vae_settings(**vae_overrides)  # unknown settings fail now, before any training
        Minimality.check(minimality["bins"], minimality["weights"])

    judge = OmegaConf.to_container(cfg.predictor)
    role, judge_ckpt = judge.pop("role"), judge.pop("ckpt_path")
    # a judge that trains a model never scores it: refused now, before training a judge
    check_judge(model, judge_source(datamodule, role, judge_ckpt, **judge), role)
    predictor, predictor_source = load_or_train_predictor(
        datamodule, role=role, ckpt_path=judge_ckpt, progress=cfg.progress, **judge
    )
    judges = {
        "effectiveness": {
            "role": role,
            "source": predictor_source,
            "settings": (
                {
                    k: predictor.hparams.get(k)
                    for k in ("arch", "widths", "features", "augment", "lr")
                }
                if judge_ckpt
                else judge_settings(role, **judge)
            ),
        },
        "measured": "model-free measurement (datamodule.measure_attributes)",
        "finetuned_against": getattr(model, "trained_against", None),
    }
    vae = None
    if minimality["enabled"]:
        vae, vae_source = load_or_train_vae(datamodule, progress=cfg.progress, **vae_overrides)
        judges["minimality"] = {
            "source": vae_source,
            "settings": vae_settings(**vae_overrides),
            "bins": minimality["bins"],
            "weights": list(minimality["weights"]),
        }
    if test_images is not None:
        # N test images, evenly spaced over the split: slow models (DDIM sampling) get the full
        # suite at a lower cost. Only now: training the predictor re-runs the datamodule's setup.
        datamodule.test_set = datamodule.test_set.evenly_spaced(test_images)
    return {
        "datamodule": datamodule,
        "model": model,
        "settings": settings,
        "predictor": predictor,
        "predictor_source": predictor_source,
        "judges": judges,
        "vae": vae,
        "minimality": minimality,
    }


def _score(fabric: Fabric, cfg: DictConfig, output_dir: Path, parts: dict[str, Any]):
    """One process's part of the suite; the first process writes the report and figures."""
    datamodule, judges = parts["datamodule"], parts["judges"]
    model = parts["model"].to(fabric.device)
    predictor = parts["predictor"].to(fabric.device)
    realism = Realism(
        predictor,
        datamodule.image_shape,
        kid_subset_size=min(cfg.realism.kid_subset_size, len(datamodule.test_set)),
        inception_weights=cfg.realism.inception_weights,
    )
    minimality = None
    if parts["vae"] is not None:
        settings = parts["minimality"]
        minimality = Minimality(
            parts["vae"].to(fabric.device), datamodule.graph, settings["bins"], settings["weights"]
        )
    report = run_suite(
        model,
        datamodule,
        predictor,
        realism,
        parts["settings"],
        progress=cfg.progress and fabric.is_global_zero,
        minimality=minimality,
        shard=Shard(fabric.global_rank, fabric.world_size),
    )
    source = model_source(cfg)
    report.update(
        model=type(model).__name__,
        dataset=datamodule.name,
        checkpoint=source,
        checkpoint_sha256=source_sha256(source) if source else None,
        predictor=parts["predictor_source"],
        judges=judges,
        attribute_kinds={v.name: v.kind for v in datamodule.graph.variables},
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    if fabric.is_global_zero:
        paths = write_report(report, output_dir)
        paths["grid"] = counterfactual_grid(
            model, datamodule, output_dir / "grid.png", cfg.grid_samples
        )
        report["files"] = {k: str(v) for k, v in paths.items()}
        log.info("Report: %s (%.0f s)", paths["md"], report["seconds"])
    return report


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    check_override_types(cfg, "evaluate")  # a mistyped value fails here, naming its key
    report = evaluate(cfg)
    if "files" in report:  # the first process (the one that wrote them)
        print(Path(report["files"]["md"]).read_text())
        for name, path in report["files"].items():
            print(f"{name}: {path}")


if __name__ == "__main__":
    main()
