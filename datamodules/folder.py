"""Images from a folder of PNGs with their attributes in a CSV."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from datamodules.base import CausalGraph


def load_image_folder(
    folder: str | Path, table: str | Path, graph: CausalGraph, image_shape: tuple[int, int, int]
) -> tuple[Tensor, dict[str, Tensor], list[str]]:
    """Read the images listed in a CSV, with their attributes.

    The CSV has a ``file`` column (paths relative to ``folder``) and one column per variable of
    ``graph``, in natural units (categorical variables as class ids).

    Returns:
        Images ``(N, C, H, W)`` in [0, 1], attributes ``{name: (N,)}`` and the file names.

    Raises:
        ValueError: a missing column, an unreadable image, or an image of the wrong size; the
            message names the row or the file.
    """
    folder, table = Path(folder), Path(table)
    if not table.is_file():
        raise FileNotFoundError(f"attribute table {table} does not exist")
    with table.open(newline="") as stream:
        reader = csv.DictReader(stream)
        columns = reader.fieldnames or []
        missing = [c for c in ("file", *graph.names) if c not in columns]
        if missing:
            raise ValueError(f"{table} lacks column(s) {missing}; it has {columns}")
        rows = list(reader)
    if not rows:
        raise ValueError(f"{table} lists no images")
    channels, height, width = image_shape
    mode = "L" if channels == 1 else "RGB"
    images, values = [], {name: [] for name in graph.names}
    for line, row in enumerate(rows, start=2):
        path = folder / row["file"]
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
        except (OSError, UnidentifiedImageError) as error:
            raise ValueError(f"{table} row {line}: cannot read image {path}: {error}") from error
        if array.shape[:2] != (height, width):
            raise ValueError(
                f"{table} row {line}: image {path} is {array.shape[1]}x{array.shape[0]} pixels; "
                f"the model needs {width}x{height}"
            )
        images.append(array.reshape(height, width, channels).transpose(2, 0, 1))
        for variable in graph.variables:
            text = row[variable.name]
            try:
                values[variable.name].append(float(text) if variable.is_continuous else int(text))
            except ValueError as error:
                raise ValueError(
                    f"{table} row {line}: column '{variable.name}' holds '{text}', not a number"
                ) from error
    pa = {}
    for variable in graph.variables:
        dtype = torch.float32 if variable.is_continuous else torch.long
        pa[variable.name] = variable.check(
            torch.tensor(values[variable.name], dtype=dtype), what=f"{table} column"
        )
    return torch.from_numpy(np.stack(images)), pa, [row["file"] for row in rows]
