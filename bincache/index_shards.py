"""The sharded index of a layout v3 mirror: a small root document listing shard digests.

    v3/manifests/index/bincache-index.manifest.json   the root (clearsigned when the update was signed)
    blobs/sha256/<xx>/<sha256>                 shards and Spack's single index.json

A package's shard is ``sha256(name)[:2]``: ``list NAME`` and ``install NAME`` read the root and
that one shard. A shard holds every node (package or dependency-only record) of its names, in
the shape of Spack's database, so it parses like an index. Spack's ``index.json`` is still
written beside it (Spack reads nothing else); it is the shards' record fragments joined, so an
update splices the unchanged fragments out of the previous index.json by their lengths, which
the root records ("spans"), and serializes only the records of the shards that changed.

``update-index`` compares, per shard, a digest of the hashes the listing of manifests shows with
the one the root recorded ("listed"), and reads only the shards that differ. The root is the
commit point, written with a conditional write (If-Match / If-None-Match, or under the index
lock on a directory): a concurrent update that lost the race starts again from the new root.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import index_blobs
from .errors import BincacheError, BlobNotFound, IntegrityError, MirrorError, SignatureError
from .index_db import (
    Index,
    IndexEntry,
    choose_db_version,
    fetch_entries,
    json_indent0,
    record_fragment,
)
from .index_listing import Listing, changed_names, read_listing, since, write_listing
from .index_spack import (
    Fragment,
    OldIndex,
    OldIndexChanged,
    check_old,
    cut,
    fresh_pieces,
    joined,
    old_layout,
    pieces,
    previous_index,
    shard_bytes,
    spliced_chunks,
)
from .limits import MAX_MANIFEST, load_json
from .mirror.base import DirListing
from .mirror.layout_v3 import MT_INDEX_PREFIX, LayoutV3Cache
from .spec import matches

if TYPE_CHECKING:
    from .index_cache import IndexCache

log = logging.getLogger(__name__)

ROOT_PATH = "v3/manifests/index/bincache-index.manifest.json"
ROOT_VERSION = 1
SHARD_KEY = "sha256(name)[:2]"
MT_SHARD = "application/vnd.bincache.index-shard.v1+json"
_HEX = frozenset("0123456789abcdef")
#: How often an update starts again after another one committed first.
RETRIES = 20


def shard_key(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:2]


def listed_digest(hashes: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()[:16]


_EMPTY = listed_digest(())


@dataclass
class ShardInfo:
    checksum: str
    size: int
    packages: int
    listed: str
    spans: tuple[int, int]  # byte lengths of the installs and sizes fragments

    def to_dict(self) -> dict:
        return {"checksum": self.checksum, "contentLength": self.size, "packages": self.packages,
                "listed": self.listed, "spans": list(self.spans)}


@dataclass
class Root:
    db_version: str
    shards: dict[str, ShardInfo] = field(default_factory=dict)
    spack_index: tuple[str, int] | None = None  # (sha256, size) of the index.json beside it

    @property
    def packages(self) -> int:
        return sum(s.packages for s in self.shards.values())

    def to_bytes(self) -> bytes:
        # Shaped as a layout v3 manifest: its "data" records name every blob the index uses, so
        # whatever reads manifests to find referenced blobs (prune) keeps the shards.
        data = [{"contentLength": i.size, "mediaType": MT_SHARD, "compression": "none",
                 "checksumAlgorithm": "sha256", "checksum": i.checksum, "shard": k,
                 "packages": i.packages, "listed": i.listed, "spans": list(i.spans)}
                for k, i in sorted(self.shards.items())]
        if self.spack_index:
            data.append({"contentLength": self.spack_index[1],
                         "mediaType": f"{MT_INDEX_PREFIX}{self.db_version}+json",
                         "compression": "none", "checksumAlgorithm": "sha256",
                         "checksum": self.spack_index[0]})
        doc = {"version": 3, "data": data,
               "bincache_index": {"version": ROOT_VERSION, "db_version": self.db_version,
                                  "shard_key": SHARD_KEY, "packages": self.packages}}
        # indent=0: short lines, which GnuPG's clearsign keeps intact.
        return json_indent0(doc).encode()

    @classmethod
    def from_bytes(cls, data: bytes, origin: str) -> Root:
        try:
            doc = load_json(data, origin, MAX_MANIFEST)
            meta = doc["bincache_index"]
            if meta.get("version") != ROOT_VERSION or meta.get("shard_key") != SHARD_KEY:
                raise ValueError(f"root version {meta.get('version')!r}, key {meta.get('shard_key')!r}")
            root = cls(str(meta["db_version"]))
            for d in doc["data"]:
                checksum, size = str(d["checksum"]), int(d["contentLength"])
                if len(checksum) != 64 or not _HEX.issuperset(checksum):
                    raise ValueError(f"checksum {checksum[:70]!r}")
                if d.get("mediaType") == MT_SHARD:
                    k = str(d["shard"])
                    if len(k) != 2:
                        raise ValueError(f"shard {k!r}")
                    root.shards[k] = ShardInfo(checksum, size, int(d["packages"]), str(d["listed"]),
                                               (int(d["spans"][0]), int(d["spans"][1])))
                elif str(d.get("mediaType", "")).startswith(MT_INDEX_PREFIX):
                    root.spack_index = (checksum, size)
            return root
        except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
            raise MirrorError(f"{origin}: not a valid bincache index root ({e}); "
                              "run bincache update-index") from None


@dataclass
class Shard:
    """The records of one shard key, in memory."""

    entries: dict[str, IndexEntry] = field(default_factory=dict)
    ref_counts: dict[str, int] = field(default_factory=dict)
    dirty: bool = False

    @classmethod
    def from_bytes(cls, data: bytes, origin: str) -> Shard:
        idx = Index.from_bytes(data, origin)
        return cls(idx.entries, idx.ref_counts)

    def fragments(self, db_version: str) -> tuple[str, str]:
        installs = ",".join(record_fragment(h, self.entries[h], db_version, self.ref_counts.get(h, 0))
                            for h in sorted(self.entries))
        sizes = ",".join(f'"{h}":{self.entries[h].size}' for h in sorted(self.entries)
                         if self.entries[h].in_buildcache)
        return installs, sizes

    def listed(self) -> str:
        return listed_digest(h for h, e in self.entries.items() if e.in_buildcache)

    def packages(self) -> int:
        return sum(1 for e in self.entries.values() if e.in_buildcache)


# -- reading --------------------------------------------------------------------------------
def open_for_lookups(cache: LayoutV3Cache) -> ShardedView | Index | None:
    """What a push's presence check reads: the sharded view, else Spack's index, None when
    the mirror has no index. Spack's manifest first: a mirror without an index costs one
    request (where open_index asks for the root, then for Spack's manifest)."""
    from .index_cache import IndexCache
    from .mirror.layout_v3 import INDEX_MANIFEST

    local = IndexCache.for_backend(cache.backend)
    manifest = _read_cached(cache, INDEX_MANIFEST, local)
    if manifest is None:
        return None  # (an update writes Spack's manifest after the root: no index yet)
    got = read_root(cache, local, spack_manifest=manifest)
    if got is not None and got[0] is not None:
        return ShardedView(cache, got[0], local)
    data = cache.index_from_manifest(manifest[0])
    return None if data is None else Index.from_bytes(data, f"{cache.url} index", cache.index_remedy)


def read_root(cache, local=None, spack_manifest: tuple[bytes, str] | None = None
              ) -> tuple[Root | None, str, bytes] | None:
    """(root, tag, raw bytes) of a layout v3 mirror's sharded index, None when it has none.

    The root is None when it cannot be used: a clearsigned root that does not verify (only
    what gpg verified counts), or one that Spack's own index has moved past (a Spack update-index
    after ours: its index.manifest.json no longer names the index.json the root was written
    with). The caller then reads Spack's index. ``spack_manifest``: Spack's index manifest
    (bytes, tag) when the caller read it already.
    """
    from .index_cache import IndexCache

    local = local if local is not None else IndexCache.for_backend(cache.backend)
    got = _read_cached(cache, ROOT_PATH, local)
    if got is None:
        return None
    raw, tag = got
    root = _parse_root(raw, cache.url)
    if root is not None and not _spack_index_matches(cache, root, local, spack_manifest):
        log.info("%s: Spack's index changed after the sharded index; reading Spack's", cache.url)
        root = None
    return root, tag, raw


def _read_cached(cache: LayoutV3Cache, rel: str, local: IndexCache | None) -> tuple[bytes, str] | None:
    """A small document, fetched only when its tag changed since the local cache got it."""
    url = f"{cache.url}/{rel}"
    known = local.get_root(url) if local else None
    got = cache.backend.read_tagged(rel, MAX_MANIFEST, known=known[1] if known else None)
    if got is None:
        return None
    raw, tag = got
    if raw is None:  # unchanged since it was cached
        assert known is not None  # an "unchanged" answer needs the tag it was asked with
        return known[0], tag
    if local:
        local.put_root(url, raw, tag)
    return raw, tag


def _spack_index_matches(cache: LayoutV3Cache, root: Root, local: IndexCache | None,
                         got: tuple[bytes, str] | None = None) -> bool:
    from .mirror.layout_v3 import INDEX_MANIFEST, parse_manifest

    got = got or _read_cached(cache, INDEX_MANIFEST, local)
    if got is None or root.spack_index is None:
        return got is None
    try:
        records = parse_manifest(got[0], origin=f"{cache.url}/{INDEX_MANIFEST}").records
    except MirrorError:
        return False
    return [r.checksum for r in records] == [root.spack_index[0]]


def _parse_root(raw: bytes, url: str) -> Root | None:
    from .signing.cleartext import is_clearsigned

    origin = f"{url}/{ROOT_PATH}"
    payload = raw
    if is_clearsigned(raw):
        from .signing.verify import verify_clearsigned

        try:
            payload, _ = verify_clearsigned(raw, source=origin)
        except SignatureError as e:
            log.warning("%s: the index root's signature does not verify (%s); reading Spack's "
                        "index instead", url, e)
            return None
        if isinstance(payload, str):
            payload = payload.encode()
    return Root.from_bytes(payload, origin)


class ShardedView:
    """An index read shard by shard, each shard once, through the local cache."""

    sharded = True

    def __init__(self, cache, root: Root, local=None) -> None:
        self.cache = cache
        self.root = root
        self.local = local
        self._shards: dict[str, Shard] = {}

    def shard(self, key: str) -> Shard:
        s = self._shards.get(key)
        if s is None:
            s = self._shards[key] = self.read_shard(key)
        return s

    def read_shard(self, key: str) -> Shard:
        """One shard, read and not kept (a caller that streams through many drops each)."""
        if key in self._shards:
            return self._shards[key]
        info = self.root.shards.get(key)
        return Shard() if info is None else Shard.from_bytes(
            read_blob(self.cache, info.checksum, info.size, self.local),
            f"{self.cache.url} index shard {key}")

    def spack_index_size(self) -> int:
        """The size of Spack's single index.json beside the shards (0 when none)."""
        return self.root.spack_index[1] if self.root.spack_index else 0

    def spack_index(self) -> Index:
        """Spack's single index.json, whole, by the digest the root names (one request)."""
        if self.root.spack_index is None:
            return self.to_index()
        checksum, size = self.root.spack_index
        return Index.from_bytes(read_blob(self.cache, checksum, size), f"{self.cache.url} index")

    def get(self, h: str, name: str) -> IndexEntry | None:
        return self.shard(shard_key(name)).entries.get(h)

    def has(self, spec) -> bool:
        e = self.get(spec.hash, spec.name)
        return e is not None and e.in_buildcache

    def find(self, selector: str) -> list[IndexEntry]:
        sel = selector.strip()
        name = sel.partition("/")[0].partition("@")[0].strip()
        if name:
            entries: Iterable[IndexEntry] = self.shard(shard_key(name)).entries.values()
        else:  # by hash alone: every shard (read once), a whole hash looked up in each
            self.load_all()
            h = sel[1:].lower() if sel.startswith("/") else ""
            entries = ([s.entries[h] for s in self._shards.values() if h in s.entries]
                       if len(h) == 32 else [e for s in self._shards.values() for e in s.entries.values()])
        return sorted((e for e in entries if e.in_buildcache and matches(e.spec, selector)),
                      key=lambda e: (e.spec.name, e.spec.version, e.spec.hash))

    def load_all(self, jobs: int = 8) -> None:
        todo = [k for k in self.root.shards if k not in self._shards]
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for k, s in zip(todo, pool.map(self.shard, todo)):
                self._shards[k] = s

    def packages(self) -> list[IndexEntry]:
        self.load_all()
        return sorted((e for s in self._shards.values() for e in s.entries.values() if e.in_buildcache),
                      key=lambda e: (e.spec.name, e.spec.version, e.spec.hash))

    def package_count(self) -> int:
        return self.root.packages

    @property
    def db_version(self) -> str:
        return self.root.db_version

    @property
    def entries(self) -> dict[str, IndexEntry]:
        """Every record (loads every shard), as :attr:`Index.entries`."""
        return self.to_index().entries

    def to_index(self) -> Index:
        self.load_all()
        idx = Index(db_version=self.root.db_version)
        for s in self._shards.values():
            idx.entries.update(s.entries)
            idx.ref_counts.update(s.ref_counts)
        return idx


def read_blob(cache, checksum: str, size: int, local=None) -> bytes:
    """A blob by digest: from the local cache when it holds it (checked), else the mirror."""
    from .mirror.layout_v3 import BlobRecord

    data = local.blob(checksum) if local else None
    if data is None:
        data = cache.get_blob_bytes(BlobRecord(size, MT_SHARD, "none", checksum))
        if local:
            local.put_blob(checksum, data)
    return data


# -- writing --------------------------------------------------------------------------------
@dataclass
class _Update:
    cache: LayoutV3Cache
    db_version: str
    local: IndexCache | None
    shards: dict[str, Shard] = field(default_factory=dict)
    root: Root | None = None
    body: bytes = b""  # the root as _commit wrote it
    old_index: OldIndex | None = None  # the previous index.json of a directory mirror (the root's)

    def shard(self, key: str) -> Shard:
        s = self.shards.get(key)
        if s is None:
            info = self.root.shards.get(key) if self.root else None
            s = Shard() if info is None else Shard.from_bytes(
                read_blob(self.cache, info.checksum, info.size, self.local),
                f"{self.cache.url} index shard {key}")
            self.shards[key] = s
        return s

    def add_specfile(self, nodes, size: int) -> None:
        """Index.add_specfile over shards, with the ref counts Index.to_bytes would compute."""
        inserted = []
        for i, spec in enumerate(nodes):
            s = self.shard(shard_key(spec.name))
            old = s.entries.get(spec.hash)
            if i == 0:
                if old is None or not old.in_buildcache or old.size != size:
                    s.entries[spec.hash] = IndexEntry(spec, size, True)
                    s.dirty = True
            elif old is None:
                s.entries[spec.hash] = IndexEntry(spec, 0, False)
                s.dirty = True
            if old is None:
                inserted.append(spec)
        for spec in inserted:
            for d in spec.deps:
                s = self.shard(shard_key(d.name))
                s.ref_counts[d.hash] = s.ref_counts.get(d.hash, 0) + 1
                s.dirty = True


def write_full(cache, index: Index, db_version: str, *, signer=None, local=None) -> Root:
    """Write every shard of ``index``, Spack's index.json beside them, and the root."""
    up = _Update(cache, db_version, local)
    _seed(up, index)
    while True:
        got = cache.backend.read_tagged(ROOT_PATH, MAX_MANIFEST)
        if _commit(up, None, got[1] if got else None, signer):
            assert up.root is not None  # _commit wrote it
            return up.root


def _commit(up: _Update, old: Root | None, expect: str | None, signer) -> bool:
    """Shard blobs, index.json, then the root (conditionally); False when another update won."""
    cache, v = up.cache, up.db_version
    infos = dict(old.shards) if old else {}
    fragments: dict[str, Fragment] = {}
    blobs: list[tuple[str, bytes]] = []
    for k, s in up.shards.items():
        if (not s.dirty and k in infos) or not s.entries:
            continue
        installs, sizes = s.fragments(v)
        data = shard_bytes(v, installs, sizes)
        checksum = hashlib.sha256(data).hexdigest()
        blobs.append((checksum, data))
        infos[k] = ShardInfo(checksum, len(data), s.packages(), s.listed(),
                             (len(installs.encode()), len(sizes.encode())))
        fragments[k] = (installs.encode(), sizes.encode())
    _put_blobs(up, blobs)
    from .mirror.layout_v3 import INDEX_MANIFEST, manifest_bytes

    spack_rec = _write_spack_index(up, old, sorted(infos), fragments)
    up.root = Root(v, infos, (spack_rec.checksum, spack_rec.content_length))
    body = up.root.to_bytes()
    if signer is not None:
        body = signer.clearsign(body)
    backend = cache.backend
    if not backend.write_if(ROOT_PATH, body, expect):
        return False
    up.body = body
    # Spack's manifest last; a newer update that committed after us writes its own instead.
    manifest = manifest_bytes([spack_rec])
    for _ in range(RETRIES):
        cur = backend.read_tagged(INDEX_MANIFEST, MAX_MANIFEST)
        now = backend.read_tagged(ROOT_PATH, MAX_MANIFEST)
        if now is None or now[0] != body:
            break
        if cur is not None and cur[0] == manifest:
            break
        if backend.write_if(INDEX_MANIFEST, manifest, cur[1] if cur else None):
            break
    return True


def _put_blobs(up: _Update, blobs: list[tuple[str, bytes]]) -> None:
    """Shards are small and content-addressed: written in parallel, without a HEAD first
    (rewriting the same bytes is harmless), before the root that names them."""
    from .mirror.layout_v3 import BlobRecord

    def put(item: tuple[str, bytes]) -> None:
        checksum, data = item
        up.cache.backend.write(BlobRecord(len(data), MT_SHARD, "none", checksum).path, data)
        if up.local:
            up.local.put_blob(checksum, data)

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(put, blobs))


