"""Train a counterfactual image model (Hydra entry point).

    python train.py                                   # the conditional VAE on embedded Morpho-MNIST
    python train.py --help                            # config groups and examples
    python train.py ckpt_path=.../checkpoints/last.ckpt   # resume a killed run

Writes into the run directory ``checkpoints/last.ckpt``, the best checkpoint (lowest val/loss) and
``counterfactuals.png`` (factual | one intervention per attribute), and prints their paths.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from pytorch_lightning.callbacks import ModelCheckpoint

from datamodules.base import CounterfactualDataModule
from metrics.figures import save_grid, visible_interventions
from models.base import CounterfactualModel
from models.loading import read_checkpoint

log = logging.getLogger("cfzoo.train")


def check_writable(directory: Path) -> None:
    """Fail before training, not after, when the run directory can't take checkpoints."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise OSError(
            f"cannot write to the run directory {directory}: {error}. Free some space or point "
            "paths.log_dir (or hydra.run.dir) at a writable directory."
        ) from error


def counterfactual_grid(
    model: CounterfactualModel, datamodule: CounterfactualDataModule, path: Path, n: int = 8
) -> Path:
    """Save factual test images and one counterfactual row per attribute."""
    test = datamodule.test_set
    # Spread the samples over the test split (it may be sorted by class).
    picks = torch.linspace(0, len(test) - 1, n).long().tolist()
    batch = torch.utils.data.default_collate(test.__getitems__(picks))
    model.eval()
    rows = [("factual", batch["x"], batch["pa"])]
    for name, do in visible_interventions(batch["pa"], model.graph).items():
        cf = model.counterfactual(batch["x"], batch["pa"], do)
        rows.append((f"do({name})", cf.image, cf.parents))
    title = f"{type(model).__name__} on {datamodule.name}: factual and counterfactuals"
    return save_grid(rows, path, title)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train the configured model; return the final metrics and the checkpoint paths."""
    output_dir = Path(cfg.paths.output_dir)
    check_writable(output_dir)
    if cfg.get("ckpt_path"):
        read_checkpoint(cfg.ckpt_path)  # a clear error for a missing or corrupt file, up front
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
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    checkpoint = next((c for c in trainer.callbacks if isinstance(c, ModelCheckpoint)), None)
    if checkpoint is not None and trainer.is_global_zero:
        metrics["last_ckpt"] = checkpoint.last_model_path
        metrics["best_ckpt"] = checkpoint.best_model_path
        log.info("Last checkpoint: %s", checkpoint.last_model_path)
        log.info("Best checkpoint: %s", checkpoint.best_model_path)
    if trainer.is_global_zero:
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
    metrics = train(cfg)
    for key in ("last_ckpt", "best_ckpt", "grid"):
        if key in metrics:
            print(f"{key}: {metrics[key]}")


if __name__ == "__main__":
    main()
