"""Attributes as network inputs: normalised continuous values and one-hot classes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.base import CausalGraph


class ParentEncoder(nn.Module):
    """Encode some attributes of a :class:`CausalGraph` as one flat vector per sample.

    Continuous attributes enter as ``(value - loc) / scale`` (the datamodule's normalisation),
    categorical ones as one-hot vectors, so networks see well-scaled inputs while every value a
    user passes or gets back stays in natural units.

    Example:
        >>> encode = ParentEncoder(graph, ("thickness", "intensity", "digit"))
        >>> encode(batch["pa"]).shape  # (B, 1 + 1 + 10)
    """

    def __init__(self, graph: CausalGraph, names: Sequence[str]):
        super().__init__()
        self.variables = tuple(graph[name] for name in names)
        self.dim = sum(1 if v.is_continuous else v.num_classes for v in self.variables)

    def forward(self, pa: Mapping[str, Tensor]) -> Tensor:
        parts = []
        for variable in self.variables:
            value = pa[variable.name]
            if variable.is_continuous:
                parts.append(variable.normalise(value.float()).unsqueeze(-1))
            else:
                parts.append(F.one_hot(value.long(), variable.num_classes).float())
        if not parts:  # a root variable: an empty context
            reference = next(iter(pa.values()))
            return torch.zeros(len(reference), 0, device=reference.device)
        return torch.cat(parts, dim=-1)
