"""Which of the packages a push would upload the mirror holds already, without asking per package.

On s3 the index answers for every package it lists (no request per package: a create with
nothing new costs the index, not N HEADs); ``verify=True`` (``create --verify-present``) checks
the packages the index lists, which are the ones the push will skip, before skipping them. A
package the index does not list may still be there (pushed without an index update), so it is
looked for: by one listing of the mirror's manifests when that costs fewer requests than a check
each, else one check each, in parallel. On OCI the tag listing answers (one request on most
registries, and it cannot be stale); ``verify`` checks each listed package's manifest. A
directory mirror is asked per package (a stat is cheaper than reading an index), and so is any
mirror for a push of a few packages (autopush).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .errors import BincacheError, IndexVersionError

log = logging.getLogger(__name__)

#: Packages per request of a listing (S3's page; registries that paginate use the same).
LISTING_PAGE = 1000
#: Up to this many packages are checked one by one: reading the index would cost more.
FEW = 4
#: Checks in flight at once on a remote mirror.
JOBS = 16
#: Shards read for a push without looking at the size of Spack's single index; beyond it,
#: an index of at most SMALL_INDEX bytes is read whole (one request instead of one per shard).
SHARDS_AT_ONCE = 8
SMALL_INDEX = 8 << 20
#: Kinds whose listing names packages without reading them (layout v2 reads every spec file).
_CHEAP_LISTING = ("layout-v3",)


def _local(cache: Any) -> bool:
    return cache.backend is not None and cache.backend.root is not None


def indexed(cache: Any, specs: Sequence[Any], jobs: int = JOBS) -> tuple[set[str], int] | None:
    """(hashes among ``specs`` the mirror's index lists as in the cache, how many packages it
    lists); None without an index.

    A sharded index (layout v3) is read shard by shard, only the shards of the specs' names,
    and each is dropped once looked at, so memory holds a few shards, not the whole index;
    unless Spack's single index is small and the specs span many shards (one request then
    costs less than one per shard).
    """
    from . import index as _index
    from .index_shards import ShardedView, open_for_lookups

    try:
        view = open_for_lookups(cache) if cache.sharded_index else _index.read_index(cache)
        if isinstance(view, ShardedView):
            keys = _shard_keys(specs)
            if len(keys) > SHARDS_AT_ONCE and view.spack_index_size() <= SMALL_INDEX:
                view = view.spack_index()
            else:
                return _from_shards(view, keys, jobs), view.package_count()
    except IndexVersionError:
        return None  # a newer Spack's index: the packages are looked for one by one
    except BincacheError as e:
        log.warning("%s: the index is unreadable (%s); checking packages one by one", cache.url, e)
        return None
    if view is None:
        return None
    wanted = {s.hash for s in specs}
    listed = {h for h, e in view.entries.items() if e.in_buildcache}
    return listed & wanted, len(listed)


def _shard_keys(specs: Sequence[Any]) -> dict[str, set[str]]:
    from .index_shards import shard_key

    keys: dict[str, set[str]] = {}
    for s in specs:
        keys.setdefault(shard_key(s.name), set()).add(s.hash)
    return keys


def _from_shards(view: Any, keys: dict[str, set[str]], jobs: int) -> set[str]:
    def look(key: str) -> set[str]:
        entries = view.read_shard(key).entries
        return {h for h in keys[key] if h in entries and entries[h].in_buildcache}

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(keys)))) as pool:
        return set().union(*pool.map(look, sorted(keys))) if keys else set()


def _check_each(cache: Any, specs: Sequence[Any], jobs: int) -> set[str]:
    if not specs:
        return set()
    if _local(cache) or len(specs) == 1:
        return {s.hash for s in specs if cache.has_package(s)}
    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(specs)))) as pool:
        found = pool.map(cache.has_package, specs)
        return {s.hash for s, there in zip(specs, found) if there}


def _listed(cache: Any) -> set[str]:
    return {r.hash for r in cache.list_package_refs()}


def present(cache: Any, specs: Iterable[Any], *, verify: bool = False, jobs: int = JOBS) -> set[str]:
    """Hashes of ``specs`` the mirror holds.

    ``verify``: the packages the index lists are checked too (each one's manifest), so a
    package whose manifest was removed behind the index's back is pushed again (a directory
    mirror and a push of a few packages always check).
    """
    specs = list(specs)
    if _local(cache) or len(specs) <= FEW:
        # A stat costs less than reading an index; so do a few requests.
        return _check_each(cache, specs, jobs)
    if cache.kind == "oci":
        # The tag listing is the truth, one request on most registries (a page per 1,000 tags
        # on the others) and smaller than the index: no need to believe an index.
        there = _listed(cache)
        held = [s for s in specs if s.hash in there]
        return _check_each(cache, held, jobs) if verify else {s.hash for s in held}
    from_index, mirror_size = indexed(cache, specs) or (set(), 0)
    listed = [s for s in specs if s.hash in from_index]
    rest = [s for s in specs if s.hash not in from_index]
    found = _check_each(cache, listed, jobs) if verify else set(from_index)
    # A listing costs about one request per LISTING_PAGE packages of the mirror.
    if len(rest) > FEW and len(rest) >= mirror_size / LISTING_PAGE and cache.kind in _CHEAP_LISTING:
        there = _listed(cache)
        found |= {s.hash for s in rest if s.hash in there}
    else:
        found |= _check_each(cache, rest, jobs)
    return found
