"""Building blocks shared by several model families."""

from models.nn.conditioning import ParentEncoder
from models.nn.likelihoods import DiscretizedGaussian

__all__ = ["DiscretizedGaussian", "ParentEncoder"]
