"""Every counterfactual fine-tuning experiment composes and builds the stage it describes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from models.base import FineTuning

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
FAMILY_CLASSES = {
    "vae": "ConditionalVAE",
    "hvae": "HierarchicalVAE",
    "flow": "ConditionalFlow",
    "diffae": "DiffusionAutoencoder",
}


def _build_model(config, datamodule):
    """A model config built as train.py builds it (a reference model from the data itself)."""
    if "baselines" in config._target_:
        return instantiate(config, datamodule=datamodule)
    return instantiate(
        config,
        graph=datamodule.graph.to_dict(),
        image_shape=list(datamodule.image_shape),
        dataset=datamodule.name,
        _convert_="all",
    )


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
    model = _build_model(cfg.model, morpho)
    assert type(model).__name__ == FAMILY_CLASSES[family]
    # the experiment's settings, not the Python defaults, reach the stage (one place for each)
    interventions, judge = cfg.model.cf_finetune.interventions, cfg.model.cf_finetune.judge
    anchor = cfg.model.cf_finetune.anchor
    assert model.finetuning == FineTuning(
        init_ckpt="stage1.ckpt",
        judge_ckpt=None,
        judge=None if judge is None else OmegaConf.to_container(judge),
        slack=cfg.model.cf_finetune.slack,
        lagrange_lr=cfg.model.cf_finetune.lagrange_lr,
        lagrange_init=cfg.model.cf_finetune.lagrange_init,
        interventions=None
        if interventions is None
        else {k: float(w) for k, w in interventions.items()},
        augment=cfg.model.cf_finetune.augment,
        anchor=OmegaConf.to_container(anchor) if isinstance(anchor, DictConfig) else anchor,
    )
    assert cfg.trainer.max_epochs >= 1 and cfg.task_name == f"{family}_cf_morphomnist"


def test_the_fine_tuning_judges_settings_reach_the_stage(morpho):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=hvae_cf_morphomnist",
                "model.cf_finetune.init_ckpt=stage1.ckpt",
                "model.cf_finetune.judge={interventional: [thickness, intensity]}",
            ],
        )
    model = _build_model(cfg.model, morpho)
    assert model.finetuning.judge == {"interventional": ["thickness", "intensity"]}


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


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml") if p.stem != "default")


#: Every option of every config group, found on disk, so that a new config is covered too.
GROUP_OPTIONS = [
    (group, option)
    for group in ("data", "model", "trainer", "callbacks", "logger", "paths", "experiment")
    for option in _options(group)
]


@pytest.mark.parametrize(("group", "option"), GROUP_OPTIONS)
def test_every_config_option_composes_and_builds(group, option, morpho, domains, tmp_path):
    overrides = [f"{group}={option}", f"paths.output_dir={tmp_path}"]
    if option.endswith("_cf_morphomnist"):
        overrides.append("model.cf_finetune.init_ckpt=stage1.ckpt")
    if option == "folder":  # the user's folder is mandatory; its graph is read at construction
        (tmp_path / "graph.yaml").write_text(
            "variables:\n  a: {kind: continuous, support: [0, 1]}\n"
        )
        (tmp_path / "attributes.csv").write_text("file,a\nx.png,0.5\n")
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "x.png")
        overrides.append(f"data.root={tmp_path}")
    # evaluate.py has the data, model, trainer and paths groups of train.py
    for config in (
        ("evaluate", "train") if group in ("data", "model", "trainer", "paths") else ("train",)
    ):
        with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
            cfg = compose(config, overrides=overrides)
    if group == "model" or group == "experiment":
        model = _build_model(cfg.model, domains if option.startswith("ild") else morpho)  # a domain
        assert type(model).__name__ == cfg.model._target_.rsplit(".", 1)[1]
    elif group == "trainer" and cfg.trainer.accelerator in ("cpu", "auto") and option != "auto":
        built = instantiate(cfg.trainer, default_root_dir=str(tmp_path), logger=False)
        assert built.world_size == cfg.trainer.devices * cfg.trainer.get("num_nodes", 1)
    elif group == "data":
        datamodule = instantiate(cfg.data, data_dir=str(tmp_path), _convert_="all")
        assert datamodule.batch_size == cfg.data.batch_size
    elif group in ("callbacks", "logger"):
        for settings in (cfg.get(group) or {}).values():
            assert instantiate(settings, _convert_="all") is not None


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, list | tuple) else value


#: A ``None`` (or ``True``) default of a model that a dict of settings fills: the function or
#: mapping whose defaults it means.
NONE_MEANS = {
    "scm": "models.scm.AttributeSCM",
    "scheduler": "models.nn.diffusion.SCHEDULER_DEFAULTS",
    "autoencoder": "models.diffae.AUTOENCODER_DEFAULTS",
}


@pytest.mark.parametrize(
    "option",
    [
        o
        for o in _options("model")
        if "defaults" not in (CONFIGS / "model" / f"{o}.yaml").read_text()
    ],
)
def test_a_model_config_repeats_its_python_defaults_exactly(option):
    """One source of truth: each base model config's values are its class's defaults (presets
    such as ``*_large`` build on a base config and change it on purpose)."""
    import importlib
    import inspect

    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(CONFIGS / "model" / f"{option}.yaml"))
    module, name = config.pop("_target_").rsplit(".", 1)
    parameters = inspect.signature(
        getattr(importlib.import_module(module), name).__init__
    ).parameters
    for key, value in config.items():
        assert key in parameters, f"{option}.yaml sets {key}, which {name} does not take"
        default = parameters[key].default
        if default is inspect.Parameter.empty:
            continue
        if (default is None or default is True) and key in NONE_MEANS:
            module_name, attribute = NONE_MEANS[key].rsplit(".", 1)
            meant = getattr(importlib.import_module(module_name), attribute)
            if callable(meant):
                meant = {
                    k: p.default
                    for k, p in inspect.signature(meant.__init__).parameters.items()
                    if k in value
                }
            assert {k: meant[k] for k in value} == value, f"{option}.yaml {key}"
            continue
        assert _plain(value) == _plain(default), (
            f"{option}.yaml {key}: {value} vs {name}'s {default}"
        )


def test_both_command_lines_spell_options_alike():
    """``options.residual=false``, no ``+``, in evaluate.py as in ``python -m models``."""
    from models.__main__ import _settings

    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("evaluate", overrides=["options.residual=false", "options.steps=5"])
    assert cfg.options.residual is False and cfg.options.steps == 5
    assert cfg.options.temperature is None  # unset: the model's own default
    assert _settings(["ckpt_path=x.ckpt", "options.residual=false"]).options.residual is False
