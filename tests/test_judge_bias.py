"""The judge-bias benchmark's binning and table (its figures are benchmarks)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import judge_bias  # noqa: E402


def test_an_intervention_falls_in_the_bin_of_its_size_in_standard_deviations():
    labels = judge_bias.size_bin(torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.25, 0.99, 1.0, 4.0]))
    assert labels == [
        "< -1 sd",
        "[-1, -0.25) sd",
        "[-1, -0.25) sd",
        "[-0.25, 0.25) sd",
        "[0.25, 1) sd",
        "[0.25, 1) sd",
        ">= 1 sd",
        ">= 1 sd",
    ]


def test_the_table_orders_bins_by_size_and_gives_error_rates_as_percentages():
    row = {"judge": "heldout", "do": "intensity", "n": 10, "factual": 0.01}
    rows = [
        {**row, "kept": "thickness", "size": ">= 1 sd", "rate": False, "counterfactual": 0.3},
        {**row, "kept": "thickness", "size": "< -1 sd", "rate": False, "counterfactual": -0.5},
        {**row, "kept": "digit", "size": "< -1 sd", "rate": True, "counterfactual": 0.105},
    ]
    lines = judge_bias.markdown(rows, "python benchmarks/judge_bias.py").splitlines()
    body = [line for line in lines if line.startswith("| heldout")]
    assert body == [
        "| heldout | do(intensity) | digit | < -1 sd | 10 | 1.0% wrong | 10.5% wrong |",
        "| heldout | do(intensity) | thickness | < -1 sd | 10 | +0.010 | -0.500 |",
        "| heldout | do(intensity) | thickness | >= 1 sd | 10 | +0.010 | +0.300 |",
    ]
