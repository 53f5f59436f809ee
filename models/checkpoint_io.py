"""Checkpoint writes that never leave a half-written file in place of a good one.

Lightning's own writer serialises to memory and then writes over the target: a full disk or a
kill during that write truncates the previous ``last.ckpt``. :class:`AtomicCheckpointIO` writes a
temporary file beside the target, flushes it to disk and renames it over the target, which is
atomic on POSIX file systems; a failed write removes the temporary file and says which setting
moves the checkpoints.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO"]

#: Temporary files are ``<name>.tmp-<pid>``: a run killed mid-write leaves one, which the next
#: write to the same folder removes.
_TMP = ".tmp-"


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


class AtomicCheckpointIO(TorchCheckpointIO):
    """A :class:`~lightning_fabric.plugins.io.torch_io.TorchCheckpointIO` that writes to a
    temporary file and renames it over the target."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        tmp = path.with_name(f"{path.name}{_TMP}{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            for stale in path.parent.glob(f"*.ckpt{_TMP}*"):
                if stale != tmp:
                    stale.unlink(missing_ok=True)
            _write_bytes(tmp, buffer.getvalue())
            os.replace(tmp, path)
        except OSError as error:
            tmp.unlink(missing_ok=True)
            raise OSError(
                error.errno,
                f"cannot write the checkpoint {path} ({error.strerror or error}); the previous "
                "one is intact. Free space there, or move the run with paths.log_dir (or "
                "hydra.run.dir) or callbacks.last_checkpoint.dirpath",
            ) from error
