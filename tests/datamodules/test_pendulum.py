"""Pendulum: the scene's equations, its renderer, its measurement and its exact counterfactuals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules import ANALYTIC_MECHANISMS, PendulumDataModule
from datamodules.pendulum import render_scene, shadow_law


@pytest.fixture(scope="module")
def pendulum(tmp_path_factory) -> PendulumDataModule:
    dm = PendulumDataModule(data_dir=str(tmp_path_factory.mktemp("pendulum")), num_samples=300)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def batch(pendulum):
    return pendulum.test_set.batch(range(32))


def test_generation_shapes_splits_and_supports(pendulum):
    arrays = pendulum.arrays
    assert arrays["images"].shape == (300, 3, 32, 32) and arrays["images"].dtype == np.uint8
    assert [len(s) for s in (pendulum.train_set, pendulum.val_set, pendulum.test_set)] == [
        216,
        24,
        60,
    ]
    for variable in pendulum.graph.variables:
        low, high = variable.support
        assert low <= arrays[variable.name].min() and arrays[variable.name].max() <= high
    assert pendulum.graph["shadow_position"].parents == ("angle", "light")
    batch = next(iter(pendulum.train_dataloader()))
    assert batch["x"].shape[1:] == (3, 32, 32) and 0 <= batch["x"].min() <= batch["x"].max() <= 1


def test_second_instance_loads_the_cache_bit_for_bit(pendulum, monkeypatch):
    again = PendulumDataModule(data_dir=str(pendulum.data_dir), num_samples=300)
    monkeypatch.setattr(again, "build", lambda: pytest.fail("the cache was not used"))
    again.setup()
    assert again.cache_path == pendulum.cache_path
    assert np.array_equal(again.arrays["images"], pendulum.arrays["images"])


def test_stored_shadows_follow_the_structural_equations(pendulum):
    arrays = pendulum.arrays
    noise = {
        k: torch.from_numpy(arrays[f"{k}_noise"]) for k in ("shadow_length", "shadow_position")
    }
    shadow = shadow_law(torch.from_numpy(arrays["angle"]), torch.from_numpy(arrays["light"]), noise)
    for name, value in shadow.items():
        assert torch.equal(value, torch.from_numpy(arrays[name]))


def test_analytic_laws_abduct_the_stored_noise_and_predict_the_stored_values(pendulum):
    arrays = pendulum.arrays
    pa = {k: torch.from_numpy(arrays[k]) for k in pendulum.graph.names}
    laws = ANALYTIC_MECHANISMS["pendulum"]
    for name in ("shadow_length", "shadow_position"):
        law = laws[name]()
        noise = law.abduct(pa[name], pa)
        assert torch.allclose(noise, torch.from_numpy(arrays[f"{name}_noise"]), atol=1e-4)
        assert torch.allclose(law.predict(noise, pa), pa[name], atol=1e-4)
        assert torch.isfinite(law.log_prob(pa[name], pa)).all()
    angle = laws["angle"]()
    assert torch.allclose(angle.log_prob(pa["angle"], pa), torch.tensor(-np.log(80.0)).float())
    assert angle.log_prob(torch.tensor([50.0]), pa).item() == -np.inf


def test_render_is_deterministic_and_matches_the_stored_images(pendulum, batch):
    stored = (batch["x"] * 255).round().to(torch.uint8)
    rendered = render_scene(**batch["pa"], size=32)
    assert torch.equal(rendered, stored)
    assert render_scene(**batch["pa"], size=64).shape == (32, 3, 64, 64)


def test_measurement_reads_the_attributes_off_the_pixels(pendulum, batch):
    measured = pendulum.measure_attributes(batch["x"])
    bounds = {"angle": 0.5, "light": 0.1, "shadow_length": 0.1, "shadow_position": 0.1}
    for name, bound in bounds.items():
        error = (measured[name] - batch["pa"][name]).abs().median().item()
        assert error < bound, (name, error)


def test_null_intervention_returns_the_stored_images_exactly(pendulum, batch):
    images, attributes = pendulum.true_counterfactual(batch["index"], {})
    assert torch.equal(images, batch["x"])
    for name, value in attributes.items():
        assert torch.equal(value, batch["pa"][name])


def test_moving_the_light_moves_the_shadow_and_leaves_the_pendulum_alone(pendulum, batch):
    images, attributes = pendulum.true_counterfactual(batch["index"], {"light": 5.0})
    assert torch.equal(attributes["angle"], batch["pa"]["angle"])
    moved = (attributes["shadow_position"] - batch["pa"]["shadow_position"]).abs()
    assert moved.median() > 1.0  # the light moved by 5.5 scene units on average
    before = pendulum.measure_attributes(batch["x"])
    after = pendulum.measure_attributes(images)
    assert (after["angle"] - before["angle"]).abs().max() < 0.5  # the pendulum's pixels stay
    assert (after["light"] - 5.0).abs().median() < 0.1
    assert (after["shadow_position"] - attributes["shadow_position"]).abs().median() < 0.1
    # The sample's own noise carries over: the shadow is its geometry under the new light.
    noise = {
        k: torch.from_numpy(pendulum.arrays[f"{k}_noise"][batch["index"].numpy()])
        for k in ("shadow_length", "shadow_position")
    }
    expected = shadow_law(batch["pa"]["angle"], torch.full((32,), 5.0), noise)
    assert torch.allclose(attributes["shadow_length"], expected["shadow_length"])


def test_intervening_on_the_shadow_changes_nothing_upstream(pendulum, batch):
    images, attributes = pendulum.true_counterfactual(
        batch["index"], {"shadow_position": lambda p: p + 1.0}
    )
    for name in ("angle", "light", "shadow_length"):
        assert torch.equal(attributes[name], batch["pa"][name])
    measured = pendulum.measure_attributes(images)
    shift = measured["shadow_position"] - pendulum.measure_attributes(batch["x"])["shadow_position"]
    assert (shift - 1.0).abs().median() < 0.1


def test_bad_interventions_and_settings_raise_clear_errors(pendulum, batch):
    with pytest.raises(ValueError, match="unknown variable 'colour'"):
        pendulum.true_counterfactual(batch["index"], {"colour": 1.0})
    with pytest.raises(ValueError, match=r"outside its support \[-40, 40\]"):
        pendulum.true_counterfactual(batch["index"], {"angle": 70.0})
    with pytest.raises(ValueError, match="image_size"):
        PendulumDataModule(image_size=4)
