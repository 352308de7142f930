"""The index of a build cache: reading it, and updating it in one algorithm for every kind.

Layout v3 caches carry a sharded index (bincache.index_shards: a root listing shard digests, so
an update costs what changed and a lookup reads one shard) beside Spack's single index, which is
still written on every update; layout v2 and OCI caches have Spack's index only. Readers accept
a mirror with Spack's index alone (Spack, older bincache). Updating is incremental: only
packages not yet in the index are read.

Concurrent updates lose nothing: a directory's take turns (``cache.index_lock``); elsewhere an
update writes the index only if it is still the one it read (``cache.write_index_if``: S3's
If-Match), else starts again from the new one, keeping what it already read; where that check
is not atomic (an OCI tag, ``cache.index_write_atomic``), it also reads the index back and lists
the packages again after its write, and writes again until the index holds every package listed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import BincacheError, IndexVersionError, MirrorError
from .index_db import (
    READ_DB_VERSIONS,
    WRITE_DB_VERSIONS,
    Index,
    IndexEntry,
    choose_db_version,
    fetch_entries,
)
from .mirror.base import BuildCache, read_specfile_entry

__all__ = ["READ_DB_VERSIONS", "WRITE_DB_VERSIONS", "Index", "IndexEntry", "choose_db_version",
           "read_index", "write_index", "update_index", "open_index"]

#: Rounds of an update that keeps losing the race (each lost round means another writer's
#: write went through); after that it gives up with a MirrorError, nothing lost but its entries
#: not yet in the index.
RETRIES = 20

#: (spec nodes, tarball size) of a package, read through its manifest (lifecycle uses it too).
_fetch_entry = read_specfile_entry


def open_index(cache: BuildCache) -> Any:
    """The index to look packages up in, without reading all of it when it is sharded:
    an ``index_shards.ShardedView`` or an :class:`Index` (both offer ``find``, ``get(hash,
    name)``, ``has(spec)``, ``packages()``, ``package_count()``); None when there is none."""
    if cache.sharded_index:
        from .index_cache import IndexCache
        from .index_shards import ShardedView, read_root

        got = read_root(cache)
        if got is not None and got[0] is not None:
            return ShardedView(cache, got[0], IndexCache.for_backend(cache.backend))
    return read_index(cache)


def read_index(cache: BuildCache) -> Index | None:
    """The mirror's (Spack's) index, whole, or None when it has none."""
    data = cache.read_index_bytes()
    if data is None:
        return None
    return Index.from_bytes(data, f"{cache.url} index", cache.index_remedy)


def write_index(cache: BuildCache, index: Index, db_version: str | None = None, signer=None) -> None:
    """Write ``index`` whole, replacing the mirror's (sharded too on layout v3)."""
    db_version = db_version or choose_db_version(index, None, cache.kind)
    if cache.sharded_index:
        from .index_cache import IndexCache
        from .index_shards import write_full

        write_full(cache, index, db_version, signer=signer, local=IndexCache.for_backend(cache.backend))
        return
    cache.write_index_bytes(index.to_bytes(db_version), db_version)


def update_index(cache: BuildCache, jobs: int = 8, warn: Callable[[str], None] | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 db_version: str | None = None, signer=None, full: bool = False) -> tuple[Any, int]:
    """Bring the mirror's index up to date with its manifests; returns (index, fetched count).

    One algorithm for every kind of cache: only packages whose hash is not already in the
    index are read (``cache.read_index_entry``, in parallel); ``progress(done, total)`` is
    called as they are. The database version is ``db_version``, else the one the index has
    (see :func:`choose_db_version`). On layout v3 the index returned is an
    ``index_shards.ShardedView`` and ``signer`` clearsigns its root; on a directory mirror
    only the manifest directories changed since the last update are listed, unless ``full``.
    """
    if db_version is not None:
        choose_db_version(Index(), db_version, None)  # refuse a wrong version before any work
    with cache.index_lock():
        if cache.sharded_index:
            from .index_shards import update

            return update(cache, jobs=jobs, warn=warn, progress=progress, db_version=db_version,
                          signer=signer, read_spack_index=lambda: read_index(cache), full=full)
        return _update_whole(cache, jobs, warn, progress, db_version)


def _update_whole(cache: BuildCache, jobs: int, warn: Callable[[str], None] | None,
                  progress: Callable[[int, int], None] | None = None,
                  db_version: str | None = None) -> tuple[Index, int]:
    fetched: dict[str, tuple[list, int] | None] = {}
    written: set[str] = set()  # hashes this update added in a write that went through
    mine: tuple[bytes, Index] | None = None  # what it wrote last: read back, it needs no parse
    for _attempt in range(RETRIES):
        known = True
        try:
            data, tag = cache.read_index_tagged()
            if mine is not None and data == mine[0]:
                index = mine[1]
            else:
                index = Index.from_bytes(data, f"{cache.url} index", cache.index_remedy) if data else Index()
        except IndexVersionError:
            raise  # a newer Spack's index is not replaced by an older format
        except BincacheError as e:
            if warn:
                warn(f"the existing index is unreadable ({e}); rebuilding it")
            index, data, tag, known = Index(), None, None, False
        refs = cache.list_package_refs()
        present = {r.hash for r in refs}
        # Packages whose manifests vanished leave the index; their nodes may stay as dependencies.
        vanished = 0
        for h, entry in list(index.entries.items()):
            if entry.in_buildcache and h not in present:
                index.entries[h] = IndexEntry(entry.spec, 0, False)
                vanished += 1
        missing = [r for r in refs if not (r.hash in index.entries and index.entries[r.hash].in_buildcache)]
        for r in missing:
            if r.hash in fetched and fetched[r.hash] is None:
                del fetched[r.hash]  # unreadable last round: once more (it may be mid-rewrite)
        fetch_entries(cache, missing, fetched, jobs, progress)
        added = []
        for r in missing:
            found = fetched[r.hash]
            if found is not None:  # None: not a package (warned once), never indexed
                index.add_specfile(*found)
                added.append(r.hash)
        version = choose_db_version(index, db_version, cache.kind)
        if data is not None and not (added or vanished) and index.db_version == version:
            return index, len(written)
        body = index.to_bytes(version)
        if not known:
            cache.write_index_bytes(body, version)
        elif not cache.write_index_if(body, version, tag):
            continue  # another update wrote first: merge onto its index
        written.update(added)
        index.db_version, mine = version, (body, index)
        if known and cache.index_write_atomic:
            return index, len(written)
        # Not atomic (an OCI tag): a writer that read before us may PUT after us. So go round
        # again: read the index back and list the packages anew; return only when the index
        # read back holds every package listed, else merge what is missing and write again.
        # The last writer's round then repairs any stale overwrite (docs/internals.md).
    raise MirrorError(f"{cache.url}: the index kept changing under {RETRIES} attempts to update "
                      "it; the packages are in the mirror, run bincache update-index again")
