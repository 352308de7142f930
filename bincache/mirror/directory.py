"""A mirror in a local directory (a plain path or ``file://``)."""

from __future__ import annotations

import errno
import hashlib
import math
import os
import shutil
from typing import TYPE_CHECKING, ClassVar

from ..atomic import atomic_file, link_or_copy_atomic, new_file_in, unlink_quiet
from ..errors import BlobNotFound, MirrorError, NoSpaceError
from ..limits import check_size
from .base import DirListing

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


def _os_error(action: str, path: str, e: OSError) -> MirrorError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return NoSpaceError(f"no space left on the device while writing {path}; free some space and run again")
    return MirrorError(f"cannot {action} {path}: {e.strerror or e}")


class DirectoryBackend:
    """Bytes stored under a root directory; every write is atomic (temp file + rename)."""

    transport: ClassVar[str] = "directory"
    writable: ClassVar[bool] = True

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.url = "file://" + self.root

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, *rel.split("/"))

    def check_writable(self) -> None:
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise MirrorError(f"mirror path {self.root} is a file, not a directory")
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as e:
            raise _os_error("create the mirror directory", self.root, e) from None

    def exists(self, rel: str) -> bool:
        return os.path.exists(self._path(rel))

    def read(self, rel: str, max_size: int | None = None) -> bytes:
        path = self._path(rel)
        try:
            with open(path, "rb") as f:
                if max_size is None:
                    return f.read()
                data = f.read(max_size + 1)
                check_size(len(data), max_size, path)
                return data
        except FileNotFoundError:
            raise BlobNotFound(f"{path} does not exist") from None
        except OSError as e:
            raise _os_error("read", path, e) from None

    def get_file(self, rel: str, dest: str, max_size: int | None = None) -> None:
        path = self._path(rel)
        try:
            if max_size is not None:
                check_size(os.path.getsize(path), max_size, path, name="the manifest's size")
            shutil.copyfile(path, dest)
        except FileNotFoundError:
            raise BlobNotFound(f"{path} does not exist") from None
        except OSError as e:
            raise _os_error("read", path, e) from None

    def local_path(self, rel: str) -> str | None:
        """The file itself, so readers can stream it without a copy."""
        path = self._path(rel)
        return path if os.path.isfile(path) else None

    def _atomic(self, rel: str, writer) -> None:
        path = self._path(rel)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # ".tmp-": what list() skips, so a reader never sees a file being written.
            with atomic_file(path, prefix=".tmp-", fsync=True) as f:
                writer(f)
        except OSError as e:
            raise _os_error("write", path, e) from None

    def write(self, rel: str, data: bytes) -> None:
        self._atomic(rel, lambda f: f.write(data))

    def put_file(self, rel: str, src: str) -> None:
        path = self._path(rel)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # Same file system: a hard link is an atomic, copy-free publish.
            link_or_copy_atomic(src, path, 0o644, prefix=".tmp-", fsync=True)
        except OSError as e:
            raise _os_error("write", path, e) from None

    def put_hashed(self, tmp_dir: str, chunks: Iterable[bytes | memoryview],
                   rel_of: Callable[[str], str]) -> tuple[str, int]:
        """Write ``chunks`` as one new file, named ``rel_of(its SHA-256)`` when they end; (digest,
        size). Written unbuffered (bincache.unbuffered: a big file costs no page-cache pages)
        under a ``.tmp-`` name in ``tmp_dir``; an error, from the chunks' source too, leaves no
        file. A file already there under that name is kept (same digest, same bytes)."""
        import hashlib

        from ..unbuffered import UnbufferedWriter

        tmp = ""
        try:
            directory = self._path(tmp_dir)
            os.makedirs(directory, exist_ok=True)
            fd, tmp = new_file_in(directory, ".tmp-")
            hasher = hashlib.sha256()
            try:
                out = UnbufferedWriter(fd, hasher)
                try:
                    for c in chunks:
                        out.write(c)
                finally:
                    out.close()
                os.fsync(fd)
            finally:
                os.close(fd)
            digest = hasher.hexdigest()
            path = self._path(rel_of(digest))
            if os.path.exists(path):
                unlink_quiet(tmp)
            else:
                os.chmod(tmp, 0o644)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                os.replace(tmp, path)
            return digest, out.size
        except OSError as e:
            if tmp:
                unlink_quiet(tmp)
            raise _os_error("write", self._path(tmp_dir), e) from None
        except BaseException:
            if tmp:
                unlink_quiet(tmp)
            raise

    def list_stat(self, rel_dir: str) -> list[tuple[str, float, int]]:
        """(path, modification time, size) of the files below a directory, sorted by path;
        a file removed while listing is left out."""
        out = []
        for rel in self.list(rel_dir):
            try:
                st = os.stat(self._path(rel))
            except FileNotFoundError:
                continue
            out.append((rel, st.st_mtime, st.st_size))
        return out

    def list(self, rel_dir: str) -> list[str]:
        """Relative paths of the files below a directory (recursively), sorted."""
        if not os.path.isdir(self.root):
            raise MirrorError(f"no mirror at {self.root} (the directory does not exist)")
        out: list[str] = []
        # scandir, and paths joined as strings: os.walk's per-file joins and relpath cost most
        # of a listing of 50,000 manifests.
        _walk(self._path(rel_dir), rel_dir.strip("/"), out)
        out.sort()
        return out

    def list_dirs(self, rel_dir: str, since: float = -math.inf,
                  clock_dir: str | None = None) -> DirListing | None:
        """The directories right below ``rel_dir`` (the names of those whose change time is at
        or after ``since``), and the file system's clock now; an update compares the change
        times with the clock of its last listing.

        The change time (ctime) moves whenever an entry is added to, removed from or renamed in
        the directory, and no tool can set it back (``cp -a``/``rsync -a`` restore mtime only).
        The clock is read from the same file system (a touch of ``clock_dir``, else of
        ``rel_dir``), so a server whose clock differs from this host's does not matter.
        """
        from .._native import list_dirs  # here: other commands on a directory need no C core

        base = self._path(rel_dir)
        touched = self._path(clock_dir) if clock_dir else base
        try:
            if not os.path.isdir(base):
                return None
            try:
                os.utime(touched)
            except OSError as e:
                if e.errno in (errno.EPERM, errno.EACCES, errno.EROFS):
                    return None  # not ours to touch: no clock, so every directory is listed
                raise
            now = os.stat(touched).st_ctime
            # One native call (readdir, a stat per directory on every CPU, the GIL released,
            # only the changed names back): Python's listdir and a stat each cost 0.2 s at
            # 50,000 directories, most of an update.
            count, newest, changed = list_dirs(base, ".tmp-", since, threads=0)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise _os_error("list", base, e) from None
        return DirListing(now, count, newest, since, changed)

    # -- conditional writes (the index) ---------------------------------------------------------
    # Every index update of a directory mirror holds its index lock (cache.index_lock), so the
    # check and the write below are not raced by another update.
    def read_tagged(self, rel: str, max_size: int | None = None,
                    known: str | None = None) -> tuple[bytes | None, str] | None:
        """(bytes, tag) of a file, None when it does not exist, (None, tag) when its tag is still
        ``known``; the tag is its SHA-256."""
        try:
            data = self.read(rel, max_size)
        except BlobNotFound:
            return None
        tag = hashlib.sha256(data).hexdigest()
        return (None, tag) if tag == known else (data, tag)

    def write_if(self, rel: str, data: bytes, expect: str | None) -> bool:
        """Write only if the file still has tag ``expect`` (None: only if absent)."""
        current = self.read_tagged(rel)
        if (current[1] if current else None) != expect:
            return False
        self.write(rel, data)
        return True

    def delete(self, rel: str) -> None:
        unlink_quiet(self._path(rel))


def _walk(path: str, rel: str, out: list[str]) -> None:
    """os.walk's files (symlinked directories neither listed nor entered; an unreadable
    directory skipped), as paths relative to the mirror."""
    try:
        it = os.scandir(path)
    except OSError:
        return
    with it:
        for e in it:
            if e.name.startswith(".tmp-"):
                continue  # a file being written (see _atomic)
            sub = f"{rel}/{e.name}" if rel else e.name
            try:
                if not e.is_dir():
                    out.append(sub)
                elif not e.is_symlink():
                    _walk(e.path, sub, out)
            except OSError:
                continue
