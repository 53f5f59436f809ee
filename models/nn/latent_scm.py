"""CausalDiffAE's structured semantic latent (Komanduri et al., ICASSP 2024): one block per
attribute, supervised by it, with learned mechanisms among the blocks that follow the causal graph.

Used by :class:`models.diffae.DiffusionAutoencoder` in its causal mode (``causal_latent=True``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.base import CausalGraph

__all__ = ["LatentSCM", "mlp"]


def mlp(inputs: int, hidden: int, outputs: int) -> nn.Sequential:
    """A one-hidden-layer SiLU perceptron."""
    return nn.Sequential(nn.Linear(inputs, hidden), nn.SiLU(), nn.Linear(hidden, outputs))


class LatentSCM(nn.Module):
    """CausalDiffAE's structured latent: one block per attribute, an SCM among the blocks.

    Args:
        graph: the causal graph.
        names: the attributes with a block (the image parents), in topological order.
        block_dim: size of each block.
        hidden: width of the heads', embeddings' and mechanisms' MLPs.
    """

    def __init__(self, graph: CausalGraph, names: Sequence[str], block_dim: int, hidden: int):
        super().__init__()
        self.variables = tuple(graph[name] for name in graph.names if name in names)
        self.block_dim = block_dim
        self.parents = {v.name: tuple(p for p in v.parents if p in names) for v in self.variables}
        self.heads = nn.ModuleDict()
        self.embed = nn.ModuleDict()
        self.mechanisms = nn.ModuleDict()
        for v in self.variables:
            classes = 1 if v.is_continuous else v.num_classes
            self.heads[v.name] = nn.Linear(block_dim, classes)
            self.embed[v.name] = (
                mlp(1, hidden, block_dim)
                if v.is_continuous
                else nn.Embedding(v.num_classes, block_dim)
            )
            if self.parents[v.name]:
                self.mechanisms[v.name] = mlp(
                    block_dim * len(self.parents[v.name]), hidden, block_dim
                )

    @property
    def dim(self) -> int:
        return self.block_dim * len(self.variables)

    def split(self, z: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """The blocks (in topological order) and the style part of a latent.

        Blocks are squashed into (-1, 1): a classification head would otherwise grow its block
        without bound, and the value embeddings regress bounded targets.
        """
        parts = z.split([self.block_dim] * len(self.variables) + [z.shape[1] - self.dim], 1)
        return {v.name: torch.tanh(part) for v, part in zip(self.variables, parts)}, parts[-1]

    def embedding(self, name: str, value: Tensor) -> Tensor:
        variable = next(v for v in self.variables if v.name == name)
        if variable.is_continuous:
            return self.embed[name](variable.normalise(value.float()).unsqueeze(-1))
        return self.embed[name](value.long())

    def mechanism(self, name: str, blocks: Mapping[str, Tensor]) -> Tensor:
        return self.mechanisms[name](torch.cat([blocks[p] for p in self.parents[name]], 1))

    def losses(self, blocks: Mapping[str, Tensor], pa: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Per attribute: the head's supervision, the value embedding's and the mechanism's fit."""
        out = {}
        detached = {name: block.detach() for name, block in blocks.items()}
        for v in self.variables:
            value, prediction = pa[v.name], self.heads[v.name](blocks[v.name])
            if v.is_continuous:
                out[f"head_{v.name}"] = F.mse_loss(
                    prediction.squeeze(-1), v.normalise(value.float())
                )
            else:
                out[f"head_{v.name}"] = F.cross_entropy(prediction, value.long())
            out[f"embed_{v.name}"] = F.mse_loss(self.embedding(v.name, value), detached[v.name])
            if self.parents[v.name]:
                out[f"mechanism_{v.name}"] = F.mse_loss(
                    self.mechanism(v.name, detached), detached[v.name]
                )
        return out

    def rest(self, blocks: Mapping[str, Tensor], pa: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each block's sample-specific rest ``z_k - g_k(value)``: its part of the image noise."""
        return {name: block - self.embedding(name, pa[name]) for name, block in blocks.items()}

    def act(
        self,
        blocks: Mapping[str, Tensor],
        rest: Mapping[str, Tensor],
        pa: Mapping[str, Tensor],
        intervened: frozenset[str],
    ) -> dict[str, Tensor]:
        """The counterfactual blocks.

        An intervened block becomes ``g_k(new value) + rest_k``: its sample-specific rest stays,
        and the embedding's systematic error cancels (the null intervention gives ``z_k`` back).
        A block downstream of an intervened one is recomputed by its mechanism with its abducted
        residual; the others stay as they are.

        Args:
            blocks: the abducted blocks.
            rest: the blocks' rests from :meth:`rest` under the factual attributes.
            pa: the counterfactual attributes.
            intervened: the attributes ``do`` set (not those the attribute SCM recomputed).
        """
        out: dict[str, Tensor] = {}
        moved: set[str] = set()
        for v in self.variables:
            name = v.name
            block = blocks[name]
            if name in intervened:
                block = rest[name] + self.embedding(name, pa[name])
                moved.add(name)
            elif moved.intersection(self.parents[name]):
                residual = block - self.mechanism(name, blocks)
                block = self.mechanism(name, out) + residual
                moved.add(name)
            out[name] = block
        return out
