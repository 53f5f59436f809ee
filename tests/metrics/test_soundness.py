"""Each metric against a hand-computed case."""

from types import SimpleNamespace

import pytest
import torch

from datamodules.base import CATEGORICAL, CONTINUOUS, CausalGraph, Variable
from metrics.effectiveness import attribute_errors
from metrics.soundness import composition, l1, reversibility, rmse


class ShiftModel:
    """Each counterfactual adds ``step`` to every pixel; attributes follow do."""

    device = torch.device("cpu")

    def __init__(self, step: float):
        self.step = step

    def counterfactual(self, x, pa, do, **options):
        parents = {**pa, **{k: torch.as_tensor(v).expand(len(x)) for k, v in do.items()}}
        out = x + self.step
        return SimpleNamespace(image=out.clamp(0, 1), unclipped=out, parents=parents)


def test_l1_and_rmse_on_the_0_255_scale():
    a = torch.zeros(2, 1, 2, 2)
    b = torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]]).view(2, 1, 2, 2)
    assert torch.allclose(l1(a, b), torch.tensor([255 / 4, 127.5]))
    assert torch.allclose(rmse(a, b), torch.tensor([255 / 2, 127.5]))


def test_composition_accumulates_per_step():
    x = torch.zeros(3, 1, 4, 4)
    curve = composition(ShiftModel(0.01), x, {"a": torch.zeros(3)}, 4)
    assert curve.shape == (4, 3)
    assert torch.allclose(curve[:, 0], torch.tensor([1, 2, 3, 4]) * 0.01 * 255)


def test_reversibility_counts_both_legs_of_each_cycle():
    x = torch.zeros(2, 1, 4, 4)
    pa = {"a": torch.tensor([1.0, 2.0])}
    cycles = reversibility(ShiftModel(0.02), x, pa, {"a": 5.0}, cycles=3)
    assert torch.allclose(cycles[:, 0], torch.tensor([2, 4, 6]) * 0.02 * 255)
    assert torch.allclose(reversibility(ShiftModel(0.0), x, pa, {"a": 5.0}), torch.zeros(1, 2))


def test_attribute_errors():
    graph = CausalGraph(
        (Variable("t", CONTINUOUS, support=(0, 10)), Variable("d", CATEGORICAL, num_classes=3)),
        ("t", "d"),
    )
    errors = attribute_errors(
        {"t": torch.tensor([1.0, 4.0]), "d": torch.tensor([2, 1])},
        {"t": torch.tensor([2.0, 4.5]), "d": torch.tensor([2, 0])},
        graph,
    )
    assert torch.allclose(errors["t"], torch.tensor([1.0, 0.5]))
    assert errors["d"].tolist() == [1.0, 0.0]
    assert errors["d"].mean() == pytest.approx(0.5)
