"""The suite on reference models: the oracle scores the floor, the identity is caught."""

from dataclasses import replace

import pytest
import torch

from metrics.realism import Realism
from metrics.suite import SuiteSettings, run_suite
from models.baselines import IdentityModel, OracleModel
from tests.families import FAMILIES

SETTINGS = SuiteSettings(
    interventions=("thickness", "intensity", "digit", "all"),
    seeds=(0,),
    composition_steps=2,
    reversibility_cycles=1,
)


def score(model, morpho, predictor, settings=SETTINGS):
    realism = Realism(predictor, morpho.image_shape, kid_subset_size=50)
    return run_suite(model, morpho, predictor, realism, settings, progress=False)


@pytest.fixture(scope="module")
def oracle_report(morpho, tiny_predictor):
    return score(OracleModel(morpho), morpho, tiny_predictor)


def test_oracle_is_the_floor(oracle_report):
    report = oracle_report
    assert report["composition"]["curve_mean"] == [0.0, 0.0]
    floor = report["floor"]["predictor"]
    for name in ("thickness", "intensity", "all"):
        result = report["interventions"][name]
        assert result["truth/l1"]["mean"] < 0.05, name
        assert result["reversibility/cycle1"]["mean"] < 0.05, name
    thickness = report["interventions"]["thickness"]
    # the oracle's counterfactuals are real images: the judge errs on them as on real test images
    assert thickness["effectiveness/thickness"]["mean"] < 1.5 * floor["thickness"] + 0.05
    assert report["interventions"]["intensity"]["measured/intensity"]["mean"] < 1.5
    assert report["interventions"]["digit"] is None  # no true counterfactual of another digit
    assert report["interventions"]["all"]["variables"] == ["thickness", "intensity"]


def test_identity_is_caught_by_effectiveness(morpho, tiny_predictor, oracle_report):
    report = score(IdentityModel(morpho), morpho, tiny_predictor)
    assert report["composition"]["m2"]["mean"] == 0.0  # composition alone can't tell
    oracle = oracle_report["interventions"]["intensity"]
    identity = report["interventions"]["intensity"]
    assert (
        identity["effectiveness/intensity"]["mean"] > 2 * oracle["effectiveness/intensity"]["mean"]
    )
    assert identity["measured/intensity"]["mean"] > 10 * oracle["measured/intensity"]["mean"]
    assert identity["truth/l1"]["mean"] > 1.0
    digit = report["interventions"]["digit"]["effectiveness/digit"]["mean"]
    assert digit < 0.35  # mostly the factual class, which is wrong after do(digit)


def test_oracle_needs_sample_ids(morpho):
    batch = next(iter(morpho.test_dataloader()))
    oracle = OracleModel(morpho)
    with pytest.raises(ValueError, match="sample_ids"):
        oracle.counterfactual(batch["x"], batch["pa"], {"intensity": 100.0})
    with pytest.raises(ValueError, match="can't intervene on \\['digit'\\]"):
        oracle.counterfactual(batch["x"], batch["pa"], {"digit": 1}, sample_ids=batch["index"])
    cf = oracle.counterfactual(
        batch["x"], batch["pa"], {"intensity": 100.0}, sample_ids=batch["index"]
    )
    truth, _ = morpho.true_counterfactual(batch["index"], {"intensity": 100.0})
    assert torch.equal(cf.image, truth)


def test_the_decoder_alone_composition_of_a_model_with_a_residual(morpho, tiny_predictor):
    vae = FAMILIES["vae"][0](morpho)  # untrained: its decoder alone is far from any digit
    settings = replace(SETTINGS, interventions=("intensity",))
    state = torch.get_rng_state()
    report = score(vae, morpho, tiny_predictor, settings)
    assert torch.equal(torch.get_rng_state(), state)  # the seeds ran in their own generators
    residual, decoder = report["composition"], report["composition_decoder"]
    assert set(decoder) == set(residual) == {"curve_mean", "curve_std", "m1", "m2"}
    assert residual["m1"]["mean"] < 0.05  # the residual gives the input back
    assert decoder["m1"]["mean"] > 20  # 0-255 scale: a blur of grey, not the digit
    assert report["options"] == {}
    # with the residual off already, both curves are the decoder's
    off = score(vae, morpho, tiny_predictor, replace(settings, options={"residual": False}))
    assert off["composition"]["m1"]["mean"] == pytest.approx(decoder["m1"]["mean"])
    assert off["composition_decoder"] == off["composition"]


def test_a_model_without_a_residual_has_no_decoder_alone_curve(oracle_report):
    assert "composition_decoder" not in oracle_report


def test_do_all_sets_every_attribute_from_one_other_test_sample(morpho, tiny_predictor):
    """do(all) is a draw from the joint: each sample's values all come from one other sample."""
    seen: list[tuple] = []

    class Recording(IdentityModel):
        def counterfactual(self, x, pa, do, **options):
            seen.append(({k: torch.as_tensor(v).clone() for k, v in do.items()}, options))
            return super().counterfactual(x, pa, do, **options)

    settings = replace(SETTINGS, interventions=("all",), composition_steps=1)
    score(Recording(morpho), morpho, tiny_predictor, settings)
    test = morpho.attributes(morpho.test_set.indices)
    rows = torch.stack([test[v].double() for v in morpho.graph.names], 1)
    joint = [do for do, _ in seen if set(do) == set(morpho.graph.names)]
    assert joint, "no do(all) call"
    sources = []
    for do in joint:
        drawn = torch.stack([do[v].double() for v in morpho.graph.names], 1)
        # the one test sample whose attributes equal the drawn row, for every row
        match = (drawn[:, None, :] == rows[None, :, :]).all(-1)
        assert match.any(1).all(), "a do(all) row mixes the values of several samples"
        sources.append(match.float().argmax(1))
    sources = torch.cat(sources)
    assert len(sources.unique()) > 0.5 * len(rows)  # a permutation of the split, not one sample


def test_marginal_distance_is_wasserstein_for_values_and_total_variation_for_classes():
    from metrics.suite import marginal_distance

    values = torch.linspace(0, 1, 1001)
    assert marginal_distance(values + 0.25, values, continuous=True) == pytest.approx(0.25)
    assert marginal_distance(values, values, continuous=True) == 0.0
    classes = torch.tensor([0, 0, 1, 1])
    assert marginal_distance(torch.tensor([0, 0, 0, 1]), classes, continuous=False) == 0.25
    assert marginal_distance(torch.tensor([2, 2, 2, 2]), classes, continuous=False) == 1.0


def test_samples_are_scored_against_the_data(morpho, tiny_predictor):
    vae = FAMILIES["vae"][0](morpho)  # untrained: far from the data, so the marginals show it
    settings = replace(SETTINGS, interventions=("intensity",), composition_steps=1)
    sampled = score(vae, morpho, tiny_predictor, settings)["sampling"]
    assert {f"scm_marginal/{n}" for n in morpho.graph.names} <= set(sampled)
    real = score(OracleModel(morpho), morpho, tiny_predictor, settings)
    assert "sampling" not in real  # the oracle has no prior to sample from
    # the untrained decoder's samples are judged far from the intensities they were drawn at
    assert sampled["effectiveness/intensity"]["mean"] > 20
