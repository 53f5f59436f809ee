"""Bring your own data: a folder of images, a CSV of their attributes and a causal graph in YAML.

The folder::

    my_data/
      graph.yaml          the attributes, their kinds and parents (below)
      attributes.csv      a ``file`` column (paths relative to the folder), one column per attribute,
                          and optionally ``split`` (train / val / test; else a seeded random split)
      images/0001.png ... any format PIL reads; all the same size; grey (L) or colour (RGB)

``graph.yaml``, in any order of variables (cfzoo sorts them and rejects cycles)::

    variables:
      thickness: {kind: continuous, support: [0.5, 10.0]}
      intensity: {kind: continuous, parents: [thickness], support: [64, 255]}
      digit: {kind: categorical, num_classes: 10}
    image_parents: [thickness, intensity, digit]   # optional: default, every variable

Continuous columns are numbers in natural units; a continuous variable without ``support`` gets the
data's range widened by 10% on each side. Categorical columns are class ids ``0 .. num_classes-1``.

Example:
    >>> dm = FolderDataModule(root="my_data")
    >>> dm.setup()
    >>> dm.graph.names
    ('thickness', 'intensity', 'digit')
"""

from __future__ import annotations

import csv
import hashlib
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from tqdm.auto import tqdm

from datamodules.base import (
    CATEGORICAL,
    CONTINUOUS,
    TEST,
    TRAIN,
    VAL,
    CachedArrayDataModule,
    CausalGraph,
    Variable,
    evenly_spaced,
)

__all__ = ["FolderDataModule", "graph_from_yaml", "load_image_folder", "read_graph_spec"]

log = logging.getLogger(__name__)

#: Bump when the way a folder is read changes, so old caches are rebuilt.
READER_VERSION = 1
SPLITS = {"train": TRAIN, "val": VAL, "valid": VAL, "validation": VAL, "test": TEST}
_SUPPORT_MARGIN = 0.1


