"""`prune`: mark and sweep a build cache from explicit roots.

Mark: every package reachable from a root through its link/run dependencies (the DAG of the
mirrors' indexes, brought up to date first) is kept. Roots are specs matched in the mirrors
(``name``, ``name@version``, ``/hash``), files listing hashes, Spack environment lockfiles
(``spack.lock``), and the N newest packages of each name. Sweep: the manifests of the other
packages are deleted first, then each blob that no remaining manifest names (spec, index and
key manifests alike). A blob younger than the grace period is never deleted: a push writes its
blobs before its manifest, so a push running during the prune keeps what it uploaded.

Directory mirrors in layout v3 only, for now; other kinds are refused by name.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from ..config import mask_url
from ..errors import BincacheError, MirrorError, SpecError, UsageError
from ..index import update_index
from ..mirror import open_cache
from ..mirror.layout_v3 import (
    BlobRecord,
    LayoutV3Cache,
    clearsigned_payload,
    is_clearsigned,
)
from ..spec import Spec, matches
from .catalog import closure, current_index

DEFAULT_GRACE = 3600.0
BLOBS = "blobs"
MANIFESTS = "v3/manifests"


@dataclass
class PrunedMirror:
    url: str
    kept: list = field(default_factory=list)  # Spec
    deleted: list = field(default_factory=list)  # Spec (to delete, on a dry run)
    blobs_deleted: int = 0
    bytes_freed: int = 0
    blobs_young: int = 0  # unreferenced, but younger than the grace period


@dataclass
class PruneResult:
    mirrors: list[PrunedMirror]
    roots: list  # Spec
    dry_run: bool


def _cache(ref) -> LayoutV3Cache:
    cache = open_cache(ref)
    if not isinstance(cache, LayoutV3Cache) or cache.backend.root is None:
        kind = "a layout v2 cache" if cache.kind == "layout-v2" else "this kind of mirror"
        raise UsageError(f"{mask_url(cache.url)}: prune works on layout v3 directory mirrors; "
                         f"{kind} is not pruned yet")
    root = cache.backend.root
    if not os.path.isdir(root):
        if os.path.exists(root):
            raise UsageError(f"{root} is a file, not a mirror directory")
        raise MirrorError(f"no mirror at {root} (the directory does not exist)")
    return cache


def _lockfile_hashes(path: str) -> list[str] | None:
    """The hashes of a Spack environment lockfile, or None when the file is not one."""
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or "concrete_specs" not in doc:
        return None
    hashes = [r.get("hash") for r in doc.get("roots") or [] if isinstance(r, dict)]
    hashes += list((doc.get("concrete_specs") or {}).keys())
    return [h for h in hashes if isinstance(h, str)]


def _hash_file(path: str) -> list[str]:
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read {path}: {getattr(e, 'strerror', None) or e}") from None
    out = []
    for line in lines:
        line = line.split("#", 1)[0].strip().lstrip("/")
        if line:
            out.append(line)
    return out


def select_roots(keep: list[str], packages: dict[str, Spec], newest: int,
                 pushed: dict[str, float]) -> list[Spec]:
    """The root specs: each ``--keep`` value, then the ``newest`` packages of each name."""
    roots: dict[str, Spec] = {}
    specs = list(packages.values())
    for value in keep:
        if os.path.isfile(value):
            hashes = _lockfile_hashes(value)
            if hashes is not None:
                # An environment's specs that were never pushed (build tools, externals) are
                # not an error: the ones the mirror holds are kept.
                found = [packages[h] for h in hashes if h in packages]
                if not found:
                    raise SpecError(f"{value}: none of the lockfile's specs is in the mirror")
            else:
                found = []
                for h in _hash_file(value):
                    hit = [s for s in specs if s.hash.startswith(h.lower())]
                    if not hit:
                        raise SpecError(f"{value}: root /{h} is not in the mirror; nothing was deleted")
                    found += hit
        else:
            found = [s for s in specs if matches(s, value)]
            if not found:
                raise SpecError(f'root "{value}" is not in the mirror; nothing was deleted')
        for s in found:
            roots[s.hash] = s
    if newest:
        by_name: dict[str, list] = {}
        for s in specs:
            by_name.setdefault(s.name, []).append(s)
        for group in by_name.values():
            group.sort(key=lambda s: (pushed.get(s.hash, 0.0), s.version), reverse=True)
            for s in group[:newest]:
                roots[s.hash] = s
    return sorted(roots.values(), key=lambda s: (s.name, s.version, s.hash))


def _names(cache: LayoutV3Cache, rel: str) -> set[str]:
    """The blob paths one manifest names. A manifest that cannot be read stops the prune: the
    blobs it names are unknown, so no blob could be deleted safely."""
    try:
        raw = cache.backend.read(rel)
        payload = clearsigned_payload(raw) if is_clearsigned(raw) else raw
        data = json.loads(payload)["data"]
    except (BincacheError, ValueError, KeyError, TypeError) as e:
        raise MirrorError(f"{rel}: unreadable manifest ({e}); no blob was deleted: fix or "
                          "remove it and run again") from None
    names = set()
    for d in data if isinstance(data, list) else []:
        try:
            names.add(BlobRecord.from_dict(d).path)
        except BincacheError:
            continue  # a record bincache cannot name a path for names no blob of ours
    return names


def _manifest_blobs(cache: LayoutV3Cache, skip: AbstractSet[str] = frozenset()) -> set[str]:
    """Every blob path the mirror's manifests name (spec, index and key manifests alike)."""
    referenced: set[str] = set()
    for rel in cache.backend.list(MANIFESTS):
        if rel not in skip:
            referenced |= _names(cache, rel)
    return referenced


