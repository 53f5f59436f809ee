"""The counterfactual interface every model family implements: abduct, act, predict.

Two layers, kept apart:

- an image **mechanism** (:class:`ImageMechanism`, a plain ``nn.Module``, one per family) holds
  the networks and implements ``abduct(x, pa) -> noise`` (a typed dataclass per family),
  ``predict(noise, pa, intervened) -> images`` and its training objective ``loss(x, pa)``; it
  needs no Lightning or Hydra;
- :func:`counterfactual` is the one implementation of the three steps (abduction, action through
  the attribute SCM, prediction) for every family and every caller. It is differentiable:
  counterfactual fine-tuning calls it with gradients; :meth:`CounterfactualModel.counterfactual`
  wraps it in ``inference_mode``;
- :class:`CounterfactualModel` (a LightningModule) wraps a mechanism and the attribute SCM for
  training (the mechanism's own objective, or counterfactual fine-tuning against a judge, after
  Ribeiro et al., ICML 2023, for every family), checkpointing and loading.

Example:
    >>> model = models.load_model("outputs/.../checkpoints/last.ckpt")
    >>> cf = model.counterfactual(batch["x"], batch["pa"], {"thickness": lambda t: t + 1})
    >>> cf.image, cf.parents["intensity"]  # intensity follows thickness through the SCM
    >>> cf = counterfactual(model.mechanism, model.scm, x, pa, do)  # the same, differentiable
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import pickle
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules import ANALYTIC_MECHANISMS
from datamodules.base import CausalGraph, Intervention, loader_attributes
from models.nn.augment import AUGMENTATIONS, augment
from models.scm import AttributeSCM

__all__ = [
    "Counterfactual",
    "CounterfactualModel",
    "Exogenous",
    "FineTuning",
    "ImageMechanism",
    "Samples",
    "counterfactual",
    "read_checkpoint",
    "sample",
]

log = logging.getLogger(__name__)

#: Key under which a checkpoint records its model class, for ``models.load_model``.
CHECKPOINT_CLASS_KEY = "cfzoo_model"
#: SHA-256 of the weights (every state_dict tensor's name, dtype, shape and bytes), checked on load.
CHECKPOINT_DIGEST_KEY = "cfzoo_state_sha256"
#: Entries that hold NaN on purpose: an unset fine-tuning target (and its format-1 name).
_NAN_SENTINELS = ("loss_target", "elbo_target")
#: Key of the checkpoint layout: 2 since the LightningModules wrap mechanisms (``net.*``).
CHECKPOINT_FORMAT_KEY = "cfzoo_format"
CHECKPOINT_FORMAT = 2
#: Key of the judge a fine-tuned model was trained against (its source), so none scores it.
TRAINED_AGAINST_KEY = "cfzoo_trained_against"
#: Key of the data a model was trained on (:func:`data_spec`: its datamodule's ``split_spec``), so
#: that fine-tuning, resuming and evaluating it on other data (another split) are refused.
DATA_SPEC_KEY = "cfzoo_data_spec"


@dataclass
class Exogenous:
    """The exogenous noise behind observed images and attributes.

    Attributes:
        image: the image mechanism's noise, a dataclass of its family (e.g. ``VAENoise``).
        attributes: each attribute's noise under the attribute SCM.
    """

    image: Any
    attributes: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Counterfactual:
    """The answer to a counterfactual query.

    Attributes:
        image: ``(B, C, H, W)`` counterfactual images in [0, 1]: what to show and score.
        parents: the counterfactual attributes (natural units).
        factual_image: the input images.
        factual_parents: the input attributes.
        noise: the abducted exogenous noise (the attributes' noise only for the variables that
            were recomputed; ``model.abduct`` gives all of it).
        do: the interventions, resolved to one tensor per intervened variable.
        unclipped: the mechanism's own output before clipping to [0, 1]. It differs from
            ``image`` only for the bijective families (flow, ILD), whose inverse can stray just
            outside [0, 1] (see ``ImageMechanism.pixel_range``). Feed it back to
            ``counterfactual`` for an exact round trip: abduction from the clipped ``image``
            recovers a slightly different noise. Exact to float error for every finite logit
            the flow's inverse reaches (``PixelFlow.to_logit``: a logarithmic tail past the
            sigmoid keeps far logits in float64 pixels).
    """

    image: Tensor
    parents: dict[str, Tensor]
    factual_image: Tensor
    factual_parents: dict[str, Tensor]
    noise: Exogenous
    do: dict[str, Tensor]
    unclipped: Tensor | None = None


@dataclass
class Samples:
    """Images drawn from a model (the first two rungs of Pearl's ladder).

    Attributes:
        image: ``(n, C, H, W)`` images in [0, 1].
        parents: the attributes they were drawn under (natural units).
        do: the interventions, resolved to one tensor per intervened variable (empty when
            observational).
    """

    image: Tensor
    parents: dict[str, Tensor]
    do: dict[str, Tensor]


class ImageMechanism(nn.Module):
    """Base of every family's image mechanism: a plain module, usable without Lightning.

    A family implements:

    - ``abduct(x, pa, **options) -> noise``: the image's exogenous noise, a dataclass;
    - ``predict(noise, pa, intervened, **options) -> images``: the images in [0, 1] that the
      noise gives under attributes ``pa``; ``intervened`` names the attributes set by ``do``
      (the others in ``pa`` are factual or recomputed by the attribute SCM);
    - ``loss(x, pa) -> (loss, logs)``: its training objective, per dimension.

    Args:
        **option_defaults: the family's counterfactual-time options and their defaults.
    """

    #: The oracle identifies samples by their dataset ids, handed to ``abduct`` as ``sample_ids``.
    uses_sample_ids: bool = False

    #: Whether ``abduct`` takes float64 images as they are (the bijections: their unclipped
    #: float64 output abducts exactly); the others get float32.
    exact_inputs: bool = False

    @property
    def pixel_range(self) -> tuple[float, float]:
        """The values ``predict`` may return and ``abduct`` accepts: [0, 1] for most families; a
        bijection's wider range, so that its own unclipped outputs abduct exactly."""
        return (0.0, 1.0)

    def __init__(self, **option_defaults: Any):
        super().__init__()
        self.option_defaults = dict(option_defaults)

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """Every option, from ``options`` or its default; unknown names are an error."""
        unknown = set(options) - set(self.option_defaults)
        if unknown:
            accepted = ", ".join(self.option_defaults) or "none"
            raise ValueError(
                f"{type(self).__name__} has no counterfactual option(s) {sorted(unknown)}; "
                f"it accepts: {accepted}"
            )
        for name, value in options.items():
            _check_option(type(self).__name__, name, value, self.option_defaults[name])
        return {name: options.get(name, default) for name, default in self.option_defaults.items()}

    def abduct(self, x: Tensor, pa: Mapping[str, Tensor], **options: Any) -> Any:
        raise NotImplementedError

    def predict(
        self, noise: Any, pa: Mapping[str, Tensor], intervened: frozenset[str], **options: Any
    ) -> Tensor:
        raise NotImplementedError

    def loss(self, x: Tensor, pa: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError(f"{type(self).__name__} is not trainable")

    @property
    def can_sample(self) -> bool:
        """Whether the mechanism has a prior to draw images from (:meth:`prior_noise`)."""
        return type(self).prior_noise is not ImageMechanism.prior_noise

    def prior_noise(self, pa: Mapping[str, Tensor], **options: Any) -> Any:
        """Noise drawn from the mechanism's prior, one per sample of ``pa``: ``predict`` turns it
        into images of ``p(x | pa)``.

        Raises:
            NotImplementedError: the mechanism has no prior to draw from.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no prior over its noise, so it can't sample images: "
            "sample a learned family (vae, hvae, flow, diffae)"
        )


#: How far outside [0, 1] a pixel may stray (float rounding of an earlier model's output).
PIXEL_TOLERANCE = 1e-3


def check_images(x: Tensor, pixel_range: tuple[float, float] = (0.0, 1.0)) -> None:
    """Images are floating point, finite and in [0, 1] (or a mechanism's ``pixel_range``); the
    error says which and how to fix it."""
    if not x.is_floating_point():
        raise ValueError(
            f"images must be floating point in [0, 1], got {x.dtype}: convert 8-bit images with "
            "x.float() / 255"
        )
    finite = torch.isfinite(x).flatten(1).all(1)
    if not finite.all():
        rows = (~finite).nonzero().flatten()[:5].tolist()
        raise ValueError(f"images {rows} hold NaN or infinite pixels")
    low, high = float(x.min()), float(x.max())
    bottom, top = pixel_range
    if low < bottom - PIXEL_TOLERANCE or high > top + PIXEL_TOLERANCE:
        hint = ": 0-255 images need x / 255" if high > 2 else ""
        wider = (
            f" (this model also takes its own unclipped outputs, in [{bottom:.4g}, {top:.4g}])"
            if pixel_range != (0.0, 1.0)
            else ""
        )
        raise ValueError(
            f"images must be in [0, 1], got pixels from {low:.4g} to {high:.4g}{hint}{wider}"
        )


def _check_option(family: str, name: str, value: Any, default: Any) -> None:
    """An option takes its default's type; a number is finite and not negative (every option of
    the families is a switch, a count, a temperature or a scale)."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{family} option {name} must be true or false, got {value!r}")
        return
    if isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        kind = "a whole number"
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
        kind = "a finite number"
    else:
        return
    if not ok or value < 0:
        raise ValueError(f"{family} option {name} must be {kind}, at least 0; got {value!r}")


def abduct_image(
    mechanism: ImageMechanism,
    x: Tensor,
    pa: Mapping[str, Tensor],
    sample_ids: Tensor | None,
    options: Mapping[str, Any],
) -> Any:
    """The mechanism's abduction, handed the sample ids only if it identifies samples by them."""
    extra = {"sample_ids": sample_ids} if mechanism.uses_sample_ids else {}
    return mechanism.abduct(x, pa, **extra, **options)


def counterfactual(
    mechanism: ImageMechanism,
    scm: AttributeSCM,
    x: Tensor,
    pa: Mapping[str, Tensor],
    do: Mapping[str, Intervention],
    *,
    sample_ids: Tensor | None = None,
    **options: Any,
) -> Counterfactual:
    """Abduction, action and prediction: the one implementation of the three steps.

    Differentiable in the prediction step. Abduction runs without gradients: it is inference,
    trained by the mechanism's own objective only (letting a judge's loss reach the encoder would
    bend the posterior towards whatever noise fools the judge; for a flow, no gradient passes
    through its forward pass). The attribute SCM runs as it is (freeze it to keep it fixed).

    Args:
        mechanism: a family's image mechanism.
        scm: the attribute SCM.
        x: ``(B, C, H, W)`` images in [0, 1], on the mechanism's device.
        pa: their attributes, ``(B,)`` tensors in natural units.
        do: name -> value per sample (tensor), scalar, or function of the factual value.
        sample_ids: the samples' dataset ids, for mechanisms that identify samples by them (the
            oracle); ignored by the others.
        **options: the mechanism's counterfactual-time options.
    """
    options = mechanism.resolve_options(options)
    resolved = scm.graph.resolve(pa, do)
    with torch.no_grad():
        image_noise = abduct_image(mechanism, x, pa, sample_ids, options)
    # The attributes' noise is abducted lazily by act(): only the recomputed descendants need it.
    noise = Exogenous(image=image_noise, attributes={})
    parents = scm.act(pa, resolved, noise.attributes)
    unclipped = mechanism.predict(image_noise, parents, frozenset(resolved), **options)
    return Counterfactual(
        image=unclipped.clamp(0.0, 1.0).float(),
        parents=parents,
        factual_image=x,
        factual_parents=dict(pa),
        noise=noise,
        do=resolved,
        unclipped=unclipped,
    )


def sample(
    mechanism: ImageMechanism,
    scm: AttributeSCM,
    n: int | None = None,
    *,
    pa: Mapping[str, Tensor] | None = None,
    do: Mapping[str, Intervention] | None = None,
    device: torch.device | str | None = None,
    **options: Any,
) -> Samples:
    """Observational and interventional samples: the ladder's first two rungs.

    Without ``pa``, the attributes are drawn from the attribute SCM (ancestral sampling). ``do``
    then sets the intervened ones and every descendant is recomputed from the same draw of the
    attributes' noise: a sample of ``p(pa | do)``. With ``pa``, the images are drawn under those
    attributes (``do`` applied to them, descendants recomputed from their abducted noise). The
    image's noise comes from the mechanism's prior (:meth:`ImageMechanism.prior_noise`) and is
    turned into images by its ``predict``, as a counterfactual's is.

    Args:
        n: number of samples (without ``pa``).
        pa: attributes to draw images under, ``(n,)`` tensors in natural units.
        do: name -> value per sample (tensor), scalar, or function of the drawn value.
        device: where the attributes are drawn (without ``pa``).
        **options: the mechanism's options (e.g. the diffusion autoencoder's ``steps``).
    """
    options = mechanism.resolve_options(options)
    if "residual" in options:  # a sample has no factual image whose pixel residual could stay
        options["residual"] = False
    if pa is None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"sample needs a number of images n >= 1 (or pa), got {n!r}")
        noise = {name: m.sample_noise(n, device) for name, m in scm.mechanisms.items()}
        pa = scm.predict(noise)
    else:
        noise = None  # act() abducts what the descendants of do need
    resolved = scm.graph.resolve(pa, do or {})
    parents = scm.act(pa, resolved, noise) if resolved else dict(pa)
    image_noise = mechanism.prior_noise(parents, **options)
    # every attribute is "set" for a sample: the mechanism takes them all as given
    image = mechanism.predict(image_noise, parents, frozenset(parents), **options)
    return Samples(image=image.clamp(0.0, 1.0).float(), parents=parents, do=resolved)


