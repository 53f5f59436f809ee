"""The zoo leaderboard runs end to end at a tiny budget, writes every column, and resumes."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import zoo  # noqa: E402

from models import load_model  # noqa: E402

ATTRIBUTES = ("thickness", "intensity", "digit")
MEASURED = ("thickness", "intensity")  # what morphometry measures
TINY_EVAL = [
    "predictor.epochs=2",
    "predictor.widths=[8,16]",
    "predictor.features=16",
    "composition_steps=3",
    "reversibility_cycles=2",
    "realism.kid_subset_size=10",
    "grid_samples=4",
]


def test_zoo_trains_scores_and_resumes(data_dir, tmp_path, capsys, monkeypatch):
    argv = [
        "--families",
        "vae",
        "hvae",
        "hvae_cf",
        "flow",
        "--minutes",
        "0.05",
        "--data-limit",
        "200",
        "--data-dir",
        str(data_dir),
        "--out-dir",
        str(tmp_path / "results"),
        "--work-dir",
        str(tmp_path / "work"),
        "--machine",
        "testbox",
        *[f"--eval-override={o}" for o in TINY_EVAL],
        "--train-override=trainer.max_epochs=1",  # the hvae_cf stage: one epoch
    ]
    markdown_path = zoo.main(argv)
    results = json.loads(markdown_path.with_suffix(".json").read_text())
    assert list(results["models"]) == ["vae", "hvae", "hvae_cf", "flow", "oracle", "identity"]
    columns = [
        "composition m=1",
        "composition m=3",
        *(f"reversibility do({v})" for v in ATTRIBUTES),
        *(f"effectiveness do({v}), held-out judge" for v in ATTRIBUTES),
        *(f"floor {v}, held-out judge" for v in ATTRIBUTES),
        *(f"effectiveness do({v}), morphometry" for v in MEASURED),
        *(f"floor {v}, morphometry" for v in MEASURED),
        "truth L1 do(thickness)",
        "truth L1 do(intensity)",
        *(f"FID do({v})" for v in ATTRIBUTES),
        *(f"CLD do({v})" for v in ATTRIBUTES),
    ]
    extra = ["training minutes", "train img/s", "counterfactuals/s", "peak train RSS (MB)"]
    decoder = ["composition m=1, decoder alone", "composition m=3, decoder alone"]
    for name in ("vae", "hvae", "hvae_cf", "flow"):
        row = results["models"][name]["rows"][0]
        for column in [*columns, *extra, *(decoder if name != "flow" else [])]:
            assert row["metrics"][column] == row["metrics"][column], column  # present, not NaN
        assert (row["metrics"]["composition m=3, decoder alone"] > 1) == (name != "flow")
        assert row["metrics"]["peak train RSS (MB)"] > 100  # a torch process
        launch = "experiment=hvae_cf_morphomnist" if name == "hvae_cf" else f"model={name}"
        assert len(row["commit"]) >= 40 and row["config"]["train"][0] == launch
    # the second stage started from the hvae row's checkpoint and counts its budget too
    stage = results["models"]["hvae_cf"]["rows"][0]
    assert (
        "hvae-seed0"
        in (tmp_path / "work" / "hvae_cf-seed0" / ".hydra" / "overrides.yaml").read_text()
    )
    assert stage["metrics"]["training minutes"] == pytest.approx(
        results["models"]["hvae"]["rows"][0]["metrics"]["training minutes"]
        + stage["metrics"]["stage minutes"]
    )
    oracle = results["models"]["oracle"]["rows"][0]["metrics"]
    assert oracle["truth L1 do(thickness)"] < 0.05 and oracle["composition m=1"] == 0
    identity = results["models"]["identity"]["rows"][0]["metrics"]
    assert identity["CLD do(thickness)"] == pytest.approx(math.log(1 + math.e))
    assert set(results["floor"]["predictor"]) == set(ATTRIBUTES)
    assert set(results["floor"]["measured"]) == set(MEASURED)
    assert results["judges"]["effectiveness"]["role"] == "heldout"
    text = markdown_path.read_text()
    for column in columns:
        assert f"| {column} |" in text
    assert (tmp_path / "results" / f"testbox-{results_date(markdown_path)}-grid.png").stat().st_size
    # Resumable: a second run at the same commit and config measures nothing again.
    capsys.readouterr()
    zoo.main(argv)
    out = capsys.readouterr().out
    assert out.count("already measured") == 6
    # --date names the file to extend or re-render (a run that crosses midnight, a later render)
    day = results_date(markdown_path)
    assert zoo.main([*argv, "--render-only", "--date", day]) == markdown_path
    with pytest.raises(SystemExit):
        zoo.main([*argv, "--render-only", "--date", "2026-13-01"])
    # A row becomes a pretrained model: weights, manifest, card and grid; a rebuild is checked
    import pretrained

    import models.pretrained

    shipped = tmp_path / "shipped"
    json_path = str(markdown_path.with_suffix(".json"))
    build = ["hvae_cf-morphomnist", "--results", json_path, "--data-dir", str(data_dir)]
    assert pretrained.main([*build, "--out-dir", str(shipped)]) == 0
    model = load_model(shipped / "hvae_cf-morphomnist.json")
    assert model.trained_against.startswith("predictors/")  # no folder of this machine
    card = (shipped / "hvae_cf-morphomnist.md").read_text()
    assert "python benchmarks/pretrained.py hvae_cf-morphomnist --check" in card
    assert "| effectiveness do(digit), held-out judge | >= 95.0% |" in card
    assert (shipped / "hvae_cf-morphomnist.png").stat().st_size > 1000
    monkeypatch.setattr(models.pretrained, "PRETRAINED_DIR", shipped)
    assert pretrained.main([*build, "--check"]) == 0  # the same row agrees with itself
    results["models"]["hvae_cf"]["rows"][0]["metrics"]["truth L1 do(thickness)"] *= 2
    Path(json_path).write_text(json.dumps(results))
    assert pretrained.main([*build, "--check"]) == 1


def fake_report(path: Path, thickness_error: float) -> dict:
    """An evaluate.py report with every key the leaderboard reads."""
    stat = {"mean": thickness_error, "std": 0.0, "per_seed": [thickness_error]}
    result = {
        "variables": ["thickness"],
        "effectiveness/thickness": stat,
        "measured/thickness": {**stat, "mean": 2 * thickness_error},
        "truth/l1": stat,
        "reversibility/cycle1": stat,
        "fid": stat,
    }
    curve = {"curve_mean": [0.0, 0.0, 0.0], "m1": stat, "m3": stat}
    return {
        "interventions": {"thickness": result, "intensity": result, "digit": None},
        "composition": curve,
        "composition_decoder": {**curve, "m3": {**stat, "mean": 30.0}},
        "attribute_kinds": {"thickness": "continuous", "intensity": "continuous", "digit": "x"},
        "floor": {
            "predictor": {"thickness": 0.1, "digit": 0.9},
            "measured": {"thickness": 0.05},
        },
        "judges": {"effectiveness": {"role": "heldout", "source": "h.ckpt", "settings": {}}},
        "files": {"json": str(path)},
    }


@pytest.fixture
def fake_zoo(monkeypatch, tmp_path):
    """zoo.py with train.py and evaluate.py replaced by records of their calls."""
    calls = []

    def train_with_budget(workdir, family, seed, minutes, overrides):
        calls.append(("train", family, seed))
        checkpoint = tmp_path / f"{family}-seed{seed}.ckpt"
        checkpoint.write_text("weights")
        return {
            "checkpoint": str(checkpoint),
            "wall_seconds": 60 * minutes,
            "train_images_per_second": 100.0,
            "peak_train_rss_mb": 500.0,
        }

    def train_stage(workdir, name, seed, base_checkpoint, overrides):
        calls.append(("stage", name, seed, Path(base_checkpoint).name))
        return {
            "checkpoint": str(tmp_path / f"{name}-seed{seed}.ckpt"),
            "wall_seconds": 90.0,
            "train_images_per_second": 50.0,
            "peak_train_rss_mb": 600.0,
        }

    def score(workdir, name, seed, overrides, model_args):
        calls.append(("score", name, seed))
        return fake_report(tmp_path / f"{name}-{seed}.json", thickness_error=0.1 * (1 + seed))

    monkeypatch.setattr(zoo, "train_with_budget", train_with_budget)
    monkeypatch.setattr(zoo, "train_stage", train_stage)
    monkeypatch.setattr(zoo, "score", score)
    monkeypatch.setattr(zoo, "load_model", lambda path: None)
    monkeypatch.setattr(zoo, "counterfactuals_per_second", lambda *args, **kwargs: 1000.0)
    monkeypatch.setattr(zoo, "comparison_grid", lambda checkpoints, datamodule, path: path)
    return calls


def test_every_family_has_a_fine_tuning_stage():
    assert {
        f"{f}_cf": (f, [f"experiment={f}_cf_morphomnist"])
        for f in ("vae", "hvae", "flow", "diffae")
    } == zoo.STAGES
    assert zoo.DEFAULT_FAMILIES == ("vae", "vae_cf", "hvae", "hvae_cf", "flow", "flow_cf")


def test_a_stage_alone_trains_its_base_model_first(data_dir, tmp_path, fake_zoo):
    argv = ["--families", "vae_cf", "--no-oracle", "--seeds", "2", "--data-limit", "200"]
    argv += ["--data-dir", str(data_dir), "--out-dir", str(tmp_path / "results")]
    argv += ["--work-dir", str(tmp_path / "work"), "--machine", "testbox", "--minutes", "2"]
    markdown_path = zoo.main(argv)
    assert fake_zoo == [
        ("train", "vae", 0),
        ("score", "vae", 0),
        ("stage", "vae_cf", 0, "vae-seed0.ckpt"),  # each seed from its own base checkpoint
        ("score", "vae_cf", 0),
        ("train", "vae", 1),
        ("score", "vae", 1),
        ("stage", "vae_cf", 1, "vae-seed1.ckpt"),
        ("score", "vae_cf", 1),
    ]
    results = json.loads(markdown_path.with_suffix(".json").read_text())
    assert list(results["models"]) == ["vae", "vae_cf"]  # the base model has its rows too
    base, stage = (results["models"][n]["rows"][0]["metrics"] for n in ("vae", "vae_cf"))
    assert base["training minutes"] == 2 and "stage minutes" not in base
    assert stage["stage minutes"] == 1.5 and stage["training minutes"] == 3.5
    assert stage["effectiveness do(thickness), held-out judge"] == pytest.approx(0.1)
    assert stage["effectiveness do(thickness), morphometry"] == pytest.approx(0.2)
    assert stage["floor thickness, morphometry"] == 0.05
    assert stage["composition m=3, decoder alone"] == 30.0
    summary = results["models"]["vae_cf"]["summary"]["effectiveness do(thickness), held-out judge"]
    assert summary["mean"] == pytest.approx(0.15) and summary["n"] == 2  # seeds 0 and 1
    text = markdown_path.read_text()
    assert "| metric | vae | vae_cf |" in text
    assert "| effectiveness do(thickness), held-out judge | 0.15 ± 0.0707 | 0.15 ± 0.0707 |" in text
    assert "| floor digit, held-out judge | 90% ± 0 | 90% ± 0 |" in text
    assert "| stage minutes | n/a | 1.5 ± 0 |" in text
    # the base rows now exist: listing the base too trains nothing again
    fake_zoo.clear()
    zoo.main(["--families", "vae", "vae_cf", *argv[2:]])
    assert fake_zoo == []
    # a base checkpoint that is gone is trained again before its stage is
    results["models"]["vae_cf"]["rows"] = []
    markdown_path.with_suffix(".json").write_text(json.dumps(results))
    (tmp_path / "vae-seed1.ckpt").unlink()
    zoo.main(argv)
    assert fake_zoo == [
        ("stage", "vae_cf", 0, "vae-seed0.ckpt"),
        ("score", "vae_cf", 0),
        ("train", "vae", 1),
        ("score", "vae", 1),
        ("stage", "vae_cf", 1, "vae-seed1.ckpt"),
        ("score", "vae_cf", 1),
    ]


def record_overrides(monkeypatch, adjust=lambda name, trained: trained) -> dict:
    """Wrap the (fake) trainers so that each run's train.py overrides are recorded by name, and
    ``adjust(name, trained)`` may change what a run returns."""
    overrides = {}
    for name in ("train_with_budget", "train_stage"):
        fake = getattr(zoo, name)

        def record(*args, fake=fake):
            overrides[args[1]] = args[-1]
            return adjust(args[1], fake(*args))

        monkeypatch.setattr(zoo, name, record)
    return overrides


def test_a_stage_override_reaches_the_fine_tuning_stage_only(
    data_dir, tmp_path, monkeypatch, fake_zoo
):
    overrides = record_overrides(monkeypatch)
    argv = ["--families", "vae_cf", "--no-oracle", "--data-limit", "200", "--minutes", "2"]
    argv += ["--data-dir", str(data_dir), "--out-dir", str(tmp_path / "results")]
    argv += ["--work-dir", str(tmp_path / "work"), "--machine", "testbox"]
    argv += ["--stage-override=model.cf_finetune.augment=none"]
    results = json.loads(zoo.main(argv).with_suffix(".json").read_text())
    assert "model.cf_finetune.augment=none" in overrides["vae_cf"]
    assert "model.cf_finetune.augment=none" not in overrides["vae"]
    # the override is part of the stage's config, so a row without it is not taken for this one
    configs = {n: results["models"][n]["rows"][0]["config"]["train"] for n in ("vae", "vae_cf")}
    assert configs["vae_cf"][-1] == "model.cf_finetune.augment=none"
    assert "model.cf_finetune.augment=none" not in configs["vae"]


def test_a_step_limit_reaches_the_base_models_and_their_minutes_are_their_own(
    data_dir, tmp_path, monkeypatch, fake_zoo
):
    def step_limited(name, trained):
        if name == "vae":  # the step limit ended the run after 40 of the 120 s allowed
            trained["wall_seconds"] = 40.0
        return trained

    overrides = record_overrides(monkeypatch, step_limited)
    argv = ["--families", "vae_cf", "--no-oracle", "--data-limit", "200", "--minutes", "2"]
    argv += ["--data-dir", str(data_dir), "--out-dir", str(tmp_path / "results")]
    argv += ["--work-dir", str(tmp_path / "work"), "--machine", "testbox", "--steps", "500"]
    results = json.loads(zoo.main(argv).with_suffix(".json").read_text())
    assert "trainer.max_steps=500" in overrides["vae"]
    assert "trainer.max_steps=500" not in overrides["vae_cf"]  # a stage runs its epochs
    rows = {n: results["models"][n]["rows"][0] for n in ("vae", "vae_cf")}
    assert "trainer.max_steps=500" in rows["vae"]["config"]["train"]  # keyed: not a budget row
    assert rows["vae"]["metrics"]["training minutes"] == pytest.approx(40 / 60)
    assert rows["vae_cf"]["metrics"]["training minutes"] == pytest.approx(40 / 60 + 1.5)


def test_a_check_trains_for_the_shipped_steps(monkeypatch):
    import pretrained

    manifests = {"hvae-morphomnist": {"provenance": {"steps": 7825}}}
    monkeypatch.setattr(pretrained, "available", lambda: manifests)
    assert pretrained.shipped_steps("hvae-morphomnist") == 7825
    assert pretrained.shipped_steps("hvae_cf-morphomnist") == 7825  # its base's steps
    assert pretrained.shipped_steps("vae-morphomnist") is None  # not shipped: the budget
    # a _cf model whose base is not the shipped base model records that base's own steps
    manifests["diffae-morphomnist"] = {"provenance": {"steps": 18152}}
    manifests["diffae_cf-morphomnist"] = {"provenance": {"steps": 342, "base steps": 18649}}
    assert pretrained.shipped_steps("diffae_cf-morphomnist") == 18649


def test_a_recipe_pins_its_overrides_for_every_stage_or_the_fine_tuning_stage(
    monkeypatch, tmp_path
):
    import pretrained

    launched = {}

    def fake_zoo_main(argv):
        family = argv[argv.index("--families") + 1 : argv.index("--minutes")][-1]
        launched[family] = argv
        markdown = tmp_path / f"{family}.md"
        rows = {family: {"rows": [{"seed": 0}]}}
        markdown.with_suffix(".json").write_text(json.dumps({"models": rows}))
        return markdown

    monkeypatch.setattr(pretrained.zoo, "main", fake_zoo_main)
    args = argparse.Namespace(data_dir="data", work_dir=str(tmp_path), date="2026-12-06")
    pretrained.measure("hvae_cf-morphomnist", args)  # 16 px latents, in both stages
    assert "--train-override=model.levels=[[4,2],[8,2],[16,4]]" in launched["hvae_cf"]
    assert "--stage-override=model.cf_finetune.anchor=0" in launched["hvae_cf"]  # shipped without
    pretrained.measure("diffae_cf-morphomnist", args)
    assert "--stage-override=model.cf_finetune.anchor=0" in launched["diffae_cf"]  # shipped without
    pretrained.measure("vae_cf-morphomnist", args)  # shipped without the augmented judge
    assert "--stage-override=model.cf_finetune.augment=none" in launched["vae_cf"]
    # shipped with the attribute SCM trained jointly, in both stages' runs
    assert [a for a in launched["vae_cf"] if a.startswith("--train-override")] == [
        f"--train-override={pretrained.JOINT_SCM}"
    ]
    pretrained.measure("hvae-pendulum", args)  # the defaults but the SCM's
    assert not any(a.startswith("--stage-override") for a in launched["hvae"])
    assert [a for a in launched["hvae"] if a.startswith("--train-override")] == [
        f"--train-override={pretrained.JOINT_SCM}"
    ]


def test_a_cf_card_says_where_fine_tuning_moved_away_from_the_truth():
    import pretrained

    base = {"truth L1 do(thickness)": 2.0, "truth L1 do(intensity)": 1.0}
    tuned = {"truth L1 do(thickness)": 2.08, "truth L1 do(intensity)": 3.0}  # +4%, +200%
    lines = pretrained.limits("hvae_cf-morphomnist", tuned, base)
    flagged = [line for line in lines if "away from the true ones" in line]
    assert len(flagged) == 1 and "do(intensity)" in flagged[0] and "+200%" in flagged[0]
    assert not any("away from" in line for line in pretrained.limits("hvae-morphomnist", base))
    results = {"models": {"hvae": {"rows": [{"metrics": base}]}}}
    assert pretrained.base_metrics(results, "hvae_cf") == base
    assert pretrained.base_metrics(results, "hvae") is None


def results_date(path: Path) -> str:
    return path.stem.removeprefix("testbox-")
