"""The attribute SCM: one mechanism ``v := f_v(u_v; pa(v))`` per attribute of the causal graph.

- continuous attributes: a conditional neural spline flow (zuko) over the normalised value, given
  the parents, so abduction ``u = f^-1(v; pa)`` is exact inversion;
- categorical attributes: a conditional categorical; its noise is the Gumbel vector of the
  Gumbel-max trick, abducted from the posterior given the observed class (Oberst & Sontag, ICML
  2019), so a categorical child whose parents change is recomputed counterfactually;
- ``mechanism="analytic"``: the dataset's true equations where it has them (learned elsewhere), so
  image-mechanism error can be measured apart from attribute-mechanism error.

Example:
    >>> scm = AttributeSCM(graph)
    >>> noise = scm.abduct(pa)
    >>> pa_cf = scm.act(pa, {"thickness": lambda t: t + 1}, noise)  # intensity follows
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
import zuko
from torch import Tensor, nn

from datamodules.base import AnalyticMechanism, CausalGraph, Intervention, Variable
from models.nn.conditioning import ParentEncoder

__all__ = ["AttributeSCM", "CategoricalMechanism", "FlowMechanism"]


class FlowMechanism(nn.Module):
    """``v = loc + scale * T^-1(u; pa)``, ``u ~ N(0, 1)``, with ``T`` a conditional spline flow."""

    def __init__(self, variable: Variable, graph: CausalGraph, hidden: int, transforms: int):
        super().__init__()
        self.variable = variable
        self.context = ParentEncoder(graph, variable.parents)
        self.flow = zuko.flows.NSF(
            features=1,
            context=self.context.dim,
            transforms=transforms,
            hidden_features=(hidden, hidden),
        )

    def _dist(self, pa: Mapping[str, Tensor]):
        return self.flow(self.context(pa)) if self.context.dim else self.flow()

    def log_prob(self, value: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        z = self.variable.normalise(value.float()).unsqueeze(-1)
        # log p(v) = log p(z) - log(scale): densities are reported in natural units.
        return self._dist(pa).log_prob(z) - torch.log(torch.tensor(self.variable.scale))

    def abduct(self, value: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        z = self.variable.normalise(value.float()).unsqueeze(-1)
        return self._dist(pa).transform(z).squeeze(-1)

    def predict(self, noise: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        z = self._dist(pa).transform.inv(noise.unsqueeze(-1)).squeeze(-1)
        return self.variable.denormalise(z)

    def sample_noise(self, n: int, device: torch.device | None = None) -> Tensor:
        return torch.randn(n, device=device)


class CategoricalMechanism(nn.Module):
    """``v = argmax_k(logits_k(pa) + u_k)``, ``u_k ~ Gumbel(0, 1)`` (the Gumbel-max trick)."""

    def __init__(self, variable: Variable, graph: CausalGraph, hidden: int):
        super().__init__()
        self.variable = variable
        self.context = ParentEncoder(graph, variable.parents)
        k = variable.num_classes
        if self.context.dim:
            self.net = nn.Sequential(
                nn.Linear(self.context.dim, hidden), nn.SiLU(), nn.Linear(hidden, k)
            )
        else:
            self.root_logits = nn.Parameter(torch.zeros(k))

    def logits(self, pa: Mapping[str, Tensor], batch: int) -> Tensor:
        """``(batch, K)`` logits; a root's are shared by every sample."""
        if self.context.dim:
            return self.net(self.context(pa))
        return self.root_logits.expand(batch, -1)

    def log_prob(self, value: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        log_p = F.log_softmax(self.logits(pa, len(value)), -1)
        return log_p.gather(-1, value.long().unsqueeze(-1)).squeeze(-1)

    def abduct(self, value: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        """Sample Gumbel noise from its posterior given the observed class.

        The perturbed logit of the observed class is the maximum, ``Gumbel(logsumexp(logits))``;
        every other class's perturbed logit is a ``Gumbel(logit)`` truncated below that maximum.
        """
        logits = self.logits(pa, len(value))
        gumbel = -torch.log(-torch.log(torch.rand_like(logits).clamp(1e-20, 1 - 1e-7)))
        top = (torch.logsumexp(logits, -1, keepdim=True) + gumbel[:, :1]).expand_as(logits)
        others = -torch.log(torch.exp(-top) + torch.exp(-(logits + gumbel)))
        observed = F.one_hot(value.long(), logits.shape[-1]).bool()
        perturbed = torch.where(observed, top, others)
        return perturbed - logits

    def predict(self, noise: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        return (self.logits(pa, len(noise)) + noise).argmax(-1)

    def sample_noise(self, n: int, device: torch.device | None = None) -> Tensor:
        uniform = torch.rand(n, self.variable.num_classes, device=device).clamp(1e-20, 1 - 1e-7)
        return -torch.log(-torch.log(uniform))


class AttributeSCM(nn.Module):
    """Mechanisms for every attribute of a causal graph, with abduction and intervention.

    Args:
        graph: the datamodule's causal graph (with its normalisation).
        mechanism: ``"flow"`` (learned) or ``"analytic"`` (the dataset's true equations where
            ``analytic`` gives them, learned elsewhere).
        analytic: variable name -> :class:`AnalyticMechanism` class, for ``"analytic"``.
        hidden: width of the mechanisms' networks.
        transforms: spline transforms per continuous flow.
    """

    def __init__(
        self,
        graph: CausalGraph,
        mechanism: str = "flow",
        analytic: Mapping[str, type[AnalyticMechanism]] | None = None,
        hidden: int = 64,
        transforms: int = 3,
    ):
        super().__init__()
        if mechanism not in ("flow", "analytic"):
            raise ValueError(f"scm mechanism must be 'flow' or 'analytic', got '{mechanism}'")
        if mechanism == "analytic" and not analytic:
            raise ValueError(
                "scm.mechanism=analytic needs a dataset with true equations; this one has none "
                "(use scm.mechanism=flow)"
            )
        self.graph = graph
        self.mechanisms = nn.ModuleDict()
        for variable in graph.variables:
            if mechanism == "analytic" and variable.name in analytic:
                self.mechanisms[variable.name] = analytic[variable.name]()
            elif variable.is_continuous:
                self.mechanisms[variable.name] = FlowMechanism(variable, graph, hidden, transforms)
            else:
                self.mechanisms[variable.name] = CategoricalMechanism(variable, graph, hidden)

    def log_prob(self, pa: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """``log p(v | pa(v))`` of each attribute, per sample, in natural units."""
        return {name: mech.log_prob(pa[name], pa) for name, mech in self.mechanisms.items()}

    def nll(self, pa: Mapping[str, Tensor]) -> Tensor:
        """Mean negative log-likelihood of the attributes (the training loss of the SCM)."""
        return -torch.stack(list(self.log_prob(pa).values())).sum(0).mean()

    def abduct(self, pa: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The exogenous noise of every attribute."""
        return {name: mech.abduct(pa[name], pa) for name, mech in self.mechanisms.items()}

    def predict(self, noise: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Attributes from their noise alone, in topological order (the inverse of abduct)."""
        out: dict[str, Tensor] = {}
        for name, mech in self.mechanisms.items():
            out[name] = self._clip(name, mech.predict(noise[name], out))
        return out

    def sample(self, n: int, device: torch.device | None = None) -> dict[str, Tensor]:
        """Draw ``n`` attribute vectors from the model (ancestral sampling)."""
        noise = {name: m.sample_noise(n, device) for name, m in self.mechanisms.items()}
        return self.predict(noise)

    def act(
        self,
        pa: Mapping[str, Tensor],
        do: Mapping[str, Intervention],
        noise: dict[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """Intervene, then recompute every non-intervened descendant from its abducted noise.

        Args:
            pa: factual attributes, ``(B,)`` tensors in natural units.
            do: name -> tensor ``(B,)``, scalar, or function of the factual value.
            noise: the attributes' noise from :meth:`abduct`. When ``None`` or empty, only the noise of the
                variables that must be recomputed is abducted (and stored in the dict, if one is
                given): inverting every flow on every query is most of a fast model's cost.

        Returns:
            The counterfactual attributes. A sample whose parents did not change keeps its factual
            value exactly; only samples with a changed parent are recomputed.
        """
        resolved = self.graph.resolve(pa, do)
        lazy = noise is None or not noise
        if noise is None:
            noise = {}
        out: dict[str, Tensor] = {}
        changed: dict[str, Tensor] = {}
        for variable in self.graph.variables:
            name = variable.name
            if name in resolved:
                out[name] = resolved[name].to(pa[name].dtype)
                changed[name] = out[name] != pa[name]
                continue
            moved = torch.zeros_like(pa[name], dtype=torch.bool)
            for parent in variable.parents:
                moved |= changed[parent]
            if moved.any():
                mechanism = self.mechanisms[name]
                if lazy and name not in noise:
                    noise[name] = mechanism.abduct(pa[name], pa)
                recomputed = self._clip(name, mechanism.predict(noise[name], out))
                out[name] = torch.where(moved, recomputed.to(pa[name].dtype), pa[name])
            else:
                out[name] = pa[name]
            changed[name] = moved & (out[name] != pa[name])
        return out

    def _clip(self, name: str, value: Tensor) -> Tensor:
        # A learned flow has unbounded support; data never leave the declared support, so neither
        # may a recomputed descendant (its image mechanism was only trained inside it).
        variable = self.graph[name]
        if not variable.is_continuous:
            return value
        return value.clamp(*variable.support)
