"""End to end: the real train.yaml, shrunk; resume; the counterfactual command line."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate as hydra_instantiate

import train as train_script
from models import load_model
from models.__main__ import main as counterfactual_cli
from tests.helpers import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data.batch_size=32",
    "model.latent_dim=4",
    "model.widths=[8,16]",
    "model.hidden=32",
    "model.scm.hidden=16",
    "model.scm.transforms=2",
    "model.scm.fit_steps=20",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "~callbacks.progress_bar",
    "trainer.enable_progress_bar=false",
    "grid.num_samples=4",
]


def _tiny_data(overrides) -> list[str]:
    """200 Morpho-MNIST digits, unless the overrides choose another dataset."""
    return [] if any(o.startswith("data=") for o in overrides) else ["data.limit=200"]


def compose_train(data_dir: Path, run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(
            "train",
            overrides=[
                *_tiny_data(overrides),
                *TINY,
                f"data.data_dir={data_dir}",
                f"paths.root_dir={ROOT}",
                f"paths.output_dir={run_dir}",
                *overrides,
            ],
        )


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    metrics = train_script.train(compose_train(data_dir, run_dir))
    return run_dir, metrics


def test_train_writes_checkpoints_and_a_grid(trained):
    run_dir, metrics = trained
    assert Path(metrics["last_ckpt"]).is_file()
    assert Path(metrics["best_ckpt"]).is_file()
    assert Path(metrics["grid"]).stat().st_size > 1000
    assert metrics["global_step"] == 3
    assert metrics["val/loss"] == pytest.approx(metrics["val/loss"]) and metrics["val/loss"] < 50


def test_checkpoint_answers_counterfactuals(trained, morpho):
    _, metrics = trained
    model = load_model(metrics["last_ckpt"])
    batch = next(iter(morpho.test_dataloader()))
    cf = model.counterfactual(batch["x"], batch["pa"], {"intensity": lambda i: i * 0 + 120})
    assert cf.image.shape == batch["x"].shape
    assert torch.equal(cf.parents["thickness"], batch["pa"]["thickness"])
    null = model.counterfactual(batch["x"], batch["pa"], {})
    assert (null.image - batch["x"]).abs().max() < 1e-4


def test_resume_continues_from_the_checkpoint_step(trained, data_dir, tmp_path):
    _, metrics = trained
    resumed = train_script.train(
        compose_train(
            data_dir, tmp_path, f"ckpt_path={metrics['last_ckpt']}", "trainer.max_epochs=2"
        )
    )
    # 3 steps from the first run, then 3 more: not 3 from zero
    assert resumed["global_step"] == 6


def test_train_refuses_to_resume_another_architecture_before_training(trained, data_dir, tmp_path):
    _, metrics = trained
    cfg = compose_train(
        data_dir, tmp_path, f"ckpt_path={metrics['last_ckpt']}", "model.latent_dim=7"
    )
    with pytest.raises(ValueError, match=r"does not fit the configured ConditionalVAE.*is \("):
        train_script.train(cfg)
    assert not list(tmp_path.rglob("*.ckpt"))  # refused before any training


def test_a_fine_tuning_stage_on_another_draw_of_the_data_is_refused_before_its_judge(
    trained, data_dir, tmp_path, monkeypatch
):
    _, metrics = trained

    def no_judge(*args, **kwargs):
        raise AssertionError("a judge was trained for data the base never saw")

    monkeypatch.setattr("metrics.judges.load_or_train_predictor", no_judge)
    cfg = compose_train(
        data_dir,
        tmp_path,
        "experiment=vae_cf_morphomnist",
        f"model.cf_finetune.init_ckpt={metrics['last_ckpt']}",
        "seed=1",  # data.seed follows it: another split than the base's
    )
    with pytest.raises(ValueError, match=r"other data than this fine-tuning stage \(seed: 0 there"):
        train_script.train(cfg)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_resuming_on_another_split_is_refused_before_training(trained, data_dir, tmp_path):
    _, metrics = trained
    cfg = compose_train(data_dir, tmp_path, f"ckpt_path={metrics['last_ckpt']}", "seed=1")
    with pytest.raises(
        ValueError, match=r"than this run \(seed: 0 there, 1 here\): pass data\.seed=0"
    ):
        train_script.train(cfg)
    assert not list(tmp_path.rglob("*.ckpt"))


def test_train_rejects_a_missing_checkpoint(data_dir, tmp_path):
    cfg = compose_train(data_dir, tmp_path, f"ckpt_path={tmp_path / 'missing.ckpt'}")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train_script.train(cfg)


def test_train_rejects_an_unwritable_run_directory(data_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match="cannot write the run directory"):
        train_script.train(compose_train(data_dir, blocker / "run"))


@pytest.mark.parametrize("script", ["train.py", "evaluate.py"])
def test_a_run_directory_hydra_cannot_create_is_named_before_any_work(script, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("kept")
    result = subprocess.run(
        [sys.executable, script, f"paths.log_dir={blocker}"]
        + (["model=oracle"] if script == "evaluate.py" else []),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert f"cannot write the run's outputs to {blocker}" in result.stderr
    assert "paths.log_dir=" in result.stderr and "Traceback" not in result.stderr
    assert blocker.read_text() == "kept"


def test_the_sampling_command_line_writes_samples_under_do(trained, tmp_path):
    _, metrics = trained
    out = tmp_path / "samples"
    argv = ["sample", f"ckpt_path={metrics['last_ckpt']}", "num=5", "do.digit=3", f"out_dir={out}"]
    assert counterfactual_cli(argv) == 0
    rows = list(csv.DictReader((out / "samples.csv").open()))
    assert len(rows) == 5 and {float(r["digit"]) for r in rows} == {3.0}
    assert all((out / r["file"]).stat().st_size > 0 for r in rows)
    assert (out / "grid.png").stat().st_size > 1000


def test_counterfactual_command_line(trained, data_dir, tmp_path):
    _, metrics = trained
    out = tmp_path / "cf"
    code = counterfactual_cli(
        [
            f"ckpt_path={metrics['last_ckpt']}",
            f"data_dir={data_dir}",
            "data.limit=200",
            "num=5",
            "do.thickness=4.0",
            "shift.intensity=-10",
            f"out_dir={out}",
        ]
    )
    assert code == 0
    rows = list(csv.DictReader((out / "counterfactuals.csv").open()))
    assert len(rows) == 5
    assert all(float(r["cf_thickness"]) == 4.0 for r in rows)
    assert (out / "grid.png").is_file() and len(list(out.glob("*_cf.png"))) == 5


def _folder_query(trained, morpho, tmp_path, files: list[str]) -> tuple[list[str], Path]:
    """Test digits written as ``files`` under ``tmp_path`` with an attribute CSV, and the
    counterfactual CLI's arguments for do(digit=7) on them."""
    from torchvision.utils import save_image

    _, metrics = trained
    batch = next(iter(morpho.test_dataloader()))
    with (tmp_path / "attrs.csv").open("w") as stream:
        stream.write("file,thickness,intensity,digit\n")
        for i, name in enumerate(files):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            save_image(batch["x"][i], tmp_path / name)
            pa = {k: v[i].item() for k, v in batch["pa"].items()}
            stream.write(f"{name},{pa['thickness']},{pa['intensity']},{pa['digit']}\n")
    out = tmp_path / "out"
    args = [
        f"ckpt_path={metrics['last_ckpt']}",
        f"folder={tmp_path}",
        f"csv={tmp_path / 'attrs.csv'}",
        "do.digit=7",
        f"out_dir={out}",
    ]
    return args, out