def _write_spack_index(up: _Update, old: Root | None, keys: list[str],
                       fragments: dict[str, Fragment]):
    """Spack's index.json: the fragments of the shards written now, every other shard's cut
    from the previous index.json (streamed from its file on a directory mirror), else from
    each shard's blob."""
    cache, v = up.cache, up.db_version
    media = f"{MT_INDEX_PREFIX}{v}+json"
    if old is None or all(k in fragments for k in keys):
        return cache.put_blob_chunks(fresh_pieces(v, keys, fragments), media)
    if old.spack_index is not None:
        checksum, size = old.spack_index
        at, mid, tail = old_layout(old.db_version, {k: i.spans for k, i in old.shards.items()})
        parts = pieces(v, keys, fragments, at)
        try:
            if up.old_index is not None and up.old_index.checksum == checksum:
                return cache.put_blob_chunks(spliced_chunks(up.old_index, parts, mid, tail), media)
            data = read_blob(cache, checksum, size)
            check_old(data, mid, tail)
            return cache.put_blob_bytes(joined(parts, data), media)
        except (BlobNotFound, IntegrityError, OldIndexChanged) as e:
            log.info("%s: previous index.json unusable (%s); joining the shards", cache.url, e)
    for k in keys:
        if k not in fragments:
            info = old.shards[k]
            fragments[k] = cut(read_blob(cache, info.checksum, info.size, up.local), old.db_version, info.spans)
    return cache.put_blob_chunks(fresh_pieces(v, keys, fragments), media)


