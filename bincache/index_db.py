"""A build cache index as a document: Spack's database shape, its records, its versions.

``{"database": {"version": "8", "installs": {hash: record}}}``, so Spack reads it; bincache's own
facts (tarball sizes) sit in a top-level ``bincache`` key, which Spack ignores (its install
records reject unknown keys). Shards of a sharded index (bincache.index_shards) have the same shape.

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
from typing import Any

from .errors import IndexVersionError, MirrorError, SpecError, UsageError
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
    ref_counts: dict[str, int] = field(default_factory=dict)  # as read (a shard keeps its own)

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

    def package_count(self) -> int:
        return sum(1 for e in self.entries.values() if e.in_buildcache)

    def get(self, h: str, name: str | None = None) -> IndexEntry | None:
        return self.entries.get(h)

    def has(self, spec) -> bool:
        e = self.entries.get(spec.hash)
        return e is not None and e.in_buildcache

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
            installs[h] = _record(self.entries[h], db_version, ref_counts.get(h, 0))
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
                count = int(rec.get("ref_count", 0) or 0)
                if count:
                    idx.ref_counts[h] = count
        except (AttributeError, KeyError, TypeError, ValueError, SpecError) as e:
            raise MirrorError(f"{origin}: not a valid build cache index ({e}); {remedy}") from None
        return idx


def _record(e: IndexEntry, db_version: str, ref_count: int) -> dict:
    return {
        "spec": db_node(e.spec, db_version),
        "path": None,
        "installed": False,
        "ref_count": ref_count,
        "explicit": True,
        "installation_time": 0,
        "in_buildcache": e.in_buildcache,
    }


def record_fragment(h: str, e: IndexEntry, db_version: str, ref_count: int) -> str:
    """``"hash":{record}`` exactly as :meth:`Index.to_bytes` writes it (shards are spliced)."""
    return json.dumps(h) + ":" + json.dumps(_record(e, db_version, ref_count), separators=(",", ":"))


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


def fetch_entries(cache: Any, refs: list[Any], fetched: dict[str, Any], jobs: int,
                  progress: Callable[[int, int], None] | None) -> None:
    """Read the index entries of `refs` not yet in `fetched` (hash -> entry or None), `jobs`
    at a time: the one step both index updates (single and sharded) share."""
    todo = [r for r in refs if r.hash not in fetched]
    if not todo:
        return
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for done, (r, found) in enumerate(zip(todo, pool.map(cache.read_index_entry, todo)), 1):
            fetched[r.hash] = found
            if progress:
                progress(done, len(todo))


def json_indent0(obj) -> str:
    """``json.dumps(obj, indent=0, separators=(",", ":"))``, the same text: an indent makes
    json use its pure-Python encoder, 20 ms for a root of 256 shards in a 0.15 s update; here
    the scalars go through the C one."""
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        return "{\n" + ",\n".join(f"{_scalar(str(k))}:{json_indent0(v)}" for k, v in obj.items()) + "\n}"
    if isinstance(obj, (list, tuple)):
        if not obj:
            return "[]"
        return "[\n" + ",\n".join(json_indent0(v) for v in obj) + "\n]"
    return _scalar(obj)


_scalar = json.JSONEncoder(separators=(",", ":")).encode
