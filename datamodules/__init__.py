"""cfzoo datamodules: image datasets that declare the causal graph of their attributes."""

from datamodules.base import (
    CATEGORICAL,
    CONTINUOUS,
    CausalGraph,
    CounterfactualDataModule,
    ImageAttributeDataset,
    Variable,
)
from datamodules.morphomnist import ANALYTIC_MECHANISMS as _MORPHOMNIST_LAWS
from datamodules.morphomnist import MorphoMNISTDataModule

#: Dataset name -> datamodule class, for tools that rebuild a checkpoint's data.
DATAMODULES = {MorphoMNISTDataModule.name: MorphoMNISTDataModule}

#: Dataset name -> {variable: AnalyticMechanism class}: the true equations a model's attribute SCM
#: may use instead of learned flows (``scm.mechanism=analytic``).
ANALYTIC_MECHANISMS = {MorphoMNISTDataModule.name: _MORPHOMNIST_LAWS}

__all__ = [
    "ANALYTIC_MECHANISMS",
    "CATEGORICAL",
    "DATAMODULES",
    "CONTINUOUS",
    "CausalGraph",
    "CounterfactualDataModule",
    "ImageAttributeDataset",
    "MorphoMNISTDataModule",
    "Variable",
]
