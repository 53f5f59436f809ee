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
from datamodules.folder import FolderDataModule
from datamodules.morphomnist import ANALYTIC_MECHANISMS as _MORPHOMNIST_LAWS
from datamodules.morphomnist import MorphoMNISTDataModule
from datamodules.pendulum import ANALYTIC_MECHANISMS as _PENDULUM_LAWS
from datamodules.pendulum import PendulumDataModule

#: Dataset name -> datamodule class, for tools that rebuild a checkpoint's data.
DATAMODULES = {
    MorphoMNISTDataModule.name: MorphoMNISTDataModule,
    PendulumDataModule.name: PendulumDataModule,
    CelebADataModule.name: CelebADataModule,
    FolderDataModule.name: FolderDataModule,
}

#: Dataset name -> {variable: AnalyticMechanism class}: the true equations a model's attribute SCM
#: may use instead of learned flows (``scm.mechanism=analytic``).
ANALYTIC_MECHANISMS = {
    MorphoMNISTDataModule.name: _MORPHOMNIST_LAWS,
    PendulumDataModule.name: _PENDULUM_LAWS,
}

__all__ = [
    "ANALYTIC_MECHANISMS",
    "CATEGORICAL",
    "DATAMODULES",
    "CONTINUOUS",
    "CausalGraph",
    "CelebADataModule",
    "CounterfactualDataModule",
    "FolderDataModule",
    "ImageAttributeDataset",
    "MorphoMNISTDataModule",
    "PendulumDataModule",
    "Variable",
]
