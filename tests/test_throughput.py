"""The throughput benchmark's side-by-side option and its table (the timings are benchmarks)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import throughput  # noqa: E402


def test_causal_gen_without_a_checkout_says_where_to_get_one(tmp_path):
    with pytest.raises(SystemExit, match="no causal-gen checkout there.*biomedia-mira/causal-gen"):
        throughput.measure_causal_gen(tmp_path, 32, warmup=1, steps=1, budget=1.0)


def test_a_row_without_counterfactuals_renders_as_not_available(tmp_path):
    row = {
        "model": "causal-gen hvae (hps morphomnist, `abc`)",
        "batch_size": 32,
        "parameters": 2_041_122,
        "train_images_per_s": 61.5,
        "counterfactuals_per_s": None,
        "timed_steps": 15,
        "cf_calls": 0,
        "commit": "265b078",
    }
    table = throughput.render([row], str(tmp_path / "throughput.md"))
    assert (
        "| causal-gen hvae (hps morphomnist, `abc`) | 2.04 M | 32 | 61.5 | 15 | n/a | 0 |" in table
    )