def update(cache, *, jobs: int = 8, warn: Callable[[str], None] | None = None, progress=None,
           db_version: str | None = None, signer=None, read_spack_index=None,
           full: bool = False) -> tuple[object, int]:
    """Bring the sharded index (and Spack's beside it) up to date; (view, manifests read).

    Reads the root, lists the manifests, reads only the shards whose listing changed and the
    manifests not yet indexed, writes those shards, index.json and the root, conditionally;
    when another update committed in between, it starts again (fetched spec files are kept).
    On a directory mirror only the per-name directories changed since the last update are
    listed (see :func:`_sweep`); ``full`` lists every one.
    """
    from .index_cache import IndexCache

    local = IndexCache.for_backend(cache.backend)
    fetched: dict[str, tuple[list, int] | None] = {}
    for attempt in range(RETRIES):
        try:
            got = read_root(cache, local)
        except MirrorError as e:
            if warn:
                warn(f"the index root is unreadable ({e}); rebuilding it")
            raw = cache.backend.read_tagged(ROOT_PATH, MAX_MANIFEST)
            got = (None, raw[1], raw[0]) if raw else None
        root = got[0] if got else None
        usable = root is not None and (not db_version or db_version == root.db_version)
        local_dirs = cache.backend.root is not None
        # The file system's clock before anything is looked at: what changes after it is the
        # next update's.
        now = index_blobs.clock(cache) if local_dirs else None
        prior = index_blobs.read_state(cache) if now is not None else None
        blobs = index_blobs.goes_with(prior, got[2]) if got and usable and not full else None
        spack_index = root.spack_index if usable and root is not None else None
        with previous_index(cache, spack_index, blobs.spack if blobs else ()) as old_index:
            found = None
            if blobs is not None and root is not None and now is not None:
                up = _Update(cache, root.db_version, local, root=root, old_index=old_index)
                found = index_blobs.scan(cache, blobs, now, _root_blobs(root),
                                         functools.partial(_indexed, up),
                                         functools.partial(_name_indexed, up))
            sweep = listing = None
            if found is not None:
                old, names = root, found.names
                refs = cache.list_package_refs_of(names)
            else:
                # The listing first: the sweep brings back only the names changed since it.
                listing = read_listing(cache, got[2]) if got and local_dirs and not full else None
                sweep = cache.spec_dirs(since(listing))
                listing = listing if sweep is not None else None
                if root is None or (db_version and db_version != root.db_version):
                    refs = cache.list_package_refs()
                    base = _base_index(cache, root, local, warn, read_spack_index)
                    v = choose_db_version(base, db_version, "layout-v3")
                    up = _Update(cache, v, local)
                    _seed(up, base)
                    up.root = None
                    old, names = None, None
                else:
                    up = _Update(cache, root.db_version, local, root=root, old_index=old_index)
                    old = root
                    names = None if listing is None or sweep is None else _sweep(up, listing, sweep)
                    refs = cache.list_package_refs() if names is None else cache.list_package_refs_of(names)
            missing = _changed(up, refs, old) if names is None else _changed_names(up, refs, names)
            fetch_entries(cache, missing, fetched, jobs, progress)
            for r in missing:
                found_entry = fetched[r.hash]
                if found_entry is not None:
                    up.add_specfile(*found_entry)
            if old is not None and not any(s.dirty for s in up.shards.values()):
                if sweep is not None and got is not None and (names is None or names):
                    write_listing(cache, got[2], sweep)  # the next update lists less
                if now is not None and got is not None and (found is None or found.read):
                    index_blobs.record(cache, got[2], now, blobs, found, old_index.verified() if old_index else (),
                                       functools.partial(_indexed, up), prior)
                return ShardedView(cache, old, local), 0
            if _commit(up, old, got[1] if got else None, signer):
                assert up.root is not None  # _commit wrote it
                if sweep is not None:
                    write_listing(cache, up.body, sweep)
                if now is not None:
                    index_blobs.record(cache, up.body, now, blobs, found, index_blobs.written_identity(cache, up.root, now),
                                       functools.partial(_indexed, up), prior)
                return ShardedView(cache, up.root, local), len(missing)
        log.info("%s: another index update committed first; starting again (%d)", cache.url, attempt + 1)
    raise MirrorError(f"{cache.url}: the index kept changing under {RETRIES} attempts to update it; "
                      "run bincache update-index again")


