"""The anti-causal predictors that judge effectiveness: found, or trained once and cached."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from datamodules.cache import atomic_write, cache_key
from models.loading import load_model
from models.predictor import AttributePredictor

log = logging.getLogger(__name__)


def predictor_cache_path(datamodule, settings: Mapping[str, Any]) -> Path:
    """``data_dir/predictors/<dataset>-<key>.ckpt``, keyed by the data and the predictor's settings."""
    # The graph's names too: CelebA's two graphs share one data cache but need other predictors.
    spec = {
        "data": getattr(datamodule, "spec", {"dataset": datamodule.name}),
        "graph": list(datamodule.graph.names),
        **settings,
    }
    return Path(datamodule.data_dir) / "predictors" / f"{datamodule.name}-{cache_key(spec)}.ckpt"


def train_predictor(
    datamodule, epochs: int = 30, progress: bool = True, **settings: Any
) -> tuple[AttributePredictor, pl.Trainer]:
    """Train an :class:`AttributePredictor` on the real training images of ``datamodule``."""
    predictor = AttributePredictor(
        graph=datamodule.graph.to_dict(),
        image_shape=list(datamodule.image_shape),
        dataset=datamodule.name,
        **settings,
    )
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )
    trainer.fit(predictor, datamodule=datamodule)
    return predictor.eval(), trainer


def load_or_train_predictor(
    datamodule,
    ckpt_path: str | None = None,
    epochs: int = 30,
    progress: bool = True,
    **settings: Any,
) -> tuple[AttributePredictor, str]:
    """The predictor of ``ckpt_path``, else the cached one for this dataset, else a new one.

    Returns:
        The predictor (eval mode) and where it came from.
    """
    if ckpt_path:
        predictor = load_model(ckpt_path, kind=AttributePredictor)
        if predictor.dataset_name != datamodule.name:
            raise ValueError(
                f"predictor {ckpt_path} was trained on '{predictor.dataset_name}', not on "
                f"'{datamodule.name}'"
            )
        return predictor, str(ckpt_path)
    path = predictor_cache_path(datamodule, {"epochs": epochs, **settings})
    if path.is_file():
        try:
            return load_model(path, kind=AttributePredictor), str(path)
        except ValueError as error:  # a corrupt cache is rebuilt, never trusted
            log.warning("Retraining the cached predictor %s: %s", path, error)
    log.info("No predictor for %s yet: training one (cached at %s)", datamodule.name, path)
    torch.manual_seed(0)
    predictor, trainer = train_predictor(datamodule, epochs=epochs, progress=progress, **settings)
    # Weights and hyperparameters only (no optimiser state); a killed run leaves no half file.
    atomic_write(path, lambda target: trainer.save_checkpoint(target, weights_only=True))
    return predictor, str(path)
