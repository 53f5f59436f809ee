"""Hydra callbacks of train.py and evaluate.py (``hydra.callbacks`` in their configs)."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from datamodules.cache import CacheError, ensure_writable


class CheckRunDirectory(Callback):
    """Check that the run directory can be created and written, before Hydra creates it.

    Hydra makes the run directory before ``main`` runs, so without this check an unwritable
    ``paths.log_dir`` or ``hydra.run.dir`` fails inside Hydra with a bare ``OSError``.

    Hydra turns a callback's exception into a warning and goes on, so the check exits the
    program instead, with the message and exit status 1.
    """

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(config.hydra.run.dir, "the run's outputs", "paths.log_dir=... or hydra.run.dir=...")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _check(config.hydra.sweep.dir, "the sweep's outputs", "hydra.sweep.dir=...")


def _check(directory: str, what: str, setting: str) -> None:
    try:
        ensure_writable(directory, what, setting)
    except CacheError as error:
        raise SystemExit(f"Error: {error}") from error
