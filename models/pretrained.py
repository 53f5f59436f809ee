"""The pretrained zoo: trained models shipped with the package and loaded by name.

    from models import load_model
    model = load_model("hvae_cf-morphomnist")      # offline, no training
    python -m models --list                        # every shipped model and its headline figures

A pretrained model is four files in ``models/pretrained/`` (package data), ``NAME.*``:

- ``NAME.safetensors``: the weights. safetensors holds tensors and nothing else, so loading never
  unpickles and never runs code from the file.
- ``NAME.json``: the manifest. It gives the model class, its hyperparameters and graph, the SHA-256
  and size of the weights file, where the model came from (command, commit, minutes), and the
  headline figures of its card.
- ``NAME.md``: the model card. ``benchmarks/pretrained.py`` renders it from the measured report.
- ``NAME.png``: one counterfactual grid of the card.

:func:`save_pretrained` writes the first two for any trained model (a user's own too), and
:func:`load_pretrained` reads them back, checking the weights against the manifest first.
``benchmarks/pretrained.py`` builds the shipped set from its recipes and writes the cards.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.base import CounterfactualModel
from models.loading import MODELS, file_sha256

#: Where the shipped models live (package data: ``pip install -e .`` is enough).
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
#: The manifest layout this version writes and reads.
MANIFEST_FORMAT = 1

__all__ = [
    "PRETRAINED_DIR",
    "available",
    "load_pretrained",
    "manifest_of",
    "save_pretrained",
]


def available(directory: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Every model in ``directory`` (default: the shipped ones): name -> manifest, by name."""
    directory = Path(directory or PRETRAINED_DIR)
    if not directory.is_dir():
        return {}
    return {path.stem: _read_manifest(path) for path in sorted(directory.glob("*.json"))}


def manifest_of(name_or_path: str | Path) -> tuple[dict[str, Any], Path]:
    """The manifest of a shipped model's name, or of a manifest file's path, and its path.

    Raises:
        FileNotFoundError: neither a shipped name nor an existing ``.json`` (the message lists the
            shipped names).
    """
    path = Path(name_or_path).expanduser()
    if path.suffix != ".json":
        path = PRETRAINED_DIR / f"{name_or_path}.json"
    if not path.is_file():
        shipped = ", ".join(available()) or "none in this installation"
        raise FileNotFoundError(
            f"'{name_or_path}' is neither a pretrained model nor a manifest file. Shipped models: "
            f"{shipped} (python -m models --list shows their figures); or pass a checkpoint's "
            "path, or the .json that save_pretrained wrote."
        )
    return _read_manifest(path), path


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(
            f"{path} is not a readable pretrained-model manifest ({type(error).__name__}: "
            f"{error}). Reinstall cfzoo (pip install -e .) or re-export the model."
        ) from error
    missing = [k for k in ("class", "hyper_parameters", "weights") if k not in manifest]
    if not isinstance(manifest, dict) or missing:
        raise ValueError(f"{path} is not a pretrained-model manifest: it lacks {missing}")
    if manifest.get("format", 0) > MANIFEST_FORMAT:
        raise ValueError(
            f"{path} was written by a newer cfzoo (manifest format {manifest['format']}, this "
            f"version reads {MANIFEST_FORMAT}): upgrade cfzoo"
        )
    return manifest


