"""An on-disk cache of generated arrays that is never trusted blindly.

Each entry is one ``.npz`` file named by a key of everything that shaped it. The file carries its
own metadata (the full key and a SHA-256 of every array), so a truncated, corrupted or stale file is
detected on load and rebuilt. Writes go to a temporary file that is renamed into place, so a run
killed mid-write leaves no half entry. Files load with ``allow_pickle=False``: no code runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CacheError", "atomic_write", "cache_key", "ensure_writable", "load_or_build"]

log = logging.getLogger(__name__)
_META = "__meta__"


class CacheError(OSError):
    """The cache directory can't be written (read-only, full, or not a directory)."""


def cache_key(spec: Mapping[str, Any]) -> str:
    """A short stable hash of a JSON-able description of the data."""
    text = json.dumps(spec, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.data)
    return digest.hexdigest()


def _load(path: Path, spec: Mapping[str, Any]) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    meta = json.loads(bytes(arrays.pop(_META)).decode())
    if meta.get("spec") != json.loads(json.dumps(spec, sort_keys=True, default=str)):
        raise ValueError("it was built from a different specification (stale)")
    if meta.get("sha256") != _digest(arrays):
        raise ValueError("its checksum does not match its contents (corrupt)")
    return arrays


def load_or_build(
    directory: str | Path,
    prefix: str,
    spec: Mapping[str, Any],
    build: Callable[[], Mapping[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray], Path]:
    """Load the cached arrays for ``spec``, or build, save and return them.

    Args:
        directory: where cache files live (created if missing).
        prefix: a readable file-name prefix, e.g. ``"morphomnist-embedded"``.
        spec: everything that shapes the data (source, seed, sizes, code version); JSON-able.
        build: makes the arrays when there is no valid cache file.

    Returns:
        The arrays, and the path of the cache file.

    Raises:
        CacheError: the directory can't be created or written; the message says how to fix it.
    """
    directory = Path(directory).expanduser()
    path = directory / f"{prefix}-{cache_key(spec)}.npz"
    if path.exists():
        try:
            return _load(path, spec), path
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
            log.warning("Rebuilding the cache %s: %s", path, error)
    # fail before a long build, not after it
    ensure_writable(directory, "the dataset cache", "data_dir (e.g. data.data_dir=/tmp/cfzoo-data)")
    arrays = dict(build())
    _save(path, spec, arrays)
    return arrays, path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files of writes to ``path`` whose process is gone (killed mid-write);
    a write still running in another process keeps its own."""
    for stale in path.parent.glob(f"{path.name}.*.tmp"):
        pid = stale.name[len(path.name) + 1 :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[str], None]) -> None:
    """Write ``path`` through ``write(temporary_path)``, then rename it into place.

    The temporary file sits beside ``path`` (same file system, so the rename is atomic) and is
    synced before the rename: a run killed mid-write leaves the old file or none, never half a
    file. The temporary file is removed if ``write`` fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    handle, temporary = tempfile.mkstemp(
        prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    os.close(handle)
    try:
        write(temporary)
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


#: The setting that moves a run's outputs, named when one can't be written.
RUN_DIR_SETTING = "paths.log_dir (or hydra.run.dir)"


def write_output(path: str | Path, write: Callable[[str], None]) -> Path:
    """:func:`atomic_write` for a run's outputs (reports, figures): a full disk leaves no half
    file, and the error names the setting that moves the run."""
    try:
        atomic_write(path, write)
    except OSError as error:
        raise OSError(
            error.errno,
            f"cannot write {path} ({error.strerror or error}): free space there or move the run "
            f"with {RUN_DIR_SETTING}",
        ) from error
    return Path(path)


def ensure_writable(directory: str | Path, what: str, setting: str) -> None:
    """Create ``directory`` and check a file can be written there, before any long work.

    Raises:
        CacheError: naming ``what`` was to be written and the ``setting`` that moves it.
    """
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise CacheError(
            f"cannot write {what} to {directory}: {error}. Free some space there or point "
            f"{setting} at a writable directory."
        ) from error


def _save(path: Path, spec: Mapping[str, Any], arrays: dict[str, np.ndarray]) -> None:
    meta = {"spec": json.loads(json.dumps(spec, sort_keys=True, default=str))}
    meta["sha256"] = _digest(arrays)
    payload = dict(arrays)
    payload[_META] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)

    def write(temporary: str) -> None:
        with open(temporary, "wb") as stream:
            np.savez(stream, **payload)

    try:
        atomic_write(path, write)
    except OSError as error:
        size_mb = sum(a.nbytes for a in arrays.values()) / 2**20
        raise CacheError(
            f"cannot write the dataset cache {path}: {error}. Point data_dir at a writable "
            f"directory with at least {size_mb:.0f} MB free (e.g. data.data_dir=/tmp/cfzoo-data)."
        ) from error