def _base_index(cache, root, local, warn, read_spack_index) -> Index:
    """Everything already indexed, for a rebuild: the shards, else Spack's index."""
    if root is not None:
        return ShardedView(cache, root, local).to_index()
    try:
        return (read_spack_index() if read_spack_index else None) or Index()
    except BincacheError as e:
        from .errors import IndexVersionError

        if isinstance(e, IndexVersionError):
            raise
        if warn:
            warn(f"the existing index is unreadable ({e}); rebuilding it")
        return Index()


def _seed(up: _Update, base: Index) -> None:
    """Every record of ``base`` into its shard, with the ref counts Index.to_bytes computes."""
    ref_counts: dict[str, int] = {}
    for e in base.entries.values():
        for d in e.spec.deps:
            ref_counts[d.hash] = ref_counts.get(d.hash, 0) + 1
    for h, e in base.entries.items():
        s = up.shards.setdefault(shard_key(e.spec.name), Shard(dirty=True))
        s.entries[h] = e
        if h in ref_counts:
            s.ref_counts[h] = ref_counts[h]


def _root_blobs(root: Root) -> set[str]:
    """The blobs a root names: an update's own, which it need not read to know what they are."""
    out = {i.checksum for i in root.shards.values()}
    if root.spack_index:
        out.add(root.spack_index[0])
    return out


