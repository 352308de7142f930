"""What a cache pushed in this run, kept for the index update that follows (`--rebuild-index`).

That update reads the index entry of every package not yet indexed: for the packages this very
cache object just pushed, reading them back costs a manifest GET and a spec (or config) GET
each, for bytes the process still has. A cache keeps the document its `read_index_entry` would
parse (the spec file, or the OCI image config), compressed, and parses that instead. Bounded:
past `LIMIT` bytes the rest are read from the mirror as before.
"""

from __future__ import annotations

import threading
import zlib

#: Bytes of compressed documents kept per cache (a deep DAG's spec files are large: each
#: package's names its whole closure).
LIMIT = 32 << 20


class PushedEntries:
    """hash -> (spec document, tarball size) of packages pushed through one cache object."""

    def __init__(self, limit: int = LIMIT) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[bytes, int]] = {}
        self._room = limit

    def add(self, h: str, document: bytes, size: int) -> None:
        packed = zlib.compress(document, 1)
        with self._lock:
            if len(packed) <= self._room and h not in self._kept:
                self._kept[h] = (packed, size)
                self._room -= len(packed)

    def get(self, h: str) -> tuple[bytes, int] | None:
        with self._lock:
            found = self._kept.get(h)
        return None if found is None else (zlib.decompress(found[0]), found[1])
