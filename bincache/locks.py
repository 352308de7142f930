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
    while True:
        os.makedirs(directory, exist_ok=True)
        fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            now = os.stat(directory)
        except FileNotFoundError:
            now = None
        except BaseException:
            os.close(fd)
            raise
        held = os.fstat(fd)
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            break
        # Removed (staging.remove_base) while we waited: a lock on it excludes no one now.
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)  # closing releases the lock
