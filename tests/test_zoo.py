"""The zoo leaderboard runs end to end at a tiny budget, writes every column, and resumes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

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
    ]
    markdown_path = zoo.main(argv)
    results = json.loads(markdown_path.with_suffix(".json").read_text())
    assert list(results["models"]) == ["vae", "flow", "oracle"]
    columns = [
        "composition m=1",
        "composition m=3",
        *(f"reversibility do({v})" for v in ("thickness", "intensity", "digit")),
        *(f"effectiveness do({v})" for v in ("thickness", "intensity", "digit")),
        "truth L1 do(thickness)",
        "truth L1 do(intensity)",
        *(f"FID do({v})" for v in ("thickness", "intensity", "digit")),
    ]
    for name in ("vae", "flow"):
        row = results["models"][name]["rows"][0]
        for column in [*columns, "train img/s", "counterfactuals/s", "peak train RSS (MB)"]:
            assert row["metrics"][column] == row["metrics"][column], column  # present, not NaN
        assert row["metrics"]["peak train RSS (MB)"] > 100  # a torch process
        assert len(row["commit"]) >= 40 and row["config"]["train"][0] == f"model={name}"
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
    assert out.count("already measured") == 3


def results_date(path: Path) -> str:
    return path.stem.removeprefix("testbox-")
