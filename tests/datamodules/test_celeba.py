"""CelebA datamodule on a tiny fake CelebA folder in torchvision's layout (tests/fake_celeba.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import celeba
from datamodules.base import TEST, TRAIN, VAL, CausalGraph
from datamodules.celeba import CelebADataModule
from tests.fake_celeba import ATTRIBUTE_NAMES, write_fake_celeba
from tests.families import FAMILIES
from tests.helpers import quiet_trainer

#: Fake faces of the shared folder: enough for the attribute SCM to see the complex graph's
#: dependencies, decoded in about half a second.
FAKE_IMAGES = 300


def read_fake_files(data_dir: Path) -> tuple[list[list[str]], list[int]]:
    """The attribute rows (file name, values) and split codes, parsed independently of the module."""
    folder = data_dir / "celeba"
    rows = [line.split() for line in (folder / "list_attr_celeba.txt").read_text().splitlines()]
    codes = [
        int(line.split()[1])
        for line in (folder / "list_eval_partition.txt").read_text().splitlines()
    ]
    return rows[2:], codes


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory) -> Path:
    return write_fake_celeba(tmp_path_factory.mktemp("fake_celeba"), n=FAKE_IMAGES, seed=0)


@pytest.fixture(scope="module")
def celeba_simple(fake_dir) -> CelebADataModule:
    dm = CelebADataModule(data_dir=str(fake_dir), batch_size=16, workers=1)
    dm.prepare_data()
    dm.setup()
    return dm


def test_fake_folder_loads(celeba_simple, fake_dir):
    dm = celeba_simple
    assert dm.image_shape == (3, 64, 64)
    images = dm.arrays["images"]
    assert images.shape == (FAKE_IMAGES, 3, 64, 64) and images.dtype == np.uint8
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (16, 3, 64, 64) and batch["x"].dtype == torch.float32
    assert batch["x"].min() >= 0.0 and batch["x"].max() <= 1.0
    assert set(batch["pa"]) == {"Smiling", "Eyeglasses"}
    assert batch["pa"]["Smiling"].dtype == torch.int64

    rows, codes = read_fake_files(fake_dir)
    codes = np.array(codes)
    assert [len(dm.train_set), len(dm.val_set), len(dm.test_set)] == [
        int((codes == c).sum()) for c in (TRAIN, VAL, TEST)
    ]
    assert np.array_equal(dm.arrays["split"], codes)
    # class 1 exactly where the file says 1, for every column (the cache keeps them all)
    for i in (0, 1, 7, FAKE_IMAGES - 1):
        for column, name in enumerate(ATTRIBUTE_NAMES, start=1):
            assert dm.arrays[name][i] == (rows[i][column] == "1"), (i, name)
    stored = dm.attributes(torch.arange(4))
    assert stored["Smiling"].tolist() == [
        int(rows[i][1 + ATTRIBUTE_NAMES.index("Smiling")] == "1") for i in range(4)
    ]

    # the standard preprocessing: the centred 148 px square (left 15, top 35), Lanczos to 64 px
    with Image.open(fake_dir / "celeba" / "img_align_celeba" / "000003.jpg") as image:
        expected = (
            image.convert("RGB").crop((15, 35, 163, 183)).resize((64, 64), Image.Resampling.LANCZOS)
        )
    assert np.array_equal(images[2], np.asarray(expected).transpose(2, 0, 1))


def test_crop_box_of_other_sizes():
    assert celeba.crop_box(178, 218) == (15, 35, 163, 183)
    assert celeba.crop_box(100, 120) == (0, 10, 100, 110)  # smaller than 148: the largest square
    assert celeba.crop_box(300, 300) == (76, 76, 224, 224)


def test_both_graphs():
    simple = CelebADataModule(graph="simple").graph
    assert simple.names == ("Smiling", "Eyeglasses")
    assert all(
        simple[name].parents == () and simple[name].num_classes == 2 for name in simple.names
    )
    assert simple.image_parents == ("Smiling", "Eyeglasses")

    complex_ = CelebADataModule(graph="complex").graph
    assert complex_.names == ("Young", "Male", "No_Beard", "Bald")
    assert complex_["Young"].parents == complex_["Male"].parents == ()
    assert complex_["No_Beard"].parents == complex_["Bald"].parents == ("Young", "Male")
    assert complex_.image_parents == ("Young", "Male", "No_Beard", "Bald")
    assert CausalGraph.from_dict(complex_.to_dict()) == complex_

    with pytest.raises(ValueError, match="simple, complex"):
        CelebADataModule(graph="faces")


def test_missing_files_say_where_they_belong(tmp_path):
    dm = CelebADataModule(data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        dm.prepare_data()
    message = str(error.value)
    assert str(tmp_path / "celeba" / "list_attr_celeba.txt") in message
    assert str(tmp_path / "celeba" / "img_align_celeba") in message
    assert "data.download=true" in message


def test_corrupt_image_is_named(tmp_path, monkeypatch):
    data_dir = write_fake_celeba(tmp_path, n=40, seed=3)
    broken = data_dir / "celeba" / "img_align_celeba" / "000030.jpg"
    broken.write_bytes(broken.read_bytes()[:300])  # a truncated JPEG
    # small chunks and two workers: the error must cross the process pool intact
    monkeypatch.setattr(celeba, "CHUNK_SIZE", 8)
    dm = CelebADataModule(data_dir=str(data_dir), workers=2)
    with pytest.raises(ValueError, match=r"cannot read CelebA image .*000030\.jpg"):
        dm.prepare_data()
    assert not list((data_dir / "celeba").glob("*.npz"))  # no half cache
    broken.unlink()
    with pytest.raises(FileNotFoundError, match=r"CelebA image .*000030\.jpg is missing"):
        dm.prepare_data()


def test_missing_column_is_named(tmp_path):
    data_dir = write_fake_celeba(tmp_path, n=10)
    table = data_dir / "celeba" / "list_attr_celeba.txt"
    column = ATTRIBUTE_NAMES.index("Eyeglasses")
    lines = table.read_text().splitlines()
    kept = [lines[0], " ".join(n for n in lines[1].split() if n != "Eyeglasses")]
    for line in lines[2:]:
        tokens = line.split()
        kept.append(" ".join(tokens[: column + 1] + tokens[column + 2 :]))
    table.write_text("\n".join(kept) + "\n")
    with pytest.raises(ValueError, match=r"list_attr_celeba\.txt has no column 'Eyeglasses'"):
        CelebADataModule(data_dir=str(data_dir)).prepare_data()
    # the complex graph needs no Eyeglasses: it loads
    CelebADataModule(data_dir=str(data_dir), graph="complex", workers=1).prepare_data()


def test_second_instance_loads_from_the_cache(celeba_simple, fake_dir, monkeypatch):
    assert celeba_simple.cache_path is not None and celeba_simple.cache_path.exists()

    def no_build(self):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(CelebADataModule, "build", no_build)
    again = CelebADataModule(data_dir=str(fake_dir), workers=1)
    again.setup()
    assert again.cache_path == celeba_simple.cache_path
    assert np.array_equal(again.arrays["images"], celeba_simple.arrays["images"])
    # the other graph shares the decoded arrays (they hold every attribute column)
    complex_ = CelebADataModule(data_dir=str(fake_dir), graph="complex", workers=1)
    complex_.setup()
    assert complex_.cache_path == celeba_simple.cache_path
    # another folder, a new size or a subset is another cache entry
    other = write_fake_celeba(fake_dir.parent / "other", n=12, seed=5)
    assert CelebADataModule(data_dir=str(other)).spec != celeba_simple.spec
    assert CelebADataModule(data_dir=str(fake_dir), image_size=32).spec != celeba_simple.spec
    assert CelebADataModule(data_dir=str(fake_dir), limit=50).spec != celeba_simple.spec


def test_limit_keeps_the_official_splits(fake_dir):
    dm = CelebADataModule(data_dir=str(fake_dir), image_size=32, limit=60, seed=1, workers=1)
    dm.setup()
    assert dm.image_shape == (3, 32, 32)
    assert dm.arrays["images"].shape == (60, 3, 32, 32)
    rows = dm.arrays["source_row"]
    assert len(np.unique(rows)) == 60 and np.all(np.diff(rows) > 0)
    _, codes = read_fake_files(fake_dir)
    assert np.array_equal(dm.arrays["split"], np.array(codes)[rows])
    assert min(len(dm.train_set), len(dm.val_set), len(dm.test_set)) > 0
    again = CelebADataModule(data_dir=str(fake_dir), image_size=32, limit=60, seed=1)
    assert np.array_equal(again.load()["source_row"], rows)  # the seed fixes the subset
    with pytest.raises(ValueError, match="raise data.limit"):
        CelebADataModule(data_dir=str(fake_dir), limit=1, workers=1).prepare_data()


def test_attribute_scm_learns_the_complex_mechanisms(fake_dir):
    from models.scm import AttributeSCM

    dm = CelebADataModule(data_dir=str(fake_dir), graph="complex", workers=1)
    dm.setup()
    pa = {name: torch.from_numpy(dm.arrays[name]) for name in dm.graph.names}
    scm = AttributeSCM(dm.graph, mechanism="flow", hidden=16, transforms=2)
    optimiser = torch.optim.Adam(scm.parameters(), lr=3e-2)
    for _ in range(200):  # full batch; the maximum likelihood fit is reached in ~100 steps
        optimiser.zero_grad()
        scm.nll(pa).backward()
        optimiser.step()

    def learned(child: str, **parents: int) -> float:
        """The learned P(child = 1 | parents)."""
        with torch.no_grad():
            logits = scm.mechanisms[child].logits(
                {k: torch.tensor([v]) for k, v in parents.items()}, 1
            )
        return logits.softmax(-1)[0, 1].item()

    # men grow beards, and old men go bald (the fake data's mechanisms)
    for young in (0, 1):
        assert (
            learned("No_Beard", Young=young, Male=1)
            < learned("No_Beard", Young=young, Male=0) - 0.2
        )
    assert learned("Bald", Young=0, Male=1) > learned("Bald", Young=1, Male=0) + 0.2
    # every conditional is the empirical frequency of its cell (each has >= 30 samples here)
    for young in (0, 1):
        for male in (0, 1):
            cell = (pa["Young"] == young) & (pa["Male"] == male)
            assert cell.sum() >= 30
            for child in ("No_Beard", "Bald"):
                empirical = pa[child][cell].float().mean().item()
                assert learned(child, Young=young, Male=male) == pytest.approx(empirical, abs=0.03)
    for root in ("Young", "Male"):
        assert learned(root) == pytest.approx(pa[root].float().mean().item(), abs=0.03)


def test_a_model_trains_and_answers_counterfactuals(celeba_simple):
    dm = celeba_simple
    model = FAMILIES["vae"][0](dm)
    quiet_trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=1).fit(
        model, datamodule=dm
    )
    model.eval()
    batch = next(iter(dm.test_dataloader()))
    cf = model.counterfactual(batch["x"], batch["pa"], {"Smiling": 1})
    assert cf.image.shape == (len(batch["x"]), 3, 64, 64)
    assert torch.all(cf.parents["Smiling"] == 1)
    assert torch.equal(cf.parents["Eyeglasses"], batch["pa"]["Eyeglasses"])
    null = model.counterfactual(batch["x"], batch["pa"], {})
    assert (null.image - batch["x"]).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["../outside.jpg", "/etc/passwd", "sub/000003.jpg"])
def test_an_image_name_outside_the_image_folder_is_refused(tmp_path, name):
    data_dir = write_fake_celeba(tmp_path, n=10)
    for table in ("list_attr_celeba.txt", "list_eval_partition.txt"):
        path = data_dir / "celeba" / table
        path.write_text(path.read_text().replace("000003.jpg", name))
    with pytest.raises(ValueError, match=r"image 3 is listed as .*not a file name inside"):
        CelebADataModule(data_dir=str(data_dir), workers=1).prepare_data()