def test_counterfactual_command_line_on_a_folder(trained, morpho, tmp_path):
    args, out = _folder_query(trained, morpho, tmp_path, ["d0.png", "d1.png", "d2.png"])
    assert counterfactual_cli(args) == 0
    assert len(list(out.glob("*_cf.png"))) == 3
    with pytest.raises(ValueError, match="unknown variable 'colour'"):
        counterfactual_cli(args[:3] + ["do.colour=1", f"out_dir={out}"])


def test_the_counterfactual_command_line_writes_one_file_per_input(trained, morpho, tmp_path):
    """a/x.png and b/x.png must not overwrite each other's counterfactual."""
    args, out = _folder_query(trained, morpho, tmp_path, ["a/x.png", "b/x.png", "c/x.png"])
    assert counterfactual_cli(args) == 0
    with (out / "counterfactuals.csv").open() as stream:
        targets = [row["counterfactual_file"] for row in csv.DictReader(stream)]
    assert targets == ["a/x_cf.png", "b/x_cf.png", "c/x_cf.png"]
    assert all((out / t).is_file() for t in targets)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ckpt_path=x.ckpt", "--num", "4"], "--num is not a setting.*num=4"),
        (["ckpt_path=x.ckpt", "nmu=4"], "unknown setting 'nmu'"),
        (["ckpt_path=x.ckpt", "num=0"], "num must be .* at least 1"),
        (["ckpt_path=x.ckpt", "num=abc"], "num must be"),
        (["ckpt_path=x.ckpt", "do.thickness"], "'do.thickness' has no value"),
        (["ckpt_path=x.ckpt", "opt.residual=false"], "now options.NAME=VALUE"),
    ],
)
def test_the_counterfactual_command_line_refuses_settings_it_would_ignore(argv, message):
    with pytest.raises(ValueError, match=message):
        counterfactual_cli(argv)


