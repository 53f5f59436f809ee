"""Load any zoo checkpoint without Hydra and without executing code from it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytorch_lightning as pl
import torch

from models.base import CHECKPOINT_CLASS_KEY, CounterfactualModel, read_checkpoint
from models.diffae import DiffusionAutoencoder
from models.flow import ConditionalFlow
from models.hvae import HierarchicalVAE
from models.ild import InvertibleLatentDomain, LatentDomainVAE
from models.image_vae import ImageVAE
from models.predictor import AttributePredictor
from models.vae import ConditionalVAE

#: Class name recorded in a checkpoint -> class.
MODELS: dict[str, type[pl.LightningModule]] = {
    cls.__name__: cls
    for cls in (
        ConditionalVAE,
        HierarchicalVAE,
        ConditionalFlow,
        InvertibleLatentDomain,
        LatentDomainVAE,
        DiffusionAutoencoder,
        AttributePredictor,
        ImageVAE,
    )
}


#: Hyperparameters added after checkpoints were already written, with the value those earlier
#: checkpoints were trained under (a newer default would build another model from them).
ADDED_LATER: dict[str, dict[str, object]] = {
    "DiffusionAutoencoder": {"semantic_kl": 0.0, "autoencoder": None},
    "InvertibleLatentDomain": {"domain_weight": 0.0},
}


def load_model(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    kind: type[pl.LightningModule] = CounterfactualModel,
) -> CounterfactualModel:
    """Load a model of any family, in eval mode: a checkpoint, or a pretrained model by name.

    A checkpoint is read with ``weights_only=True`` and a pretrained model's weights with
    safetensors (:mod:`models.pretrained`): loading never runs code from the file.

    Args:
        path: a checkpoint written by ``train.py``; the name of a shipped pretrained model
            (``python -m models --list``), such as ``"hvae_cf-morphomnist"``; or the ``.json``
            manifest that :func:`models.pretrained.save_pretrained` wrote.
        map_location: device to load onto.
        kind: the base class expected (``AttributePredictor`` for a predictor checkpoint).

    Raises:
        FileNotFoundError: no file at ``path`` and no pretrained model of that name.
        ValueError: a truncated or corrupt file, a checkpoint that is not a cfzoo model, or one
            of another kind.
    """
    if _names_pretrained(path):
        from models.pretrained import load_pretrained

        if not issubclass(CounterfactualModel, kind):
            raise ValueError(f"pretrained models are counterfactual models, not {kind.__name__}s")
        return load_pretrained(path, map_location)
    checkpoint = read_checkpoint(path)
    name = checkpoint.get(CHECKPOINT_CLASS_KEY)
    if name is None:
        raise ValueError(
            f"{path} is not a cfzoo model checkpoint (it has no '{CHECKPOINT_CLASS_KEY}' entry). "
            "Pass a checkpoint written by `python train.py`."
        )
    if name not in MODELS:
        raise ValueError(f"{path} holds an unknown model class '{name}'; known: {sorted(MODELS)}")
    if not issubclass(MODELS[name], kind):
        raise ValueError(f"{path} holds a {name}, not a {kind.__name__}")
    missing = [key for key in ("state_dict", "hyper_parameters") if key not in checkpoint]
    if missing:
        raise ValueError(
            f"{path} lacks {' and '.join(missing)}: it is not a whole checkpoint of "
            "`python train.py`. Pass last.ckpt or the best checkpoint of the run."
        )
    trained_without = {
        key: value
        for key, value in ADDED_LATER.get(name, {}).items()
        if key not in checkpoint["hyper_parameters"]
    }
    try:
        model = MODELS[name].load_from_checkpoint(
            Path(path).expanduser(), map_location=map_location, weights_only=True, **trained_without
        )
    except (TypeError, KeyError, RuntimeError) as error:
        raise ValueError(
            f"{path} does not build a {name}: its settings or weights do not fit this version's "
            f"{name} ({type(error).__name__}: {str(error).splitlines()[0][:300]}). Re-train, or "
            "load it with the cfzoo version that wrote it."
        ) from error
    return model.eval()


def _names_pretrained(path: str | Path) -> bool:
    """A manifest's path, or a bare name (no folder, no suffix) that is not a file here."""
    path = Path(path).expanduser()
    if path.suffix == ".json":
        return True
    return not path.exists() and path.parent == Path(".") and not path.suffix


def source_sha256(path: str | Path) -> str:
    """The SHA-256 that names what a model was loaded from: a checkpoint's bytes, or a
    pretrained model's weights file (as its manifest records it)."""
    if _names_pretrained(path):
        from models.pretrained import manifest_of

        return manifest_of(path)[0]["weights"]["sha256"]
    return file_sha256(path)


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (reports name the checkpoint they scored by it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
