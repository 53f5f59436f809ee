"""Small helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path

from pytorch_lightning import LightningModule, Trainer


def quiet_trainer(**kwargs) -> Trainer:
    """A Trainer that logs, checkpoints and prints nothing (tests assert on what they need)."""
    defaults = dict(
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    return Trainer(**{**defaults, **kwargs})


def save_checkpoint(module: LightningModule, path: Path) -> Path:
    """Write ``module`` to a Lightning checkpoint without training it."""
    trainer = quiet_trainer()
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path
