"""cfzoo datamodules: image datasets that declare the causal graph of their attributes."""

from datamodules.base import (
    CATEGORICAL,
    CONTINUOUS,
    CausalGraph,
    CounterfactualDataModule,
    ImageAttributeDataset,
    Variable,
)
from datamodules.morphomnist import MorphoMNISTDataModule

__all__ = [
    "CATEGORICAL",
    "CONTINUOUS",
    "CausalGraph",
    "CounterfactualDataModule",
    "ImageAttributeDataset",
    "MorphoMNISTDataModule",
    "Variable",
]
