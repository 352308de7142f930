"""The index of a build cache: every package of a mirror in one document clients fetch once.

Its shape is Spack's database (``{"database": {"version": "8", "installs": {hash: record}}}``),
so Spack reads it; bincache's own facts (tarball sizes) sit in a top-level ``bincache`` key,
which Spack ignores (its install records reject unknown keys).
Updating is incremental: only manifests not yet in the index are fetched.
"""

from __future__ import annotations

import gzip
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from .errors import BincacheError, MirrorError
from .spec import DB_VERSION, Spec, parse_specfile


@dataclass
class IndexEntry:
    spec: Spec
    size: int = 0  # compressed tarball size in bytes
    in_buildcache: bool = True


@dataclass
class Index:
    entries: dict[str, IndexEntry] = field(default_factory=dict)

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

    def to_bytes(self) -> bytes:
        installs = {}
        ref_counts: dict[str, int] = {}
        for e in self.entries.values():
            for d in e.spec.deps:
                ref_counts[d.hash] = ref_counts.get(d.hash, 0) + 1
        for h in sorted(self.entries):
            e = self.entries[h]
            installs[h] = {
                "spec": e.spec.node,
                "path": None,
                "installed": False,
                "ref_count": ref_counts.get(h, 0),
                "explicit": True,
                "installation_time": 0,
                "in_buildcache": e.in_buildcache,
            }
        doc = {
            "database": {"version": DB_VERSION, "installs": installs},
            "bincache": {"version": 1, "sizes": {h: self.entries[h].size for h in sorted(self.entries) if self.entries[h].in_buildcache}},
        }
        return json.dumps(doc, separators=(",", ":"), sort_keys=False).encode()

    @classmethod
    def from_bytes(cls, data: bytes, origin: str = "index") -> Index:
        from .limits import MAX_INDEX, load_json

        try:
            doc = load_json(data, origin, MAX_INDEX)
            installs = doc["database"]["installs"]
        except (ValueError, KeyError, TypeError) as e:
            raise MirrorError(f"{origin}: not a valid build cache index ({e}); run bincache update-index") from None
        idx = cls()
        try:
            sizes = (doc.get("bincache") or {}).get("sizes", {})
            for h, rec in installs.items():
                node = dict(rec["spec"])
                node.setdefault("hash", h)
                spec = Spec.from_node(node)
                idx.entries[h] = IndexEntry(spec, int(sizes.get(h, 0)), bool(rec.get("in_buildcache", True)))
        except (AttributeError, KeyError, TypeError, ValueError, BincacheError) as e:
            raise MirrorError(f"{origin}: not a valid build cache index ({e}); "
                              "run bincache update-index") from None
        return idx


def read_index(cache) -> Index | None:
    """The mirror's index, or None when it has none."""
    if hasattr(cache, "read_index"):
        return cache.read_index()
    data = cache.read_index_bytes()
    if data is None:
        return None
    return Index.from_bytes(data, f"{cache.url} index")


def write_index(cache, index: Index) -> None:
    if hasattr(cache, "write_index"):
        cache.write_index(index)
        return
    cache.write_index_bytes(index.to_bytes(), DB_VERSION)


def _fetch_entry(cache, ref) -> tuple[list[Spec], int]:
    manifest = cache.fetch_manifest(ref)
    data = cache.get_blob_bytes(manifest.spec)
    if manifest.spec.compression == "gzip":
        data = gzip.decompress(data)
    return parse_specfile(data, f"{cache.url} spec {ref.name}/{ref.hash[:7]}"), manifest.tarball.content_length


def update_index(cache, jobs: int = 8, warn=None, progress=None) -> tuple[Index, int]:
    """Bring the mirror's index up to date with its manifests; returns (index, fetched count).

    Only manifests whose hash is not already in the index are read, in parallel;
    ``progress(done, total)`` is called as they are.
    """
    if hasattr(cache, "update_index"):
        return cache.update_index(jobs=jobs)
    root = getattr(getattr(cache, "backend", None), "root", None)
    if root:
        # Two runs on one directory mirror take turns: the second sees the first's packages.
        from .locks import dir_lock

        if not os.path.isdir(root):
            raise MirrorError(f"no mirror at {root} (the directory does not exist)")
        lock_dir = getattr(cache, "index_dir", "v3/manifests/index")  # layout v2: build_cache
        with dir_lock(os.path.join(root, *lock_dir.split("/"))):
            return _update_index(cache, jobs, warn, progress)
    return _update_index(cache, jobs, warn, progress)


def _update_index(cache, jobs: int, warn, progress=None) -> tuple[Index, int]:
    try:
        index = read_index(cache) or Index()
    except BincacheError as e:
        if warn:
            warn(f"the existing index is unreadable ({e}); rebuilding it")
        index = Index()
    refs = cache.list_package_refs()
    present = {r.hash for r in refs}
    # Packages whose manifests vanished leave the index; their nodes may stay as dependencies.
    for h, e in list(index.entries.items()):
        if e.in_buildcache and h not in present:
            index.entries[h] = IndexEntry(e.spec, 0, False)
    missing = [r for r in refs if not (r.hash in index.entries and index.entries[r.hash].in_buildcache)]
    if missing:
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            for done, (nodes, size) in enumerate(pool.map(lambda r: _fetch_entry(cache, r), missing), 1):
                index.add_specfile(nodes, size)
                if progress:
                    progress(done, len(missing))
    write_index(cache, index)
    return index, len(missing)