def read_graph_spec(path: str | Path) -> dict[str, Any]:
    """Read and check the shape of a ``graph.yaml`` (not its values: see :func:`graph_from_yaml`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"causal graph {path} does not exist: write the variables, their kinds and parents "
            "there (see `python -c 'import datamodules.folder as f; print(f.__doc__)'`)"
        )
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not valid YAML: {error}") from error
    if not isinstance(spec, Mapping) or not isinstance(spec.get("variables"), Mapping):
        raise ValueError(
            f"{path} must hold a mapping with 'variables: {{name: {{kind: ..., parents: [...]}}}}'"
        )
    for name, entry in spec["variables"].items():
        if not isinstance(entry, Mapping) or entry.get("kind") not in (CONTINUOUS, CATEGORICAL):
            raise ValueError(
                f"{path}: variable '{name}' needs 'kind: {CONTINUOUS}' or 'kind: {CATEGORICAL}'"
            )
        unknown = set(entry) - {"kind", "parents", "support", "num_classes"}
        if unknown:
            raise ValueError(f"{path}: variable '{name}' has unknown key(s) {sorted(unknown)}")
    return dict(spec)


def _topological_order(parents: Mapping[str, Sequence[str]], where: Path) -> list[str]:
    """The variables parents-first; a cycle raises ``ValueError`` naming it."""
    for name, names in parents.items():
        for parent in names:
            if parent not in parents:
                raise ValueError(
                    f"{where}: variable '{name}' has parent '{parent}', which is not declared"
                )
    order, state = [], {}  # state: 1 visiting, 2 done

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            cycle = path[path.index(name) :] + [name]
            raise ValueError(
                f"{where}: the causal graph has a cycle {' -> '.join(reversed(cycle))}; a causal "
                "graph must be acyclic"
            )
        state[name] = 1
        for parent in parents[name]:
            visit(parent, path + [name])
        state[name] = 2
        order.append(name)

    for name in parents:
        visit(name, [])
    return order


def graph_from_yaml(
    path: str | Path, values: Mapping[str, np.ndarray] | None = None
) -> CausalGraph:
    """The :class:`CausalGraph` of a ``graph.yaml``.

    Args:
        values: the data's columns, to give a continuous variable without ``support`` the data's
            range widened by 10% on each side.
    """
    path = Path(path)
    spec = read_graph_spec(path)
    entries = spec["variables"]
    parents = {name: tuple(entry.get("parents") or ()) for name, entry in entries.items()}
    variables = []
    for name in _topological_order(parents, path):
        entry = entries[name]
        support = entry.get("support")
        if entry["kind"] == CONTINUOUS and support is None:
            if values is None:
                raise ValueError(f"{path}: continuous variable '{name}' needs a support")
            low, high = float(np.min(values[name])), float(np.max(values[name]))
            margin = _SUPPORT_MARGIN * max(high - low, 1e-6)
            support = (low - margin, high + margin)
        try:
            variables.append(
                Variable(
                    name,
                    entry["kind"],
                    parents=parents[name],
                    support=tuple(support) if support is not None else None,
                    num_classes=entry.get("num_classes"),
                )
            )
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path}: {error}") from error
    image_parents = spec.get("image_parents") or [v.name for v in variables]
    try:
        return CausalGraph(tuple(variables), tuple(image_parents))
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def _read_table(table: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    if not table.is_file():
        raise FileNotFoundError(
            f"attribute table {table} does not exist: write a CSV with a 'file' column and one "
            "column per attribute"
        )
    with table.open(newline="") as stream:
        reader = csv.DictReader(stream)
        present = reader.fieldnames or []
        missing = [c for c in ("file", *columns) if c not in present]
        if missing:
            raise ValueError(f"{table} lacks column(s) {missing}; it has {present}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{table} lists no images")
    return rows


def _check_files(
    rows: Sequence[Mapping[str, str]], root: Path, table: Path, unique: bool = True
) -> None:
    """Every ``file`` lies inside ``root`` (no absolute paths, no ``..`` out of it) and, with
    ``unique``, is listed once: a file in two rows, or in two splits, would leak test images
    into training."""
    root = root.resolve()
    seen: dict[Path, int] = {}
    for line, row in enumerate(rows, start=2):
        name = (row.get("file") or "").strip()
        if not name:
            raise ValueError(f"{table} row {line}: the 'file' column is empty")
        path = (root / name).resolve()
        if Path(name).is_absolute() or not path.is_relative_to(root):
            raise ValueError(
                f"{table} row {line}: file '{name}' lies outside the folder {root}; list files "
                "by their path inside it"
            )
        if unique and path in seen:
            raise ValueError(
                f"{table} rows {seen[path]} and {line} both list '{name}': list each image once "
                "(a file in two rows or two splits leaks between training and testing)"
            )
        seen[path] = line


def _parse_attributes(
    rows: Sequence[Mapping[str, str]], kinds: Mapping[str, str], table: Path
) -> dict[str, np.ndarray]:
    """Typed columns (name -> kind): float32 for continuous, int64 class ids for categorical."""
    out = {}
    for name, kind in kinds.items():
        column = []
        for line, row in enumerate(rows, start=2):
            text = (row.get(name) or "").strip()
            try:
                column.append(float(text) if kind == CONTINUOUS else int(text))
            except ValueError as error:
                wanted = "a number" if kind == CONTINUOUS else "an integer class id"
                raise ValueError(
                    f"{table} row {line}: column '{name}' holds '{text}', not {wanted}"
                ) from error
        out[name] = np.asarray(column, dtype=np.float32 if kind == CONTINUOUS else np.int64)
        if kind == CONTINUOUS and not np.isfinite(out[name]).all():
            line = int(np.flatnonzero(~np.isfinite(out[name]))[0]) + 2
            raise ValueError(
                f"{table} row {line}: column '{name}' holds '{rows[line - 2].get(name)}', not a "
                "finite number"
            )
    return out


def _kinds(graph: CausalGraph) -> dict[str, str]:
    return {v.name: v.kind for v in graph.variables}


def _check_support(values: Mapping[str, np.ndarray], graph: CausalGraph, table: Path) -> None:
    for variable in graph.variables:
        column = values[variable.name]
        low, high = variable.support
        bad = np.flatnonzero(~((column >= low) & (column <= high)))
        if len(bad):
            raise ValueError(
                f"{table} row {bad[0] + 2}: '{variable.name}' is {column[bad[0]]:g}, outside its "
                f"support {variable.describe_support()} ({len(bad)} row(s) in all); fix the data "
                "or the support in the graph"
            )


def read_image(path: Path, mode: str | None, where: str) -> np.ndarray:
    """An image as ``(H, W, C)`` uint8 in ``mode`` ("L" or "RGB"; ``None``: the file's own)."""
    try:
        with Image.open(path) as image:
            if mode is None:
                mode = "L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB"
            array = np.asarray(image.convert(mode), dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as error:
        raise ValueError(f"{where}: cannot read image {path}: {error}") from error
    return array.reshape(array.shape[0], array.shape[1], -1)


def _read_images(
    root: Path,
    rows: Sequence[Mapping[str, str]],
    table: Path,
    image_shape: Sequence[int] | None = None,
    progress: bool = True,
) -> np.ndarray:
    """All images as ``(N, C, H, W)`` uint8.

    Args:
        image_shape: the ``(C, H, W)`` a model needs; ``None``: the first image fixes the size and
            the colour mode.
    """
    if image_shape is None:
        first = read_image(root / rows[0]["file"], None, f"{table} row 2")
        channels, size = first.shape[2], first.shape[:2]
        reference = f"{rows[0]['file']} is {size[1]}x{size[0]}: every image must have the same size"
    else:
        channels, size = image_shape[0], tuple(image_shape[1:])
        reference = f"the model needs {size[1]}x{size[0]}"
    mode = "L" if channels == 1 else "RGB"
    images = np.empty((len(rows), channels, *size), dtype=np.uint8)
    for line, row in enumerate(tqdm(rows, desc="reading images", disable=not progress), start=2):
        path = root / row["file"]
        array = read_image(path, mode, f"{table} row {line}")
        if array.shape[:2] != size:
            raise ValueError(
                f"{table} row {line}: image {path} is {array.shape[1]}x{array.shape[0]} pixels but "
                f"{reference} (resize them first)"
            )
        images[line - 2] = array.transpose(2, 0, 1)
    return images


class FolderDataModule(CachedArrayDataModule):
    """A user's folder of images with a CSV of attributes and a causal graph in YAML.

    Args:
        root: the folder; ``table``, ``graph`` and the CSV's file paths are relative to it.
        table: the attribute CSV.
        graph: the causal graph YAML.
        data_dir: where the decoded images are cached (and the evaluation's predictors).
        seed: seeds the split when the CSV has no ``split`` column.
        val_fraction, test_fraction: of the seeded split.
        batch_size, num_workers, pin_memory: of the loaders.
    """

    name = "folder"

    def __init__(
        self,
        root: str,
        table: str = "attributes.csv",
        graph: str = "graph.yaml",
        data_dir: str = "data",
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
    ):
        super().__init__(
            data_dir=data_dir,
            seed=seed,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        if root is None or not Path(root).expanduser().is_dir():
            raise FileNotFoundError(
                f"image folder {root} does not exist: pass data.root=DIR, a folder holding "
                f"{table}, {graph} and the images"
            )
        self.root = Path(root).expanduser().resolve()
        self.table_path = self.root / table
        self.graph_path = self.root / graph
        spec = read_graph_spec(self.graph_path)
        self._rows = _read_table(self.table_path, list(spec["variables"]))
        _check_files(self._rows, self.root, self.table_path)
        kinds = {name: entry["kind"] for name, entry in spec["variables"].items()}
        values = _parse_attributes(self._rows, kinds, self.table_path)
        self.graph = graph_from_yaml(self.graph_path, values)
        _check_support(values, self.graph, self.table_path)
        first = read_image(self.root / self._rows[0]["file"], None, f"{self.table_path} row 2")
        self.image_shape = (first.shape[2], first.shape[0], first.shape[1])

    @property
    def spec(self) -> dict:
        """The folder's identity: its table, its graph and every image's size and time stamp."""
        digest = hashlib.sha256()
        for path in (self.table_path, self.graph_path):
            digest.update(path.read_bytes())
        for row in self._rows:
            stat = (self.root / row["file"]).stat()
            digest.update(f"{row['file']}:{stat.st_size}:{stat.st_mtime_ns}".encode())
        return {
            "dataset": self.name,
            "root": str(self.root),
            "contents": digest.hexdigest(),
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "version": READER_VERSION,
        }

    @property
    def split_spec(self) -> dict:
        """The table's bytes (files, attributes, any split column), not where the folder lies or
        when its files were copied; the seed and fractions only when they draw the split."""
        drawn = "split" not in self._rows[0]
        return {
            "dataset": self.name,
            "table": hashlib.sha256(self.table_path.read_bytes()).hexdigest(),
            "seed": self.seed if drawn else None,
            "val_fraction": self.val_fraction if drawn else None,
            "test_fraction": self.test_fraction if drawn else None,
        }

    @property
    def cache_prefix(self) -> str:
        return f"{self.name}-{self.root.name}"

    def build(self) -> dict[str, np.ndarray]:
        images = _read_images(self.root, self._rows, self.table_path)
        arrays = _parse_attributes(self._rows, _kinds(self.graph), self.table_path)
        return {"images": images, **arrays, "split": self._split()}

    def _split(self) -> np.ndarray:
        if "split" not in self._rows[0]:
            rng = np.random.default_rng(self.seed)
            return self.draw_split(len(self._rows), rng)
        labels = []
        for line, row in enumerate(self._rows, start=2):
            label = (row["split"] or "").strip().lower()
            if label not in SPLITS:
                raise ValueError(
                    f"{self.table_path} row {line}: split '{row['split']}' is not one of "
                    "train, val, test"
                )
            labels.append(SPLITS[label])
        split = np.asarray(labels, dtype=np.int8)
        for code, name in ((TRAIN, "train"), (VAL, "val"), (TEST, "test")):
            if not (split == code).any():
                raise ValueError(f"{self.table_path}: the split column has no '{name}' rows")
        return split


def load_image_folder(
    folder: str | Path, table: str | Path, graph: CausalGraph, image_shape: tuple[int, int, int]
) -> tuple[Tensor, dict[str, Tensor], list[str]]:
    """Read the images listed in a CSV, with their attributes, for a trained model.

    The CSV has a ``file`` column (paths relative to ``folder``) and one column per variable of
    ``graph``, in natural units (categorical variables as class ids).

    Returns:
        Images ``(N, C, H, W)`` in [0, 1], attributes ``{name: (N,)}`` and the file names.

    Raises:
        ValueError: a missing column, an unreadable image, or an image of the wrong size; the
            message names the row or the file.
    """
    folder, table = Path(folder), Path(table)
    rows = _read_table(table, graph.names)
    _check_files(rows, folder, table, unique=False)
    values = _parse_attributes(rows, _kinds(graph), table)
    _check_support(values, graph, table)
    images = _read_images(folder, rows, table, image_shape, progress=False)
    pa = {name: torch.from_numpy(column) for name, column in values.items()}
    x = torch.from_numpy(images).float().div_(255.0)
    return x, pa, [row["file"] for row in rows]


def _share(num: int, sizes: list[int]) -> list[int]:
    """``num`` samples spread over splits of ``sizes`` in proportion, summing to ``num`` exactly
    (largest remainders first)."""
    total = sum(sizes)
    exact = [num * size / total for size in sizes]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: num - sum(counts)]:
        counts[i] += 1
    return [min(c, size) for c, size in zip(counts, sizes)]


def write_image_folder(
    datamodule,
    out: str | Path,
    num: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a datamodule's samples as a folder :class:`FolderDataModule` reads.

    Writes ``images/<split>-<index>.png``, ``attributes.csv`` (with the split) and ``graph.yaml``
    (the datamodule's graph). A ready example of the format, and a way to move any cfzoo dataset
    to other tools.

    Args:
        num: write only this many samples, spread over the splits in proportion (all: ``None``).
        overwrite: replace an earlier export's ``attributes.csv``, ``graph.yaml`` and images;
            without it a folder that holds any of them is refused before anything is written.
    """
    out = Path(out)
    if num is not None and num < 1:
        raise ValueError(f"num must be at least 1 (samples to write), got {num}")
    taken = [out / name for name in ("attributes.csv", "graph.yaml") if (out / name).exists()]
    if (out / "images").is_dir() and any((out / "images").iterdir()):
        taken.append(out / "images")
    if taken and not overwrite:
        raise FileExistsError(
            f"{out} already holds {', '.join(str(t) for t in taken)}: choose an empty folder, "
            "or pass --overwrite (overwrite=True) to replace them"
        )
    (out / "images").mkdir(parents=True, exist_ok=True)
    datamodule.prepare_data()
    datamodule.setup()
    splits = {"train": datamodule.train_set, "val": datamodule.val_set, "test": datamodule.test_set}
    sizes = [len(s) for s in splits.values()]
    counts = sizes if num is None else _share(num, sizes)
    names = datamodule.graph.names
    rows = []
    for (split, dataset), count in zip(splits.items(), counts):
        if count == 0:
            continue
        positions = evenly_spaced(len(dataset), count).tolist()
        batch = dataset.batch(positions)
        for n in tqdm(range(len(positions)), desc=f"writing {split}", disable=not progress):
            index = int(batch["index"][n])
            file = f"images/{split}-{index:06d}.png"
            array = (batch["x"][n] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            Image.fromarray(array.squeeze(-1) if array.shape[2] == 1 else array).save(out / file)
            rows.append(
                {"file": file, "split": split, **{k: batch["pa"][k][n].item() for k in names}}
            )
    with (out / "attributes.csv").open("w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=["file", "split", *names])
        writer.writeheader()
        writer.writerows(rows)
    graph = {
        "variables": {
            v.name: {
                "kind": v.kind,
                **({"parents": list(v.parents)} if v.parents else {}),
                **(
                    {"support": [float(b) for b in v.support]}
                    if v.is_continuous
                    else {"num_classes": v.num_classes}
                ),
            }
            for v in datamodule.graph.variables
        },
        "image_parents": list(datamodule.graph.image_parents),
    }
    (out / "graph.yaml").write_text(
        f"# The causal graph of {datamodule.name}, exported by cfzoo\n"
        + yaml.safe_dump(graph, sort_keys=False, default_flow_style=None)
    )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from datamodules import DATAMODULES

    parser = argparse.ArgumentParser(
        prog="python -m datamodules",
        description="Write a cfzoo dataset as a bring-your-own folder (images, attributes.csv, "
        "graph.yaml): an example of the format, ready for `python train.py data=folder "
        "data.root=OUT`.",
    )
    parser.add_argument("out", help="the folder to write")
    generated = sorted(k for k in DATAMODULES if k != FolderDataModule.name)
    parser.add_argument("--dataset", default="morphomnist", choices=generated)
    parser.add_argument("--num", type=int, default=600, help="samples to write (default 600)")
    parser.add_argument("--data-dir", default="data", help="the dataset's cache (default data)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT")
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error(f"--num must be at least 1, got {args.num}")
    datamodule = DATAMODULES[args.dataset](data_dir=args.data_dir)
    try:
        out = write_image_folder(datamodule, args.out, num=args.num, overwrite=args.overwrite)
    except FileExistsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    count = len((out / "attributes.csv").read_text().splitlines()) - 1
    print(f"wrote {count} {args.dataset} samples to {out} (graph.yaml, attributes.csv, images/)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
