"""Every counterfactual fine-tuning experiment composes and builds the stage it describes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from models.base import FineTuning

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAMILY_CLASSES = {"vae": "ConditionalVAE", "hvae": "HierarchicalVAE", "flow": "ConditionalFlow"}


@pytest.mark.parametrize("family", sorted(FAMILY_CLASSES))
def test_the_fine_tuning_experiment_builds_its_familys_stage(family, morpho):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"experiment={family}_cf_morphomnist",
                "model.cf_finetune.init_ckpt=stage1.ckpt",
            ],
        )
    assert cfg.model._target_.endswith(FAMILY_CLASSES[family])
    model = instantiate(
        cfg.model,
        graph=morpho.graph.to_dict(),
        image_shape=list(morpho.image_shape),
        dataset=morpho.name,
        _convert_="all",
    )
    assert type(model).__name__ == FAMILY_CLASSES[family]
    # the experiment's settings, not the Python defaults, reach the stage (one place for each)
    assert model.finetuning == FineTuning(
        init_ckpt="stage1.ckpt",
        judge_ckpt=None,
        slack=cfg.model.cf_finetune.slack,
        lagrange_lr=cfg.model.cf_finetune.lagrange_lr,
        lagrange_init=cfg.model.cf_finetune.lagrange_init,
    )
    assert cfg.trainer.max_epochs >= 1 and cfg.task_name == f"{family}_cf_morphomnist"


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_common_trainer_keys_need_no_plus_and_reach_lightning(trainer, tmp_path):
    """`trainer.max_steps=N` is what Lightning users type; Hydra's `+` must not be needed."""
    overrides = [
        f"trainer={trainer}",
        "trainer.max_steps=3",
        "trainer.limit_val_batches=2",
        "trainer.max_time=00:00:01:00",
        "trainer.accumulate_grad_batches=2",
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    assert cfg.trainer.max_steps == 3 and cfg.trainer.accumulate_grad_batches == 2
    if trainer != "cpu":
        return  # no GPU here to build it on
    built = instantiate(cfg.trainer, default_root_dir=str(tmp_path), logger=False)
    assert built.max_steps == 3
    assert built.limit_val_batches == 2
    assert built.accumulate_grad_batches == 2
    assert type(built.strategy.checkpoint_io).__name__ == "AtomicCheckpointIO"
