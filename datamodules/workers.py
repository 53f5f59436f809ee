"""Worker processes that never outlive the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

__all__ = ["die_with_parent"]

#: Linux's prctl option: a signal for this process when its parent dies.
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Pool initialiser: the worker is killed when ``parent`` (the pool's owner) dies, even by
    SIGKILL, which no clean-up code sees; without it, workers stay blocked on their queue."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # libc's, in this process
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(1)
