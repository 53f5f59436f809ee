"""cfzoo models: causal image mechanisms behind one abduction-action-prediction interface."""

from models.base import (
    Counterfactual,
    CounterfactualModel,
    Exogenous,
    FineTuning,
    ImageMechanism,
    Samples,
    counterfactual,
    sample,
)
from models.loading import MODELS, load_model
from models.scm import AttributeSCM

__all__ = [
    "MODELS",
    "AttributeSCM",
    "Counterfactual",
    "CounterfactualModel",
    "Exogenous",
    "FineTuning",
    "ImageMechanism",
    "Samples",
    "counterfactual",
    "load_model",
    "sample",
]
