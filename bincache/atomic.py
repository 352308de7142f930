"""Replacing a file atomically: the one way bincache writes a file that readers may be reading.

Every helper writes beside the target under an unpredictable name, created exclusively (never
through a planted link), then renames it over the target; on any error the temporary file is
removed and the target is untouched. They raise OSError; callers turn it into their own error
class with what to do.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from typing import BinaryIO

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def _fresh(path: str, prefix: str | None, perms: int) -> tuple[int, str]:
    """An open descriptor and the name of a new file beside ``path``."""
    d = os.path.dirname(os.path.abspath(path))
    prefix = prefix if prefix is not None else f".{os.path.basename(path)}-"
    while True:
        tmp = os.path.join(d, prefix + secrets.token_hex(6))
        try:
            return os.open(tmp, _FLAGS, perms), tmp
        except FileExistsError:
            continue


def new_file_in(directory: str, prefix: str) -> tuple[int, str]:
    """An open descriptor and the name of a new file (mode 0600) in ``directory``, for a writer
    that learns the file's final name only at the end (a blob named by its digest)."""
    return _fresh(os.path.join(directory, "_"), prefix, 0o600)


def unlink_quiet(path: str) -> None:
    """Remove a file if it is there; a cleanup never fails the operation it cleans up."""
    try:
        os.unlink(path)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_path(path: str, *, prefix: str | None = None) -> Iterator[str]:
    """The name of a new, empty file beside ``path`` for a writer that takes a path; it becomes
    ``path`` when the block ends without an error (its mode that of a plain new file)."""
    fd, tmp = _fresh(path, prefix, 0o666)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise


@contextlib.contextmanager
def atomic_file(path: str, mode: int | None = 0o644, *, prefix: str | None = None,
                fsync: bool = False) -> Iterator[BinaryIO]:
    """A binary file open for writing that becomes ``path`` when the block ends without an
    error. ``mode`` None: the mode a plain new file gets (umask); ``fsync``: on disk before the
    rename (a mirror's files survive a power cut whole or not at all)."""
    fd, tmp = _fresh(path, prefix, 0o600 if mode is not None else 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise


def write_atomic(path: str, data: bytes, mode: int | None = 0o644, *,
                 prefix: str | None = None, fsync: bool = False) -> None:
    """Write ``data`` as ``path`` (see :func:`atomic_file`)."""
    with atomic_file(path, mode, prefix=prefix, fsync=fsync) as f:
        f.write(data)


def link_or_copy_atomic(src: str, path: str, mode: int | None = None, *,
                        prefix: str | None = None, fsync: bool = False) -> None:
    """Put the file ``src`` at ``path``: a hard link when both are on one file system (atomic,
    no copy; ``mode``, when given, then applies to ``src`` too: one inode), else a copy."""
    d = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(d, (prefix if prefix is not None else f".{os.path.basename(path)}-")
                       + secrets.token_hex(6))
    try:
        os.link(src, tmp)  # never follows a planted name: EEXIST
    except OSError:
        with atomic_file(path, mode, prefix=prefix, fsync=fsync) as f, open(src, "rb") as s:
            shutil.copyfileobj(s, f, 1 << 20)
        return
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        unlink_quiet(tmp)
        raise