#: The most one step's likelihood violation (nats per dimension) moves the fine-tuning multiplier:
#: 400 times the default slack. One batch whose loss explodes must not set the multiplier for the
#: rest of a run: a flow_cf stage's first steps once lifted it to 6.7 million, where the judge's
#: loss no longer counted (benchmarks/results/zoo-2026-12-06-flow_cf/notes.md).
MAX_VIOLATION = 1.0


@dataclass(frozen=True)
class FineTuning:
    """Settings of counterfactual fine-tuning (Ribeiro, Xia, Monteiro, Pawlowski & Glocker, ICML
    2023, Sec. 3.3), for every family.

    The loss is the judge's loss on differentiable counterfactuals plus
    ``lagrange * (likelihood loss - (its pre-trained value + slack))``; the multiplier, kept
    ``>= 0``, follows gradient ascent with rate ``lagrange_lr``, each step's violation capped at
    :data:`MAX_VIOLATION` (a NaN one counts as that cap). Abduction and the attribute SCM
    stay frozen.

    Attributes:
        init_ckpt: the pre-trained model of the same family.
        judge_ckpt: the judge to train against; ``None``: the dataset's cached fine-tuning judge
            (``metrics.judges``, role ``finetune``), trained on first use.
        judge: settings that replace the fine-tuning judge's (``metrics.judges.SETTINGS``) when
            it is found or trained, e.g. ``{interventional: [thickness, intensity]}``: a judge
            trained on images where those attributes vary independently, which the dataset's
            true mechanism renders (synthetic data only).
        slack: nats per dimension the likelihood loss may lose.
        lagrange_lr: step of the multiplier's gradient ascent.
        lagrange_init: the multiplier's start.
        interventions: the attributes a fine-tuning step may intervene on (one per step),
            with the probability of each: a list of names (equal weights) or a mapping of names
            to weights; ``None``: every attribute the model may intervene on, equally often.
        augment: a random variation of each counterfactual before the judge reads it
            (:mod:`models.nn.augment`: ``"none"``, ``"shift"`` or ``"affine"``), so that the
            judge's loss can't be met through features only that one judge reads, pixel-exact
            ones, which another judge does not see.
        anchor: weight of a proximal term beside the judge's loss: the mean absolute difference,
            on the 0-255 scale, between the counterfactual and the pre-trained model's
            counterfactual of the same intervention (a frozen copy of ``init_ckpt``'s evaluated
            weights). Fine-tuning then pays for every pixel it moves, so it moves those that the
            judge's loss pays for. One weight for every intervention, or a mapping of attribute
            names to weights, the weight of the step's intervened attribute (0 for a name it
            leaves out): an intervention meant to move many pixels, such as do(digit), can go
            unanchored while the others are held. 0: off (Ribeiro et al.'s loss).
    """

    init_ckpt: str | None = None
    judge_ckpt: str | None = None
    judge: dict[str, Any] | None = None
    slack: float = 0.0025
    lagrange_lr: float = 1.0
    lagrange_init: float = 1.0
    interventions: dict[str, float] | None = None
    augment: str = "none"
    anchor: float | dict[str, float] = 0.0

    #: names of checkpoints written before the fine-tuning task was shared by every family
    _RENAMED = {"elbo_slack": "slack", "predictor_ckpt": "judge_ckpt"}

    @classmethod
    def parse(cls, settings: Mapping[str, Any] | None) -> FineTuning | None:
        if not settings:
            return None
        settings = {cls._RENAMED.get(k, k): v for k, v in settings.items()}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(f"cf_finetune has no setting(s) {unknown}; it takes {sorted(known)}")
        if settings.get("interventions") is not None:
            settings["interventions"] = cls._intervention_weights(settings["interventions"])
        if isinstance(settings.get("anchor"), Mapping):
            settings["anchor"] = {str(k): v for k, v in settings["anchor"].items()}
        judge = settings.get("judge")
        if judge is not None and not isinstance(judge, Mapping):
            raise ValueError(
                "cf_finetune's judge must be a mapping of judge settings, e.g. "
                f"{{interventional: [thickness, intensity]}}; got {judge!r}"
            )
        settings["judge"] = dict(judge) if judge else None
        parsed = cls(**settings)
        if parsed.augment not in AUGMENTATIONS:
            raise ValueError(
                f"cf_finetune's augment must be one of {AUGMENTATIONS}, got {parsed.augment!r}"
            )
        if min(parsed.slack, parsed.lagrange_lr, parsed.lagrange_init) < 0:
            raise ValueError(
                f"cf_finetune's slack, lagrange_lr and lagrange_init must be >= 0, got {parsed}"
            )
        if not all(_is_weight(w) for w in parsed._anchor_weights()):
            raise ValueError(
                "cf_finetune's anchor must be >= 0: one weight, e.g. 0.3, or a mapping of "
                f"attribute names to weights, e.g. {{thickness: 0.3, intensity: 0.3}}; got "
                f"{parsed.anchor!r}"
            )
        return parsed

    def anchor_weight(self, name: str) -> float:
        """The anchor's weight on a step that intervenes on ``name``."""
        if isinstance(self.anchor, dict):
            return float(self.anchor.get(name, 0.0))
        return float(self.anchor)

    @property
    def anchored(self) -> bool:
        """Whether any intervention is anchored."""
        return any(w > 0 for w in self._anchor_weights())

    def _anchor_weights(self) -> list[Any]:
        return list(self.anchor.values()) if isinstance(self.anchor, dict) else [self.anchor]

    @staticmethod
    def _intervention_weights(interventions: Any) -> dict[str, float]:
        """A list of names (equal weights) or a mapping name -> weight, as name -> weight."""
        if isinstance(interventions, Mapping):
            weights = {str(k): v for k, v in interventions.items()}
        elif isinstance(interventions, Sequence) and not isinstance(interventions, str):
            weights = {str(name): 1.0 for name in interventions}
        else:
            weights = {}
        valid = all(_is_weight(w) for w in weights.values())
        if not weights or not valid or not sum(weights.values()) > 0:
            raise ValueError(
                "cf_finetune's interventions must be a list of attribute names, e.g. [digit, "
                "thickness], or a mapping of names to weights >= 0 that are not all 0, e.g. "
                f"{{digit: 2, thickness: 1, intensity: 1}}; got {interventions!r}"
            )
        return {name: float(w) for name, w in weights.items()}


