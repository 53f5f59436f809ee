import os
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import MorphoMNISTDataModule, morphometry
from datamodules.cache import CacheError, atomic_write
from datamodules.morphomnist import intensity_law, intensity_noise


def test_attributes_follow_their_laws(morpho):
    a = morpho.arrays
    t, i = a["thickness"].astype(np.float64), a["intensity"].astype(np.float64)
    # thickness = 0.5 + Gamma(10, rate 5): mean 2.5, sd 0.632 (500 samples: se of the mean 0.03)
    assert t.mean() == pytest.approx(2.5, abs=0.1)
    assert 0.53 < t.std() < 0.73
    assert t.min() > 0.5
    assert i.min() > 64.0 and i.max() < 255.0
    # the intensity noise abducted from (t, i) is N(0, 1) and equals the stored noise
    e = intensity_noise(t, i)
    assert np.allclose(e, a["intensity_noise"], atol=1e-3)
    assert abs(e.mean()) < 0.15
    assert 0.85 < e.std() < 1.15
    # digit is independent of thickness
    assert abs(np.corrcoef(t, a["digit"])[0, 1]) < 0.15


def test_images_track_their_attributes(morpho):
    """Bounds: median |thickness error| < 0.1 px and 90% within 0.2 px; intensity within 1.5."""
    a = morpho.arrays
    m = morphometry.measure(a["images"].astype(np.float64))
    thickness_error = np.abs(m.thickness - a["thickness"])
    assert np.median(thickness_error) < 0.1
    assert (thickness_error < 0.2).mean() > 0.9
    assert np.median(np.abs(m.intensity - a["intensity"])) < 1.5


def test_splits_and_batches(morpho):
    sizes = [len(morpho.train_set), len(morpho.val_set), len(morpho.test_set)]
    assert sizes == [360, 40, 100]
    batch = next(iter(morpho.train_dataloader()))
    assert batch["x"].shape == (32, 1, 32, 32) and batch["x"].dtype == torch.float32
    assert batch["x"].min() >= 0.0 and batch["x"].max() <= 1.0
    assert batch["pa"]["digit"].dtype == torch.int64
    assert batch["pa"]["thickness"].shape == (32,)
    # batch attributes are the stored ones, in natural units
    stored = morpho.attributes(batch["index"])
    assert torch.equal(stored["intensity"], batch["pa"]["intensity"])
    # normalisation published from the training split
    assert morpho.graph["thickness"].loc == pytest.approx(2.5, abs=0.15)
    assert morpho.graph["intensity"].scale == pytest.approx(48, abs=8)


def test_evenly_spaced_test_subset_keeps_every_digit(morpho):
    # the embedded split is stored in digit order: its first 10 test images hold one or two digits
    assert len(set(morpho.test_set.batch(range(10))["pa"]["digit"].tolist())) <= 2
    subset = morpho.test_set.evenly_spaced(10)
    assert len(subset) == 10 and set(subset.indices.tolist()) <= set(
        morpho.test_set.indices.tolist()
    )
    assert len(set(subset.batch(range(10))["pa"]["digit"].tolist())) >= 8
    assert len(morpho.test_set.evenly_spaced(10_000)) == len(morpho.test_set)


def test_null_intervention_returns_the_factual_images_exactly(morpho):
    batch = next(iter(morpho.test_dataloader()))
    images, attributes = morpho.true_counterfactual(batch["index"], {})
    assert torch.equal(images, batch["x"])
    # re-rendering from the batch's own values reproduces the stored image bit for bit
    index = batch["index"][:8]
    rerendered, _ = morpho.true_counterfactual(index, {"thickness": batch["pa"]["thickness"][:8]})
    assert torch.equal(rerendered, batch["x"][:8])
    from datamodules.morphomnist import render_digits

    rows = index.numpy()
    a = morpho.arrays
    fresh = render_digits(
        a["source_digit"][rows],
        a["source_thickness"][rows],
        a["thickness"][rows],
        a["intensity"][rows],
        workers=1,
    )
    assert np.array_equal(fresh, a["images"][rows])


def test_do_intensity_keeps_thickness(morpho):
    batch = next(iter(morpho.test_dataloader()))
    images, attrs = morpho.true_counterfactual(batch["index"], {"intensity": 100.0})
    assert torch.equal(attrs["thickness"], batch["pa"]["thickness"])
    assert torch.all(attrs["intensity"] == 100.0)
    measured = morphometry.measure(images[:, 0].numpy() * 255.0)
    assert np.median(np.abs(measured.intensity - 100.0)) < 1.5
    assert np.median(np.abs(measured.thickness - batch["pa"]["thickness"].numpy())) < 0.15


def test_do_thickness_moves_intensity_by_the_equation(morpho):
    batch = next(iter(morpho.test_dataloader()))
    index = batch["index"]
    images, attrs = morpho.true_counterfactual(index, {"thickness": 4.0})
    noise = morpho.arrays["intensity_noise"][index.numpy()]
    expected = intensity_law(np.full(len(index), 4.0, dtype=np.float32), noise)
    assert np.allclose(attrs["intensity"].numpy(), expected)
    assert torch.all(attrs["intensity"] > batch["pa"]["intensity"])  # thicker -> brighter
    measured = morphometry.measure_thickness(images[:, 0].numpy() * 255.0)
    assert np.median(np.abs(measured - 4.0)) < 0.15


