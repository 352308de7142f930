"""The index of a build cache: every package of a mirror in one document clients fetch once.

Its shape is Spack's database (``{"database": {"version": "8", "installs": {hash: record}}}``),
so Spack reads it; bincache's own facts (tarball sizes) sit in a top-level ``bincache`` key,
which Spack ignores (its install records reject unknown keys).
Updating is incremental: only manifests not yet in the index are fetched.

The database version is chosen for the readers of the cache (:func:`choose_db_version`): an
update keeps the version the index has; a new index is v7 (Spack 0.2x reads nothing newer)
when every node is a v4 one and the cache is one Spack 0.2x reads (layout v2, OCI), and v8 on
layout v3, whose only readers (Spack >= 1.0) look for ``db.v8`` there. In a v8 index, v4 nodes
are converted as Spack >= 1.0 converts them; externals are records with ``in_buildcache: false``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import BincacheError, IndexVersionError, MirrorError, SpecError, UsageError
from .mirror.base import BuildCache, read_specfile_entry
from .spec import DB_NODE_FORMAT, DB_VERSION, Spec, node_format
from .tree import db_node

#: Database versions bincache reads (Spack 0.17-0.20 wrote 6, 0.21-0.23 7, 1.x 8) and writes.
READ_DB_VERSIONS = tuple(DB_NODE_FORMAT)
WRITE_DB_VERSIONS = ("7", "8")


@dataclass
class IndexEntry:
    spec: Spec
    size: int = 0  # compressed tarball size in bytes
    in_buildcache: bool = True


@dataclass
class Index:
    entries: dict[str, IndexEntry] = field(default_factory=dict)
    db_version: str | None = None  # the version it was read in (None: a new index)

    def add(self, spec: Spec, size: int = 0, in_buildcache: bool = True) -> None:
        old = self.entries.get(spec.hash)
        if old is not None and old.in_buildcache and not in_buildcache:
            return
        self.entries[spec.hash] = IndexEntry(spec, size, in_buildcache)

    def add_specfile(self, nodes: list[Spec], size: int) -> None:
        self.add(nodes[0], size, True)
        for dep in nodes[1:]:
            if dep.hash not in self.entries:
                self.add(dep, 0, False)

    def packages(self) -> list[IndexEntry]:
        return sorted((e for e in self.entries.values() if e.in_buildcache),
                      key=lambda e: (e.spec.name, e.spec.version, e.spec.hash))

    def find(self, selector: str) -> list[IndexEntry]:
        from .spec import matches

        return [e for e in self.packages() if matches(e.spec, selector)]

    def to_bytes(self, db_version: str | None = None) -> bytes:
        db_version = db_version or self.db_version or DB_VERSION
        if db_version not in WRITE_DB_VERSIONS:
            raise UsageError(f"database version {db_version} cannot be written; choose one of "
                             f"{', '.join(WRITE_DB_VERSIONS)}")
        installs = {}
        ref_counts: dict[str, int] = {}
        for e in self.entries.values():
            for d in e.spec.deps:
                ref_counts[d.hash] = ref_counts.get(d.hash, 0) + 1
        for h in sorted(self.entries):
            e = self.entries[h]
            installs[h] = {
                "spec": db_node(e.spec, db_version),
                "path": None,
                "installed": False,
                "ref_count": ref_counts.get(h, 0),
                "explicit": True,
                "installation_time": 0,
                "in_buildcache": e.in_buildcache,
            }
        doc = {
            "database": {"version": db_version, "installs": installs},
            "bincache": {"version": 1, "sizes": {h: self.entries[h].size for h in sorted(self.entries) if self.entries[h].in_buildcache}},
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "index",
                   remedy: str = "run bincache update-index") -> Index:
        from .limits import MAX_INDEX, load_json

        try:
            doc = load_json(data, origin, MAX_INDEX)
            installs = doc["database"]["installs"]
        except (ValueError, KeyError, TypeError) as e:
            raise MirrorError(f"{origin}: not a valid build cache index ({e}); {remedy}") from None
        version = str(doc["database"].get("version", ""))
        if version not in READ_DB_VERSIONS:
            raise IndexVersionError(
                f"{origin}: a Spack database of version {version or '(none)'}, which bincache does "
                f"not read (it reads {', '.join(READ_DB_VERSIONS)}); use the Spack that wrote it, "
                "or a newer bincache")
        idx = cls(db_version=version)
        try:
            sizes = (doc.get("bincache") or {}).get("sizes", {})
            for h, rec in installs.items():
                node = dict(rec["spec"])
                node.setdefault("hash", h)
                spec = Spec.from_node(node, DB_NODE_FORMAT[version])
                idx.entries[h] = IndexEntry(spec, int(sizes.get(h, 0)), bool(rec.get("in_buildcache", True)))
        except (AttributeError, KeyError, TypeError, ValueError, SpecError) as e:
            raise MirrorError(f"{origin}: not a valid build cache index ({e}); {remedy}") from None
        return idx


def read_index(cache: BuildCache) -> Index | None:
    """The mirror's index, or None when it has none."""
    data = cache.read_index_bytes()
    if data is None:
        return None
    return Index.from_bytes(data, f"{cache.url} index", cache.index_remedy)


