"""Invertible latent domain causal model (ILD): domain counterfactuals through a shared bijection
and a sparse set of domain-specific latent mechanisms.

After Zhou, Bai, Kulinski, Kocaoglu & Inouye, "Towards Characterizing Domain Counterfactuals for
Invertible Latent Causal Models" (ICLR 2024). The image is ``x = g(z; pa)`` with ``g`` an
invertible map shared by every domain, and the latent ``z`` follows a latent SCM whose mechanisms
depend on the domain only on an intervention set ``I`` of ``k`` latent variables::

    z_S = e_S                                          (shared: every domain)
    z_I = mu(z_S, d) + exp(s(z_S, d)) * e_I            (domain-specific)
    e ~ N(0, I)

The paper proves that every ILD model has a domain-counterfactually equivalent one whose
intervened variables come last in a topological order, and estimates it under exactly that
constraint: shared mechanisms for the first ``D - k`` variables, domain-specific ones for the last
``k``. cfzoo does the same, with two choices of ``g``:

- :class:`InvertibleLatentDomain` (``model=ild``): ``g`` is the flow family's conditional
  multi-scale flow (:class:`~models.flow.PixelFlow`), an exact bijection over all ``C * H * W``
  pixels;
- :class:`LatentDomainVAE` (``model=ild_vae``): ``g`` is the paper's pseudo-invertible map, a
  VAE's decoder with its encoder as ``g^-1``, over ``latent_dim`` variables.

In both, ``g`` is conditioned on the image's other parents (thickness, intensity, digit) but
**not** on the domain, so it is one map for all domains, and ``do`` on the other parents acts
through it. Then:

- ``I`` is the last ``k`` latent dimensions (in the flow's multi-scale layout the coarsest
  level's, where global structure such as orientation lives);
- the shared mechanisms are the identity: any shared invertible map between ``e_S`` and ``z_S``
  is absorbed into ``g``, so a learned one would add parameters without adding models;
- the domain-specific mechanism is an affine map of ``e_I`` whose shift and log-scale come from
  a small network of ``z_S`` and the domain (:class:`DomainMechanisms`: the paper's
  autoregressive dependence of the last ``k`` variables on the first ``D - k``; within ``I`` the
  variables are independent given ``z_S``).

Abduction is ``z = g^-1(x)``, ``e_S = z_S``, ``e_I = (z_I - mu) exp(-s)``; prediction the reverse
under the counterfactual domain and parents. do(domain) therefore changes ``z_I`` only: the
latents outside the intervention set stay as abducted, whatever ``k``. With ``k = D`` every latent
is domain-specific: the dense model the paper compares against.

**Departures from the paper**, and why:

- the flow variant's ``g`` is exact, so its abduction and round trips are exact
  (``Counterfactual.unclipped``) and it trains by exact likelihood. But in a latent laid out like
  the pixels a 90-degree turn moves every latent, so no small ``I`` holds it: its do(domain) stays
  the identity (``benchmarks/results/domains-2026-12-02/notes.md``);
- the VAE variant adds an independence term (``independence_weight``): the squared MMD between
  each domain's abducted noise and the other domains'. The ELBO alone lets the encoder keep the
  domain in ``z_S``, where the decoder reads it, at a cost of at most ``log(domains)`` nats, and
  do(domain) is then the identity again (``benchmarks/results/domains-2026-12-07/notes.md``);
- the VAE variant keeps the VAE's pixel residual, which the paper does not have, so that its
  null intervention is exact; a domain counterfactual drops it (``g(z')`` alone), since the
  residual is pinned to the factual domain's pixels (``benchmarks/results/domains-2026-12-08/``);
- ``I`` is configured (``intervention_dims``), not searched;
- ``domain_weight`` (flow variant) adds the model's own domain posterior to the likelihood (see
  :meth:`ILDImageMechanism.loss` for why); 0 is the paper's maximum likelihood.

Example:
    >>> ild = InvertibleLatentDomain(graph=dm.graph.to_dict(), image_shape=(1, 32, 32),
    ...                              dataset="morphomnist_domains", intervention_dims=16)
    >>> cf = ild.counterfactual(x, pa, {"domain": 1})  # the same digits, seen in domain 1
    >>> ild_vae = LatentDomainVAE(graph=dm.graph.to_dict(), image_shape=(1, 32, 32),
    ...                           dataset="morphomnist_domains", intervention_dims=4)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.base import CausalGraph
from models.flow import ConditionalFlow, FlowImageMechanism, per_dimension
from models.nn.gaussian import mmd, standard_normal_kl
from models.vae import ConditionalVAE, VAEMechanism, VAENoise

__all__ = [
    "DomainMechanisms",
    "ILDImageMechanism",
    "InvertibleLatentDomain",
    "LatentDomainNoise",
    "LatentDomainVAE",
    "LatentDomainVAEMechanism",
]


class DomainMechanisms(nn.Module):
    """The latent SCM's domain-specific mechanisms and the operations on it: ``z = (z_S, z_I)``
    with ``z_S = e_S`` and ``z_I = mu + exp(s) * e_I``, where ``(mu, s)`` is a function of the
    shared latents and the domain. Starts as the identity (zero last layer).

    Both ILD variants use it: over the flow's latent (:class:`ILDImageMechanism`) and over the
    autoencoder's (:class:`LatentDomainVAEMechanism`).

    Args:
        shared_dims: ``D - k``, the shared latents it reads.
        intervened_dims: ``k``.
        num_domains: the domain variable's classes.
        hidden: width of the network.
        max_log_scale: bound of ``|s|`` (soft, by ``tanh``), as the flow's couplings bound theirs.
    """

    def __init__(
        self,
        shared_dims: int,
        intervened_dims: int,
        num_domains: int,
        hidden: int,
        max_log_scale: float = 2.0,
    ):
        super().__init__()
        self.num_domains = num_domains
        self.intervened_dims = intervened_dims
        self.max_log_scale = max_log_scale
        self.net = nn.Sequential(
            nn.Linear(shared_dims + num_domains, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2 * intervened_dims),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, shared: Tensor, domain: Tensor) -> tuple[Tensor, Tensor]:
        """The shift ``mu`` and log-scale ``s`` of ``z_I``, each ``(B, k)``."""
        onehot = F.one_hot(domain.long(), self.num_domains).to(shared.dtype)
        shift, log_scale = self.net(torch.cat([shared, onehot], dim=1)).chunk(2, dim=1)
        return shift, self.max_log_scale * torch.tanh(log_scale / self.max_log_scale)

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(z_S, z_I)``: the shared latents and the intervention set (the last ``k``)."""
        return z[:, : -self.intervened_dims], z[:, -self.intervened_dims :]

    def to_noise(self, z: Tensor, domain: Tensor) -> tuple[Tensor, Tensor]:
        """Abduction: ``e = (z_S, (z_I - mu) exp(-s))`` and ``log |det de/dz|``, ``(B,)``."""
        shared, intervened = self.split(z)
        shift, log_scale = self(shared, domain)
        noise = (intervened - shift) * torch.exp(-log_scale)
        return torch.cat([shared, noise], dim=1), -log_scale.sum(1)

    def from_noise(self, e: Tensor, domain: Tensor) -> Tensor:
        """Prediction: ``z = (e_S, mu + exp(s) e_I)`` under ``domain``."""
        shared, noise = self.split(e)
        shift, log_scale = self(shared, domain)
        return torch.cat([shared, shift + torch.exp(log_scale) * noise], dim=1)

    def domain_scores(self, z: Tensor) -> Tensor:
        """``log p(z_I | z_S, d)`` for every domain ``d``, ``(B, domains)``: the only part of the
        latent's density that differs across domains."""
        scores = []
        for domain in range(self.num_domains):
            ids = torch.full((len(z),), domain, device=z.device, dtype=torch.long)
            noise, logdet = self.to_noise(z, ids)
            scores.append(-0.5 * (self.split(noise)[1] ** 2).sum(1) + logdet)
        return torch.stack(scores, dim=1)


