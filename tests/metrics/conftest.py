import pytest
import torch

from metrics.judges import train_predictor


@pytest.fixture(scope="session")
def tiny_predictor(morpho):
    torch.manual_seed(0)
    predictor, _ = train_predictor(morpho, epochs=6, progress=False, widths=(8, 16), features=16)
    return predictor
