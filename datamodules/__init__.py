"""cfzoo datamodules: image datasets that declare the causal graph of their attributes."""

from datamodules.base import (
    CATEGORICAL,
    CONTINUOUS,
    CausalGraph,
    CounterfactualDataModule,
    ImageAttributeDataset,
    Variable,
)
from datamodules.celeba import CelebADataModule
from datamodules.domains import DomainMNISTDataModule
from datamodules.folder import FolderDataModule
from datamodules.morphomnist import ANALYTIC_MECHANISMS as _MORPHOMNIST_LAWS
from datamodules.morphomnist import MorphoMNISTDataModule
from datamodules.pendulum import ANALYTIC_MECHANISMS as _PENDULUM_LAWS
from datamodules.pendulum import PendulumDataModule

#: Dataset name -> datamodule class, for tools that rebuild a checkpoint's data.
DATAMODULES = {
    MorphoMNISTDataModule.name: MorphoMNISTDataModule,
    DomainMNISTDataModule.name: DomainMNISTDataModule,
    PendulumDataModule.name: PendulumDataModule,
    CelebADataModule.name: CelebADataModule,
    FolderDataModule.name: FolderDataModule,
}

#: Dataset name -> {variable: AnalyticMechanism class}: the true equations a model's attribute SCM
#: may use instead of learned flows (``scm.mechanism=analytic``).
ANALYTIC_MECHANISMS = {
    MorphoMNISTDataModule.name: _MORPHOMNIST_LAWS,
    DomainMNISTDataModule.name: _MORPHOMNIST_LAWS,  # the domain is a root of its own
    PendulumDataModule.name: _PENDULUM_LAWS,
}


def datamodule_for(model, data_dir: str = "data", overrides=None):
    """The dataset a checkpoint's ``model`` was trained on, rebuilt and set up.

    Args:
        model: a loaded model (its ``dataset_name``, attributes and image shape are checked).
        data_dir: where the dataset cache lives.
        overrides: datamodule options over the ones the checkpoint recorded of its data (its
            ``trained_on``: seed, limit, sizes, ...) and the defaults (``{"graph": "complex"}``).

    Raises:
        ValueError: no datamodule for the dataset here, options it does not take, or data whose
            attributes or image shape differ from the model's.
    """
    if model.dataset_name not in DATAMODULES:
        raise ValueError(
            f"the checkpoint's dataset '{model.dataset_name}' has no datamodule here; "
            "pass folder=DIR csv=FILE instead"
        )
    recorded = getattr(model, "trained_on", None) or {}
    # the recorded settings (arguments of the same name) that picked its images and split
    arguments = set(getattr(DATAMODULES[model.dataset_name], "split_keys", ())) - {"dataset"}
    own = {k: v for k, v in recorded.items() if k in arguments and v is not None}
    overrides = {**own, **dict(overrides or {})}
    try:
        datamodule = DATAMODULES[model.dataset_name](data_dir=data_dir, **overrides)
    except TypeError as error:  # e.g. a folder dataset without data.root
        raise ValueError(
            f"cannot build the '{model.dataset_name}' data from data.*={overrides}: {error}"
        ) from error
    datamodule.setup()
    if not datamodule.fits(model):
        raise ValueError(
            f"the checkpoint models {model.graph.names} on {tuple(model.image_shape)} images, but "
            f"the data built with data.*={overrides} have {datamodule.graph.names} on "
            f"{tuple(datamodule.image_shape)}: pass the data options the model was trained with "
            "(e.g. data.graph=complex, data.image_size=64)"
        )
    return datamodule


__all__ = [
    "ANALYTIC_MECHANISMS",
    "CATEGORICAL",
    "DATAMODULES",
    "CONTINUOUS",
    "CausalGraph",
    "CelebADataModule",
    "CounterfactualDataModule",
    "DomainMNISTDataModule",
    "FolderDataModule",
    "ImageAttributeDataset",
    "MorphoMNISTDataModule",
    "PendulumDataModule",
    "Variable",
    "datamodule_for",
]
