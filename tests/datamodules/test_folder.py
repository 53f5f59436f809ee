"""Bring your own data: a folder of images + attributes.csv + graph.yaml, and its errors."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules import FolderDataModule
from datamodules.folder import graph_from_yaml, write_image_folder


@pytest.fixture(scope="module")
def exported(morpho, tmp_path_factory):
    """The tiny Morpho-MNIST written as a folder (60 samples)."""
    return write_image_folder(
        morpho, tmp_path_factory.mktemp("folder") / "digits", num=60, progress=False
    )


@pytest.fixture
def folder(exported, tmp_path):
    """A private copy of the exported folder, to break."""
    return shutil.copytree(exported, tmp_path / "digits")


def _rows(folder):
    with (folder / "attributes.csv").open(newline="") as stream:
        return list(csv.DictReader(stream))


def _write_rows(folder, rows, fieldnames=None):
    with (folder / "attributes.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=fieldnames or list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_an_exported_dataset_reads_back_identically(exported, morpho, tmp_path):
    dm = FolderDataModule(root=str(exported), data_dir=str(tmp_path))
    dm.setup()
    assert dm.image_shape == (1, 32, 32)
    assert dm.graph.names == morpho.graph.names
    for variable in dm.graph.variables:
        original = morpho.graph[variable.name]
        assert (variable.kind, variable.parents, variable.support) == (
            original.kind,
            original.parents,
            original.support,
        )
    assert dm.graph["digit"].num_classes == 10
    # the split column is honoured: 60 samples in the morpho split's proportions
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [43, 5, 12]
    rows = _rows(exported)
    first = dm.train_set.batch([0])
    assert rows[0]["split"] == "train"
    index = int(rows[0]["file"].split("-")[1].split(".")[0])
    original = morpho.train_set.batch([morpho.train_set.indices.tolist().index(index)])
    assert torch.equal(first["x"], original["x"])  # PNG is lossless; uint8 round trip
    assert first["pa"]["digit"].dtype == torch.long
    assert torch.allclose(first["pa"]["thickness"], original["pa"]["thickness"])


def test_graph_yaml_in_any_order_is_sorted_and_supports_are_inferred(tmp_path):
    (tmp_path / "graph.yaml").write_text(
        "variables:\n"
        "  c: {kind: continuous, parents: [a, b]}\n"
        "  b: {kind: categorical, parents: [a], num_classes: 3}\n"
        "  a: {kind: continuous, support: [0, 1]}\n"
    )
    graph = graph_from_yaml(tmp_path / "graph.yaml", {"c": np.array([2.0, 4.0])})
    assert graph.names == ("a", "b", "c")
    assert graph.image_parents == ("a", "b", "c")
    assert graph["c"].support == pytest.approx((1.8, 4.2))  # the data's range, widened by 10%


def test_a_cycle_is_named(tmp_path):
    (tmp_path / "graph.yaml").write_text(
        "variables:\n"
        "  a: {kind: continuous, parents: [c], support: [0, 1]}\n"
        "  b: {kind: continuous, parents: [a], support: [0, 1]}\n"
        "  c: {kind: continuous, parents: [b], support: [0, 1]}\n"
    )
    with pytest.raises(ValueError, match=r"cycle .*a -> b -> c -> a|cycle .*c -> a -> b -> c"):
        graph_from_yaml(tmp_path / "graph.yaml")


def test_a_missing_column_is_named(folder):
    rows = [{k: v for k, v in row.items() if k != "intensity"} for row in _rows(folder)]
    _write_rows(folder, rows)
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['intensity'\]"):
        FolderDataModule(root=str(folder))


def test_a_bad_value_names_its_row(folder):
    rows = _rows(folder)
    rows[3]["thickness"] = "thick"
    rows[5]["intensity"] = "300"
    _write_rows(folder, rows)
    with pytest.raises(ValueError, match="row 5: column 'thickness' holds 'thick'"):
        FolderDataModule(root=str(folder))
    rows[3]["thickness"] = "2.0"
    _write_rows(folder, rows)
    with pytest.raises(ValueError, match=r"row 7: 'intensity' is 300, outside its support"):
        FolderDataModule(root=str(folder))


def test_an_unreadable_image_is_named(folder, tmp_path):
    rows = _rows(folder)
    (folder / rows[4]["file"]).write_bytes(b"not a png")
    dm = FolderDataModule(root=str(folder), data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=rf"row 6: cannot read image .*{rows[4]['file']}"):
        dm.setup()


def test_mixed_image_sizes_are_named(folder, tmp_path):
    rows = _rows(folder)
    Image.new("L", (28, 28)).save(folder / rows[2]["file"])
    dm = FolderDataModule(root=str(folder), data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=rf"row 4: image .*{rows[2]['file']} is 28x28 pixels"):
        dm.setup()


def test_missing_folder_or_graph_says_what_to_do(folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="data.root=DIR"):
        FolderDataModule(root=str(tmp_path / "nowhere"))
    (folder / "graph.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="graph.yaml does not exist"):
        FolderDataModule(root=str(folder))


def test_without_a_split_column_the_split_is_seeded(folder, tmp_path):
    rows = [{k: v for k, v in row.items() if k != "split"} for row in _rows(folder)]
    _write_rows(folder, rows)
    dm = FolderDataModule(root=str(folder), data_dir=str(tmp_path))
    dm.setup()
    again = FolderDataModule(root=str(folder), data_dir=str(tmp_path / "other"))
    again.setup()
    assert len(dm.test_set) == 12 and torch.equal(dm.test_set.indices, again.test_set.indices)


def test_editing_the_table_invalidates_the_cache(folder, tmp_path):
    dm = FolderDataModule(root=str(folder), data_dir=str(tmp_path))
    dm.setup()
    rows = _rows(folder)
    rows[0]["thickness"] = "3.25"
    _write_rows(folder, rows)
    edited = FolderDataModule(root=str(folder), data_dir=str(tmp_path))
    edited.setup()
    assert edited.cache_path != dm.cache_path
    assert edited.arrays["thickness"][0] == pytest.approx(3.25)


def test_the_split_a_checkpoint_records_is_the_tables_not_where_the_folder_lies(
    exported, folder, tmp_path
):
    def split_spec(root, **settings):
        return FolderDataModule(root=str(root), data_dir=str(tmp_path), **settings).split_spec

    copied = split_spec(folder)  # the fixture's copy: another place, other file times
    assert copied == split_spec(exported) and str(folder) not in str(copied)
    assert copied["seed"] is None  # the table's split column, not the seed, draws it
    assert split_spec(folder, seed=1) == copied
    rows = [{k: v for k, v in row.items() if k != "split"} for row in _rows(folder)]
    _write_rows(folder, rows)
    drawn = split_spec(folder)
    assert drawn["table"] != copied["table"] and drawn["seed"] == 0
    assert split_spec(folder, seed=1)["seed"] == 1


def test_the_exporter_never_overwrites_a_user_s_files_unless_asked(exported, tmp_path):
    """Checked before anything is written: the user's files are byte-for-byte intact."""
    user = shutil.copytree(exported, tmp_path / "mine")
    before = {p: p.read_bytes() for p in user.rglob("*") if p.is_file()}

    class Untouched:  # the refusal comes before the datamodule is used
        def __getattr__(self, name):
            raise AssertionError(f"the datamodule was used ({name})")

    with pytest.raises(FileExistsError, match="attributes.csv.*--overwrite"):
        write_image_folder(Untouched(), user, num=5)
    assert {p: p.read_bytes() for p in user.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("num", [1, 2, 7])
def test_the_exporter_writes_exactly_num_samples(morpho, tmp_path, num):
    out = write_image_folder(morpho, tmp_path / "out", num=num, progress=False)
    assert len(_rows(out)) == num == len(list((out / "images").iterdir()))


def test_the_exporter_refuses_zero_samples(tmp_path):
    from datamodules.folder import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "out"), "--num", "0"])
    assert exit_info.value.code == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("escape", ["../outside.png", "/abs/outside.png", "images/../../x.png"])
def test_a_file_outside_the_folder_is_refused_and_named(folder, tmp_path, escape):
    outside = tmp_path / "outside.png"
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(outside)
    rows = _rows(folder)
    rows[3]["file"] = escape
    _write_rows(folder, rows)
    with pytest.raises(ValueError, match=r"row 5: file .* lies outside the folder"):
        FolderDataModule(root=str(folder), data_dir=str(tmp_path / "cache"))


def test_a_file_listed_twice_is_refused_and_both_rows_named(folder, tmp_path):
    rows = _rows(folder)
    rows[7] = {**rows[7], "file": rows[2]["file"], "split": "test"}
    _write_rows(folder, rows)
    with pytest.raises(ValueError, match=r"rows 4 and 9 both list"):
        FolderDataModule(root=str(folder), data_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_a_non_finite_value_is_refused_and_its_row_named(folder, tmp_path, value):
    rows = _rows(folder)
    rows[4]["intensity"] = value
    _write_rows(folder, rows)
    with pytest.raises(ValueError, match=rf"row 6: column 'intensity' holds '{value}'"):
        FolderDataModule(root=str(folder), data_dir=str(tmp_path / "cache"))
