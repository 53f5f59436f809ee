"""CelebA faces with a causal graph of their binary attributes (no ground-truth counterfactuals).

The images are torchvision's aligned CelebA faces (Liu et al., ICCV 2015), cropped and resized the
standard way (a centred 148 x 148 square of the 178 x 218 image, then ``image_size`` pixels). The
attributes are CelebA's annotations (-1/1 in the files, class ids 0/1 here) and the splits are the
official partition. Two causal graphs follow the CelebA benchmark of Melistas et al. (2024)::

    simple:   Smiling -> image <- Eyeglasses
    complex:  Young -> No_Beard <- Male,  Young -> Bald <- Male,  all four -> image

The files must already sit in ``<data_dir>/celeba/`` in torchvision's layout::

    <data_dir>/celeba/img_align_celeba/000001.jpg ...
    <data_dir>/celeba/list_attr_celeba.txt
    <data_dir>/celeba/list_eval_partition.txt

(``download=True`` lets torchvision fetch them when they are missing). They are parsed here rather
than through ``torchvision.datasets.CelebA``, which insists on the original files' MD5 sums.
Decoding ~200,000 JPEGs takes minutes, so the decoded arrays are cached beside the files; the cache
holds every attribute column, so both graphs share one decode.

Example:
    >>> dm = CelebADataModule(data_dir="data", graph="complex", limit=5000)
    >>> dm.prepare_data()
    >>> dm.setup()
    >>> batch = next(iter(dm.train_dataloader()))  # x: (64, 3, 64, 64), pa: Young, Male, ...
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from datamodules.base import (
    CATEGORICAL,
    TEST,
    TRAIN,
    VAL,
    CachedArrayDataModule,
    CausalGraph,
    Variable,
)
from datamodules.workers import die_with_parent

__all__ = [
    "GRAPHS",
    "CelebADataModule",
    "crop_box",
    "load_face",
    "read_attributes",
    "read_partition",
]

log = logging.getLogger(__name__)

#: Bump when the decoded arrays change (crop, filter, layout), so old caches are rebuilt.
DECODER_VERSION = 1
#: Side of the centred square cut from each aligned face before resizing (the usual CelebA crop).
CROP_SIZE = 148
#: Images decoded per task of the worker pool: big enough to amortise the task overhead, small
#: enough to keep the progress bar moving.
CHUNK_SIZE = 64

IMAGE_FOLDER = "img_align_celeba"
ATTRIBUTE_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
SPLIT_NAMES = {TRAIN: "train", VAL: "validation", TEST: "test"}


def _binary(name: str, parents: tuple[str, ...] = ()) -> Variable:
    return Variable(name, CATEGORICAL, parents=parents, num_classes=2)


#: Graph name -> causal graph; variable names are CelebA's attribute columns.
GRAPHS = {
    "simple": CausalGraph(
        variables=(_binary("Smiling"), _binary("Eyeglasses")),
        image_parents=("Smiling", "Eyeglasses"),
    ),
    "complex": CausalGraph(
        variables=(
            _binary("Young"),
            _binary("Male"),
            _binary("No_Beard", parents=("Young", "Male")),
            _binary("Bald", parents=("Young", "Male")),
        ),
        image_parents=("Young", "Male", "No_Beard", "Bald"),
    ),
}


# ------------------------------------------------------------------------------------------------
# The annotation files


def _header(path: Path) -> tuple[int, list[str]]:
    """The image count (line 1) and attribute names (line 2) of ``list_attr_celeba.txt``."""
    with path.open() as stream:
        first, second = stream.readline(), stream.readline()
    try:
        count = int(first)
    except ValueError:
        raise ValueError(
            f"{path} is not in CelebA's list_attr_celeba.txt format: line 1 should be the number "
            f"of images, got {first.strip()[:60]!r}"
        ) from None
    names = second.split()
    if not names:
        raise ValueError(f"{path}: line 2 should list the attribute names, but it is empty")
    return count, names


def _check_columns(path: Path, names: Sequence[str], required: Sequence[str]) -> None:
    missing = [name for name in required if name not in names]
    if missing:
        raise ValueError(
            f"{path} has no column {', '.join(repr(m) for m in missing)}, which the graph needs; "
            f"its columns are: {' '.join(names)}"
        )


def read_attributes(path: str | Path) -> tuple[list[str], dict[str, np.ndarray]]:
    """Parse ``list_attr_celeba.txt``.

    Returns:
        The image file names in file order, and attribute name -> ``(N,)`` int64 class ids
        (1 where the file says 1, 0 where it says -1).

    Raises:
        ValueError: a malformed header or row, a value other than -1/1, or a row count that
            disagrees with line 1; the message names the file and the line.
    """
    path = Path(path)
    count, names = _header(path)
    codes = {"1": 1, "-1": 0}
    files: list[str] = []
    rows: list[list[int]] = []
    with path.open() as stream:
        for number, line in enumerate(stream, start=1):
            if number <= 2 or not line.strip():
                continue
            tokens = line.split()
            if len(tokens) != len(names) + 1:
                raise ValueError(
                    f"{path} line {number}: expected a file name and {len(names)} attribute "
                    f"values, got {len(tokens)} fields"
                )
            try:
                rows.append([codes[token] for token in tokens[1:]])
            except KeyError:
                bad = next(i for i, token in enumerate(tokens[1:]) if token not in codes)
                raise ValueError(
                    f"{path} line {number}: column '{names[bad]}' holds {tokens[bad + 1]!r}; "
                    "CelebA attributes are -1 or 1"
                ) from None
            files.append(tokens[0])
    if len(files) != count:
        raise ValueError(
            f"{path} lists {len(files)} images but its line 1 says {count}: the file is truncated "
            "or edited; download it again"
        )
    values = np.asarray(rows, dtype=np.int64).reshape(len(files), len(names))
    return files, {name: np.ascontiguousarray(values[:, i]) for i, name in enumerate(names)}


def _check_file_names(path: Path, files: list[str]) -> None:
    """CelebA lists bare file names (``000001.jpg``): a path, absolute or with ``..``, would read
    a file outside the image folder."""
    for row, name in enumerate(files, start=1):
        if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
            raise ValueError(
                f"{path}: image {row} is listed as {name!r}, not a file name inside "
                f"{IMAGE_FOLDER}/ (CelebA lists bare names such as 000001.jpg)"
            )


def read_partition(path: str | Path) -> dict[str, int]:
    """Parse ``list_eval_partition.txt``: image file name -> 0 (train), 1 (val) or 2 (test)."""
    path = Path(path)
    partition: dict[str, int] = {}
    with path.open() as stream:
        for number, line in enumerate(stream, start=1):
            tokens = line.split()
            if not tokens:
                continue
            if len(tokens) != 2 or tokens[1] not in ("0", "1", "2"):
                raise ValueError(
                    f"{path} line {number}: expected '<file name> <0|1|2>' (train, val, test), "
                    f"got {line.strip()[:80]!r}"
                )
            partition[tokens[0]] = int(tokens[1])
    return partition


# ------------------------------------------------------------------------------------------------
# The images


def crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The centred square ``(left, top, right, bottom)`` cut from a face before resizing.

    148 x 148 for CelebA's 178 x 218 aligned faces (left 15, top 35); a smaller image gives its
    largest centred square.
    """
    side = min(CROP_SIZE, width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def load_face(path: str | Path, image_size: int) -> np.ndarray:
    """One face as ``(3, image_size, image_size)`` uint8: centre crop, then a Lanczos resize.

    Raises:
        FileNotFoundError: the image is missing.
        ValueError: the image can't be decoded (corrupt or truncated); the message names it.
    """
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")  # decodes the whole file: truncation shows here
    except FileNotFoundError:
        raise FileNotFoundError(
            f"CelebA image {path} is missing: {ATTRIBUTE_FILE} lists it. Unzip "
            f"img_align_celeba.zip so that the images sit directly in {Path(path).parent}"
        ) from None
    except (OSError, ValueError, SyntaxError) as error:  # PIL's decoders raise all three
        raise ValueError(
            f"cannot read CelebA image {path}: {error}. The file is corrupt or truncated; "
            "replace it from img_align_celeba.zip"
        ) from None
    face = rgb.crop(crop_box(*rgb.size))
    # Lanczos averages over the whole footprint when shrinking: no aliasing of hair and edges.
    face = face.resize((image_size, image_size), Image.Resampling.LANCZOS)
    return np.asarray(face, dtype=np.uint8).transpose(2, 0, 1)


def _load_faces(paths: Sequence[str], image_size: int) -> np.ndarray:
    return np.stack([load_face(path, image_size) for path in paths])


def load_faces(
    paths: Sequence[str | Path], image_size: int, workers: int | None = None
) -> np.ndarray:
    """Decode faces into ``(N, 3, image_size, image_size)`` uint8, in worker processes.

    Args:
        paths: the image files, in the order of the result.
        image_size: side of the square output images.
        workers: worker processes; default one per core (a single chunk decodes in-process).
    """
    paths = [str(p) for p in paths]
    images = np.empty((len(paths), 3, image_size, image_size), dtype=np.uint8)
    chunks = [paths[i : i + CHUNK_SIZE] for i in range(0, len(paths), CHUNK_SIZE)]
    workers = max(1, min(workers or os.cpu_count() or 1, len(chunks)))
    decode = functools.partial(_load_faces, image_size=image_size)
    bar = tqdm(total=len(paths), desc="decoding CelebA", unit="img", leave=False)
    # Chunks are written into one preallocated array as they arrive (map keeps their order): all of
    # CelebA is 2.5 GB at 64 px, and concatenating a list of chunks would need twice that.
    position = 0
    if workers == 1:
        results = map(decode, chunks)
        pool = None
    else:
        # fork is cheap, and the workers only run PIL and numpy (never torch). A worker's error
        # (a corrupt image) comes back as the exception; cancelling the rest leaves no worker.
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        pool = ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context(method),
            initializer=die_with_parent,
            initargs=(os.getpid(),),
        )
        results = pool.map(decode, chunks)
    try:
        for chunk in results:
            images[position : position + len(chunk)] = chunk
            position += len(chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return images


# ------------------------------------------------------------------------------------------------
# The datamodule


class CelebADataModule(CachedArrayDataModule):
    """CelebA faces with the simple or complex causal graph of Melistas et al. (2024).

    Args:
        data_dir: the folder holding ``celeba/`` in torchvision's layout; the cache goes there too.
        graph: ``"simple"`` (Smiling, Eyeglasses -> image) or ``"complex"`` (Young, Male ->
            No_Beard, Bald; all four -> image).
        image_size: side of the square images (the 148 px centre crop is resized to it).
        download: let torchvision download CelebA when its files are missing.
        seed: picks the ``limit`` subset.
        limit: use only this many images (a seeded random subset that keeps the official
            splits); for tests and smoke runs.
        batch_size: batch size of all loaders.
        num_workers: DataLoader worker processes.
        workers: processes decoding the JPEGs when the cache is built; default: one per core.
        pin_memory: pin loader memory (GPU training).
    """

    name = "celeba"

    def __init__(
        self,
        data_dir: str = "data",
        graph: str = "simple",
        image_size: int = 64,
        download: bool = False,
        seed: int = 0,
        limit: int | None = None,
        batch_size: int = 64,
        num_workers: int = 0,
        workers: int | None = None,
        pin_memory: bool = False,
    ):
        super().__init__(
            data_dir=data_dir,
            seed=seed,
            batch_size=batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
        )
        if graph not in GRAPHS:
            raise ValueError(f"unknown CelebA graph '{graph}'; choose one of: {', '.join(GRAPHS)}")
        if int(image_size) != image_size or image_size < 8:
            raise ValueError(f"image_size must be a whole number of pixels >= 8, got {image_size}")
        if limit is not None and limit < 1:
            raise ValueError(
                f"limit must be a positive number of images (or null for all), got {limit}"
            )
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be >= 1 (or null for one per core), got {workers}")
        self.graph_name = graph
        self.graph = GRAPHS[graph]
        self.image_size = int(image_size)
        self.image_shape = (3, self.image_size, self.image_size)
        self.download = download
        self.limit = limit
        self.workers = workers

    # -- the files ------------------------------------------------------------------------------
    @property
    def folder(self) -> Path:
        """``<data_dir>/celeba``: torchvision's CelebA folder."""
        return self.data_dir / "celeba"

    @property
    def attribute_file(self) -> Path:
        return self.folder / ATTRIBUTE_FILE

    @property
    def partition_file(self) -> Path:
        return self.folder / PARTITION_FILE

    @property
    def image_folder(self) -> Path:
        return self.folder / IMAGE_FOLDER

    def _missing(self, images: bool) -> list[Path]:
        required = (self.attribute_file, self.partition_file) + (
            (self.image_folder,) if images else ()
        )
        return [path for path in required if not path.exists()]

    def ensure_files(self, images: bool = True) -> None:
        """Check CelebA's files are present; download them first if allowed.

        Args:
            images: require the image folder too (a valid cache needs only the annotations).

        Raises:
            FileNotFoundError: files are missing (and downloading is off or failed); the message
                names the paths expected and how to get them.
        """
        if not self._missing(images):
            return
        if self.download:
            from torchvision.datasets import CelebA

            log.info("Downloading CelebA into %s", self.folder)
            try:
                CelebA(str(self.data_dir), split="all", target_type="attr", download=True)
            except Exception as error:  # no gdown: RuntimeError; offline: URLError; quota: ...
                if self._missing(images):
                    raise FileNotFoundError(
                        f"{self._missing_files_message()} Downloading them with torchvision "
                        f"failed: {str(error).rstrip('.')}. torchvision's download needs the "
                        "gdown package and a network, and Google Drive often refuses it (daily "
                        "quota): then download the files by hand as above."
                    ) from error
            if not self._missing(images):
                return
        raise FileNotFoundError(
            f"{self._missing_files_message()} Or run once with data.download=true on a machine "
            "with a network (torchvision fetches them from Google Drive; it needs pip install gdown)."
        )

    def _missing_files_message(self) -> str:
        # Names every missing file, even the images a cache check alone wouldn't need: the user
        # fetches them all at once.
        everything = (self.image_folder, self.attribute_file, self.partition_file)
        missing = [str(path) for path in everything if not path.exists()]
        return (
            f"CelebA is missing {', '.join(missing)}. The datamodule reads torchvision's layout: "
            f"the JPEGs in {self.image_folder}/ (000001.jpg ...), {self.attribute_file} and "
            f"{self.partition_file}. Download img_align_celeba.zip (unzip it there so the JPEGs "
            "sit directly in img_align_celeba/), list_attr_celeba.txt and list_eval_partition.txt "
            "from the CelebA site (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html, its Google "
            f"Drive folders 'Img', 'Anno' and 'Eval') into {self.folder}."
        )

    # -- the cache ------------------------------------------------------------------------------
    @property
    def cache_prefix(self) -> str:
        return f"{self.name}-{self.image_size}px" + (f"-limit{self.limit}" if self.limit else "")

    # the official partition: the seed only picks a limit's subset; the source is the files' stats
    split_keys = ("dataset", "limit", "image_size", "seed")

    @property
    def spec(self) -> dict[str, Any]:
        """Everything that shapes the arrays: the cache key.

        The graph is not part of it: the arrays hold every attribute column, so both graphs share
        one decode. The annotation files' size and modification time identify the source, so
        another CelebA folder (or an edited one) never hits a stale cache.
        """
        self.ensure_files(images=False)
        count, names = _header(self.attribute_file)
        # Checked here, before the cache or a long decode: a stale cache can't hide a missing column.
        _check_columns(self.attribute_file, names, self.graph.names)
        source = {}
        for path in (self.attribute_file, self.partition_file):
            stat = path.stat()
            source[path.name] = [stat.st_size, stat.st_mtime_ns]
        return {
            "dataset": self.name,
            "image_size": self.image_size,
            "crop": CROP_SIZE,
            "limit": self.limit,
            # the seed only picks the limit subset: without one, every seed shares the cache
            "seed": self.seed if self.limit is not None else None,
            "version": DECODER_VERSION,
            "images": count,
            "attributes": names,
            "source": source,
        }

    def build(self) -> dict[str, np.ndarray]:
        """Parse the annotations, pick the images and decode them.

        Returns:
            ``images`` (N, 3, S, S) uint8; one (N,) int64 array of class ids per attribute column
            of the file (every column, so both graphs share the cache); ``split`` int8 from the
            official partition; ``source_row`` int64, each image's row in the attribute file.
        """
        self.ensure_files()
        files, attributes = read_attributes(self.attribute_file)
        _check_file_names(self.attribute_file, files)
        _check_columns(self.attribute_file, list(attributes), self.graph.names)
        partition = read_partition(self.partition_file)
        unlisted = [f for f in files if f not in partition]
        if unlisted:
            raise ValueError(
                f"{self.partition_file} has no split for {len(unlisted)} image(s) of "
                f"{self.attribute_file}, e.g. {unlisted[0]}: the two files come from different "
                "versions of CelebA; download both again"
            )
        rows = np.arange(len(files))
        if self.limit is not None and self.limit < len(files):
            rng = np.random.default_rng(self.seed)
            rows = np.sort(rng.choice(len(files), size=self.limit, replace=False))
        split = np.array([partition[files[r]] for r in rows], dtype=np.int8)
        empty = [SPLIT_NAMES[code] for code in (TRAIN, VAL, TEST) if not (split == code).any()]
        if empty:
            raise ValueError(
                f"the {len(rows)} CelebA images selected (limit={self.limit}) include no "
                f"{' or '.join(empty)} image: raise data.limit, or check {self.partition_file}"
            )
        log.info(
            "Decoding %d CelebA images at %d x %d px (once; cached in %s)",
            len(rows),
            self.image_size,
            self.image_size,
            self.data_dir / self.name,
        )
        images = load_faces(
            [self.image_folder / files[r] for r in rows], self.image_size, self.workers
        )
        arrays = {name: values[rows] for name, values in attributes.items()}
        arrays.update(images=images, split=split, source_row=rows.astype(np.int64))
        return arrays
