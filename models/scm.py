"""The attribute SCM: one mechanism ``v := f_v(u_v; pa(v))`` per attribute of the causal graph.

- continuous attributes: a conditional neural spline flow (zuko) over the normalised value, given
  the parents, so abduction ``u = f^-1(v; pa)`` is exact inversion;
- categorical attributes: a conditional categorical; its noise is the Gumbel vector of the
  Gumbel-max trick, abducted from the posterior given the observed class (Oberst & Sontag, ICML
  2019), so a categorical child whose parents change is recomputed counterfactually;
- ``mechanism="analytic"``: the dataset's true equations where it has them (learned elsewhere), so
  image-mechanism error can be measured apart from attribute-mechanism error.

The learned mechanisms share no parameter with the image mechanism, so :meth:`AttributeSCM.fit`
fits them apart, to convergence, with a learning rate annealed to zero (models do so before their
image mechanism trains, ``fit_steps``). A counterfactual recomputes a descendant as
``f^-1(f(v; pa); pa')``, which is as accurate as the conditional CDFs, not as the likelihood: the
shipped models' SCMs, trained jointly at a constant learning rate, have about the same likelihood
as a refit and 1.5 to 3 times its counterfactual error on Morpho-MNIST
(``benchmarks/results/scm-fit-2026-12-07/notes.md``).

Example:
    >>> scm = AttributeSCM(graph)
    >>> noise = scm.abduct(pa)
    >>> pa_cf = scm.act(pa, {"thickness": lambda t: t + 1}, noise)  # intensity follows
"""

from __future__ import annotations

import math
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
        fit_steps: steps of :meth:`fit` that a model runs on its training attributes before its
            image mechanism trains; the SCM then stays fixed. 0: a model trains the SCM jointly,
            at its own learning rate (``scm_weight``), as cfzoo did before.
        fit_batch_size: samples per step of :meth:`fit`.
        fit_lr: peak learning rate of :meth:`fit`'s schedule.
    """

    def __init__(
        self,
        graph: CausalGraph,
        mechanism: str = "flow",
        analytic: Mapping[str, type[AnalyticMechanism]] | None = None,
        hidden: int = 64,
        transforms: int = 3,
        fit_steps: int = 500,
        fit_batch_size: int = 512,
        fit_lr: float = 2e-2,
    ):
        super().__init__()
        if fit_steps < 0 or fit_batch_size < 1 or not fit_lr > 0:
            raise ValueError(
                f"scm fit_steps must be >= 0, fit_batch_size >= 1 and fit_lr > 0; got {fit_steps}, "
                f"{fit_batch_size} and {fit_lr}"
            )
        self.fit_steps = int(fit_steps)
        self.fit_batch_size = int(fit_batch_size)
        self.fit_lr = float(fit_lr)
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

    def fit(
        self,
        attributes: Mapping[str, Tensor],
        steps: int | None = None,
        batch_size: int | None = None,
        lr: float | None = None,
        seed: int = 0,
    ) -> float:
        """Fit the learned mechanisms by maximum likelihood on ``attributes`` alone.

        Adam with a one-cycle schedule (5% linear warm-up, then cosine annealing to zero): the
        annealing is what makes the conditional CDFs, and with them the recomputed descendants of
        a counterfactual, accurate. Minibatches are drawn with a generator of their own, so the
        caller's random stream is untouched. The mechanisms' ``requires_grad`` is left as found.

        Args:
            attributes: name -> ``(N,)`` tensor in natural units, e.g. a training split's.
            steps, batch_size, lr: default to ``fit_steps``, ``fit_batch_size`` and ``fit_lr``.
            seed: of the minibatch draws.

        Returns:
            The mean negative log-likelihood of ``attributes`` after fitting (NaN when nothing is
            learned: every mechanism analytic, or no step).
        """
        steps = self.fit_steps if steps is None else steps
        batch_size = self.fit_batch_size if batch_size is None else batch_size
        lr = self.fit_lr if lr is None else lr
        parameters = list(self.parameters())
        if not parameters or steps <= 0:
            return float("nan")
        missing = sorted(set(self.graph.names) - set(attributes))
        if missing:
            raise ValueError(f"fitting the attribute SCM needs every attribute; missing {missing}")
        device = parameters[0].device
        data = {name: attributes[name].to(device) for name in self.graph.names}
        size = len(data[self.graph.names[0]])
        generator = torch.Generator().manual_seed(seed)
        trainable = [p.requires_grad for p in parameters]
        self.requires_grad_(True)
        optimiser = torch.optim.Adam(parameters, lr=lr)
        warm = max(1, round(0.05 * steps))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser,
            lambda step: (
                (step + 1) / warm
                if step < warm
                else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
            ),
        )
        with torch.enable_grad():
            for _ in range(steps):
                rows = torch.randint(size, (min(batch_size, size),), generator=generator)
                loss = self.nll({name: value[rows.to(device)] for name, value in data.items()})
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                optimiser.step()
                schedule.step()
        for parameter, flag in zip(parameters, trainable):
            parameter.requires_grad_(flag)
            parameter.grad = None
        with torch.no_grad():
            return float(self.nll(data))

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
