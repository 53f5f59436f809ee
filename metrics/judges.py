"""The anti-causal predictors that judge effectiveness: found, or trained once and cached.

Two roles, so that the judge a model is fine-tuned against never scores it (Ribeiro et al.,
ICML 2023, train against one predictor; an evaluation by that same predictor measures how well
the model fooled it, not what its counterfactuals show):

- ``"finetune"``: the judge counterfactual fine-tuning trains against;
- ``"heldout"``: the judge ``evaluate.py`` scores effectiveness with. It differs from the
  fine-tune judge in every setting that shapes a predictor: the seed (weights and the training
  data's shuffle order), the augmentation and the architecture.

Morphometry (``datamodule.measure_attributes``) is the third, model-free judge.

    >>> predictor, source = load_or_train_predictor(datamodule, role="heldout")
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl

from metrics.cached import cache_path, fit_quietly, load_or_train
from metrics.rng import kept_rng, seeded
from models.loading import load_model
from models.predictor import AttributePredictor

log = logging.getLogger(__name__)

#: Bumped when the training recipe changes in a way the settings don't show: judges cached by an
#: older recipe are not reused.
JUDGE_VERSION = 2

#: Each role's settings; ``load_or_train_predictor(..., **overrides)`` changes any of them.
#: Their training times and errors are in benchmarks/results/config-notes.md.
ROLES: dict[str, dict[str, Any]] = {
    "finetune": {
        "arch": "conv",
        "widths": [32, 64, 128],
        "features": 128,
        "augment": "shift",
        "seed": 0,
        "epochs": 30,
        "lr": 1e-3,
    },
    "heldout": {
        "arch": "resnet",
        "widths": [24, 48, 96],
        "features": 96,
        "augment": "affine",
        "seed": 1,
        "epochs": 30,
        "lr": 1e-3,
    },
}
#: The settings a judge has: the predictor's hyperparameters, its seed and its epochs, and
#: ``interventional``: attributes drawn independently of the others in its training images
#: (``CounterfactualDataModule.interventional_set``; synthetic data only). No role sets it: a
#: judge trained on observational images is the one every dataset has.
SETTINGS = (*ROLES["finetune"], "interventional")


def judge_settings(role: str = "heldout", **overrides: Any) -> dict[str, Any]:
    """A role's settings with ``overrides`` applied (``None`` keeps the role's value).

    Raises:
        ValueError: an unknown role or setting.
    """
    if role not in ROLES:
        raise ValueError(f"unknown judge role {role!r}; choose one of {', '.join(ROLES)}")
    unknown = sorted(set(overrides) - set(SETTINGS))
    if unknown:
        raise ValueError(
            f"unknown judge settings {unknown}; the settings are {', '.join(SETTINGS)}"
        )
    settings = {**ROLES[role], **{k: v for k, v in overrides.items() if v is not None}}
    settings["widths"] = [int(w) for w in settings["widths"]]
    interventional = settings.pop("interventional", None) or []
    if isinstance(interventional, str):
        interventional = [interventional]
    if interventional:  # absent when empty: the observational judges keep their cache keys
        settings["interventional"] = sorted({str(name) for name in interventional})
    # one spelling per augmentation, so True and "shift" share a cache entry
    settings["augment"] = {True: "shift", False: "none"}.get(
        settings["augment"], settings["augment"]
    )
    return settings


def predictor_cache_path(datamodule, settings: Mapping[str, Any]) -> Path:
    """``data_dir/predictors/<dataset>-<key>.ckpt``, keyed by everything that shapes the judge.

    The key holds the data's spec, the graph's names, the loaders' batch size, the recipe's
    version and ``settings`` (:func:`judge_settings`), not the role's name: a role overridden
    into another role's settings is that role's judge, and is found as such.
    """
    return cache_path(datamodule, "predictors", {"version": JUDGE_VERSION, **settings})


def train_predictor(
    datamodule,
    epochs: int = 30,
    progress: bool = True,
    seed: int = 0,
    interventional: Sequence[str] = (),
    **settings: Any,
) -> tuple[AttributePredictor, pl.Trainer]:
    """Train an :class:`AttributePredictor` on the training images of ``datamodule``.

    ``seed`` seeds the weights, the augmentation and the order of the training data (the
    datamodule's shuffling draws from torch's global generator), in a block that gives the
    caller's random state back afterwards. ``interventional`` names attributes drawn
    independently of the others in the training images, which the dataset's true mechanism
    renders (``datamodule.interventional_set``); validation stays on the real images.
    """
    if getattr(datamodule, "train_set", None) is None:
        # the graph's normalisation comes with setup(); a judge built before it would regress
        # raw values and be cached under the same key as a proper one
        datamodule.setup("fit")
    loaders: dict[str, Any] = {"datamodule": datamodule}
    if interventional:
        log.info(
            "Rendering the judge's training images with %s drawn independently", interventional
        )
        train_set = datamodule.interventional_set(interventional, seed=seed)
        loaders = {
            "train_dataloaders": datamodule.loader(train_set, shuffle=True),
            "val_dataloaders": datamodule.val_dataloader(),
        }
    with seeded(seed):
        predictor = AttributePredictor(
            graph=datamodule.graph.to_dict(),
            image_shape=list(datamodule.image_shape),
            dataset=datamodule.name,
            **settings,
        )
        trainer = fit_quietly(predictor, epochs, progress, **loaders)
    return predictor.eval(), trainer


def judge_source(
    datamodule, role: str = "heldout", ckpt_path: str | None = None, **overrides: Any
) -> str:
    """Where :func:`load_or_train_predictor` takes this judge from, without loading or training it."""
    if ckpt_path:
        return str(Path(ckpt_path).expanduser().resolve())
    return str(predictor_cache_path(datamodule, judge_settings(role, **overrides)).resolve())


def same_judge(a: str | None, b: str | None) -> bool:
    """Whether two judge sources (:func:`judge_source`) name the same judge.

    The same file, or two cached judges with the same file name: the name is the dataset and the
    key of every setting, so the same recipe on the same data, wherever the cache was moved.
    """
    if not a or not b:
        return False
    first, second = Path(a), Path(b)
    if first.expanduser().resolve() == second.expanduser().resolve():
        return True
    cached = first.parent.name == second.parent.name == "predictors"
    return cached and first.name == second.name


def load_or_train_predictor(
    datamodule,
    role: str = "heldout",
    ckpt_path: str | None = None,
    progress: bool = True,
    **overrides: Any,
) -> tuple[AttributePredictor, str]:
    """The judge of ``ckpt_path``, else this role's cached judge, else a new one (then cached).

    Args:
        datamodule: the data the judge is trained on (its training split) and judges.
        role: ``"heldout"`` (scores effectiveness) or ``"finetune"`` (counterfactual fine-tuning
            trains against it); see :data:`ROLES`.
        ckpt_path: a predictor checkpoint (``python train.py model=predictor``); the role's
            settings are then not used.
        progress: show the training progress bar.
        **overrides: settings that replace the role's (:data:`SETTINGS`).

    Returns:
        The predictor (eval mode) and where it came from (:func:`judge_source`). Neither
        training nor loading changes torch's global random state.
    """
    settings = judge_settings(role, **overrides)  # checks role and overrides, also with a ckpt
    source = judge_source(datamodule, role, ckpt_path, **overrides)
    if ckpt_path:
        with kept_rng():  # building the module draws initial weights
            predictor = load_model(ckpt_path, kind=AttributePredictor)
        if predictor.dataset_name != datamodule.name:
            raise ValueError(
                f"predictor {ckpt_path} was trained on '{predictor.dataset_name}', not on "
                f"'{datamodule.name}'"
            )
        return predictor, source
    training = ("seed", "epochs", "interventional")
    hyperparameters = {k: v for k, v in settings.items() if k not in training}
    predictor = load_or_train(
        Path(source),
        AttributePredictor,
        lambda: train_predictor(
            datamodule,
            epochs=settings["epochs"],
            progress=progress,
            seed=settings["seed"],
            interventional=settings.get("interventional", ()),
            **hyperparameters,
        ),
        f"{role} judge for {datamodule.name}",
    )
    return predictor, source
