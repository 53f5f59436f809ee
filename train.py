"""Train a counterfactual image model (Hydra entry point).

    python train.py                                   # the conditional VAE on embedded Morpho-MNIST
    python train.py --help                            # config groups and examples
    python train.py ckpt_path=.../checkpoints/last.ckpt   # resume a killed run

Writes into the run directory ``checkpoints/last.ckpt``, the best checkpoint (lowest val/loss) and
``counterfactuals.png`` (factual | one intervention per attribute), and prints their paths.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

from datamodules.base import CounterfactualDataModule
from datamodules.cache import ensure_writable
from metrics.figures import counterfactual_grid
from models.base import (
    DATA_SPEC_KEY,
    CounterfactualModel,
    check_resumable,
    check_same_data,
    data_spec,
)
from models.config_types import check_override_types
from models.loading import read_checkpoint

log = logging.getLogger("cfzoo.train")


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train the configured model; return the final metrics and the checkpoint paths."""
    output_dir = Path(cfg.paths.output_dir)
    ensure_writable(output_dir, "the run directory", "paths.log_dir (or hydra.run.dir)")
    if "baselines" in str(cfg.model.get("_target_", "")):
        raise ValueError(
            f"model {cfg.model._target_} is a reference model, not trainable: "
            "score it with `python evaluate.py model=oracle` (or identity)"
        )
    # a clear error for a missing or corrupt file, up front
    resumed = read_checkpoint(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    pl.seed_everything(cfg.seed, workers=True)

    datamodule: CounterfactualDataModule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    model: CounterfactualModel = instantiate(
        cfg.model,
        graph=datamodule.graph.to_dict(),
        image_shape=list(datamodule.image_shape),
        dataset=datamodule.name,
        _convert_="all",
    )
    here = data_spec(datamodule)
    if resumed is not None:
        check_resumable(resumed, model, cfg.ckpt_path)
        check_same_data(cfg.ckpt_path, resumed.get(DATA_SPEC_KEY), here, "resume")
    if getattr(model, "finetuning", None) is not None:
        if model.finetuning.init_ckpt:  # before a judge is trained for data the base never saw
            base = read_checkpoint(model.finetuning.init_ckpt)
            check_same_data(model.finetuning.init_ckpt, base.get(DATA_SPEC_KEY), here, "fine-tune")
        # The judge of fine-tuning is the dataset's "finetune" judge; evaluate.py scores with
        # another one, trained apart (a judge that trains a model never scores it).
        from metrics.judges import load_or_train_predictor

        judge, source = load_or_train_predictor(
            datamodule,
            role="finetune",
            ckpt_path=model.finetuning.judge_ckpt,
            **(model.finetuning.judge or {}),
        )
        model.attach_judge(judge, source)
        datamodule.setup("fit")
    callbacks = [instantiate(c, _convert_="all") for c in (cfg.get("callbacks") or {}).values()]
    loggers = [instantiate(c, _convert_="all") for c in (cfg.get("logger") or {}).values()]
    trainer: pl.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, _convert_="all"
    )
    log.info(
        "Training %s on %s (%d images)",
        type(model).__name__,
        datamodule.name,
        len(datamodule.train_set),
    )
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    # the unmonitored checkpoint keeps the latest epoch, the monitored one the best
    checkpoints = {
        "last_ckpt" if c.monitor is None else "best_ckpt": c.best_model_path
        for c in trainer.callbacks
        if isinstance(c, ModelCheckpoint)
    }
    if trainer.is_global_zero:
        for key, path in checkpoints.items():
            metrics[key] = path
            log.info("%s checkpoint: %s", "Last" if key == "last_ckpt" else "Best", path)
    if trainer.is_global_zero and isinstance(model, CounterfactualModel):
        datamodule.setup("test")
        grid = counterfactual_grid(
            model, datamodule, output_dir / "counterfactuals.png", cfg.grid.num_samples
        )
        metrics["grid"] = str(grid)
        log.info("Counterfactual grid: %s", grid)
    metrics["global_step"] = trainer.global_step
    return metrics


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    check_override_types(cfg, "train")  # a mistyped value fails here, naming its key
    metrics = train(cfg)
    for key in ("last_ckpt", "best_ckpt", "grid"):
        if key in metrics:
            print(f"{key}: {metrics[key]}")


if __name__ == "__main__":
    main()
