"""Tiny trained models of every family, shared by the contract tests."""

from __future__ import annotations

import pytest
import torch

from tests.families import FAMILIES, fit_briefly


@pytest.fixture(scope="session", params=sorted(FAMILIES))
def family(request, morpho):
    """(name, trained tiny model, null-intervention bound) for each family."""
    build, bound = FAMILIES[request.param]
    torch.manual_seed(0)
    model = build(morpho)
    model.log_dict = lambda *args, **kwargs: None  # no Trainer attached
    fit_briefly(model, morpho)
    return request.param, model, bound


@pytest.fixture(scope="session")
def test_batch(morpho):
    return next(iter(morpho.test_dataloader()))
