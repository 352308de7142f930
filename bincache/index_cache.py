"""The local index cache: what a repeated ``list``/``install`` needs without fetching it again.

    <cache dir>/index/roots/<sha256 of the URL>       a root / Spack's index manifest, and its tag
    <cache dir>/index/shards/<sha256>                       shards, by content

The cache dir is `$BINCACHE_CACHE_DIR`, else ``~/.bincache/cache`` (as the OCI blob cache).
A root is fetched again conditionally (If-None-Match on its ETag): an unchanged mirror answers
304 and nothing else crosses the network. A shard is named by its digest in the root and is
checked against it on the way out, so a damaged cache costs a download, never a wrong answer.
A directory mirror is read in place: nothing is cached for it.
"""

from __future__ import annotations

import hashlib
import json
import os

from .atomic import write_atomic


def cache_dir() -> str:
    override = os.environ.get("BINCACHE_CACHE_DIR")
    if override:
        return override
    return os.path.join(os.path.expanduser("~"), ".bincache", "cache")


class IndexCache:
    def __init__(self, root: str | None = None) -> None:
        self.root = os.path.join(root or cache_dir(), "index")

    @classmethod
    def for_backend(cls, backend) -> IndexCache | None:
        if backend is None or backend.root:
            return None  # a local directory: reading it is as cheap as reading a cache
        return cls()

    def _write(self, path: str, data: bytes) -> None:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            write_atomic(path, data)
        except OSError:
            pass  # a cache that cannot be written only costs a download next time

    # -- roots -----------------------------------------------------------------------------
    def _root_path(self, url: str) -> str:
        return os.path.join(self.root, "roots", hashlib.sha256(url.encode()).hexdigest())

    def get_root(self, url: str) -> tuple[bytes, str] | None:
        """(raw document, tag) as last fetched from ``url`` (a root, or Spack's index manifest)."""
        path = self._root_path(url)
        try:
            with open(path + ".tag", "rb") as f:
                meta = json.loads(f.read())
            with open(path, "rb") as f:
                data = f.read()
        except (OSError, ValueError):
            return None
        if not isinstance(meta, dict) or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            return None
        tag = meta.get("tag")
        return (data, tag) if isinstance(tag, str) and tag else None

    def put_root(self, url: str, data: bytes, tag: str) -> None:
        if not tag:
            return
        path = self._root_path(url)
        self._write(path, data)
        self._write(path + ".tag", json.dumps({"tag": tag, "sha256": hashlib.sha256(data).hexdigest()}).encode())

    # -- shards ----------------------------------------------------------------------------
    def _blob_path(self, checksum: str) -> str:
        return os.path.join(self.root, "shards", checksum)

    def blob(self, checksum: str) -> bytes | None:
        try:
            with open(self._blob_path(checksum), "rb") as f:
                data = f.read()
        except OSError:
            return None
        return data if hashlib.sha256(data).hexdigest() == checksum else None

    def put_blob(self, checksum: str, data: bytes) -> None:
        if hashlib.sha256(data).hexdigest() == checksum:
            self._write(self._blob_path(checksum), data)
