"""Shared fixtures: one tiny causal Morpho-MNIST for the whole session."""

from __future__ import annotations

import pytest
import torch

from datamodules import MorphoMNISTDataModule

#: Source digits in the shared tiny dataset: enough for the laws' statistics, fast to generate.
TINY_DIGITS = 500


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def morpho(data_dir) -> MorphoMNISTDataModule:
    datamodule = MorphoMNISTDataModule(
        data_dir=str(data_dir), limit=TINY_DIGITS, batch_size=32, seed=0
    )
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_predictor(morpho):
    """A small anti-causal predictor trained on the tiny dataset."""
    from metrics.judges import train_predictor

    torch.manual_seed(0)
    predictor, _ = train_predictor(morpho, epochs=6, progress=False, widths=(8, 16), features=16)
    return predictor


@pytest.fixture(scope="session")
def held_out_judge(morpho):
    """Another tiny predictor (another seed and width), to score what ``tiny_predictor`` trained."""
    from metrics.judges import train_predictor

    predictor, _ = train_predictor(
        morpho,
        epochs=6,
        progress=False,
        seed=1,
        arch="resnet",
        augment="affine",
        widths=(16, 32),
        features=24,
    )
    return predictor


@pytest.fixture(scope="session")
def tiny_explorer(morpho, tiny_predictor):
    """The explorer on briefly trained tiny models of the three fast families, a tiny judge."""
    from models.explore import Explorer
    from tests.families import FAMILIES, fit_briefly

    torch.manual_seed(0)
    models = {name: FAMILIES[name][0](morpho) for name in ("vae", "hvae", "flow")}
    for model in models.values():
        model.log_dict = lambda *args, **kwargs: None
        fit_briefly(model, morpho, steps=30)
    return Explorer(models, morpho, judges={"judge": tiny_predictor})


@pytest.fixture(scope="session")
def domains(data_dir):
    """A tiny multi-domain Morpho-MNIST (plain, rotated, textured)."""
    from datamodules import DomainMNISTDataModule

    datamodule = DomainMNISTDataModule(
        data_dir=str(data_dir), limit=TINY_DIGITS, batch_size=32, seed=0
    )
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule
