"""The counterfactual contract, run for every model family."""

import pytest
import torch

from models import load_model
from tests.helpers import save_checkpoint


def test_shapes(family, test_batch):
    _, model, _ = family
    x, pa = test_batch["x"], test_batch["pa"]
    cf = model.counterfactual(x, pa, {"thickness": 3.0})
    assert cf.image.shape == x.shape
    assert cf.image.min() >= 0 and cf.image.max() <= 1
    assert set(cf.parents) == {"thickness", "intensity", "digit"}
    assert all(v.shape == (len(x),) for v in cf.parents.values())
    assert torch.equal(cf.factual_image, x)


def test_null_intervention_reproduces_the_input(family, test_batch):
    _, model, bound = family
    cf = model.counterfactual(test_batch["x"], test_batch["pa"], {})
    assert (cf.image - test_batch["x"]).abs().max() < bound
    for name, value in test_batch["pa"].items():
        assert torch.equal(cf.parents[name], value)


def test_do_intensity_leaves_thickness_exactly_unchanged(family, test_batch):
    _, model, _ = family
    cf = model.counterfactual(test_batch["x"], test_batch["pa"], {"intensity": 200.0})
    assert torch.equal(cf.parents["thickness"], test_batch["pa"]["thickness"])
    assert torch.all(cf.parents["intensity"] == 200.0)
    assert not torch.allclose(cf.image, test_batch["x"], atol=1e-3)


def test_do_thickness_moves_intensity_as_the_mechanism_says(family, test_batch):
    _, model, _ = family
    pa = test_batch["pa"]
    new_thickness = pa["thickness"] + 1.0
    cf = model.counterfactual(test_batch["x"], pa, {"thickness": new_thickness})
    with torch.no_grad():
        noise = model.scm.abduct(pa)
        expected = (
            model.scm.mechanisms["intensity"]
            .predict(noise["intensity"], {**pa, "thickness": new_thickness})
            .clamp(64, 255)
        )
    assert torch.allclose(cf.parents["intensity"], expected, atol=1e-3)
    assert (cf.parents["intensity"] - pa["intensity"]).abs().mean() > 0.01
    assert torch.equal(cf.parents["digit"], pa["digit"])


def test_attribute_flows_invert_exactly(family, test_batch):
    _, model, _ = family
    pa = test_batch["pa"]
    with torch.no_grad():
        rebuilt = model.scm.predict(model.scm.abduct(pa))
    for name in ("thickness", "intensity"):
        variable = model.graph[name]
        error = (variable.normalise(rebuilt[name]) - variable.normalise(pa[name])).abs().max()
        assert error < 1e-4, name
    assert torch.equal(rebuilt["digit"], pa["digit"])


def test_save_load_gives_identical_counterfactuals(family, test_batch, tmp_path):
    _, model, _ = family
    loaded = load_model(save_checkpoint(model, tmp_path / "model.ckpt"))
    do = {"thickness": lambda t: t + 1, "digit": 3}
    torch.manual_seed(1)
    before = model.counterfactual(test_batch["x"], test_batch["pa"], do)
    torch.manual_seed(1)
    after = loaded.counterfactual(test_batch["x"], test_batch["pa"], do)
    assert torch.equal(before.image, after.image)
    assert all(torch.equal(before.parents[k], after.parents[k]) for k in before.parents)


def test_bad_queries_raise_clear_errors(family, test_batch):
    _, model, _ = family
    x, pa = test_batch["x"], test_batch["pa"]
    with pytest.raises(ValueError, match="unknown variable 'slant'"):
        model.counterfactual(x, pa, {"slant": 1.0})
    with pytest.raises(ValueError, match=r"'thickness' is outside its support \[0.5, 10\]"):
        model.counterfactual(x, pa, {"thickness": 20.0})
    with pytest.raises(ValueError, match="shape"):
        model.counterfactual(x, pa, {"intensity": torch.full((3,), 100.0)})
    with pytest.raises(ValueError, match=r"shape \(B, 1, 32, 32\)"):
        model.counterfactual(x[:, :, :16, :16], pa, {})
    with pytest.raises(ValueError, match="lacks attribute"):
        model.counterfactual(x, {"thickness": pa["thickness"]}, {})
    with pytest.raises(ValueError, match="no counterfactual option"):
        model.counterfactual(x, pa, {}, no_such_option=3)
