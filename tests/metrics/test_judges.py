"""The judges: two roles that differ in every setting, cache keys, the caller's RNG left alone."""

import pytest
import torch

from datamodules import MorphoMNISTDataModule
from metrics.judges import (
    ROLES,
    judge_settings,
    load_or_train_predictor,
    predictor_cache_path,
    same_judge,
    train_predictor,
)
from models.nn.augment import random_affine
from models.predictor import AttributePredictor

#: A judge that trains in a second or two on the tiny dataset.
TINY = {"widths": [8, 16], "features": 16, "epochs": 1}


def test_the_two_roles_differ_in_every_setting_that_shapes_a_judge(morpho):
    finetune, heldout = judge_settings("finetune"), judge_settings("heldout")
    for name in ("arch", "widths", "features", "augment", "seed"):
        assert finetune[name] != heldout[name], name
    assert predictor_cache_path(morpho, finetune) != predictor_cache_path(morpho, heldout)
    # tiny overrides keep the roles apart too: the seed, architecture and augmentation remain
    assert predictor_cache_path(morpho, judge_settings("finetune", **TINY)) != (
        predictor_cache_path(morpho, judge_settings("heldout", **TINY))
    )
    # a role overridden into the other's settings is the other's judge: one cache entry
    assert predictor_cache_path(morpho, judge_settings("heldout", **ROLES["finetune"])) == (
        predictor_cache_path(morpho, finetune)
    )


def test_the_cache_key_covers_the_batch_size_and_each_setting(data_dir):
    small, large = (
        MorphoMNISTDataModule(data_dir=str(data_dir), limit=500, batch_size=b) for b in (32, 64)
    )
    settings = judge_settings("heldout")
    assert predictor_cache_path(small, settings) != predictor_cache_path(large, settings)
    paths = {predictor_cache_path(small, settings)}
    for name, value in [("epochs", 3), ("lr", 1e-4), ("seed", 7), ("augment", "none")]:
        paths.add(predictor_cache_path(small, {**settings, name: value}))
    assert len(paths) == 5
    # True and "shift" are one augmentation, so one judge
    assert judge_settings("finetune", augment=True) == judge_settings("finetune")


def test_unknown_roles_and_settings_are_refused(morpho):
    with pytest.raises(ValueError, match="unknown judge role 'judge'.*finetune, heldout"):
        load_or_train_predictor(morpho, role="judge")
    with pytest.raises(ValueError, match=r"unknown judge settings \['width'\]"):
        load_or_train_predictor(morpho, role="heldout", width=8)


def test_training_and_loading_a_judge_leave_the_global_rng_alone(morpho):
    state = torch.get_rng_state()
    predictor, source = load_or_train_predictor(morpho, role="heldout", progress=False, **TINY)
    assert torch.equal(torch.get_rng_state(), state)  # trained
    again, cached = load_or_train_predictor(morpho, role="heldout", progress=False, **TINY)
    assert torch.equal(torch.get_rng_state(), state)  # loaded from the cache
    assert cached == source and same_judge(cached, source)
    assert predictor.arch == "resnet" and predictor.augment == "affine"
    batch = next(iter(morpho.test_dataloader()))
    assert torch.equal(predictor(batch["x"])["digit"], again(batch["x"])["digit"])


def test_a_judge_is_reproducible_from_its_seed_and_differs_across_seeds(morpho):
    def weights(seed):
        predictor, _ = train_predictor(
            morpho, epochs=1, progress=False, seed=seed, widths=(8, 16), features=16
        )
        return torch.cat([p.detach().flatten() for p in predictor.parameters()])

    first = weights(0)
    assert torch.equal(first, weights(0))
    assert not torch.allclose(first, weights(1))


