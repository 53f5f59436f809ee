"""The zoo leaderboard runs end to end at a tiny budget, writes every column, and resumes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import zoo  # noqa: E402

TINY_EVAL = [
    "predictor.epochs=2",
    "predictor.widths=[8,16]",
    "predictor.features=16",
    "composition_steps=3",
    "reversibility_cycles=2",
    "realism.kid_subset_size=10",
    "grid_samples=4",
]


def test_zoo_trains_scores_and_resumes(data_dir, tmp_path, capsys):
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
    assert list(results["models"]) == ["vae", "hvae", "hvae_cf", "flow", "oracle"]
    columns = [
        "composition m=1",
        "composition m=3",
        *(f"reversibility do({v})" for v in ("thickness", "intensity", "digit")),
        *(f"effectiveness do({v})" for v in ("thickness", "intensity", "digit")),
        "truth L1 do(thickness)",
        "truth L1 do(intensity)",
        *(f"FID do({v})" for v in ("thickness", "intensity", "digit")),
    ]
    extra = ["training minutes", "train img/s", "counterfactuals/s", "peak train RSS (MB)"]
    for name in ("vae", "hvae", "hvae_cf", "flow"):
        row = results["models"][name]["rows"][0]
        for column in [*columns, *extra]:
            assert row["metrics"][column] == row["metrics"][column], column  # present, not NaN
        assert row["metrics"]["peak train RSS (MB)"] > 100  # a torch process
        launch = "experiment=hvae_cf_morphomnist" if name == "hvae_cf" else f"model={name}"
        assert len(row["commit"]) >= 40 and row["config"]["train"][0] == launch
    # the second stage started from the hvae row's checkpoint and counts its budget too
    stage = results["models"]["hvae_cf"]["rows"][0]
    assert (
        "hvae-seed0"
        in (tmp_path / "work" / "hvae_cf-seed0" / ".hydra" / "overrides.yaml").read_text()
    )
    assert (
        stage["metrics"]["training minutes"]
        > results["models"]["hvae"]["rows"][0]["metrics"]["training minutes"]
    )
    oracle = results["models"]["oracle"]["rows"][0]["metrics"]
    assert oracle["truth L1 do(thickness)"] < 0.05 and oracle["composition m=1"] == 0
    assert set(results["floor"]) == {"thickness", "intensity", "digit"}
    text = markdown_path.read_text()
    for column in columns:
        assert f"| {column} |" in text
    assert (tmp_path / "results" / f"testbox-{results_date(markdown_path)}-grid.png").stat().st_size
    # Resumable: a second run at the same commit and config measures nothing again.
    capsys.readouterr()
    zoo.main(argv)
    out = capsys.readouterr().out
    assert out.count("already measured") == 5
    # --date names the file to extend or re-render (a run that crosses midnight, a later render)
    day = results_date(markdown_path)
    assert zoo.main([*argv, "--render-only", "--date", day]) == markdown_path
    with pytest.raises(SystemExit):
        zoo.main([*argv, "--render-only", "--date", "2026-13-01"])


def test_a_second_stage_needs_its_base_model(data_dir, tmp_path):
    argv = ["--families", "hvae_cf", "--no-oracle", "--data-limit", "200"]
    argv += ["--data-dir", str(data_dir), "--out-dir", str(tmp_path), "--work-dir", str(tmp_path)]
    with pytest.raises(SystemExit, match="list hvae before it in --families"):
        zoo.main(argv)


def results_date(path: Path) -> str:
    return path.stem.removeprefix("testbox-")
