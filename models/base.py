"""The counterfactual interface every model family implements: abduct, act, predict.

A family subclasses :class:`CounterfactualModel` and implements three methods:

- ``image_loss(batch) -> (loss, logs)``: its training objective;
- ``abduct_image(x, pa, **options) -> dict``: the exogenous noise of the image;
- ``predict(noise, pa, **options) -> images``: the image from that noise and (new) attributes.

Everything else (input checks, the attribute SCM and its joint training, interventions, options
with defaults from the hyperparameters, the optimiser, checkpoint tagging) lives here once.

Example:
    >>> model = models.load_model("outputs/.../checkpoints/last.ckpt")
    >>> cf = model.counterfactual(batch["x"], batch["pa"], {"thickness": lambda t: t + 1})
    >>> cf.image, cf.parents["intensity"]  # intensity follows thickness through the SCM
"""

from __future__ import annotations

import copy
import pickle
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from datamodules import ANALYTIC_MECHANISMS
from datamodules.base import CausalGraph, Intervention
from models.scm import AttributeSCM

__all__ = ["Counterfactual", "CounterfactualModel", "Exogenous", "read_checkpoint"]

#: Key under which a checkpoint records its model class, for ``models.load_model``.
CHECKPOINT_CLASS_KEY = "cfzoo_model"


@dataclass
class Exogenous:
    """The exogenous noise behind observed images and attributes.

    Attributes:
        image: the image mechanism's noise, named per family (e.g. ``{"z": ..., "residual": ...}``).
        attributes: each attribute's noise under the attribute SCM.
    """

    image: dict[str, Tensor]
    attributes: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Counterfactual:
    """The answer to a counterfactual query.

    Attributes:
        image: ``(B, C, H, W)`` counterfactual images in [0, 1].
        parents: the counterfactual attributes (natural units).
        factual_image: the input images.
        factual_parents: the input attributes.
        noise: the abducted exogenous noise (the attributes' noise only for the variables that
            were recomputed; ``model.abduct`` gives all of it).
        do: the interventions, resolved to one tensor per intervened variable.
    """

    image: Tensor
    parents: dict[str, Tensor]
    factual_image: Tensor
    factual_parents: dict[str, Tensor]
    noise: Exogenous
    do: dict[str, Tensor]


