"""A local content-addressed store of blobs already downloaded and verified.

`~/.bincache/cache/blobs/sha256/<hex>` (the OCI image-layout path), or under
`$BINCACHE_CACHE_DIR`. A blob enters only after its digest was checked, and is checked again
on the way out (SHA-256 runs at well over 1 GB/s here, far faster than any download), so a
damaged cache file costs a re-download, never a bad install.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..atomic import link_or_copy_atomic, write_atomic

_CHUNK = 1 << 20


def default_cache_dir() -> Path:
    override = os.environ.get("BINCACHE_CACHE_DIR")
    if override:
        return Path(override)
    return Path(os.path.expanduser("~")) / ".bincache" / "cache"


class BlobCache:
    """Verified blobs by digest; every method is safe to call from several threads."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.hits = 0

    def path(self, digest: str) -> Path:
        algorithm, _, hexdigest = digest.partition(":")
        return self.root / "blobs" / algorithm / hexdigest

    def copy_to(self, digest: str, dest: str | os.PathLike[str], size: int | None = None) -> bool:
        """Put the cached blob at `dest` (hard link, else copy); False when not cached/valid."""
        if not self.verify(digest, size):
            return False
        dest = os.fspath(dest)
        link_or_copy_atomic(str(self.path(digest)), dest, prefix=f".{os.path.basename(dest)}.cache-")
        self.hits += 1
        return True

    def verify(self, digest: str, size: int | None = None) -> bool:
        """True when the cache holds `digest` intact (a damaged entry is dropped)."""
        path = self.path(digest)
        try:
            if size is not None and path.stat().st_size != size:
                self._drop(path)
                return False
        except FileNotFoundError:
            return False
        if _sha256(path) != digest:
            self._drop(path)
            return False
        return True

    def add(self, digest: str, path: str | os.PathLike[str]) -> None:
        """Record a blob already verified to have `digest` (best effort: a full disk is fine)."""
        target = self.path(digest)
        if target.exists():
            return
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy_atomic(os.fspath(path), str(target), prefix=".add-")
        except OSError:
            pass

    def add_bytes(self, digest: str, data: bytes) -> None:
        target = self.path(digest)
        if target.exists():
            return
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(str(target), data, 0o600, prefix=".add-")
        except OSError:
            pass

    def read_bytes(self, digest: str) -> bytes | None:
        try:
            data = self.path(digest).read_bytes()
        except OSError:
            return None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            self._drop(self.path(digest))
            return None
        self.hits += 1
        return data

    @staticmethod
    def _drop(path: Path) -> None:
        try:
            path.unlink()
        except OSError:
            pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return "sha256:" + h.hexdigest()
