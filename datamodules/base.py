"""The datamodule contract: a causal graph of image attributes, batches in natural units, and an
optional ground-truth counterfactual oracle.

A :class:`CounterfactualDataModule` declares its attributes as :class:`Variable` s in topological
order inside a :class:`CausalGraph`. The declaration is plain data (``to_dict`` / ``from_dict``), so
a model stores it in its hyperparameters and a checkpoint carries it without pickled code.

Batches are dicts::

    {"x": images (B, C, H, W) float32 in [0, 1],
     "pa": {name: (B,) tensor in natural units},   # float32, or int64 class ids
     "index": (B,) int64 sample ids}

Example:
    >>> graph = CausalGraph(
    ...     variables=(
    ...         Variable("thickness", CONTINUOUS, support=(0.5, 10.0)),
    ...         Variable("intensity", CONTINUOUS, parents=("thickness",), support=(64.0, 255.0)),
    ...     ),
    ...     image_parents=("thickness", "intensity"),
    ... )
    >>> graph.descendants("thickness")
    ('intensity',)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

__all__ = [
    "CATEGORICAL",
    "CONTINUOUS",
    "CausalGraph",
    "CachedArrayDataModule",
    "CounterfactualDataModule",
    "ImageAttributeDataset",
    "Intervention",
    "Variable",
]

CONTINUOUS = "continuous"
CATEGORICAL = "categorical"

#: What ``do`` may map a variable to: a value per sample, a scalar, or a function of the factual
#: value (a soft intervention such as ``lambda t: t + 1``), in the variable's natural units.
Intervention = Tensor | float | int | Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Variable:
    """One attribute of the image: its kind, its causal parents, its support and normalisation.

    Attributes:
        name: the attribute's name, a key of ``batch["pa"]``.
        kind: ``"continuous"`` or ``"categorical"``.
        parents: names of the attributes that cause this one (declared before it).
        support: closed interval of allowed values (continuous), in natural units.
        num_classes: number of classes (categorical); the classes are ``0 .. num_classes - 1``.
        loc: models feed ``(value - loc) / scale`` to their networks (continuous).
        scale: see ``loc``.
    """

    name: str
    kind: str
    parents: tuple[str, ...] = ()
    support: tuple[float, float] | None = None
    num_classes: int | None = None
    loc: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "parents", tuple(self.parents))
        if self.kind == CONTINUOUS:
            if self.support is None or len(self.support) != 2:
                raise ValueError(f"continuous variable '{self.name}' needs a support (low, high)")
            low, high = (float(v) for v in self.support)
            if not low < high:
                raise ValueError(f"variable '{self.name}': support low {low} >= high {high}")
            object.__setattr__(self, "support", (low, high))
            if not self.scale > 0:
                raise ValueError(f"variable '{self.name}': normalisation scale must be > 0")
        elif self.kind == CATEGORICAL:
            if self.num_classes is None or self.num_classes < 2:
                raise ValueError(f"categorical variable '{self.name}' needs num_classes >= 2")
            object.__setattr__(self, "support", (0, int(self.num_classes) - 1))
        else:
            raise ValueError(
                f"variable '{self.name}': kind must be '{CONTINUOUS}' or '{CATEGORICAL}', "
                f"got '{self.kind}'"
            )

    @property
    def is_continuous(self) -> bool:
        return self.kind == CONTINUOUS

    def describe_support(self) -> str:
        if self.is_continuous:
            return f"[{self.support[0]:g}, {self.support[1]:g}]"
        return f"the integer classes 0..{self.num_classes - 1}"

    def normalise(self, value: Tensor) -> Tensor:
        """Natural units to the scale networks see (identity for categorical variables)."""
        return (value - self.loc) / self.scale if self.is_continuous else value

    def denormalise(self, value: Tensor) -> Tensor:
        """Inverse of :meth:`normalise`."""
        return value * self.scale + self.loc if self.is_continuous else value

    def check(self, value: Tensor, what: str = "value") -> Tensor:
        """Return ``value`` with this variable's dtype, or raise ``ValueError`` if out of support."""
        value = torch.as_tensor(value)
        if self.is_continuous:
            value = value.float() if not value.is_floating_point() else value
            low, high = self.support
            bad = ~((value >= low) & (value <= high))  # NaN is bad too
        else:
            if value.is_floating_point() and not torch.all(value == value.round()):
                raise ValueError(
                    f"{what} for '{self.name}' must be class ids (integers), got {_sample(value)}"
                )
            value = value.long()
            bad = (value < 0) | (value >= self.num_classes)
        if bad.any():
            raise ValueError(
                f"{what} for '{self.name}' is outside its support {self.describe_support()}: "
                f"got {_sample(value[bad])}"
            )
        return value

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["parents"] = list(self.parents)
        out["support"] = list(self.support) if self.support is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Variable:
        data = dict(data)
        if data.get("support") is not None:
            data["support"] = tuple(data["support"])
        return cls(**data)