def test_soft_intervention(morpho):
    batch = next(iter(morpho.test_dataloader()))
    t = batch["pa"]["thickness"]
    images, attrs = morpho.true_counterfactual(batch["index"], {"thickness": lambda v: v + 1})
    assert torch.allclose(attrs["thickness"], t + 1)
    measured = morphometry.measure_thickness(images[:, 0].numpy() * 255.0)
    assert np.median(np.abs(measured - (t + 1).numpy())) < 0.15
    assert not torch.equal(images, batch["x"])


def test_bad_interventions_raise_clear_errors(morpho):
    index = torch.arange(4)
    with pytest.raises(ValueError, match="unknown variable 'slant'.*thickness"):
        morpho.true_counterfactual(index, {"slant": 1.0})
    with pytest.raises(ValueError, match=r"'thickness' is outside its support \[0.5, 10\]"):
        morpho.true_counterfactual(index, {"thickness": 12.0})
    with pytest.raises(ValueError, match="intensity.*support"):
        morpho.true_counterfactual(index, {"intensity": torch.tensor([100.0, 20.0, 100.0, 90.0])})
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        morpho.true_counterfactual(index, {"intensity": torch.full((3,), 100.0)})
    with pytest.raises(ValueError, match="no ground truth"):
        morpho.true_counterfactual(index, {"digit": 3})


def test_unknown_source_raises():
    with pytest.raises(ValueError, match="unknown Morpho-MNIST source 'fashion'.*embedded"):
        MorphoMNISTDataModule(source="fashion")


def test_missing_mnist_offline_names_both_ways_out(tmp_path):
    datamodule = MorphoMNISTDataModule(data_dir=str(tmp_path), source="mnist", download=False)
    with pytest.raises(FileNotFoundError, match="download=true.*source=embedded"):
        datamodule.prepare_data()


def test_corrupt_cache_is_rebuilt(morpho, tmp_path):
    datamodule = MorphoMNISTDataModule(data_dir=str(tmp_path), limit=20)
    datamodule.prepare_data()
    path = datamodule.cache_path
    original = datamodule.arrays["images"].copy()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a truncated write
    rebuilt = MorphoMNISTDataModule(data_dir=str(tmp_path), limit=20)
    rebuilt.prepare_data()
    assert rebuilt.cache_path == path
    assert np.array_equal(rebuilt.arrays["images"], original)
    assert not list(path.parent.glob("*.tmp"))  # no temporary file left behind


def test_unwritable_data_dir_raises_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    datamodule = MorphoMNISTDataModule(data_dir=str(blocker), limit=20)
    with pytest.raises(CacheError, match="cannot write the dataset cache.*writable directory"):
        datamodule.prepare_data()


def test_a_temporary_file_left_by_a_killed_write_is_removed(morpho, tmp_path):
    datamodule = MorphoMNISTDataModule(data_dir=str(tmp_path), limit=20)
    path = tmp_path / datamodule.name / "stale-target.npz"
    path.parent.mkdir(parents=True)
    dead = 2**22 + 7  # above Linux's largest pid: no process has it
    stale = path.parent / f"{path.name}.{dead}.abcd.tmp"
    stale.write_bytes(b"half a cache")
    mine = path.parent / f"{path.name}.{os.getpid()}.efgh.tmp"  # a write in progress
    mine.write_bytes(b"busy")
    atomic_write(path, lambda temporary: Path(temporary).write_bytes(b"done"))
    assert path.read_bytes() == b"done"
    assert not stale.exists() and mine.exists()


def test_the_interventional_set_keeps_each_marginal_and_breaks_the_dependence(morpho):
    state = torch.get_rng_state()
    data = morpho.interventional_set(["thickness", "intensity"], seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    train = morpho.train_set
    observed = {k: v[train.indices].float() for k, v in train.attributes.items()}
    drawn = {k: v.float() for k, v in data.attributes.items()}
    assert len(data) == len(train)
    for name in ("thickness", "intensity"):  # each attribute's own values, reordered
        assert torch.equal(drawn[name].sort().values, observed[name].sort().values)
        assert not torch.equal(drawn[name], observed[name])
    assert torch.equal(drawn["digit"], observed["digit"])  # the source digits stay

    def correlation(a, b):
        return torch.corrcoef(torch.stack([a, b]))[0, 1].item()

    # thickness causes intensity in the data; the interventional images don't show it
    assert correlation(observed["thickness"], observed["intensity"]) > 0.5
    assert abs(correlation(drawn["thickness"], drawn["intensity"])) < 0.15
    # the images are rendered at the drawn attributes: morphometry reads them back
    measured = morpho.measure_attributes(data.images[:64].float().div(255.0))
    assert (measured["thickness"] - drawn["thickness"][:64]).abs().median() < 0.15
    assert (measured["intensity"] - drawn["intensity"][:64]).abs().median() < 3.0
    # a seed gives the same draw
    again = morpho.interventional_set(["intensity", "thickness"], seed=0)
    assert torch.equal(again.images, data.images)


def test_the_interventional_set_refuses_attributes_without_ground_truth(morpho):
    with pytest.raises(ValueError, match=r"\['digit'\].*renders are: thickness, intensity"):
        morpho.interventional_set(["digit"])
    with pytest.raises(ValueError, match="no attribute"):
        morpho.interventional_set([])
