"""Models the metrics train once per dataset and cache under ``data_dir``: found, else trained.

The judges (``metrics/judges.py``) and the minimality metric's VAE (``metrics/minimality.py``)
share this: a file name keyed by everything that shapes the model, a corrupt file retrained
rather than trusted, and a write that a killed run never leaves half done.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from datamodules.cache import atomic_write, cache_key
from metrics.rng import kept_rng
from models.loading import load_model

log = logging.getLogger(__name__)


def cache_path(datamodule, folder: str, settings: Mapping[str, Any]) -> Path:
    """``data_dir/<folder>/<dataset>-<key>.ckpt``.

    The key holds the data's spec, the graph's names (CelebA's two graphs share one data cache),
    the loaders' batch size and ``settings``.
    """
    spec = {
        "data": getattr(datamodule, "spec", {"dataset": datamodule.name}),
        "graph": list(datamodule.graph.names),
        "batch_size": int(datamodule.batch_size),
        **settings,
    }
    return Path(datamodule.data_dir) / folder / f"{datamodule.name}-{cache_key(spec)}.ckpt"


def load_or_train(
    path: Path,
    kind: type[pl.LightningModule],
    train: Callable[[], tuple[pl.LightningModule, pl.Trainer]],
    what: str,
) -> pl.LightningModule:
    """The ``kind`` cached at ``path``, else ``train()``'s model, then cached at ``path``.

    Loading does not change torch's global random state; ``train`` is responsible for its own.
    """
    if path.is_file():
        try:
            with kept_rng():  # building the module draws initial weights
                return load_model(path, kind=kind)
        except ValueError as error:  # a corrupt cache is rebuilt, never trusted
            log.warning("Retraining the cached %s %s: %s", what, path, error)
    log.info("No %s yet: training one (cached at %s)", what, path)
    model, trainer = train()
    # Weights and hyperparameters only (no optimiser state); a killed run leaves no half file.
    atomic_write(path, lambda target: trainer.save_checkpoint(target, weights_only=True))
    return model.eval()


def fit_quietly(model: pl.LightningModule, epochs: int, progress: bool, **data: Any) -> pl.Trainer:
    """Fit ``model`` on one device, with no logger and no checkpoints of its own; ``data`` is what
    ``Trainer.fit`` takes: ``datamodule=...``, or ``train_dataloaders=...`` and ``val_dataloaders=...``."""
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )
    trainer.fit(model, **data)
    return trainer
