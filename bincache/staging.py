"""Private staging directories that an interrupted run does not leave behind for good.

Each run makes its directory under a shared base (``<root>/.bincache-staging`` for install,
``<mirror>/.bincache-staging`` for create) and holds an exclusive flock on it while it lives;
the kernel drops the lock when the process dies, however it dies. The next run of the same base
removes every directory whose lock it can take: those are debris of runs that no longer exist
(a live run's lock is refused, so concurrent runs never touch each other's work).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile

from .locks import dir_lock


class PrivateDir:
    """A staging directory and the lock that marks its run alive."""

    def __init__(self, path: str, fd: int):
        self.path = path
        self._fd: int | None = fd

    def close(self) -> None:
        """Release the lock (the directory itself is the caller's to remove)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def make_private_dir(base: str, prefix: str) -> PrivateDir:
    """A new 0700 directory under ``base``, locked for this run; stale siblings removed first.

    Sweeping and creating happen under a lock on ``base`` itself, so a sweep never sees a
    directory created but not yet locked.
    """
    with dir_lock(base):
        sweep(base)
        path = tempfile.mkdtemp(prefix=prefix, dir=base)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX)
    return PrivateDir(path, fd)


def remove_base(base: str) -> None:
    """Remove ``base`` if no run has a directory in it: under its lock, so that a run between
    taking the lock and making its directory (make_private_dir) never sees it vanish."""
    if not os.path.isdir(base):
        return
    with dir_lock(base):
        with contextlib.suppress(OSError):
            os.rmdir(base)  # not empty: another run's


def sweep(base: str) -> list[str]:
    """Remove the directories under ``base`` that no live run holds; returns their names."""
    removed: list[str] = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        path = os.path.join(base, name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue  # a file or a link: not a run's directory
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live run's
            remove_tree(path)
            removed.append(name)
        finally:
            os.close(fd)
    return removed


def remove_tree(path: str) -> None:
    """rmtree that also gets through read-only directories (installed prefixes may have them)."""
    if not os.path.lexists(path):
        return
    _make_writable(path)
    shutil.rmtree(path, ignore_errors=True)


def _make_writable(path: str) -> None:
    with contextlib.suppress(OSError):
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            return
        os.chmod(path, 0o700)
        with os.scandir(path) as entries:
            subdirs = [e.path for e in entries if e.is_dir(follow_symlinks=False)]
        for d in subdirs:
            _make_writable(d)