class CounterfactualModel(pl.LightningModule):
    """Base class of every image mechanism in the zoo.

    Args:
        graph: the datamodule's causal graph, as ``CausalGraph.to_dict()`` (plain data).
        image_shape: ``(C, H, W)`` of the images.
        dataset: the datamodule's name, so a checkpoint can't be scored on another dataset.
        scm: options of the :class:`AttributeSCM` (``mechanism``, ``hidden``, ``transforms``).
        scm_weight: weight of the attributes' NLL in the joint loss (0 leaves the SCM untrained).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        ema_decay: keep an exponential moving average of ``self.net``'s weights with this decay
            and use it outside training (0 disables; families opt in by calling
            :meth:`setup_ema` once ``self.net`` exists). The decay warms up as
            ``min(ema_decay, (1 + n) / (10 + n))`` after ``n`` updates, so a short run's average
            is not dominated by the initial weights (0.999 ** 500 = 0.61 of them without it).
        skip_grad_norm: skip an optimiser update whose gradient norm exceeds this (or is not
            finite), as VDVAE does against rare loss spikes; ``None`` never skips.
    """

    #: Counterfactual-time options of the family; their defaults are hyperparameters of the same name.
    options: tuple[str, ...] = ()
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
    ):
        super().__init__()
        self.graph = CausalGraph.from_dict(graph)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.dataset_name = dataset
        scm = dict(scm or {})
        self.scm = AttributeSCM(self.graph, analytic=ANALYTIC_MECHANISMS.get(dataset), **scm)
        self.scm_weight = scm_weight
        self.lr = lr
        self.weight_decay = weight_decay
        self.ema_decay = ema_decay
        self.skip_grad_norm = skip_grad_norm
        self.ema_net: torch.nn.Module | None = None
        self.register_buffer("skipped_updates", torch.zeros((), dtype=torch.long))
        # counted in the checkpoint, so a resumed run continues the same warm-up
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))

    # -- EMA and update skipping ----------------------------------------------------------------
    def setup_ema(self) -> None:
        """Create the EMA copy of ``self.net`` (call at the end of a family's ``__init__``)."""
        if self.ema_decay > 0:
            self.ema_net = copy.deepcopy(self.net).requires_grad_(False)

    @property
    def mechanism(self) -> torch.nn.Module:
        """The networks to use now: the EMA weights outside training, when there are some."""
        return self.ema_net if self.ema_net is not None and not self.training else self.net

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

    # -- the family's part ----------------------------------------------------------------------
    def image_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError

    def abduct_image(
        self, x: Tensor, pa: Mapping[str, Tensor], **options: Any
    ) -> dict[str, Tensor]:
        raise NotImplementedError

    def predict(self, noise: Exogenous, pa: Mapping[str, Tensor], **options: Any) -> Tensor:
        """The image generated from ``noise`` under attributes ``pa`` (``(B, C, H, W)`` in [0, 1])."""
        raise NotImplementedError

    # -- the interface --------------------------------------------------------------------------
    def abduct(self, x: Tensor, pa: Mapping[str, Tensor], **options: Any) -> Exogenous:
        """The exogenous noise of the images and of their attributes."""
        x, pa = self.check_inputs(x, pa)
        return self._abduct(x, pa, self.resolve_options(options))

    def _abduct(self, x: Tensor, pa: dict[str, Tensor], options: dict[str, Any]) -> Exogenous:
        return Exogenous(image=self.abduct_image(x, pa, **options), attributes=self.scm.abduct(pa))

    @torch.inference_mode()
    def counterfactual(
        self,
        x: Tensor,
        pa: Mapping[str, Tensor],
        do: Mapping[str, Intervention],
        **options: Any,
    ) -> Counterfactual:
        """Answer "what would ``x`` look like under ``do``?" by abduction, action and prediction.

        Args:
            x: ``(B, C, H, W)`` images in [0, 1].
            pa: their attributes, ``(B,)`` tensors in natural units.
            do: name -> value per sample (tensor), scalar, or function of the factual value.
            **options: the family's counterfactual-time options (see ``options``).

        Raises:
            ValueError: wrong image shape, missing or out-of-support attributes, unknown names,
                wrong shapes or out-of-support values in ``do``, unknown options.
        """
        x, pa = self.check_inputs(x, pa)
        options = self.resolve_options(options)
        if self.intervenable is not None and not set(do) <= set(self.intervenable):
            unsupported = sorted(set(do) - set(self.intervenable))
            raise ValueError(
                f"{type(self).__name__} can't intervene on {unsupported}; it supports "
                f"{', '.join(self.intervenable)}"
            )
        # The attributes' noise is abducted lazily by act(): only the recomputed descendants need it.
        noise = Exogenous(image=self.abduct_image(x, pa, **options), attributes={})
        resolved = self.graph.resolve(pa, do)
        parents = self.scm.act(pa, resolved, noise.attributes)
        image = self.predict(noise, parents, **options)
        return Counterfactual(
            image=image,
            parents=parents,
            factual_image=x,
            factual_parents=pa,
            noise=noise,
            do=resolved,
        )

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = set(options) - set(self.options)
        if unknown:
            accepted = ", ".join(self.options) or "none"
            raise ValueError(
                f"{type(self).__name__} has no counterfactual option(s) {sorted(unknown)}; "
                f"it accepts: {accepted}"
            )
        defaults = self.option_defaults()
        return {name: options.get(name, defaults[name]) for name in self.options}

    def option_defaults(self) -> dict[str, Any]:
        """Defaults of the counterfactual options: the hyperparameters of the same names."""
        return {name: self.hparams[name] for name in self.options}

    def check_inputs(self, x: Tensor, pa: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Validate and move images and attributes to the model's device."""
        x = torch.as_tensor(x)
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"expected images of shape (B, {', '.join(map(str, self.image_shape))}) in [0, 1] "
                f"(this model was trained on '{self.dataset_name}'), got {tuple(x.shape)}"
            )
        missing = [name for name in self.graph.names if name not in pa]
        if missing:
            raise ValueError(
                f"pa lacks attribute(s) {missing}; the model needs {', '.join(self.graph.names)}"
            )
        checked = {}
        for variable in self.graph.variables:
            value = torch.as_tensor(pa[variable.name])
            if tuple(value.shape) != (len(x),):
                raise ValueError(
                    f"pa['{variable.name}'] must have shape ({len(x)},) like the images, "
                    f"got {tuple(value.shape)}"
                )
            checked[variable.name] = variable.check(value, what="pa").to(self.device)
        return x.to(self.device, torch.float32), checked

    # -- training -------------------------------------------------------------------------------
    def _step(self, batch: Mapping[str, Any], stage: str) -> Tensor:
        loss, logs = self.image_loss(batch)
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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_CLASS_KEY] = type(self).__name__


def read_checkpoint(path: str | Path) -> dict:
    """``torch.load(path, weights_only=True)`` with errors that say what is wrong and what to do."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"no checkpoint at {path}. Train one with `python train.py` (it prints the paths of "
            "last.ckpt and the best checkpoint) or check the path."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        raise ValueError(
            f"{path} is not a readable checkpoint: it is truncated, corrupt, or holds objects that "
            f"can't load safely ({type(error).__name__}: {str(error).splitlines()[0][:200]}). "
            "Use another checkpoint of the run (last.ckpt or the best one) or re-train."
        ) from error
