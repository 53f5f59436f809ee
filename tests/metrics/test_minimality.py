"""Minimality (CLD): a hand-computed example, the Gaussian KL, the reference models, the cache."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from datamodules import MorphoMNISTDataModule
from metrics.minimality import (
    Minimality,
    gaussian_kl,
    identity_cld,
    latent_divergence,
    load_or_train_vae,
    vae_settings,
)
from metrics.realism import Realism
from metrics.suite import SuiteSettings, run_suite
from models.baselines import IdentityModel, OracleModel

#: Few test digits per bin in the tiny dataset, so fewer bins than evaluate.py's 10.
BINS = 5
TINY_VAE = {"epochs": 3, "widths": [8, 16], "hidden": 32, "latent_dim": 8}


def test_cld_of_a_hand_computed_example():
    # One factual, four real images at divergences 0.5, 2.0, 0.9 and 3.0 from it; the
    # counterfactual is at 1.0. Target set: the first three (two of them are closer than 1.0);
    # source set: the last (farther than 1.0).
    div = torch.tensor([1.0, 1.0])
    reference = torch.tensor([[0.5, 2.0, 0.9, 3.0], [0.5, 2.0, 0.9, 3.0]])
    target = torch.tensor([[True, True, True, False], [True, False, False, False]])
    source = torch.tensor([[False, False, False, True], [False, False, False, False]])
    out = latent_divergence(div, reference, target, source)
    assert out["p_target"][0] == pytest.approx(2 / 3)
    assert out["p_source"][0] == pytest.approx(1.0)
    assert out["cld"][0] == pytest.approx(math.log(math.exp(2 / 3) + math.e))
    assert out["cld"][1].isnan()  # an empty source set: not scored
    weighted = latent_divergence(div, reference, target, source, weights=(0.8, 0.2))
    assert weighted["cld"][0] == pytest.approx(math.log(0.8 * math.exp(2 / 3) + 0.2 * math.e))
    assert identity_cld() == pytest.approx(math.log(1 + math.e))


def test_gaussian_kl_is_the_kl_of_diagonal_gaussians():
    generator = torch.Generator().manual_seed(0)
    mean_q, mean_p, log_q, log_p = torch.randn(4, 3, 5, generator=generator)
    expected = kl_divergence(Normal(mean_q, log_q.exp()), Normal(mean_p, log_p.exp())).sum(-1)
    assert torch.allclose(gaussian_kl(mean_q, log_q, mean_p, log_p), expected, atol=1e-5)
    assert gaussian_kl(mean_q, log_q, mean_q, log_q).abs().max() == 0


def test_bad_settings_are_refused_naming_them():
    with pytest.raises(ValueError, match="minimality.bins"):
        Minimality.check(0, [1, 1])
    with pytest.raises(ValueError, match="minimality.bins"):
        Minimality.check(2.5, [1, 1])
    with pytest.raises(ValueError, match="minimality.weights"):
        Minimality.check(10, [1.0])
    with pytest.raises(ValueError, match="minimality.weights"):
        Minimality.check(10, [1.0, -1.0])
    with pytest.raises(ValueError, match="unknown minimality VAE settings \\['depth'\\]"):
        vae_settings(depth=3)


@pytest.fixture(scope="module")
def tiny_vae(morpho):
    vae, _ = load_or_train_vae(morpho, progress=False, **TINY_VAE)
    return vae


def test_the_vae_is_cached_and_a_corrupt_cache_is_retrained(morpho, tiny_vae, caplog):
    state = torch.get_rng_state()
    again, path = load_or_train_vae(morpho, progress=False, **TINY_VAE)
    assert torch.equal(torch.get_rng_state(), state)
    for name, value in tiny_vae.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    with open(path, "r+b") as stream:  # flip bytes inside the weights
        stream.seek(stream.seek(0, 2) // 2)
        stream.write(b"\x00" * 64)
    with caplog.at_level("WARNING"):
        retrained, same_path = load_or_train_vae(morpho, progress=False, **TINY_VAE)
    assert same_path == path
    assert "Retraining the cached minimality VAE" in caplog.text
    for name, value in tiny_vae.state_dict().items():  # the same seed: the same VAE again
        assert torch.equal(retrained.state_dict()[name], value), name


def test_the_identity_scores_log_1_plus_e_through_the_suite(morpho, tiny_predictor, tiny_vae):
    settings = SuiteSettings(
        interventions=("thickness", "digit"),
        seeds=(0,),
        composition_steps=1,
        reversibility_cycles=1,
    )
    realism = Realism(tiny_predictor, morpho.image_shape, kid_subset_size=50)
    minimality = Minimality(tiny_vae, morpho.graph, bins=5)
    report = run_suite(
        IdentityModel(morpho), morpho, tiny_predictor, realism, settings, False, minimality
    )
    for name in ("thickness", "digit"):
        # the identity never moves: p_target = 0 and p_source = 1 for every counterfactual
        result = report["interventions"][name]
        assert result["minimality/cld"]["mean"] == pytest.approx(identity_cld())
        assert result["minimality/p_target"]["mean"] == 0.0
        assert result["minimality/p_source"]["mean"] == pytest.approx(1.0)
        assert result["minimality/scored"]["mean"] == 1.0


def _cld(model, datamodule, minimality: Minimality, name: str) -> float:
    batches = list(datamodule.test_dataloader())
    for batch in batches:
        minimality.add_reference(batch["x"], batch["pa"], batch["index"])
    values = torch.cat([batch["pa"][name] for batch in batches])
    values = values[torch.randperm(len(values), generator=torch.Generator().manual_seed(0))]
    scores, start = [], 0
    for batch in batches:
        do = {name: values[start : start + len(batch["x"])]}
        start += len(batch["x"])
        cf = model.counterfactual(batch["x"], batch["pa"], do, sample_ids=batch["index"])
        scores.append(minimality.score(batch["pa"], cf.image, cf.parents, [name], batch["index"]))
    cld = torch.cat([s["cld"] for s in scores])
    assert not cld.isnan().any()
    return float(cld.mean())


def test_the_oracle_is_more_minimal_than_the_identity(data_dir):
    # 1,500 digits (300 test digits: 30 per bin), enough for the sets to mean something
    datamodule = MorphoMNISTDataModule(data_dir=str(data_dir), limit=1500, batch_size=250)
    datamodule.prepare_data()
    datamodule.setup()
    vae, _ = load_or_train_vae(datamodule, progress=False, epochs=5)
    for name in ("thickness", "intensity"):
        oracle = _cld(OracleModel(datamodule), datamodule, Minimality(vae, datamodule.graph), name)
        identity = _cld(
            IdentityModel(datamodule), datamodule, Minimality(vae, datamodule.graph), name
        )
        assert identity == pytest.approx(identity_cld())
        # measured about 1.08 (thickness) and 1.02 (intensity) on 400 test digits
        assert oracle < identity - 0.15, name
