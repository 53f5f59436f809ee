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
from typing import Any

from torch import Tensor

from datamodules.base import CounterfactualDataModule
from models.base import CounterfactualModel, Exogenous

__all__ = ["IdentityModel", "OracleModel"]


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

    Needs the samples' ids: ``model.counterfactual(x, pa, do, index=batch["index"])``.
    """

    options = ("index",)

    def __init__(self, datamodule: CounterfactualDataModule):
        if not datamodule.has_ground_truth:
            raise ValueError(f"{type(datamodule).__name__} has no true SCM for an oracle")
        super().__init__(datamodule, mechanism="analytic")
        self.intervenable = tuple(datamodule.ground_truth_variables)

    def option_defaults(self) -> dict[str, Any]:
        return {"index": None}

    def abduct_image(self, x: Tensor, pa: Mapping[str, Tensor], index: Tensor | None) -> dict:
        if index is None:
            raise ValueError(
                "OracleModel needs index=batch['index']: it renders each sample from its stored "
                "exogenous noise (its source digit)"
            )
        return {"index": index}

    def predict(self, noise: Exogenous, pa: Mapping[str, Tensor], index: Tensor | None) -> Tensor:
        return self.datamodule.render(noise.image["index"], pa).to(self.device)


class IdentityModel(_Baseline):
    """Returns the input image whatever the intervention (attributes still follow the SCM)."""

    def __init__(self, datamodule: CounterfactualDataModule):
        mechanism = "analytic" if datamodule.has_ground_truth else "flow"
        super().__init__(datamodule, mechanism=mechanism)

    def abduct_image(self, x: Tensor, pa: Mapping[str, Tensor]) -> dict:
        return {"x": x}

    def predict(self, noise: Exogenous, pa: Mapping[str, Tensor]) -> Tensor:
        return noise.image["x"]