def _is_weight(value: Any) -> bool:
    """A finite number >= 0 (not a bool)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return number and math.isfinite(value) and value >= 0


def judge_loss(judge: nn.Module, images: Tensor, target: Mapping[str, Tensor]) -> Tensor:
    """The judge's training loss of ``images`` against attributes ``target``, differentiable in the
    images: L1 of each normalised continuous attribute plus cross-entropy of each categorical one.

    Every attribute is scored, so fine-tuning also learns to keep the non-intervened ones.
    """
    raw = judge._raw(images)
    losses = []
    for variable in judge.graph.variables:
        output, value = raw[variable.name], target[variable.name]
        if variable.is_continuous:
            losses.append((output.squeeze(-1) - variable.normalise(value.float())).abs().mean())
        else:
            losses.append(F.cross_entropy(output, value.long()))
    return torch.stack(losses).sum()


class CounterfactualModel(pl.LightningModule):
    """A LightningModule that wraps a family's image mechanism and the attribute SCM.

    Training: the mechanism's objective (ELBO, exact likelihood or denoising) plus the attributes'
    NLL; with ``cf_finetune``, counterfactual fine-tuning against a judge (see
    :class:`FineTuning`; attach the judge with :meth:`attach_judge`, as ``train.py`` does).

    Args:
        graph: the datamodule's causal graph, as ``CausalGraph.to_dict()`` (plain data).
        image_shape: ``(C, H, W)`` of the images.
        dataset: the datamodule's name, so a checkpoint can't be scored on another dataset.
        scm: options of the :class:`AttributeSCM` (``mechanism``, ``hidden``, ``transforms``,
            ``fit_steps``, ...). With ``fit_steps > 0`` (the default) the SCM is fitted apart on
            the training split's attributes when training starts from scratch
            (:meth:`on_train_start`), and is fixed while the image mechanism trains.
        scm_weight: with ``scm.fit_steps=0``: weight of the attributes' NLL in the joint loss (0
            leaves the SCM untrained).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        ema_decay: keep an exponential moving average of the mechanism's weights with this decay
            and use it outside training (0 disables). The decay warms up as
            ``min(ema_decay, (1 + n) / (10 + n))`` after ``n`` updates, so a short run's average
            is not dominated by the initial weights (0.999 ** 500 = 0.61 of them without it).
        skip_grad_norm: skip an optimiser update whose gradient norm exceeds this (or is not
            finite), as VDVAE does against rare loss spikes; ``None`` never skips.
        cf_finetune: :class:`FineTuning` settings as a mapping, or ``None`` for the family's own
            training.
    """

    #: Variables ``do`` may name (all of the graph's unless a model restricts them).
    intervenable: tuple[str, ...] | None = None

    def __init__(
        self,
        graph: Mapping[str, Any],
        image_shape: Sequence[int],
        dataset: str = "unknown",
        scm: Mapping[str, Any] | None = None,
        scm_weight: float = 1.0,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        ema_decay: float = 0.0,
        skip_grad_norm: float | None = None,
        cf_finetune: Mapping[str, Any] | None = None,
    ):
        super().__init__()
        self.graph = CausalGraph.from_dict(graph)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.dataset_name = dataset
        self.scm = AttributeSCM(
            self.graph, analytic=ANALYTIC_MECHANISMS.get(dataset), **(scm or {})
        )
        if self.scm.fit_steps > 0:
            self.scm.requires_grad_(False)  # fitted apart by on_train_start, then fixed
        self.scm_weight = scm_weight
        self.lr = lr
        self.weight_decay = weight_decay
        self.ema_decay = ema_decay
        self.skip_grad_norm = skip_grad_norm
        self.finetuning = FineTuning.parse(cf_finetune)
        self.ema_net: ImageMechanism | None = None
        self.register_buffer("skipped_updates", torch.zeros((), dtype=torch.long))
        # counted in the checkpoint, so a resumed run continues the same warm-up
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        lagrange = self.finetuning.lagrange_init if self.finetuning else 1.0
        self.register_buffer("lagrange", torch.tensor(float(lagrange)))
        self.register_buffer("loss_target", torch.tensor(float("nan")))
        # The judge of fine-tuning: kept out of the module tree, so it is neither trained nor saved.
        self.__dict__["_judge"] = None
        # The pre-trained mechanism that FineTuning.anchor measures drift from (set up by setup).
        self.__dict__["_anchor"] = None
        #: The spec of the data it was trained on (:func:`data_spec`; set by a fit's setup and by
        #: loading), which checkpoints record; ``None``: unknown.
        self.trained_on: dict[str, Any] | None = None
        #: The source of the judge this model was fine-tuned against (``None``: never fine-tuned).
        self.trained_against: str | None = None

    def set_mechanism(self, net: ImageMechanism) -> None:
        """Install the family's mechanism (and its EMA copy); call at the end of ``__init__``."""
        self.net = net
        if self.ema_decay > 0:
            self.ema_net = copy.deepcopy(net).requires_grad_(False)

    # -- the mechanism ----------------------------------------------------------------------------
    @property
    def mechanism(self) -> ImageMechanism:
        """The mechanism to use now: the EMA weights outside training, when there are some."""
        return self.ema_net if self.ema_net is not None and not self.training else self.net

    @property
    def options(self) -> tuple[str, ...]:
        """Counterfactual-time options of the family."""
        return tuple(self.net.option_defaults)

    def option_defaults(self) -> dict[str, Any]:
        return dict(self.net.option_defaults)

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        return self.net.resolve_options(options)

    # -- the interface ----------------------------------------------------------------------------
    @torch.no_grad()
    def abduct(
        self,
        x: Tensor,
        pa: Mapping[str, Tensor],
        *,
        sample_ids: Tensor | None = None,
        **options: Any,
    ) -> Exogenous:
        """The exogenous noise of the images and of their attributes."""
        x, pa = self.check_inputs(x, pa)
        mechanism = self.mechanism
        options = mechanism.resolve_options(options)
        return Exogenous(
            image=abduct_image(mechanism, x, pa, sample_ids, options),
            attributes=self.scm.abduct(pa),
        )

    @torch.inference_mode()
    def counterfactual(
        self,
        x: Tensor,
        pa: Mapping[str, Tensor],
        do: Mapping[str, Intervention],
        *,
        sample_ids: Tensor | None = None,
        **options: Any,
    ) -> Counterfactual:
        """Answer "what would ``x`` look like under ``do``?" by abduction, action and prediction.

        :func:`counterfactual` under ``inference_mode``, after checking the inputs.

        Args:
            x: ``(B, C, H, W)`` images in [0, 1].
            pa: their attributes, ``(B,)`` tensors in natural units.
            do: name -> value per sample (tensor), scalar, or function of the factual value.
            sample_ids: the samples' dataset ids (``batch["index"]``), which the oracle needs.
            **options: the family's counterfactual-time options (see ``options``).

        Raises:
            ValueError: wrong image shape, missing or out-of-support attributes, unknown names,
                wrong shapes or out-of-support values in ``do``, unknown options.
        """
        x, pa = self.check_inputs(x, pa)
        if self.intervenable is not None and not set(do) <= set(self.intervenable):
            unsupported = sorted(set(do) - set(self.intervenable))
            raise ValueError(
                f"{type(self).__name__} can't intervene on {unsupported}; it supports "
                f"{', '.join(self.intervenable)}"
            )
        return counterfactual(self.mechanism, self.scm, x, pa, do, sample_ids=sample_ids, **options)

    @torch.inference_mode()
    def sample(
        self,
        n: int | None = None,
        *,
        pa: Mapping[str, Tensor] | None = None,
        do: Mapping[str, Intervention] | None = None,
        **options: Any,
    ) -> Samples:
        """Draw images: observational (attributes from the SCM), given ``pa``, or under ``do``.

        ``model.sample(16)``, ``model.sample(16, do={"digit": 3})``, ``model.sample(pa=pa)``;
        see :func:`sample`.

        Raises:
            ValueError: no ``n`` or ``pa``, attributes or interventions out of support or of
                unknown names, unknown options.
            NotImplementedError: a reference model (the oracle, the identity) has no prior.
        """
        if pa is not None:
            size = len(torch.as_tensor(next(iter(pa.values()))))
            if n is not None and n != size:
                raise ValueError(f"sample got n={n} and pa of {size} samples: pass one of them")
            pa = self.check_attributes(pa, size)
        if do and self.intervenable is not None and not set(do) <= set(self.intervenable):
            unsupported = sorted(set(do) - set(self.intervenable))
            raise ValueError(
                f"{type(self).__name__} can't intervene on {unsupported}; it supports "
                f"{', '.join(self.intervenable)}"
            )
        return sample(self.mechanism, self.scm, n, pa=pa, do=do, device=self.device, **options)

    def check_inputs(self, x: Tensor, pa: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Validate and move images and attributes to the model's device."""
        x = torch.as_tensor(x)
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"expected images of shape (B, {', '.join(map(str, self.image_shape))}) in [0, 1] "
                f"(this model was trained on '{self.dataset_name}'), got {tuple(x.shape)}"
            )
        check_images(x, self.net.pixel_range)
        # float64 stays for a mechanism that asks (a bijection's unclipped output, fed back)
        dtype = (
            torch.float64 if x.dtype == torch.float64 and self.net.exact_inputs else torch.float32
        )
        return x.to(self.device, dtype), self.check_attributes(pa, len(x))

    def check_attributes(self, pa: Mapping[str, Tensor], size: int) -> dict[str, Tensor]:
        """Validate ``size`` samples' attributes and move them to the model's device."""
        missing = [name for name in self.graph.names if name not in pa]
        if missing:
            raise ValueError(
                f"pa lacks attribute(s) {missing}; the model needs {', '.join(self.graph.names)}"
            )
        checked = {}
        for variable in self.graph.variables:
            value = torch.as_tensor(pa[variable.name])
            if tuple(value.shape) != (size,):
                raise ValueError(
                    f"pa['{variable.name}'] must have shape ({size},), one value per sample, "
                    f"got {tuple(value.shape)}"
                )
            checked[variable.name] = variable.check(value, what="pa").to(self.device)
        return checked

    # -- the attribute SCM, fitted apart --------------------------------------------------------
    def on_train_start(self) -> None:
        # After Lightning's Timer starts, so a wall-time budget (trainer.max_time) includes it.
        # Not on a resumed run, whose SCM comes from its checkpoint, nor when fine-tuning, which
        # keeps the pre-trained one.
        if self.scm.fit_steps <= 0 or self.finetuning is not None or self.trainer.ckpt_path:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "train_attributes"):
            attributes = datamodule.train_attributes()
        else:  # plain dataloaders: one pass over them
            attributes = loader_attributes(self.trainer.train_dataloader)
        start = time.perf_counter()
        nll = self.scm.fit(attributes)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for parameter in self.scm.parameters():  # every rank keeps rank 0's fit
                torch.distributed.broadcast(parameter.data, src=0)
        log.info(
            "Fitted the attribute SCM apart: %d steps on %d training samples in %.1f s, NLL %.3f",
            self.scm.fit_steps,
            len(next(iter(attributes.values()))),
            time.perf_counter() - start,
            nll,
        )

    # -- EMA and update skipping ------------------------------------------------------------------
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema_net is None:
            return
        with torch.no_grad():
            n = float(self.ema_updates)
            decay = min(self.ema_decay, (1.0 + n) / (10.0 + n))
            ema = list(self.ema_net.parameters())
            torch._foreach_lerp_(ema, list(self.net.parameters()), 1.0 - decay)
            self.ema_updates += 1
            for ema_buffer, buffer in zip(self.ema_net.buffers(), self.net.buffers()):
                ema_buffer.copy_(buffer)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # Runs after backward and before clipping and the step. Dropping every gradient makes
        # the optimiser skip all parameters (AdamW leaves a parameter without .grad untouched,
        # its moments included): the update is skipped, not merely clipped.
        if self.skip_grad_norm is None:
            return
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)
        if not torch.isfinite(norm) or norm > self.skip_grad_norm:
            for parameter in self.parameters():
                parameter.grad = None
            self.skipped_updates += 1
            self.log("train/skipped_updates", self.skipped_updates.float(), on_step=True)

    # -- training ---------------------------------------------------------------------------------
    def _step(self, batch: Mapping[str, Any], stage: str) -> Tensor:
        loss, logs = self.mechanism.loss(batch["x"], batch["pa"])
        if self.finetuning is not None and stage == "train":
            loss, logs = self.finetuning_loss(batch, loss, logs)
        if self.scm_weight > 0 and any(p.requires_grad for p in self.scm.parameters()):
            scm_nll = self.scm.nll(batch["pa"])
            # Disjoint parameters: the weight only matters through gradient clipping and logs.
            loss = loss + self.scm_weight * scm_nll
            logs["scm_nll"] = scm_nll
        logs["loss"] = loss
        self.log_dict(
            {f"{stage}/{k}": v.detach() for k, v in logs.items()},
            prog_bar=stage == "train",
            on_step=stage == "train",
            on_epoch=True,
            batch_size=len(batch["x"]),
            sync_dist=True,  # under DDP: every rank's batches, not one rank's
        )
        return loss

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> Tensor:
        return self._step(batch, "test")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)

    # -- counterfactual fine-tuning ---------------------------------------------------------------
    def attach_judge(self, judge: nn.Module, source: str) -> None:
        """Set the (frozen) judge of counterfactual fine-tuning, and where it came from."""
        if judge.graph.names != self.graph.names:
            raise ValueError(
                f"the judge {source} predicts {judge.graph.names}, the model has {self.graph.names}"
            )
        self.__dict__["_judge"] = judge.requires_grad_(False).eval()
        self.trained_against = str(source)

    def setup(self, stage: str) -> None:
        if stage != "fit":
            return
        # once per fit: a spec may read files (a folder's), and every checkpoint records it
        self.trained_on = data_spec(getattr(self._trainer, "datamodule", None))
        if self.finetuning is None:
            return
        settings = self.finetuning
        if not settings.init_ckpt:
            raise ValueError(
                f"counterfactual fine-tuning needs model.cf_finetune.init_ckpt=PATH (a trained "
                f"{type(self).__name__})"
            )
        if self._judge is None:
            raise ValueError(
                "counterfactual fine-tuning needs a judge: call model.attach_judge(judge, source) "
                "before trainer.fit (train.py attaches the dataset's fine-tuning judge)"
            )
        checkpoint = read_checkpoint(settings.init_ckpt)
        if checkpoint.get(CHECKPOINT_CLASS_KEY) != type(self).__name__:
            raise ValueError(
                f"{settings.init_ckpt} holds a {checkpoint.get(CHECKPOINT_CLASS_KEY)}, not a "
                f"{type(self).__name__}: fine-tune a checkpoint of the same family"
            )
        check_same_data(
            settings.init_ckpt, checkpoint.get(DATA_SPEC_KEY), self.trained_on, "fine-tune"
        )
        chances = self.finetuning_interventions()  # unknown names fail before any work
        stray = (
            sorted(set(settings.anchor) - set(chances)) if isinstance(settings.anchor, dict) else []
        )
        if stray:
            raise ValueError(
                f"cf_finetune.anchor names {stray}, which fine-tuning does not intervene on; it "
                f"intervenes on {', '.join(chances)}"
            )
        migrate_checkpoint(checkpoint)
        missing, unexpected = self.load_state_dict(checkpoint["state_dict"], strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{settings.init_ckpt} does not fit this {type(self).__name__}: missing "
                f"{missing}, unexpected {unexpected}. Fine-tune with the pre-trained model's "
                "architecture settings."
            )
        self.scm.requires_grad_(False)  # the attribute mechanisms stay as pre-trained
        if self.ema_net is not None:
            # Start from the weights that were evaluated, and average only fine-tuned ones.
            self.net.load_state_dict(self.ema_net.state_dict())
            self.ema_updates.zero_()
        if settings.anchored:  # the pre-trained mechanism, frozen, outside the state dict
            self.__dict__["_anchor"] = copy.deepcopy(self.net).requires_grad_(False)
        self.lagrange.fill_(settings.lagrange_init)
        log.info("Counterfactual fine-tuning against the judge %s", self.trained_against)
        batches = zip(range(8), self.trainer.datamodule.train_dataloader())
        with torch.no_grad():  # the likelihood loss to keep: the pre-trained model's
            losses = [
                self.net.loss(b["x"].to(self.device), _to(b["pa"], self.device))[0]
                for _, b in batches
            ]
        self.loss_target.fill_(torch.stack(losses).mean().item() + settings.slack)

    def finetuning_loss(
        self, batch: Mapping[str, Any], likelihood_loss: Tensor, logs: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The Lagrangian: judge loss (+ the anchor's term) + multiplier * (likelihood loss - its
        allowed value)."""
        cf_loss, name, drift = self._counterfactual_terms(batch, anchored=self._anchor is not None)
        if drift is not None:
            logs["anchor_l1"] = drift.detach()
            cf_loss = cf_loss + self.finetuning.anchor_weight(name) * drift
        violation = likelihood_loss - self.loss_target
        with torch.no_grad():  # gradient ascent on the multiplier, kept >= 0
            step = violation.nan_to_num(MAX_VIOLATION).clamp(-MAX_VIOLATION, MAX_VIOLATION)
            self.lagrange.add_(self.finetuning.lagrange_lr * step).clamp_(min=0.0)
        logs.update(
            cf_loss=cf_loss, lagrange=self.lagrange.clone(), loss_violation=violation.detach()
        )
        return cf_loss + self.lagrange * violation, logs

    def finetuning_interventions(self) -> dict[str, float]:
        """Each attribute counterfactual fine-tuning intervenes on, with its probability
        (:attr:`FineTuning.interventions`).

        Raises:
            ValueError: a name the model can't intervene on.
        """
        allowed = tuple(self.intervenable or self.graph.names)
        chosen = self.finetuning.interventions if self.finetuning is not None else None
        if chosen is None:
            return {name: 1.0 / len(allowed) for name in allowed}
        unknown = sorted(set(chosen) - set(allowed))
        if unknown:
            raise ValueError(
                f"cf_finetune.interventions names {unknown}, which this model can't intervene "
                f"on; choose among {', '.join(allowed)}"
            )
        total = sum(chosen.values())
        return {name: weight / total for name, weight in chosen.items() if weight > 0}

    def finetuning_do(self, pa: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """One fine-tuning intervention: an attribute drawn by :meth:`finetuning_interventions`,
        set to the values of a permutation of the batch (its marginal)."""
        chances = self.finetuning_interventions()
        names, weights = list(chances), list(chances.values())
        if len(set(weights)) == 1:  # equal chances: the same draw as runs before the weights
            name = names[int(torch.randint(len(names), ()))]
        else:
            name = names[int(torch.multinomial(torch.tensor(weights), 1))]
        values = pa[name]
        return {name: values[torch.randperm(len(values), device=values.device)]}

    def counterfactual_loss(self, batch: Mapping[str, Any]) -> Tensor:
        """The judge's loss on differentiable counterfactuals of one random intervention.

        One attribute per call, its values drawn from the batch's marginal (a permutation); the
        descendants follow the frozen attribute SCM. The counterfactual is the evaluated one
        (:func:`counterfactual` with the model's default options, pixel residual included), of
        the weights being trained.
        """
        return self._counterfactual_terms(batch, anchored=False)[0]

    def _counterfactual_terms(
        self, batch: Mapping[str, Any], anchored: bool
    ) -> tuple[Tensor, str, Tensor | None]:
        """The judge's loss of one random intervention's counterfactuals, the intervened
        attribute, and, if ``anchored`` and the anchor weighs that attribute, the counterfactuals'
        mean L1 distance (0-255) to the pre-trained mechanism's of the same intervention."""
        if self._judge is None:
            raise ValueError("no judge attached: call model.attach_judge(judge, source) first")
        x, pa = batch["x"], batch["pa"]
        do = self.finetuning_do(pa)
        (name,) = do
        cf = counterfactual(self.net, self.scm, x, pa, do)
        judge = self._judge.to(x.device)
        # a model built without cf_finetune settings (a judge attached by hand) reads plain images
        images = augment(cf.image, self.finetuning.augment if self.finetuning else "none")
        loss = judge_loss(judge, images, {k: v.detach() for k, v in cf.parents.items()})
        if not anchored or self.finetuning.anchor_weight(name) == 0:
            return loss, name, None
        anchor = self._anchor.to(x.device).train(self.net.training)  # the same mode: 0 at start
        with torch.no_grad():
            reference = counterfactual(anchor, self.scm, x, pa, do).image
        return loss, name, 255.0 * (cf.image - reference).abs().mean()

    # -- checkpoints ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_CLASS_KEY] = type(self).__name__
        checkpoint[CHECKPOINT_FORMAT_KEY] = CHECKPOINT_FORMAT
        checkpoint[TRAINED_AGAINST_KEY] = self.trained_against
        if self.trained_on is not None:
            checkpoint[DATA_SPEC_KEY] = self.trained_on
        stamp_checkpoint(checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        migrate_checkpoint(checkpoint)
        self.trained_against = checkpoint.get(TRAINED_AGAINST_KEY)
        # a fit's setup has set trained_on (this fit's data) before Lightning restores a checkpoint
        check_same_data(
            "the resumed checkpoint", checkpoint.get(DATA_SPEC_KEY), self.trained_on, "resume"
        )
        self.trained_on = checkpoint.get(DATA_SPEC_KEY, self.trained_on)


def _to(pa: Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device) for k, v in pa.items()}


#: Buffers of the LightningModule itself, not of the mechanism.
_MODULE_BUFFERS = ("skipped_updates", "ema_updates", "lagrange", "loss_target")


def migrate_checkpoint(checkpoint: dict[str, Any]) -> None:
    """Bring a checkpoint written before the mechanisms were split out to today's layout, in place.

    Format 1 kept the VAE's and the flow's networks on the module itself (``encoder.*``,
    ``flow.*``); they now live in the mechanism (``net.*``). The HVAE's fine-tuning target was
    ``elbo_target``; every family now has ``lagrange`` and ``loss_target``.
    """
    if checkpoint.get(CHECKPOINT_FORMAT_KEY, 1) >= CHECKPOINT_FORMAT:
        return
    state = checkpoint.get("state_dict", {})
    migrated = {}
    for key, value in state.items():
        if key == "elbo_target":
            key = "loss_target"
        elif not key.startswith(("net.", "ema_net.", "scm.")) and key not in _MODULE_BUFFERS:
            key = f"net.{key}"
        migrated[key] = value
    migrated.setdefault("lagrange", torch.tensor(1.0))
    migrated.setdefault("loss_target", torch.tensor(float("nan")))
    checkpoint["state_dict"] = migrated
    checkpoint[CHECKPOINT_FORMAT_KEY] = CHECKPOINT_FORMAT


def state_digest(state: Mapping[str, Any]) -> str:
    """SHA-256 over a state dict's tensors: names, dtypes, shapes and bytes, in name order."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key]
        if not isinstance(value, Tensor):
            continue
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{key}:{flat.dtype}:{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return digest.hexdigest()


def stamp_checkpoint(checkpoint: dict[str, Any]) -> None:
    """Record the weights' digest, which :func:`read_checkpoint` checks."""
    checkpoint[CHECKPOINT_DIGEST_KEY] = state_digest(checkpoint.get("state_dict", {}))


def _check_weights(checkpoint: dict[str, Any], path: Path) -> None:
    state = checkpoint.get("state_dict")
    if not isinstance(state, Mapping):
        return  # not a model checkpoint: load_model says so
    expected = checkpoint.get(CHECKPOINT_DIGEST_KEY)
    if expected is not None and state_digest(state) != expected:
        raise ValueError(
            f"{path}'s weights do not match the checksum written with them: the file is corrupt "
            "(changed bytes). Use another checkpoint of the run (last.ckpt or the best one) or "
            "re-train."
        )
    for key, value in state.items():
        if (
            isinstance(value, Tensor)
            and value.is_floating_point()
            and not key.endswith(_NAN_SENTINELS)
            and not torch.isfinite(value).all()
        ):
            raise ValueError(
                f"{path} holds NaN or infinite weights ({key}): the training that wrote it "
                "diverged. Use an earlier checkpoint, or re-train with a lower model.lr."
            )


def check_resumable(checkpoint: dict[str, Any], model: nn.Module, path: str | Path) -> None:
    """Refuse, before any training, to resume ``model`` from a checkpoint of another family,
    dataset or architecture; the message says which and how to fix it."""
    name, own = checkpoint.get(CHECKPOINT_CLASS_KEY), type(model).__name__
    if name != own:
        raise ValueError(
            f"{path} holds a {name}, but the config builds a {own}: resume with the model=... "
            "the run was trained with (its .hydra/config.yaml)"
        )
    dataset = (checkpoint.get("hyper_parameters") or {}).get("dataset")
    if dataset is not None and dataset != getattr(model, "dataset_name", dataset):
        raise ValueError(
            f"{path} was trained on '{dataset}', but the config's data is "
            f"'{model.dataset_name}': resume with the data=... the run was trained with"
        )
    migrated = dict(checkpoint)
    migrate_checkpoint(migrated)
    theirs, ours = migrated.get("state_dict", {}), model.state_dict()
    problems = [f"{k} is missing" for k in ours if k not in theirs]
    problems += [f"{k} is not in this model" for k in theirs if k not in ours]
    problems += [
        f"{k} is {tuple(theirs[k].shape)}, the model's {tuple(ours[k].shape)}"
        for k in ours
        if k in theirs and tuple(theirs[k].shape) != tuple(ours[k].shape)
    ]
    if problems:
        raise ValueError(
            f"{path} does not fit the configured {own} ({len(problems)} difference(s): "
            f"{'; '.join(problems[:3])}): resume with the model.* settings of the run that wrote "
            "it (its .hydra/config.yaml)"
        )


def data_spec(datamodule: Any) -> dict[str, Any] | None:
    """Which images a datamodule's models train and are tested on (its ``split_spec``) as plain
    JSON values, which a checkpoint loads without unpickling; ``None`` if it states none."""
    try:
        spec = datamodule.split_spec if datamodule is not None else None
    except (AttributeError, NotImplementedError):
        return None
    return json.loads(json.dumps(spec, default=str)) if isinstance(spec, Mapping) else None


#: What a check of the data is for: (the run, what other data would do to it).
_DATA_USES = {
    "fine-tune": (
        "this fine-tuning stage",
        "the stage would train on other images than its base did, perhaps on the ones the base "
        "held out for testing",
    ),
    "resume": (
        "this run",
        "the run would continue on other images, perhaps on the ones it held out for testing",
    ),
    "evaluate": (
        "this evaluation",
        "the scores would not be those of the model's test split, and the test images may "
        "include images it trained on",
    ),
}


def check_same_data(
    source: str | Path, trained_on: Mapping | None, here: Mapping | None, use: str
) -> None:
    """Refuse to fine-tune, resume or evaluate a model (from ``source``) on other images than its
    own: another dataset, size or split (the datamodules' ``split_spec``).

    Args:
        trained_on: the :func:`data_spec` its checkpoint or manifest recorded (``None``: from
            before it was recorded, not checked); entries it lacks are not compared.
        here: this run's :func:`data_spec`.
        use: ``"fine-tune"``, ``"resume"`` or ``"evaluate"``: what the message says.

    Raises:
        ValueError: naming each entry that differs, with both values, and the overrides that
            give the model's data back.
    """
    if trained_on is None or here is None:
        return
    differ = [k for k in here if k in trained_on and trained_on[k] != here[k]]
    if not differ:
        return
    run, harm = _DATA_USES[use]
    settings = ", ".join(f"{k}: {trained_on[k]!r} there, {here[k]!r} here" for k in differ)
    fixes = [
        f"data={trained_on[k]}"
        if k == "dataset"
        else f"data.{k}={'null' if trained_on[k] is None else trained_on[k]}"
        for k in differ
        if k != "table"
    ]
    fix = f"pass {' '.join(fixes)}" if fixes else ""
    if "seed" in differ:
        fix += " (data.seed follows seed= unless set)"
    if "limit" in differ and use == "evaluate":
        fix += "; test_images=N scores fewer images of the model's own test split"
    if "table" in differ:
        fix += ("; " if fix else "") + "use the folder table the model was trained on"
    raise ValueError(
        f"{source} was trained on other data than {run} ({settings}): {fix}. Otherwise {harm}."
    )


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong and what to do."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}. Train one with `python train.py` (it prints the paths of "
            "last.ckpt and the best checkpoint) or check the path."
        )
    if path.stat().st_size == 0:
        raise ValueError(
            f"{path} is empty (0 bytes): its write was cut short, e.g. by a full disk. Use "
            "another checkpoint of the run (last.ckpt or the best one) or re-train."
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (
        RuntimeError,
        EOFError,
        OSError,
        IndexError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
    ) as error:
        raise ValueError(
            f"{path} is not a readable checkpoint: it is truncated, corrupt, or holds objects that "
            f"can't load safely ({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            "Use another checkpoint of the run (last.ckpt or the best one) or re-train."
        ) from error
    if not isinstance(checkpoint, dict):
        raise ValueError(
            f"{path} holds a {type(checkpoint).__name__}, not a checkpoint: pass a .ckpt written "
            "by `python train.py`"
        )
    _check_weights(checkpoint, path)
    return checkpoint