def choose_db_version(index: Index, requested: str | None, kind: str | None) -> str:
    """The database version to write: the one asked for, else the one the index has, else v7
    when every node is a v4 one and Spack 0.2x reads the cache (not layout v3), else v8."""
    if requested:
        if str(requested) not in WRITE_DB_VERSIONS:
            raise UsageError(f"--db-version {requested}: bincache writes Spack database versions "
                             f"{' and '.join(WRITE_DB_VERSIONS)}")
        return str(requested)
    if index.db_version in WRITE_DB_VERSIONS:
        return index.db_version
    if kind == "layout-v2":
        return "7"  # its only readers, Spack 0.2x, drop a newer index whole
    if kind != "layout-v3" and all(node_format(e.spec) <= 4 for e in index.entries.values()):
        return "7"
    return DB_VERSION


def write_index(cache: BuildCache, index: Index, db_version: str | None = None) -> None:
    db_version = db_version or choose_db_version(index, None, cache.kind)
    cache.write_index_bytes(index.to_bytes(db_version), db_version)


#: (spec nodes, tarball size) of a package, read through its manifest (lifecycle uses it too).
_fetch_entry = read_specfile_entry


def update_index(cache: BuildCache, jobs: int = 8, warn: Callable[[str], None] | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 db_version: str | None = None) -> tuple[Index, int]:
    """Bring the mirror's index up to date with its manifests; returns (index, fetched count).

    One algorithm for every kind of cache: only packages whose hash is not already in the
    index are read (``cache.read_index_entry``, in parallel); ``progress(done, total)`` is
    called as they are. The database version is ``db_version``, else the one the index has
    (see :func:`choose_db_version`). Two runs on one directory mirror take turns (the second
    sees the first's packages).
    """
    if db_version is not None:
        choose_db_version(Index(), db_version, None)  # refuse a wrong version before any work
    with cache.index_lock():
        return _update_index(cache, jobs, warn, progress, db_version)


def _update_index(cache: BuildCache, jobs: int, warn: Callable[[str], None] | None,
                  progress: Callable[[int, int], None] | None = None,
                  db_version: str | None = None) -> tuple[Index, int]:
    try:
        index = read_index(cache) or Index()
    except IndexVersionError:
        raise  # a newer Spack's index is not replaced by an older format
    except BincacheError as e:
        if warn:
            warn(f"the existing index is unreadable ({e}); rebuilding it")
        index = Index()
    refs = cache.list_package_refs()
    present = {r.hash for r in refs}
    # Packages whose manifests vanished leave the index; their nodes may stay as dependencies.
    for h, entry in list(index.entries.items()):
        if entry.in_buildcache and h not in present:
            index.entries[h] = IndexEntry(entry.spec, 0, False)
    missing = [r for r in refs if not (r.hash in index.entries and index.entries[r.hash].in_buildcache)]
    if missing:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for done, found in enumerate(pool.map(cache.read_index_entry, missing), 1):
                if found is not None:
                    index.add_specfile(*found)
                if progress:
                    progress(done, len(missing))
    write_index(cache, index, choose_db_version(index, db_version, cache.kind))
    return index, len(missing)
