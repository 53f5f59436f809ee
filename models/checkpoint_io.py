"""Checkpoint writes that never leave a half-written file in place of a good one.

Lightning's own writer serialises to memory and then writes over the target: a full disk or a
kill during that write truncates the previous ``last.ckpt``. :class:`AtomicCheckpointIO` writes
as the dataset cache does (:func:`datamodules.cache.atomic_write`): a temporary file beside the
target, renamed over it, which is atomic on POSIX file systems; a failed write removes the
temporary file and says which setting moves the checkpoints.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from datamodules.cache import atomic_write

__all__ = ["AtomicCheckpointIO"]


def _write_bytes(path: Path, data: bytes) -> None:
    path.write_bytes(data)


class AtomicCheckpointIO(TorchCheckpointIO):
    """A :class:`~lightning_fabric.plugins.io.torch_io.TorchCheckpointIO` that writes through
    :func:`datamodules.cache.atomic_write`: a temporary file beside the target, synced and renamed
    over it; temporaries left by killed writers are removed."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        try:
            atomic_write(path, lambda temporary: _write_bytes(Path(temporary), buffer.getvalue()))
        except OSError as error:
            raise OSError(
                error.errno,
                f"cannot write the checkpoint {path} ({error.strerror or error}); the previous "
                "one is intact. Free space there, or move the run with paths.log_dir (or "
                "hydra.run.dir) or callbacks.last_checkpoint.dirpath",
            ) from error