def _indexed(up: _Update, name: str, h: str) -> bool:
    e = up.shard(shard_key(name)).entries.get(h)
    return e is not None and e.in_buildcache


def _name_indexed(up: _Update, name: str) -> bool:
    return any(e.in_buildcache and e.spec.name == name for e in up.shard(shard_key(name)).entries.values())


def _sweep(up: _Update, listing: Listing, sweep: DirListing) -> set[str] | None:
    """index_listing.changed_names, a name counting as indexed when its shard lists a package
    of it."""
    return changed_names(listing, sweep, lambda n: any(
        e.in_buildcache and e.spec.name == n for e in up.shard(shard_key(n)).entries.values()))


def _changed_names(up: _Update, refs, names: set[str]) -> list:
    """As _changed, for the directories of ``names`` only (every other one is unchanged)."""
    by_name: dict[str, set[str]] = defaultdict(set)
    for r in refs:
        by_name[r.name].add(r.hash)
    missing = []
    for key in sorted({shard_key(n) for n in names}):
        s = up.shard(key)
        for h, e in list(s.entries.items()):
            if e.in_buildcache and e.spec.name in names and h not in by_name.get(e.spec.name, ()):
                s.entries[h] = IndexEntry(e.spec, 0, False)
                s.dirty = True
    for r in refs:
        known = up.shard(shard_key(r.name)).entries.get(r.hash)
        if not (known is not None and known.in_buildcache):
            missing.append(r)
    return missing


def _changed(up: _Update, refs, old: Root | None) -> list:
    """Mark vanished packages in the shards whose listing changed; the refs to read."""
    by_key: dict[str, list] = defaultdict(list)
    for r in refs:
        by_key[shard_key(r.name)].append(r)
    keys = set(by_key) | set(up.shards) | (set(old.shards) if old else set())
    missing = []
    for k in sorted(keys):
        listed = listed_digest(r.hash for r in by_key.get(k, ()))
        if old is not None and k not in up.shards:
            info = old.shards.get(k)
            if (info.listed if info else _EMPTY) == listed:
                continue
        s = up.shard(k)
        present = {r.hash for r in by_key.get(k, ())}
        for h, e in list(s.entries.items()):
            if e.in_buildcache and h not in present:
                s.entries[h] = IndexEntry(e.spec, 0, False)
                s.dirty = True
        for r in by_key.get(k, ()):
            known_entry = s.entries.get(r.hash)
            if not (known_entry is not None and known_entry.in_buildcache):
                missing.append(r)
    return missing