def load_pretrained(
    name_or_path: str | Path, map_location: str | torch.device = "cpu"
) -> CounterfactualModel:
    """A pretrained model, by its shipped name or its manifest's path, in eval mode.

    The weights file is checked against the manifest (size, then SHA-256) before it is read, and
    read with safetensors: nothing is unpickled.

    Raises:
        FileNotFoundError: an unknown name, or a manifest whose weights file is missing.
        ValueError: a truncated, corrupt or swapped weights file, or weights that do not fit the
            manifest's model.
    """
    manifest, path = manifest_of(name_or_path)
    name = manifest.get("name", path.stem)
    weights = path.parent / manifest["weights"]["file"]
    fix = (
        "Reinstall cfzoo (pip install -e .) to restore the shipped file"
        if path.parent == PRETRAINED_DIR
        else "Export the model again with save_pretrained"
    )
    if not weights.is_file():
        raise FileNotFoundError(f"the weights of '{name}' are missing: no file {weights}. {fix}.")
    size, expected = weights.stat().st_size, manifest["weights"]["bytes"]
    if size != expected:
        raise ValueError(
            f"{weights} has {size:,} bytes, its manifest {expected:,}: the file is truncated or "
            f"is another model's. {fix}."
        )
    if file_sha256(weights) != manifest["weights"]["sha256"]:
        raise ValueError(
            f"{weights} does not match the SHA-256 in {path.name}: the file is corrupt or is "
            f"another model's weights. {fix}."
        )
    cls = MODELS.get(manifest["class"])
    if cls is None or not issubclass(cls, CounterfactualModel):
        raise ValueError(f"{path} names an unknown model class '{manifest['class']}'")
    try:
        state = load_file(weights, device="cpu")
    except (SafetensorError, OSError) as error:
        raise ValueError(
            f"{weights} is not a readable safetensors file ({error}). {fix}."
        ) from error
    try:
        model = cls(**manifest["hyper_parameters"])
        model.load_state_dict(state, strict=True)
    except (TypeError, KeyError, RuntimeError) as error:
        raise ValueError(
            f"'{name}' does not build a {cls.__name__} in this cfzoo version "
            f"({type(error).__name__}: {str(error).splitlines()[0][:300]}): use the cfzoo "
            "version that exported it, or re-export it."
        ) from error
    model.trained_against = manifest.get("trained_against")
    model.trained_on = manifest.get("trained_on")
    return model.to(map_location).eval()


def save_pretrained(
    model: CounterfactualModel,
    directory: str | Path,
    name: str,
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as ``NAME.safetensors`` and ``NAME.json`` in ``directory``; return the
    manifest's path. ``info`` (JSON-serialisable: provenance, headline figures, ...) goes into the
    manifest as it is.

    Raises:
        OSError: the directory can't be written (the message names it).
    """
    directory = Path(directory)
    hyper = json.loads(json.dumps(dict(model.hparams), default=_plain))
    if isinstance(hyper.get("cf_finetune"), dict):
        # the starting checkpoint is a path on the machine that trained it; the weights are here
        hyper["cf_finetune"]["init_ckpt"] = None
    weights = directory / f"{name}.safetensors"
    manifest_path = directory / f"{name}.json"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # safetensors refuses tensors that share memory: each one gets its own copy
        state = {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, weights)
        manifest = {
            "name": name,
            "format": MANIFEST_FORMAT,
            "class": type(model).__name__,
            "dataset": getattr(model, "dataset_name", None),
            "hyper_parameters": hyper,
            "trained_against": _portable_judge(getattr(model, "trained_against", None)),
            "trained_on": getattr(model, "trained_on", None),
            "weights": {
                "file": weights.name,
                "bytes": weights.stat().st_size,
                "sha256": file_sha256(weights),
                "parameters": sum(p.numel() for p in model.parameters()),
            },
            **dict(info or {}),
        }
        manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    except OSError as error:
        raise OSError(
            error.errno,
            f"cannot write the pretrained model '{name}' to {directory} "
            f"({error.strerror or error}): choose a writable directory with free space",
        ) from error
    return manifest_path


def _portable_judge(source: str | None) -> str | None:
    """A cached judge's source without this machine's folders: ``predictors/<file>``, the name
    :func:`metrics.judges.same_judge` compares (it holds the dataset and every setting)."""
    if source and Path(source).parent.name == "predictors":
        return f"predictors/{Path(source).name}"
    return source


def _plain(value: Any) -> Any:
    """JSON for hyperparameters that are not plain (OmegaConf containers, tuples, paths)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"a hyperparameter of type {type(value).__name__} can't be exported")
