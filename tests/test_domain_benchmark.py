"""benchmarks/domains.py: domain counterfactuals scored by pair, against the truth."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import domains as domain_benchmark  # noqa: E402

from metrics.judges import train_predictor  # noqa: E402
from models.baselines import IdentityModel, OracleModel  # noqa: E402


@pytest.fixture(scope="module")
def domain_judge(domains):
    judge, _ = train_predictor(domains, epochs=2, progress=False, widths=(8, 16), features=16)
    return judge.eval()


def test_the_oracle_is_exact_and_the_identity_is_not(domains, domain_judge):
    oracle = domain_benchmark.score_domains(OracleModel(domains).eval(), domains, domain_judge)
    identity = domain_benchmark.score_domains(IdentityModel(domains).eval(), domains, domain_judge)
    pairs = [k for k in oracle if "->" in k]
    assert len(pairs) == 6  # every ordered pair of the three domains
    assert sum(oracle[p]["n"] for p in pairs) == 2 * len(domains.test_set)
    for pair in pairs:
        assert oracle[pair]["truth L1 mean"] == 0.0
        assert identity[pair]["truth L1 mean"] > 1.0, pair
        assert identity[pair]["reversibility mean"] == 0.0
    assert oracle["sparse pairs"]["n"] + oracle["dense pairs"]["n"] == 2 * len(domains.test_set)
    table = domain_benchmark.markdown(
        {
            "settings": {"machine": "m", "date": "d", "commands": ["c"]},
            "models": {
                "oracle": {"checkpoint": "", "commit": "x", "scores": oracle},
                "identity": {"checkpoint": "", "commit": "x", "scores": identity},
            },
        }
    )
    assert "| truth L1 mean, sparse pairs | 0.00 |" in table


def test_nothing_to_score_is_refused_with_the_choices(capsys):
    with pytest.raises(SystemExit):
        domain_benchmark.main([])
    assert "--checkpoint NAME=PATH" in capsys.readouterr().err


@pytest.mark.parametrize(
    "given, message",
    [
        (["--checkpoint", "ild_vae"], "takes NAME=PATH"),
        (["--checkpoint", "=x.ckpt"], "takes NAME=PATH"),
        (["--checkpoint", "a=nowhere.ckpt"], "no file"),
        (["--sweep", "4", "--option", "residual"], "takes NAME=VALUE"),
    ],
)
def test_a_bad_argument_is_refused_before_any_work(given, message, capsys):
    with pytest.raises(SystemExit):
        domain_benchmark.main(given)
    assert message in capsys.readouterr().err


def test_the_grid_shows_each_sparse_domain_turned_to_the_other(domains):
    batch, do = domain_benchmark.grid_batch(domains, per_domain=2)
    assert batch["pa"]["domain"].tolist() == [0, 0, 1, 1]
    assert do["domain"].tolist() == [1, 1, 0, 0]
    assert len(set(batch["pa"]["digit"].tolist())) > 1  # not the first images: one digit
