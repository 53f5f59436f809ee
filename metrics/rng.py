"""Blocks that leave the caller's random state as they found it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def kept_rng() -> Iterator[None]:
    """Run a block that may draw from torch's global generators; restore them after.

    Building a module draws its initial weights, even when a checkpoint then replaces them.
    """
    # every CUDA device too: a judge may train on one, and its dropout draws from that generator
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        yield


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block under torch's global generators seeded with ``seed``; restore them after.

    The library never reseeds the caller's RNG: a judge trained, or a suite seed run, in the
    middle of someone's script leaves its random stream where it was. Code that draws from the
    global generators without taking one (a DataLoader's shuffle, dropout, ``torch.rand``) is
    reproducible inside the block all the same.

    Example:
        >>> with seeded(1):
        ...     order = torch.randperm(10)       # the same every time; the caller's state is kept
    """
    with kept_rng():
        torch.manual_seed(seed)
        yield