def test_same_judge_by_path_or_by_cache_name(tmp_path):
    cached = tmp_path / "a" / "predictors" / "morphomnist-abc.ckpt"
    moved = tmp_path / "b" / "predictors" / "morphomnist-abc.ckpt"
    assert same_judge(str(cached), str(moved))
    assert same_judge(str(tmp_path / "p.ckpt"), str(tmp_path / "x" / ".." / "p.ckpt"))
    assert not same_judge(str(cached), str(cached.with_name("morphomnist-abd.ckpt")))
    assert not same_judge(str(tmp_path / "a" / "p.ckpt"), str(tmp_path / "b" / "p.ckpt"))
    assert not same_judge(str(cached), None)


def test_the_affine_augmentation_keeps_the_measured_attributes(morpho):
    x = morpho.test_set.batch(range(64))["x"]
    generator_state = torch.get_rng_state()
    torch.manual_seed(0)
    moved = random_affine(x, 5.0, 3)
    torch.set_rng_state(generator_state)
    assert (moved - x).abs().amax() > 0.5  # it did move the digits
    before, after = morpho.measure_attributes(x), morpho.measure_attributes(moved)
    # measured on the full test set: 0.04 px and 0.02; bilinear resampling: 0.07 px and 10
    assert (after["thickness"] - before["thickness"]).abs().mean() < 0.1
    assert (after["intensity"] - before["intensity"]).abs().mean() < 1.0


def test_an_empty_cached_judge_is_retrained_not_fatal(morpho):
    settings = judge_settings("heldout", **TINY)
    path = predictor_cache_path(morpho, settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")  # a write cut short by a full disk
    predictor, _ = load_or_train_predictor(morpho, role="heldout", progress=False, **TINY)
    assert path.stat().st_size > 0
    assert predictor.dataset_name == morpho.name


def test_a_judge_trained_from_a_datamodule_not_yet_set_up_sees_the_normalised_graph(data_dir):
    fresh = MorphoMNISTDataModule(data_dir=str(data_dir), limit=500)
    predictor, _ = train_predictor(fresh, progress=False, **TINY)
    assert predictor.graph["intensity"].scale > 10  # natural units' spread, not the 1.0 default
    assert predictor.graph == fresh.graph


def test_an_interventional_judge_is_its_own_cache_entry_and_trains_on_rendered_images(morpho):
    plain = judge_settings("finetune", **TINY)
    assert judge_settings("finetune", interventional=[], **TINY) == plain  # the same judge
    settings = judge_settings("finetune", interventional=["thickness", "intensity"], **TINY)
    assert settings["interventional"] == ["intensity", "thickness"]  # one spelling per set
    assert judge_settings("finetune", interventional="intensity")["interventional"] == ["intensity"]
    assert predictor_cache_path(morpho, settings) != predictor_cache_path(morpho, plain)
    seen = []
    fit = AttributePredictor.training_step

    def spy(self, batch, batch_idx):
        seen.append(batch["x"])
        return fit(self, batch, batch_idx)

    train_set = morpho.train_set
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AttributePredictor, "training_step", spy)
        predictor, source = load_or_train_predictor(
            morpho, role="finetune", progress=False, interventional=["intensity"], **TINY
        )
    assert morpho.train_set is train_set  # the datamodule keeps its real training split
    rendered = morpho.interventional_set(["intensity"], seed=settings["seed"])
    expected = rendered.images.float().div(255.0)
    # every training batch came from the rendered images (the augmentation only shifts them)
    batch = torch.cat(seen)
    assert len(batch) == len(rendered)
    assert torch.allclose(
        batch.sum(dim=(1, 2, 3)).sort().values, expected.sum(dim=(1, 2, 3)).sort().values, rtol=1e-4
    )
    assert source == str(
        predictor_cache_path(
            morpho, judge_settings("finetune", interventional=["intensity"], **TINY)
        ).resolve()
    )


def test_an_interventional_judge_needs_ground_truth(morpho):
    with pytest.raises(ValueError, match="renders are: thickness, intensity"):
        load_or_train_predictor(morpho, role="finetune", interventional=["digit"], **TINY)