def test_output_names_stay_inside_the_output_folder_and_never_repeat():
    from models.__main__ import _output_names

    names = ["x.png", "../up.png", "/abs/y.png", "x.png", "test-3"]
    assert _output_names(names) == [
        "x_cf.png",
        "00001_up_cf.png",
        "00002_y_cf.png",
        "00003_x_cf.png",
        "test-3_cf.png",
    ]


def test_help_commands():
    result = subprocess.run(
        [sys.executable, "train.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "ckpt_path" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "models", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "do.thickness" in result.stdout


def compose_evaluate(data_dir: Path, run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose(
            "evaluate",
            overrides=[
                *_tiny_data(overrides),
                f"data.data_dir={data_dir}",
                f"paths.root_dir={ROOT}",
                f"paths.output_dir={run_dir}",
                "predictor.epochs=2",
                "predictor.widths=[8,16]",
                "predictor.features=16",
                "seeds=[0,1]",
                "composition_steps=3",
                "reversibility_cycles=2",
                "realism.kid_subset_size=10",
                "progress=false",
                "grid_samples=4",
                *overrides,
            ],
        )


def _fine_tuned_against(monkeypatch, source: str) -> None:
    """evaluate.py's models say they were fine-tuned against ``source``."""
    import evaluate as evaluate_script

    build = evaluate_script.build_model

    def build_fine_tuned(cfg, datamodule):
        model = build(cfg, datamodule)
        model.trained_against = source
        return model

    monkeypatch.setattr(evaluate_script, "build_model", build_fine_tuned)


def test_evaluate_end_to_end(trained, data_dir, tmp_path, monkeypatch):
    import evaluate as evaluate_script

    _, metrics = trained
    # a model fine-tuned against another judge is scored, and the report says against which
    _fine_tuned_against(monkeypatch, str(tmp_path / "predictors" / "morphomnist-0123.ckpt"))
    report = evaluate_script.evaluate(
        compose_evaluate(data_dir, tmp_path, f"ckpt_path={metrics['last_ckpt']}")
    )
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["model"] == "ConditionalVAE" and len(saved["checkpoint_sha256"]) == 64
    assert saved["seeds"] == [0, 1] and saved["num_test"] == 40
    assert len(saved["composition"]["curve_mean"]) == 3
    assert saved["composition"]["m1"]["mean"] < 0.05  # the pixel residual makes it ~exact
    thickness = saved["interventions"]["thickness"]
    for key in (
        "truth/l1",
        "truth/rmse",
        "reversibility/cycle1",
        "reversibility/cycle2",
        "fid",
        "kid",
        "effectiveness/thickness",
        "effectiveness/digit",
        "measured/thickness",
    ):
        assert len(thickness[key]["per_seed"]) == 2, key
    assert "truth/l1" not in saved["interventions"]["digit"]  # no ground truth for do(digit)
    assert set(saved["floor"]["predictor"]) == {"thickness", "intensity", "digit"}
    # the decoder alone (residual off) drifts; with the residual the null intervention is exact
    decoder = saved["composition_decoder"]
    assert len(decoder["curve_mean"]) == 3 and len(decoder["m3"]["per_seed"]) == 2
    assert decoder["m1"]["mean"] > 10 * max(saved["composition"]["m1"]["mean"], 0.01)
    judges = saved["judges"]
    assert judges["effectiveness"]["role"] == "heldout"
    assert judges["effectiveness"]["settings"]["arch"] == "resnet"
    assert judges["effectiveness"]["settings"]["widths"] == [8, 16]  # the config's override
    assert judges["effectiveness"]["source"] == saved["predictor"]
    assert judges["finetuned_against"].endswith("morphomnist-0123.ckpt")
    assert "measure_attributes" in judges["measured"]
    text = (tmp_path / "report.md").read_text()
    assert "Per intervention" in text and "decoder alone" in text
    assert "thickness MAE (held-out judge)" in text and "morphomnist-0123.ckpt" in text
    for name in ("composition.png", "effectiveness.png", "grid.png"):
        assert (tmp_path / name).stat().st_size > 1000
    assert report["config"]["ckpt_path"] == metrics["last_ckpt"]


def test_evaluate_oracle_from_config(data_dir, tmp_path):
    import evaluate as evaluate_script

    report = evaluate_script.evaluate(
        compose_evaluate(
            data_dir,
            tmp_path,
            "model=oracle",
            "seeds=[0]",
            "interventions=[intensity,digit]",
            "test_images=16",
        )
    )
    assert report["num_test"] == 16  # 16 test images only
    assert report["interventions"]["intensity"]["truth/l1"]["mean"] < 0.05
    assert report["interventions"]["digit"] is None


def test_evaluate_errors(trained, data_dir, tmp_path):
    import evaluate as evaluate_script

    _, metrics = trained
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        evaluate_script.evaluate(
            compose_evaluate(data_dir, tmp_path, f"ckpt_path={tmp_path / 'nope.ckpt'}")
        )
    with pytest.raises(ValueError, match="unknown intervention 'colour'"):
        evaluate_script.evaluate(
            compose_evaluate(
                data_dir, tmp_path, f"ckpt_path={metrics['last_ckpt']}", "interventions=[colour]"
            )
        )
    # a checkpoint of another dataset
    model = load_model(metrics["last_ckpt"])
    model.hparams.dataset = "pendulum"
    other = save_checkpoint(model, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="trained on 'pendulum'.*data=pendulum"):
        evaluate_script.evaluate(compose_evaluate(data_dir, tmp_path, f"ckpt_path={other}"))
    with pytest.raises(ValueError, match="test_images must be a positive number"):
        evaluate_script.evaluate(
            compose_evaluate(
                data_dir, tmp_path, f"ckpt_path={metrics['last_ckpt']}", "test_images=0"
            )
        )
    with pytest.raises(ValueError, match="nothing to evaluate"):
        evaluate_script.evaluate(compose_evaluate(data_dir, tmp_path))


def test_evaluate_refuses_another_split_than_the_models_before_its_judges(
    trained, data_dir, tmp_path, monkeypatch
):
    import evaluate as evaluate_script

    def no_judge(*args, **kwargs):
        raise AssertionError("a judge was trained for an evaluation that is refused")

    monkeypatch.setattr(evaluate_script, "load_or_train_predictor", no_judge)
    _, metrics = trained
    for other in ("seed=1", "data.seed=1", "data.limit=300"):  # evaluate's data.seed follows seed
        cfg = compose_evaluate(data_dir, tmp_path, f"ckpt_path={metrics['last_ckpt']}", other)
        with pytest.raises(ValueError, match=r"other data than this evaluation"):
            evaluate_script.evaluate(cfg)
    with pytest.raises(
        ValueError, match=r"limit: 200 there, 300 here\): pass data\.limit=200; test_images=N"
    ):
        evaluate_script.evaluate(cfg)
    assert not list(tmp_path.rglob("report.json"))


def test_evaluate_refuses_the_judge_a_model_was_fine_tuned_against(
    trained, data_dir, tmp_path, monkeypatch
):
    import evaluate as evaluate_script
    from metrics.judges import judge_source

    _, metrics = trained
    cfg = compose_evaluate(data_dir, tmp_path, f"ckpt_path={metrics['last_ckpt']}")
    datamodule = hydra_instantiate(cfg.data, _convert_="all")
    overrides = {"epochs": 2, "widths": [8, 16], "features": 16}
    heldout = judge_source(datamodule, "heldout", **overrides)
    _fine_tuned_against(monkeypatch, heldout)
    with pytest.raises(ValueError, match="fine-tuned against: a judge that trains a model never"):
        evaluate_script.evaluate(cfg)
    # the same judge by a checkpoint path, and the other role's judge when it is the one
    with pytest.raises(ValueError, match="fine-tuned against"):
        evaluate_script.evaluate(
            compose_evaluate(
                data_dir,
                tmp_path,
                f"ckpt_path={metrics['last_ckpt']}",
                f"predictor.ckpt_path={heldout}",
            )
        )
    _fine_tuned_against(monkeypatch, judge_source(datamodule, "finetune", **overrides))
    with pytest.raises(ValueError, match="fine-tuned against a .finetune. judge"):
        evaluate_script.evaluate(
            compose_evaluate(
                data_dir, tmp_path, f"ckpt_path={metrics['last_ckpt']}", "predictor.role=finetune"
            )
        )
    assert not (tmp_path / "report.json").exists()  # refused before scoring anything


def test_train_refuses_reference_models(data_dir, tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["model=oracle", f"paths.root_dir={ROOT}", f"paths.output_dir={tmp_path}"],
        )
    with pytest.raises(ValueError, match="not trainable"):
        train_script.train(cfg)


@pytest.mark.parametrize(
    ("script", "override", "message"),
    [
        ("train.py", "seed=abc", "seed must be a whole number"),
        ("train.py", "data.limit=abc", "data.limit must be a whole number"),
        ("evaluate.py", "seeds=abc", r"seeds must be a list.*\[0, 1, 2\]"),
    ],
)
def test_a_mistyped_setting_fails_first_naming_its_key(script, override, message, tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / script), override, f"paths.log_dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr[-2000:]
    assert not list(tmp_path.rglob("*.ckpt"))


@pytest.mark.parametrize(
    ("anchor", "accepted"),
    [("0.3", True), ("{thickness:0.3,intensity:0.3}", True), ("strong", False)],
)
def test_the_anchor_override_takes_a_weight_or_one_per_attribute(anchor, accepted):
    from hydra.core.hydra_config import HydraConfig

    from models.config_types import check_override_types

    overrides = ["experiment=hvae_cf_morphomnist", f"model.cf_finetune.anchor={anchor}"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        try:
            if accepted:
                check_override_types(cfg, "train")
            else:
                with pytest.raises(ValueError, match="anchor must be a number or a mapping"):
                    check_override_types(cfg, "train")
        finally:
            HydraConfig.instance().cfg = None


@pytest.fixture
def exported(trained, tmp_path):
    """The trained checkpoint exported as a pretrained model (safetensors and its manifest)."""
    from models.pretrained import save_pretrained

    _, metrics = trained
    return save_pretrained(load_model(metrics["last_ckpt"]), tmp_path / "zoo", "tiny-vae")


def test_pretrained_models_in_the_command_lines(exported, data_dir, tmp_path, capsys, monkeypatch):
    import evaluate as evaluate_script
    import models.pretrained

    monkeypatch.setattr(models.pretrained, "PRETRAINED_DIR", exported.parent)  # "shipped" here
    out = tmp_path / "cf"
    argv = ["pretrained=tiny-vae", f"data_dir={data_dir}", "data.limit=200", "num=3"]
    assert counterfactual_cli([*argv, "do.digit=2", f"out_dir={out}"]) == 0
    rows = list(csv.DictReader((out / "counterfactuals.csv").open()))
    assert len(rows) == 3 and all(float(r["cf_digit"]) == 2 for r in rows)
    with pytest.raises(ValueError, match="either ckpt_path=PATH or pretrained=NAME"):
        counterfactual_cli([*argv, "ckpt_path=x.ckpt", "do.digit=2"])
    with pytest.raises(FileNotFoundError, match="neither a pretrained model"):
        counterfactual_cli(["pretrained=no-such-model", "do.digit=2"])
    assert counterfactual_cli(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "tiny-vae  (ConditionalVAE, morphomnist)" in listed and "parameters" in listed

    cfg = compose_evaluate(data_dir, tmp_path, f"pretrained={exported}")
    datamodule = hydra_instantiate(cfg.data, _convert_="all")
    datamodule.setup()
    assert evaluate_script.build_model(cfg, datamodule).dataset_name == "morphomnist"
    both = compose_evaluate(data_dir, tmp_path, f"pretrained={exported}", "ckpt_path=x.ckpt")
    with pytest.raises(ValueError, match="either ckpt_path=PATH or pretrained=NAME"):
        evaluate_script.build_model(both, datamodule)
    with pytest.raises(ValueError, match="trained on 'morphomnist'.*data=morphomnist"):
        evaluate_script.build_model(cfg, SimpleNamespace(name="pendulum"))
    # the manifest keeps the data's split, as a checkpoint does
    other = compose_evaluate(data_dir, tmp_path, f"pretrained={exported}", "seed=1")
    with pytest.raises(ValueError, match=r"seed: 0 there, 1 here"):
        evaluate_script.build_model(other, hydra_instantiate(other.data, _convert_="all"))