def _sample(values: Tensor, limit: int = 5) -> str:
    flat = values.flatten().tolist()
    shown = ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in flat[:limit])
    return f"[{shown}{', ...' if len(flat) > limit else ''}]"


@dataclass(frozen=True)
class CausalGraph:
    """Attributes in topological order, and which of them cause the image.

    Args:
        variables: the attributes; each one's parents must be declared before it.
        image_parents: the attributes the image mechanism is conditioned on.
    """

    variables: tuple[Variable, ...]
    image_parents: tuple[str, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "variables", tuple(self.variables))
        object.__setattr__(self, "image_parents", tuple(self.image_parents))
        index: dict[str, int] = {}
        for position, variable in enumerate(self.variables):
            if variable.name in index:
                raise ValueError(f"variable '{variable.name}' is declared twice")
            for parent in variable.parents:
                if parent == variable.name or parent not in index:
                    raise ValueError(
                        f"variable '{variable.name}' has parent '{parent}' that is not declared "
                        "before it: list variables in topological order (the graph must be acyclic)"
                    )
            index[variable.name] = position
        for name in self.image_parents:
            if name not in index:
                raise ValueError(f"image parent '{name}' is not a declared variable")
        object.__setattr__(self, "_index", index)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(v.name for v in self.variables)

    def __getitem__(self, name: str) -> Variable:
        if name not in self._index:
            raise ValueError(f"unknown variable '{name}'; the graph has {', '.join(self.names)}")
        return self.variables[self._index[name]]

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def children(self, name: str) -> tuple[str, ...]:
        return tuple(v.name for v in self.variables if name in v.parents)

    def descendants(self, name: str) -> tuple[str, ...]:
        """Strict descendants of ``name``, in topological order."""
        found = {self[name].name}
        for variable in self.variables[self._index[name] + 1 :]:
            if found.intersection(variable.parents):
                found.add(variable.name)
        found.discard(name)
        return tuple(n for n in self.names if n in found)

    def with_normalisation(self, stats: Mapping[str, tuple[float, float]]) -> CausalGraph:
        """A copy whose continuous variables have ``(loc, scale)`` from ``stats``."""
        variables = tuple(
            replace(v, loc=float(stats[v.name][0]), scale=float(stats[v.name][1]))
            if v.name in stats
            else v
            for v in self.variables
        )
        return CausalGraph(variables, self.image_parents)

    def resolve(
        self, pa: Mapping[str, Tensor], do: Mapping[str, Intervention]
    ) -> dict[str, Tensor]:
        """Turn an intervention mapping into one checked tensor per intervened variable.

        Args:
            pa: the factual attributes, ``(B,)`` tensors in natural units (callables get these).
            do: variable name -> tensor ``(B,)``, scalar, or callable of the factual value.

        Raises:
            ValueError: an unknown name, a wrong shape, or a value outside the support; the message
                names the variable and its support.
        """
        if not isinstance(do, Mapping):
            raise ValueError(
                f"do must map variable names to values, e.g. {{'{self.names[0]}': value}}; got "
                f"{type(do).__name__} {do!r:.80}"
            )
        batch = _batch_size(pa)
        resolved: dict[str, Tensor] = {}
        for name, value in do.items():
            if name not in self._index:
                raise ValueError(
                    f"do() names unknown variable '{name}'; intervene on one of: "
                    f"{', '.join(self.names)}"
                )
            variable = self[name]
            if callable(value):
                if name not in pa:
                    raise ValueError(f"soft intervention on '{name}' needs its factual value in pa")
                # a copy: an in-place function must not change the caller's attributes
                value = value(pa[name].clone())
            try:
                value = torch.as_tensor(value)
            except (TypeError, ValueError, RuntimeError) as error:
                raise ValueError(
                    f"do({name}=...) must be a number, a tensor or a function of the factual "
                    f"value; got {type(value).__name__} {value!r:.80}"
                ) from error
            if value.dim() == 0:
                value = value.expand(batch)
            elif tuple(value.shape) != (batch,):
                raise ValueError(
                    f"do({name}=...) must be a scalar or have shape ({batch},) like the batch, "
                    f"got shape {tuple(value.shape)}"
                )
            reference = next(iter(pa.values()), None)
            if reference is not None:
                value = value.to(reference.device)
            resolved[name] = variable.check(value, what=f"do({name}=...)")
        return resolved

    def to_dict(self) -> dict[str, Any]:
        return {
            "variables": [v.to_dict() for v in self.variables],
            "image_parents": list(self.image_parents),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CausalGraph:
        return cls(
            variables=tuple(Variable.from_dict(v) for v in data["variables"]),
            image_parents=tuple(data["image_parents"]),
        )


def _batch_size(pa: Mapping[str, Tensor]) -> int:
    sizes = {int(torch.as_tensor(v).shape[0]) for v in pa.values() if torch.as_tensor(v).dim() > 0}
    if len(sizes) != 1:
        raise ValueError(f"the attributes in pa must share one batch size, got sizes {sizes}")
    return sizes.pop()


def evenly_spaced(length: int, n: int) -> Tensor:
    """``min(n, length)`` positions evenly spaced over ``0 .. length - 1``, both ends included.

    Evenly spaced, not the first ``n``: a split stored in class order (the embedded Morpho-MNIST
    is sorted by digit) would otherwise give a subset of one class.
    """
    return torch.linspace(0, length - 1, min(n, length)).round().long()


class ImageAttributeDataset(Dataset):
    """Images (uint8) and attributes held in memory, served as contract batches.

    Args:
        images: ``(N, C, H, W)`` uint8 array of the whole dataset.
        attributes: name -> ``(N,)`` array of the whole dataset, in natural units.
        indices: the sample ids of this split (rows of the arrays above).
    """

    def __init__(
        self, images: np.ndarray, attributes: Mapping[str, np.ndarray], indices: np.ndarray
    ):
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.attributes = {k: torch.from_numpy(np.asarray(v)) for k, v in attributes.items()}
        self.indices = torch.as_tensor(indices, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> dict[str, Any]:
        return self.__getitems__([item])[0]

    def evenly_spaced(self, n: int) -> ImageAttributeDataset:
        """``n`` samples evenly spaced over the split (:func:`evenly_spaced`), sharing its arrays
        (a cheaper evaluation)."""
        subset = copy.copy(self)
        subset.indices = self.indices[evenly_spaced(len(self.indices), n)]
        return subset

    def batch(self, positions: Iterable[int]) -> dict[str, Any]:
        """One collated batch of the samples at ``positions`` of this split."""
        return default_collate(self.__getitems__(list(positions)))

    def __getitems__(self, items: list[int]) -> list[dict[str, Any]]:
        # Batched fetch (the DataLoader calls this with a whole batch), then split for collate.
        ids = self.indices[torch.as_tensor(items, dtype=torch.long)]
        x = self.images[ids].float().div_(255.0)
        pa = {k: v[ids] for k, v in self.attributes.items()}
        return [
            {"x": x[n], "pa": {k: v[n] for k, v in pa.items()}, "index": ids[n]}
            for n in range(len(ids))
        ]


class CounterfactualDataModule(pl.LightningDataModule):
    """Base of every cfzoo datamodule.

    Subclasses set ``self.graph`` (a :class:`CausalGraph` with normalisation), ``image_shape`` and
    the split datasets in :meth:`setup`, and, when their data are synthetic, implement
    :meth:`true_counterfactual`.
    """

    name: str = "dataset"
    image_shape: tuple[int, int, int]
    graph: CausalGraph

    def __init__(self, batch_size: int = 64, num_workers: int = 0, pin_memory: bool = False):
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # -- ground truth ---------------------------------------------------------------------------
    @property
    def has_ground_truth(self) -> bool:
        return type(self).true_counterfactual is not CounterfactualDataModule.true_counterfactual

    def true_counterfactual(
        self, index: Tensor, do: Mapping[str, Intervention]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The exact counterfactual images and attributes of samples ``index`` under ``do``."""
        raise NotImplementedError(
            f"{type(self).__name__} has no ground-truth counterfactuals (its data are not synthetic)"
        )

    @property
    def has_measurement(self) -> bool:
        """Whether :meth:`measure_attributes` measures anything (a model-free judge)."""
        return type(self).measure_attributes is not CounterfactualDataModule.measure_attributes

    def fits(self, model) -> bool:
        """Whether ``model`` models these data's attributes on images of their shape."""
        return (model.graph.names, tuple(model.image_shape)) == (
            self.graph.names,
            tuple(self.image_shape),
        )

    #: Variables whose interventions :meth:`true_counterfactual` can render (synthetic data).
    ground_truth_variables: tuple[str, ...] = ()

    def attributes(self, index: Tensor) -> dict[str, Tensor]:
        """The factual attributes of samples ``index`` (natural units)."""
        raise NotImplementedError

    def render(self, index: Tensor, attributes: Mapping[str, Tensor]) -> Tensor:
        """The true image mechanism: samples ``index`` re-rendered at ``attributes`` (synthetic data)."""
        raise NotImplementedError(f"{type(self).__name__} has no true image mechanism")

    def measure_attributes(self, images: Tensor) -> dict[str, Tensor]:
        """A model-free measurement of some attributes of images, if the dataset has one."""
        return {}

    def train_attributes(self) -> dict[str, Tensor]:
        """Every attribute of the training split, ``(N,)`` tensors in natural units (what a
        model's attribute SCM is fitted on)."""
        train = self.train_set
        if isinstance(train, ImageAttributeDataset):
            return {name: train.attributes[name][train.indices] for name in self.graph.names}
        if train is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before train_attributes")
        return loader_attributes(self.loader(train, shuffle=False))

    def interventional_set(
        self, names: Iterable[str], seed: int = 0, chunk: int = 500
    ) -> ImageAttributeDataset:
        """The training split re-rendered with each of ``names`` drawn independently of every
        other attribute (synthetic data only).

        Each named attribute takes its own random permutation of the training split's values, so
        its marginal is kept exactly and its dependence on everything else is gone; the true
        mechanism (:meth:`true_counterfactual`) renders each sample at those values, with every
        descendant not named recomputed from the sample's own noise. A judge trained on
        observational images reads an attribute partly through its correlates (on Morpho-MNIST,
        a brighter stroke as a thicker one); trained on these images it can't.

        Args:
            names: attributes in :attr:`ground_truth_variables`.
            seed: seeds the permutations (a local generator; the global RNG is left alone).
            chunk: images rendered per call of the true mechanism.

        Returns:
            A dataset of the same size as the training split. Its ``index`` counts its own rows:
            they are not the datamodule's sample ids.

        Raises:
            ValueError: a name without ground truth here.
            RuntimeError: :meth:`setup` has not run.
        """
        chosen = set(names)
        unknown = sorted(chosen - set(self.ground_truth_variables))
        if not chosen or unknown:
            have = ", ".join(self.ground_truth_variables) or "none: its data are not synthetic"
            raise ValueError(
                f"{self.name} can't render training images with {unknown or 'no'} attribute(s) "
                f"drawn independently; the attributes its true mechanism renders are: {have}"
            )
        names = [n for n in self.graph.names if n in chosen]  # one draw whatever the order given
        train = self.train_set
        if not isinstance(train, ImageAttributeDataset):
            raise RuntimeError(f"{type(self).__name__}.setup() must run before interventional_set")
        ids = train.indices
        generator = torch.Generator().manual_seed(seed)
        values = {
            name: train.attributes[name][ids][torch.randperm(len(ids), generator=generator)]
            for name in names
        }
        images, attributes = [], []
        for rows in torch.split(torch.arange(len(ids)), chunk):
            image, pa = self.true_counterfactual(ids[rows], {k: v[rows] for k, v in values.items()})
            images.append(image.mul(255.0).round_().clamp_(0, 255).to(torch.uint8))
            kept = {k: v[ids[rows]] for k, v in train.attributes.items()}
            attributes.append({**kept, **{k: v.cpu() for k, v in pa.items() if k in kept}})
        return ImageAttributeDataset(
            torch.cat(images).numpy(),
            {k: torch.cat([a[k] for a in attributes]).numpy() for k in attributes[0]},
            np.arange(len(ids)),
        )

    # -- loaders --------------------------------------------------------------------------------
    def loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        """A loader of ``dataset`` with this datamodule's batch size and workers."""
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() must run before asking for loaders")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.test_set, shuffle=False)


TRAIN, VAL, TEST = 0, 1, 2


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1):
        raise ValueError("val_fraction and test_fraction must lie in (0, 1)")


def draw_split(
    n: int,
    val_fraction: float,
    test_fraction: float,
    rng: np.random.Generator,
    is_test: np.ndarray | None = None,
) -> np.ndarray:
    """Split labels (0 train, 1 val, 2 test) fixed by ``rng``.

    Args:
        is_test: the source's official test samples, if it has a test split; else one is drawn.
    """
    check_fractions(val_fraction, test_fraction)
    split = np.zeros(n, dtype=np.int8)
    if is_test is None or not is_test.any():
        is_test = np.zeros(n, dtype=bool)
        is_test[rng.permutation(n)[: int(round(test_fraction * n))]] = True
    split[is_test] = TEST
    train = np.flatnonzero(~is_test)
    split[rng.permutation(train)[: int(round(val_fraction * len(train)))]] = VAL
    return split


class CachedArrayDataModule(CounterfactualDataModule):
    """A dataset built once into arrays (generated or decoded), cached on disk, held in memory.

    Subclasses set ``name``, ``image_shape`` and ``self.graph`` (without normalisation), and give
    :attr:`spec` (everything that shapes the arrays: the cache key) and :meth:`build`, which
    returns at least ``"images"`` (``(N, C, H, W)`` or ``(N, H, W)`` uint8), one ``(N,)`` array
    per variable of the graph, and ``"split"`` (:func:`draw_split` labels). Extra arrays (e.g. the
    exogenous noise of synthetic data) are cached alongside.

    ``setup`` standardises the continuous variables on the training split. ``val_fraction`` and
    ``test_fraction`` shape the seeded split of :meth:`draw_split` (datasets with official splits
    ignore them).
    """

    def __init__(
        self,
        data_dir: str = "data",
        seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
    ):
        super().__init__(batch_size=batch_size, num_workers=num_workers, pin_memory=pin_memory)
        check_fractions(val_fraction, test_fraction)  # now, not after a long build
        self.data_dir = Path(data_dir).expanduser()
        self.seed = seed
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.arrays: dict[str, np.ndarray] | None = None
        self.cache_path: Path | None = None

    @property
    def spec(self) -> dict[str, Any]:
        raise NotImplementedError

    #: The :attr:`spec` entries that decide which images a model trains and is tested on.
    split_keys: tuple[str, ...] = (
        "dataset",
        "source",
        "num_samples",
        "limit",
        "image_size",
        "seed",
        "val_fraction",
        "test_fraction",
    )

    @property
    def split_spec(self) -> dict[str, Any]:
        """Which images a model trains and is tested on: the dataset, its size and how its split
        is drawn (the :attr:`split_keys` of :attr:`spec`). A checkpoint records it, and
        fine-tuning, resuming and ``evaluate.py`` refuse another one
        (``models.base.check_same_data``). A key a datamodule adds here should be its argument
        of the same name, so that the refusal's ``data.<key>=`` fix works."""
        spec = self.spec
        return {key: spec[key] for key in self.split_keys if key in spec}

    @property
    def cache_prefix(self) -> str:
        """A readable file-name prefix of the cache entry."""
        return self.name

    def build(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def draw_split(
        self, n: int, rng: np.random.Generator, is_test: np.ndarray | None = None
    ) -> np.ndarray:
        """:func:`draw_split` with this datamodule's fractions."""
        return draw_split(n, self.val_fraction, self.test_fraction, rng, is_test)

    def prepare_data(self) -> None:
        self.load()

    def load(self) -> dict[str, np.ndarray]:
        """The dataset's arrays: from the cache, or built and cached."""
        if self.arrays is None:
            from datamodules.cache import load_or_build  # cache imports nothing from here

            self.arrays, self.cache_path = load_or_build(
                self.data_dir / self.name, self.cache_prefix, self.spec, self.build
            )
        return self.arrays

    def setup(self, stage: str | None = None) -> None:
        arrays = self.load()
        base = CausalGraph(
            tuple(replace(v, loc=0.0, scale=1.0) for v in self.graph.variables),
            self.graph.image_parents,
        )
        train = np.flatnonzero(arrays["split"] == TRAIN)
        self.graph = base.with_normalisation(
            {
                v.name: standardisation(arrays[v.name][train])
                for v in base.variables
                if v.is_continuous
            }
        )
        images = arrays["images"]
        images = images[:, None] if images.ndim == 3 else images
        attributes = {k: arrays[k] for k in self.graph.names}
        self.train_set = ImageAttributeDataset(images, attributes, train)
        self.val_set = ImageAttributeDataset(
            images, attributes, np.flatnonzero(arrays["split"] == VAL)
        )
        self.test_set = ImageAttributeDataset(
            images, attributes, np.flatnonzero(arrays["split"] == TEST)
        )

    def attributes(self, index: Tensor) -> dict[str, Tensor]:
        arrays = self.load()
        ids = torch.as_tensor(index, dtype=torch.long)
        rows = ids.cpu().numpy()
        return {k: torch.from_numpy(arrays[k][rows]).to(ids.device) for k in self.graph.names}


def loader_attributes(loader: Iterable[Mapping[str, Any]]) -> dict[str, Tensor]:
    """Every attribute of one pass over a loader of contract batches, concatenated."""
    batches = [batch["pa"] for batch in loader]
    return {name: torch.cat([b[name] for b in batches]) for name in batches[0]}


def standardisation(values: np.ndarray) -> tuple[float, float]:
    """``(mean, sd)`` of training values, the default normalisation of a continuous variable."""
    values = np.asarray(values, dtype=np.float64)
    sd = float(values.std())
    return float(values.mean()), sd if sd > 0 and math.isfinite(sd) else 1.0


class AnalyticMechanism(torch.nn.Module):
    """A dataset's true structural equation ``v = f(u; pa)`` for one attribute, in natural units.

    Synthetic datasets subclass it so that a model's attribute SCM can use the true equations and
    image-mechanism error can be measured apart from attribute-mechanism error.
    """

    def abduct(self, value: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        """The exogenous noise ``u`` with ``f(u; pa) = value``."""
        raise NotImplementedError

    def predict(self, noise: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        """``f(u; pa)``."""
        raise NotImplementedError

    def log_prob(self, value: Tensor, pa: Mapping[str, Tensor]) -> Tensor:
        """``log p(value | pa)`` per sample."""
        raise NotImplementedError

    def sample_noise(self, n: int, device: torch.device | None = None) -> Tensor:
        raise NotImplementedError