def _mtime(cache: LayoutV3Cache, spec) -> float:
    path = cache.backend.local_path(cache.manifest_path(spec.name, spec.version, spec.hash))
    return os.stat(path).st_mtime if path else 0.0


def prune(mirrors: list, keep: list[str], *, newest: int = 0, yes: bool = False,
          grace: float = DEFAULT_GRACE, jobs: int = 8) -> PruneResult:
    """Keep what the roots reach in every mirror; delete the rest when ``yes``."""
    if not keep and not newest:
        raise UsageError("give roots to keep (--keep SPEC|FILE, --keep-newest N): pruning without "
                         "roots would delete everything")
    if grace < 0:
        raise UsageError("--grace takes a number of seconds >= 0")
    caches = [_cache(ref) for ref in mirrors]
    indexes = [update_index(c, jobs=jobs)[0] if yes else current_index(c, jobs) for c in caches]
    packages: dict[str, Spec] = {}
    nodes: dict[str, Spec] = {}
    pushed: dict[str, float] = {}
    for cache, idx in zip(caches, indexes):
        for h, e in idx.entries.items():
            nodes.setdefault(h, e.spec)
        for e in idx.packages():
            packages.setdefault(e.spec.hash, e.spec)
            pushed[e.spec.hash] = max(pushed.get(e.spec.hash, 0.0), _mtime(cache, e.spec))
    roots = select_roots(keep, packages, newest, pushed)
    kept = closure(roots, nodes)
    result = PruneResult([], roots, not yes)
    for cache, idx in zip(caches, indexes):
        out = PrunedMirror(mask_url(cache.url))
        for e in idx.packages():
            (out.kept if e.spec.hash in kept else out.deleted).append(e.spec)
        if yes:
            _sweep(cache, out, grace, jobs)
        else:
            _count_blobs(cache, out, grace)
        result.mirrors.append(out)
    return result


def _blob_files(cache: LayoutV3Cache) -> list[tuple[str, float, int]]:
    out = []
    for rel in cache.backend.list(BLOBS):
        path = cache.backend.local_path(rel)
        if path is None:
            continue
        st = os.stat(path)
        out.append((rel, st.st_mtime, st.st_size))
    return out


def _count_blobs(cache: LayoutV3Cache, out: PrunedMirror, grace: float) -> None:
    """What a real run would free: blobs named only by the manifests it deletes."""
    doomed = {cache.manifest_path(s.name, s.version, s.hash) for s in out.deleted}
    still = _manifest_blobs(cache, doomed)
    now = time.time()
    for rel, mtime, size in _blob_files(cache):
        if rel in still:
            continue
        if now - mtime < grace:
            out.blobs_young += 1
        else:
            out.blobs_deleted += 1
            out.bytes_freed += size


def _sweep(cache: LayoutV3Cache, out: PrunedMirror, grace: float, jobs: int) -> None:
    doomed = {cache.manifest_path(s.name, s.version, s.hash) for s in out.deleted}
    _manifest_blobs(cache, doomed)  # every manifest must be readable, before any delete
    # Manifests first: a reader never finds a manifest whose blobs are gone.
    for s in out.deleted:
        cache.backend.delete(cache.manifest_path(s.name, s.version, s.hash))
        _rmdir_empty(cache, f"v3/manifests/spec/{s.name}")
    update_index(cache, jobs=jobs)
    blobs = _blob_files(cache)
    # Read after the blobs were listed: a push that landed meanwhile, naming a blob that was
    # already there, is seen (a newer blob is protected by the grace period).
    referenced = _manifest_blobs(cache)
    now = time.time()
    for rel, mtime, size in blobs:
        if rel in referenced:
            continue
        if now - mtime < grace:
            out.blobs_young += 1
            continue
        cache.backend.delete(rel)
        out.blobs_deleted += 1
        out.bytes_freed += size


def _rmdir_empty(cache: LayoutV3Cache, rel: str) -> None:
    root = cache.backend.root
    assert root is not None  # prune takes directory mirrors only (_cache)
    path = os.path.join(root, *rel.split("/"))
    try:
        os.rmdir(path)
    except OSError:
        pass
