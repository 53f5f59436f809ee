"""Two CPU processes (``trainer=ddp_cpu``, gloo) give the report of one, and share checkpoints."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import evaluate as evaluate_script
import train as train_script
from tests.test_cli import ROOT, TINY, compose_evaluate, compose_train

sys.path.insert(0, str(ROOT / "benchmarks"))
from compare_reports import numbers  # noqa: E402  (the benchmark's walk over a report)

#: An odd number of test images: the two ranks score 16 and 15, so a metric averaged per rank,
#: or one rank's mean reported as the whole split's, differs from the one-process figure.
TEST_IMAGES = 31

EVALUATE = [
    "data.limit=200",
    "predictor.epochs=2",
    "predictor.widths=[8,16]",
    "predictor.features=16",
    "minimality.vae.epochs=2",
    "minimality.vae.widths=[8,16]",
    "minimality.vae.hidden=32",
    "seeds=[0,1]",
    "composition_steps=2",
    "reversibility_cycles=2",
    "realism.kid_subset_size=10",
    "progress=false",
    "grid_samples=4",
    f"test_images={TEST_IMAGES}",
]


def _script(name: str, *overrides: str) -> None:
    result = subprocess.run(
        [sys.executable, name, *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def _train_in_two_processes(data_dir: Path, run: Path, *overrides: str) -> None:
    _script(
        "train.py",
        "trainer=ddp_cpu",
        "data.limit=200",
        *TINY,
        f"data.data_dir={data_dir}",
        f"hydra.run.dir={run}",
        *overrides,
    )


def _global_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=True)["global_step"]


@pytest.fixture(scope="module")
def two_process_run(data_dir, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ddp_train")
    _train_in_two_processes(data_dir, run)
    return run


def test_a_two_process_checkpoint_resumes_in_one_process(two_process_run, data_dir, tmp_path):
    last = two_process_run / "checkpoints" / "last.ckpt"
    steps = _global_step(last)
    assert steps == 3  # one epoch of limit_train_batches=3 on each rank
    metrics = train_script.train(
        compose_train(data_dir, tmp_path, f"ckpt_path={last}", "trainer.max_epochs=2")
    )
    assert metrics["global_step"] == steps + 3


def test_a_one_process_checkpoint_resumes_in_two_processes(data_dir, tmp_path):
    first = train_script.train(compose_train(data_dir, tmp_path / "one"))
    assert first["global_step"] == 3
    run = tmp_path / "two"
    _train_in_two_processes(
        data_dir, run, f"ckpt_path={first['last_ckpt']}", "trainer.max_epochs=2"
    )
    assert _global_step(run / "checkpoints" / "last.ckpt") == 6


def test_two_processes_give_the_report_of_one(two_process_run, data_dir, tmp_path):
    checkpoint = two_process_run / "checkpoints" / "last.ckpt"
    one = evaluate_script.evaluate(
        compose_evaluate(data_dir, tmp_path / "one", f"ckpt_path={checkpoint}", *EVALUATE)
    )
    _script(
        "evaluate.py",
        "trainer=ddp_cpu",
        f"ckpt_path={checkpoint}",
        f"data.data_dir={data_dir}",
        *EVALUATE,
        f"hydra.run.dir={tmp_path / 'two'}",
    )
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    assert (one["processes"], two["processes"]) == (1, 2)
    assert two["num_test"] == TEST_IMAGES
    expected, got = dict(numbers(one)), dict(numbers(two))
    assert expected.keys() == got.keys()
    assert any(key.endswith("minimality/cld/mean") for key in expected)
    assert "/sampling/fid/mean" in expected  # the samples, drawn block by block, agree too
    assert f"/effect_size/thickness/size[{TEST_IMAGES - 1}]" in expected  # in test-split order
    differ = {
        key: (expected[key], got[key])
        for key in expected
        if not math.isclose(expected[key], got[key], rel_tol=1e-5, abs_tol=1e-6)
        and not (math.isnan(expected[key]) and math.isnan(got[key]))  # no sample scored
    }
    assert not differ, differ
