"""Train a counterfactual image model (Hydra entry point).

Until the model zoo lands this builds the dataset and saves a grid of samples with their true
counterfactuals. Usage: ``python train.py [data.source=mnist] [data.data_dir=...]``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchvision.utils import save_image

log = logging.getLogger(__name__)


def sample_grid(datamodule, path: Path, per_row: int = 10) -> Path:
    """Save test samples (one per digit class) with true counterfactuals, one row each:
    factual | do(thickness + 1.5) | do(thickness = 1) | do(intensity = 80)."""
    test = datamodule.test_set
    digits = datamodule.attributes(test.indices)["digit"]
    index = torch.stack([test.indices[digits == d][0] for d in digits.unique()[:per_row]])
    rows = [datamodule.true_counterfactual(index, {})[0]]
    for do in ({"thickness": lambda t: t + 1.5}, {"thickness": 1.0}, {"intensity": 80.0}):
        rows.append(datamodule.true_counterfactual(index, do)[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat(rows), path, nrow=len(index), padding=2, pad_value=0.5)
    return path


def train(cfg: DictConfig) -> dict[str, Any]:
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup()
    grid = sample_grid(datamodule, Path(cfg.paths.output_dir) / "samples.png")
    log.info("Dataset cache: %s", datamodule.cache_path)
    log.info("Sample grid (factual | thicker | thin | dim): %s", grid)
    return {"num_train": len(datamodule.train_set), "grid": str(grid)}


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