def check_domain(graph, domain: str) -> list[str]:
    """Refuse a graph without a categorical domain among the image's parents; return the other
    image parents, the context of the shared map ``g``."""
    if domain not in graph or graph[domain].is_continuous:
        raise ValueError(
            f"ILD needs a categorical domain variable; '{domain}' is not one of the graph's "
            f"categorical variables ({', '.join(graph.names)}): set model.domain=NAME, or use "
            "data=morphomnist_domains"
        )
    if domain not in graph.image_parents:
        raise ValueError(f"'{domain}' is not a parent of the image, so no domain can change it")
    return [name for name in graph.image_parents if name != domain]


def check_intervention_dims(intervention_dims: int, dims: int) -> None:
    if not 1 <= intervention_dims <= dims:
        raise ValueError(
            f"intervention_dims must be between 1 and the latent size {dims}, got "
            f"{intervention_dims}"
        )


class ILDImageMechanism(FlowImageMechanism):
    """``x = g(z; pa without the domain)``, ``z`` from the sparse domain latent SCM.

    Args:
        graph: the causal graph; ``domain`` names a categorical image parent.
        image_shape: ``(C, H, W)``.
        domain: the domain variable.
        intervention_dims: ``k``, the size of the intervention set (1 to ``C * H * W``).
        domain_hidden: width of the domain mechanisms' network.
        domain_weight: weight of the model's own domain posterior in the loss (see :meth:`loss`;
            0: maximum likelihood alone).
        logit_alpha: margin of the logit pre-processing.
        **flow: :class:`~models.flow.MultiScaleFlow` settings.
    """

    def __init__(
        self,
        graph,
        image_shape: Sequence[int],
        domain: str = "domain",
        intervention_dims: int = 16,
        domain_hidden: int = 64,
        domain_weight: float = 0.0,
        logit_alpha: float = 0.05,
        **flow: Any,
    ):
        if domain_weight < 0 or not math.isfinite(domain_weight):
            raise ValueError(f"domain_weight must be a finite number >= 0, got {domain_weight}")
        context = check_domain(graph, domain)
        dims = int(torch.Size(image_shape).numel())
        check_intervention_dims(intervention_dims, dims)
        super().__init__(graph, image_shape, logit_alpha, context=context, **flow)
        self.domain = domain
        self.domain_weight = domain_weight
        self.mechanisms = DomainMechanisms(
            dims - intervention_dims,
            intervention_dims,
            graph[domain].num_classes,
            domain_hidden,
            flow.get("max_log_scale", 2.0),
        )

    def domain_scores(self, z: Tensor) -> Tensor:
        """``log p(x | d)`` for every domain ``d`` up to a constant shared by all of them,
        ``(B, domains)``: ``g`` is the same map for all, so only the intervention set's density
        differs."""
        return self.mechanisms.domain_scores(z)

    def loss(self, x: Tensor, pa: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The exact negative log-likelihood per dimension, plus ``domain_weight`` times the
        model's own domain posterior's cross-entropy (per dimension).

        The posterior is Bayes' rule on the model's densities under a uniform prior over domains,
        ``p(d | x) = p(x | d) / sum_d' p(x | d')``: no network of its own, only the latent SCM.
        Why: ``log p(x, d) = log p(x) + log p(d | x)``, and the second term is at most
        ``log(domains)`` nats of an image's thousands, so maximum likelihood alone barely teaches
        ``g`` to put the domain into the intervention set. Weighting it, as hybrid
        generative-discriminative flows do (Nalisnick et al., ICML 2019), keeps the model what it
        was and only changes what the fit attends to. It makes the intervention set predict the
        domain, but that is not enough for do(domain) to change the image's domain: see
        ``benchmarks/results/domains-2026-12-02/notes.md``, and the default of 0.
        """
        nll, z = self.nll_and_latent(x, pa)
        dims = x[0].numel()
        loss, logs = per_dimension(nll.mean(), dims)
        if self.domain_weight > 0:
            scores = self.domain_scores(z)
            target = pa[self.domain].long()
            cross_entropy = F.cross_entropy(scores, target)
            loss = loss + self.domain_weight * cross_entropy / dims
            logs["domain_ce"] = cross_entropy
            logs["domain_accuracy"] = (scores.argmax(1) == target).float().mean()
        return loss, logs

    def to_noise(self, z: Tensor, pa: Mapping[str, Tensor]) -> tuple[Tensor, Tensor]:
        return self.mechanisms.to_noise(z, pa[self.domain])

    def from_noise(self, u: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        return self.mechanisms.from_noise(u, pa[self.domain])

    def latent(self, x: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        """``z = g^-1(x)``, the latent the domain mechanisms act on, ``(B, D)``."""
        return self.flow(x, self.parents(pa))[0]


class InvertibleLatentDomain(ConditionalFlow):
    """The ILD model behind the counterfactual interface (see the module's docstring).

    Args:
        graph, image_shape, dataset, scm, scm_weight, lr, weight_decay, cf_finetune: see
            :class:`~models.base.CounterfactualModel`.
        domain: the categorical variable whose counterfactuals are domain counterfactuals.
        intervention_dims: ``k``, the latent variables whose mechanisms differ across domains.
        domain_hidden: width of the domain mechanisms' network.
        domain_weight: weight of the model's own domain posterior in the training loss (see
            :meth:`ILDImageMechanism.loss`; 0: maximum likelihood alone, as in the paper).
        scales, steps, hidden, max_log_scale, logit_alpha: the shared flow ``g``, as in
            :class:`~models.flow.ConditionalFlow`.
    """

    def __init__(
        self,
        graph: Mapping[str, Any],
        image_shape: Sequence[int],
        dataset: str = "unknown",
        domain: str = "domain",
        intervention_dims: int = 16,
        domain_hidden: int = 64,
        domain_weight: float = 0.0,
        scales: int = 3,
        steps: int = 8,
        hidden: int = 64,
        max_log_scale: float = 2.0,
        logit_alpha: float = 0.05,
        scm: Mapping[str, Any] | None = None,
        scm_weight: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        cf_finetune: Mapping[str, Any] | None = None,
    ):
        super().__init__(
            graph,
            image_shape,
            dataset,
            scales=scales,
            steps=steps,
            hidden=hidden,
            max_log_scale=max_log_scale,
            logit_alpha=logit_alpha,
            scm=scm,
            scm_weight=scm_weight,
            lr=lr,
            weight_decay=weight_decay,
            cf_finetune=cf_finetune,
        )

    mechanism_class = ILDImageMechanism

    def mechanism_settings(self) -> dict[str, Any]:
        names = ("domain", "intervention_dims", "domain_hidden", "domain_weight")
        return {**super().mechanism_settings(), **{name: self.hparams[name] for name in names}}


@dataclass
class LatentDomainNoise:
    """The image's exogenous noise under :class:`LatentDomainVAEMechanism`.

    Attributes:
        e: ``(B, latent_dim)``, the latent SCM's noise ``(e_S, e_I)`` of the abducted latent.
        residual: the pixel residual about the decoder mean, with that mean and scale
            (:meth:`~models.nn.likelihoods.DiscretizedGaussian.noise`), or ``None``.
        domain: ``(B,)``, the domain the residual was abducted in; prediction keeps it only
            where the domain is unchanged (see :meth:`LatentDomainVAEMechanism.predict`).
    """

    e: Tensor
    residual: dict[str, Tensor] | None = None
    domain: Tensor | None = None


class LatentDomainVAEMechanism(VAEMechanism):
    """ILD with the paper's pseudo-invertible map: an encoder ``q(z | x, pa)`` as ``g^-1`` and a
    decoder ``p(x | z, pa)`` as ``g``, both shared by every domain (neither sees it), and the
    sparse domain latent SCM (:class:`DomainMechanisms`) as the prior of ``z``.

    Training maximises the ELBO under that prior,
    ``E_q[log p(x | z)] - KL(q(z_S) || N(0, I)) - E_q(z_S)[KL(q(z_I) || p_d(z_I | z_S))]``, the
    second KL in closed form given a sample of ``z_S``. Why it puts the domain into the
    intervention set: an image's domain is known to the prior only there, so a domain-dependent
    code costs KL anywhere else; in the flow's pixel-shaped latent nothing rewards a sparse code.

    The ELBO alone barely cares where the domain is: a model whose decoder reads it from ``z_S``
    and ignores ``z_I`` gives up at most ``log(domains)`` nats of an image's thousands. So with
    ``independence_weight > 0`` the loss also asks what the model assumes, that the exogenous
    noise ``e = (z_S, e_I)`` has one law in every domain, so is independent of it: the squared
    MMD between each domain's abducted noise in the batch and the other domains'
    (:func:`~models.nn.gaussian.mmd`). With ``z_S`` blind to the domain, the decoder can only
    learn the domain from ``z_I``.

    Abduction: ``z`` from the posterior (its mean at ``temperature=0``), ``e = `` the latent SCM's
    noise of ``z`` under the factual domain, and the pixel residual as in the VAE. Prediction:
    ``z' = `` the latent SCM under the counterfactual domain, decoded under the counterfactual
    parents, plus the faded residual where the domain is unchanged. do(domain) moves ``z_I``
    only, and an image whose domain changes is the decoder mean ``g(z')``: the paper's domain
    counterfactual. The residual is pixel-pinned detail of the factual domain's rendering, and a
    domain's mechanism may move every pixel (a rotation); carried across, the factual detail lands
    where the turned digit is not (``benchmarks/results/domains-2026-12-08/notes.md``).

    Args:
        graph: the causal graph; ``domain`` names a categorical image parent.
        image_shape: ``(C, H, W)``.
        domain, intervention_dims, domain_hidden, independence_weight: see
            :class:`LatentDomainVAE`.
        latent_dim, widths, hidden, beta, temperature, residual: the VAE's
            (:class:`~models.vae.VAEMechanism`).
    """

    def __init__(
        self,
        graph,
        image_shape: Sequence[int],
        domain: str = "domain",
        intervention_dims: int = 4,
        domain_hidden: int = 64,
        independence_weight: float = 300.0,
        latent_dim: int = 16,
        widths: Sequence[int] = (32, 64, 128),
        hidden: int = 256,
        beta: float = 1.0,
        temperature: float = 0.0,
        residual: bool = True,
    ):
        if independence_weight < 0 or not math.isfinite(independence_weight):
            raise ValueError(
                f"independence_weight must be a finite number >= 0, got {independence_weight}"
            )
        context = check_domain(graph, domain)
        check_intervention_dims(intervention_dims, latent_dim)
        shared_map = CausalGraph(graph.variables, image_parents=context)
        super().__init__(
            shared_map, image_shape, latent_dim, widths, hidden, beta, temperature, residual
        )
        self.domain = domain
        self.independence_weight = independence_weight
        self.mechanisms = DomainMechanisms(
            latent_dim - intervention_dims,
            intervention_dims,
            graph[domain].num_classes,
            domain_hidden,
        )

    def kl(self, mean: Tensor, log_sd: Tensor, z: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        """``KL(q(z) || p_d(z))`` per sample, the intervention set's term at the sampled ``z_S``."""
        mean_shared, mean_intervened = self.mechanisms.split(mean)
        log_sd_shared, log_sd_intervened = self.mechanisms.split(log_sd)
        shift, log_scale = self.mechanisms(self.mechanisms.split(z)[0], pa[self.domain])
        intervened = (
            log_scale
            - log_sd_intervened
            + ((2 * log_sd_intervened).exp() + (mean_intervened - shift) ** 2)
            / (2 * (2 * log_scale).exp())
            - 0.5
        ).sum(1)
        return standard_normal_kl(mean_shared, log_sd_shared) + intervened

    def noise_dependence(self, z: Tensor, domain: Tensor) -> Tensor:
        """Mean over the batch's domains of the squared MMD between the noise ``e`` of that
        domain's images and of the others' (domains with fewer than 2 images on either side are
        left out): 0 when ``e`` is independent of the domain."""
        e, _ = self.mechanisms.to_noise(z, domain)
        terms = []
        for d in range(self.mechanisms.num_domains):
            inside = domain == d
            if 2 <= int(inside.sum()) <= len(e) - 2:
                terms.append(mmd(e[inside], e[~inside]))
        return torch.stack(terms).mean() if terms else z.new_zeros(())

    def loss(self, x: Tensor, pa: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The negative ELBO per dimension (``beta``-weighted KL), plus ``independence_weight``
        nats times the noise's dependence on the domain (:meth:`noise_dependence`). Logs the
        latent Bayes classifier's domain accuracy (how much of the domain ``z_I`` holds)."""
        loss, logs, mean, z = self.elbo(x, pa)
        domain = pa[self.domain].long()
        if self.independence_weight > 0:
            dependence = self.noise_dependence(z, domain)
            loss = loss + self.independence_weight * dependence / x[0].numel()
            logs["noise_mmd"] = dependence
        with torch.no_grad():
            guessed = self.mechanisms.domain_scores(mean).argmax(1)
            logs["domain_accuracy"] = (guessed == domain).float().mean()
        return loss, logs

    def latent(self, x: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        """``z``, the posterior mean: the latent the domain mechanisms act on, ``(B, D)``."""
        return self.encode(x, pa)[0]

    def abduct(
        self, x: Tensor, pa: Mapping[str, Tensor], temperature: float, residual: bool
    ) -> LatentDomainNoise:
        noise = super().abduct(x, pa, temperature, residual)  # the VAE's z and pixel residual
        e, _ = self.mechanisms.to_noise(noise.z, pa[self.domain])
        return LatentDomainNoise(e, noise.residual, pa[self.domain])

    def prior_noise(
        self, pa: Mapping[str, Tensor], temperature: float, residual: bool
    ) -> LatentDomainNoise:
        """``e ~ N(0, I)``, no pixel residual: a sample is the decoder mean of the latent SCM's
        ``z`` under ``pa``'s domain."""
        reference = next(iter(pa.values()))
        return LatentDomainNoise(
            torch.randn(len(reference), self.latent_dim, device=reference.device)
        )

    def predict(
        self,
        noise: LatentDomainNoise,
        pa: Mapping[str, Tensor],
        intervened: frozenset[str],
        temperature: float,
        residual: bool,
    ) -> Tensor:
        if not isinstance(noise, LatentDomainNoise):
            raise ValueError(
                f"{type(self).__name__} needs a LatentDomainNoise abducted by it, got "
                f"{type(noise).__name__}"
            )
        z = self.mechanisms.from_noise(noise.e, pa[self.domain])
        pixel_noise = noise.residual
        if pixel_noise is not None and noise.domain is not None:
            # a domain counterfactual is g(z') alone (why: the class docstring)
            kept = (pa[self.domain] == noise.domain).to(pixel_noise["residual"].dtype)
            kept = kept.view(-1, *[1] * (pixel_noise["residual"].dim() - 1))
            pixel_noise = {**pixel_noise, "residual": pixel_noise["residual"] * kept}
        return super().predict(VAENoise(z, pixel_noise), pa, intervened, temperature, residual)


class LatentDomainVAE(ConditionalVAE):
    """ILD with a pseudo-invertible map, the paper's practical model for images, behind the
    counterfactual interface (see :class:`LatentDomainVAEMechanism`).

    Where it departs from :class:`InvertibleLatentDomain`: ``g`` compresses the image into
    ``latent_dim`` variables, so abduction is approximate (the pixel residual makes the null
    intervention exact again, ``residual=True``) and round trips are not exact; in exchange the
    latent is small enough for a sparse shift to hold in it.

    Args:
        graph, image_shape, dataset, scm, scm_weight, lr, weight_decay, cf_finetune: see
            :class:`~models.base.CounterfactualModel`.
        domain: the categorical variable whose counterfactuals are domain counterfactuals.
        intervention_dims: ``k``, the latent variables whose mechanisms differ across domains
            (1 to ``latent_dim``; ``latent_dim``: the dense model).
        domain_hidden: width of the domain mechanisms' network.
        independence_weight: nats of loss per unit of the squared MMD between the noise of
            each domain and of the others (see :class:`LatentDomainVAEMechanism`; 0: the ELBO
            alone).
        latent_dim, widths, hidden, beta, temperature, residual: as in
            :class:`~models.vae.ConditionalVAE`.
    """

    def __init__(
        self,
        graph: Mapping[str, Any],
        image_shape: Sequence[int],
        dataset: str = "unknown",
        domain: str = "domain",
        intervention_dims: int = 4,
        domain_hidden: int = 64,
        independence_weight: float = 300.0,
        latent_dim: int = 16,
        widths: Sequence[int] = (32, 64, 128),
        hidden: int = 256,
        beta: float = 1.0,
        temperature: float = 0.0,
        residual: bool = True,
        scm: Mapping[str, Any] | None = None,
        scm_weight: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        cf_finetune: Mapping[str, Any] | None = None,
    ):
        super().__init__(
            graph,
            image_shape,
            dataset,
            latent_dim=latent_dim,
            widths=widths,
            hidden=hidden,
            beta=beta,
            temperature=temperature,
            residual=residual,
            scm=scm,
            scm_weight=scm_weight,
            lr=lr,
            weight_decay=weight_decay,
            cf_finetune=cf_finetune,
        )

    mechanism_class = LatentDomainVAEMechanism

    def mechanism_settings(self) -> dict[str, Any]:
        names = ("domain", "intervention_dims", "domain_hidden", "independence_weight")
        return {**super().mechanism_settings(), **{name: self.hparams[name] for name in names}}
