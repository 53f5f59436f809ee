"""Reference models that bracket every metric: the oracle (the floor) and the identity (a fake).

- :class:`OracleModel` answers with the dataset's true SCM: it abducts the attributes' noise with
  the true equations and renders with the true image mechanism (each sample's stored source).
  Its composition, reversibility and ground-truth error are 0, and its effectiveness is the
  predictors' own error: it proves the metrics measure what they claim.
- :class:`IdentityModel` returns its input unchanged: perfect composition and reversibility, and
  the effectiveness a model gets by ignoring the intervention.

Neither is trained; ``evaluate.py model=oracle`` / ``model=identity`` build them from the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor

from datamodules.base import CounterfactualDataModule
from models.base import CounterfactualModel, ImageMechanism

__all__ = ["IdentityModel", "OracleModel"]


@dataclass
class SampleIds:
    """The true SCM's image noise: each sample's id, which holds its stored exogenous noise."""

    ids: Tensor


class OracleMechanism(ImageMechanism):
    """The dataset's true image mechanism: renders each sample from its stored noise."""

    uses_sample_ids = True

    def __init__(self, datamodule: CounterfactualDataModule):
        super().__init__()
        self.datamodule = datamodule

    def abduct(self, x: Tensor, pa: Mapping[str, Tensor], sample_ids: Tensor | None) -> SampleIds:
        if sample_ids is None:
            raise ValueError(
                "OracleModel needs sample_ids=batch['index']: it renders each sample from its "
                "stored exogenous noise (its source digit)"
            )
        if len(sample_ids) != len(x):
            raise ValueError(f"sample_ids has {len(sample_ids)} ids for {len(x)} images")
        return SampleIds(sample_ids)

    def predict(
        self, noise: SampleIds, pa: Mapping[str, Tensor], intervened: frozenset[str]
    ) -> Tensor:
        return self.datamodule.render(noise.ids, pa).to(next(iter(pa.values())).device)


class IdentityMechanism(ImageMechanism):
    """Its noise is the image itself, whatever the attributes."""

    def abduct(self, x: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        return x

    def predict(
        self, noise: Tensor, pa: Mapping[str, Tensor], intervened: frozenset[str]
    ) -> Tensor:
        return noise


class _Baseline(CounterfactualModel):
    def __init__(self, datamodule: CounterfactualDataModule, mechanism: str):
        super().__init__(
            graph=datamodule.graph.to_dict(),
            image_shape=list(datamodule.image_shape),
            dataset=datamodule.name,
            scm={"mechanism": mechanism},
        )
        self.datamodule = datamodule
        self.eval()


class OracleModel(_Baseline):
    """The dataset's true SCM behind the counterfactual interface.

    Needs the samples' ids: ``model.counterfactual(x, pa, do, sample_ids=batch["index"])``.
    """

    def __init__(self, datamodule: CounterfactualDataModule):
        if not datamodule.has_ground_truth:
            raise ValueError(f"{type(datamodule).__name__} has no true SCM for an oracle")
        super().__init__(datamodule, mechanism="analytic")
        self.intervenable = tuple(datamodule.ground_truth_variables)
        self.set_mechanism(OracleMechanism(datamodule))


class IdentityModel(_Baseline):
    """Returns the input image whatever the intervention (attributes still follow the SCM)."""

    def __init__(self, datamodule: CounterfactualDataModule):
        mechanism = "analytic" if datamodule.has_ground_truth else "flow"
        super().__init__(datamodule, mechanism=mechanism)
        self.set_mechanism(IdentityMechanism())
