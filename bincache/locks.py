"""Advisory locks that serialize read-modify-write of shared files (config, databases, indexes)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator


@contextlib.contextmanager
def dir_lock(directory: str) -> Iterator[None]:
    """An exclusive flock on a directory itself: no lock file is left behind.

    Two processes editing the same file take turns instead of losing each other's update.
    """
    os.makedirs(directory, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
